"""Ubuntu's .debs compress control and data with zstd: ocipatch reads them with the zstandard
library, with no unzstd program on PATH (owners, modes, control files, installation)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ocipatch.distro.deb.debinstall import RootInstaller, read_deb
from ocipatch.distro.deb.debmeta import control_files, deb_file_meta
from ocipatch.fs.unpack import OwnershipMap
from tools.aptrepo import DebFile, DebSpec, build_deb


@pytest.fixture
def zstd_deb(tmp_path: Path) -> Path:
    spec = DebSpec(
        "ocp-ztool",
        "2.0",
        files=[DebFile("/usr/bin/ocp-ztool", "#!/bin/sh\n", mode=0o2755, gid=42)],
        scripts={"postinst": "#!/bin/sh\nexit 0\n"},
        compression="zstd",
    )
    deb = build_deb(spec, tmp_path / "debs")
    import subprocess

    members = subprocess.run(
        ["ar", "t", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    assert "data.tar.zst" in members and "control.tar.zst" in members
    return deb


def test_zstd_debs_without_unzstd(
    zstd_deb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no unzstd, no zstd
    meta = deb_file_meta([zstd_deb])["usr/bin/ocp-ztool"]
    assert (meta.uid, meta.gid, meta.mode) == (0, 42, 0o2755)
    assert b"Package: ocp-ztool" in control_files(zstd_deb)["control"]
    pkg = read_deb(zstd_deb)
    assert (pkg.name, pkg.version, pkg.scripts) == ("ocp-ztool", "2.0", ["postinst"])
    own = OwnershipMap()
    (tmp_path / "root").mkdir()
    RootInstaller(tmp_path / "root", own).install(pkg)
    assert (tmp_path / "root/usr/bin/ocp-ztool").read_text() == "#!/bin/sh\n"
    assert (own["usr/bin/ocp-ztool"].gid, own["usr/bin/ocp-ztool"].mode) == (42, 0o2755)
