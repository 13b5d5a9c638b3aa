"""The rpm installer's file step on packages built by the real rpmbuild: payloads in every
compressor rpm writes, hard links (newc puts the data on the last link only), symlinks,
%ghost files (not in the payload), and rpm's %config rules (.rpmsave without noreplace)."""

from __future__ import annotations

import os
import subprocess
import zlib
from pathlib import Path
from typing import cast

import pytest

from ocipatch.distro.apk.writer import RootWriter
from ocipatch.distro.rpm.db import InstalledRpms
from ocipatch.distro.rpm.header import read_rpm
from ocipatch.distro.rpm.install import _check_conflicts, _Fetched, _Files, payload, read_cpio
from ocipatch.distro.rpm.repos import RpmCandidate
from ocipatch.errors import ApplyError, ImageFormatError
from ocipatch.fs.unpack import OwnershipMap
from tools.rpmrepo import PAYLOAD_MACRO, _env, _rpm_defines

SPEC = """Name: links
Version: 1.0
Release: {release}
Summary: t
License: MIT
BuildArch: noarch

%description
t

%install
mkdir -p %{{buildroot}}/usr/bin %{{buildroot}}/etc
printf 'tool {release}\\n' > %{{buildroot}}/usr/bin/a
ln %{{buildroot}}/usr/bin/a %{{buildroot}}/usr/bin/b
%if {release} < 3
ln -s a %{{buildroot}}/usr/bin/c
printf 'conf {release}\\n' > %{{buildroot}}/etc/links.conf
%endif

%files
/usr/bin/a
/usr/bin/b
%if {release} < 3
/usr/bin/c
%config /etc/links.conf
%endif
%ghost /etc/links.state
"""


def build(tmp: Path, release: int, compressor: str, name: str = "links") -> bytes:
    spec = tmp / f"{name}-{release}.spec"
    spec.write_text(SPEC.format(release=release).replace("Name: links", f"Name: {name}"))
    top = tmp / f"top-{name}-{release}-{compressor}"
    defines = _rpm_defines(top, "gz" if compressor == "bzip2" else compressor)  # type: ignore[arg-type]
    if compressor == "bzip2":  # rpm still writes it; the fixtures do not
        defines += ["--define", "_binary_payload w9.bzdio"]
    subprocess.run(
        ["rpmbuild", "-bb", "--quiet", *defines, str(spec)],
        check=True, capture_output=True, env=_env(),
    )  # fmt: skip
    (rpm,) = (top / "RPMS").rglob("*.rpm")
    return rpm.read_bytes()


@pytest.mark.parametrize("compressor", [*sorted(PAYLOAD_MACRO), "bzip2"])
def test_payload_files_links_ghost_and_rpmsave(compressor: str, tmp_path: Path) -> None:
    old_data, new_data = build(tmp_path, 1, compressor), build(tmp_path, 2, compressor)
    old, new = read_rpm(old_data, "old"), read_rpm(new_data, "new")
    assert new.payload_compressor == {"gz": "gzip"}.get(compressor, compressor)
    root = tmp_path / "root"
    root.mkdir()
    w = RootWriter(root, OwnershipMap())
    _Files(w, {}, {}).install(old.package, payload(old, old_data, "old"), [])
    (root / "etc/links.conf").write_text("changed by the image\n")
    states, kept = _Files(w, {}, {}).install(
        new.package, payload(new, new_data, "new"), [old.package]
    )
    assert len(states) == len(new.package.files())
    a, b = root / "usr/bin/a", root / "usr/bin/b"
    assert a.read_text() == b.read_text() == "tool 2\n"
    assert os.stat(a).st_ino == os.stat(b).st_ino
    assert os.readlink(root / "usr/bin/c") == "a"
    assert not (root / "etc/links.state").exists()
    # %config without noreplace: the new one is written, the image's saved as .rpmsave.
    assert (root / "etc/links.conf").read_text() == "conf 2\n"
    assert (root / "etc/links.conf.rpmsave").read_text() == "changed by the image\n"
    assert kept == [("etc/links.conf", ".rpmsave")]


def test_dropped_files_removed_unless_changed_config_or_shared(tmp_path: Path) -> None:
    """Release 3 drops /etc/links.conf (changed in the image: saved as .rpmsave) and, as far
    as this test says, another installed package owns /usr/bin/c: it stays."""
    old_data, new_data = build(tmp_path, 1, "zstd"), build(tmp_path, 3, "zstd")
    old, new = read_rpm(old_data, "old"), read_rpm(new_data, "new")
    root = tmp_path / "root"
    root.mkdir()
    w = RootWriter(root, OwnershipMap())
    _Files(w, {}, {}).install(old.package, payload(old, old_data, "old"), [])
    (root / "etc/links.conf").write_text("changed by the image\n")
    files = _Files(w, {}, {}, frozenset({"/usr/bin/c"}))
    _, kept = files.install(new.package, payload(new, new_data, "new"), [old.package])
    assert not (root / "etc/links.conf").exists()
    assert (root / "etc/links.conf.rpmsave").read_text() == "changed by the image\n"
    assert kept == [("etc/links.conf", ".rpmsave")]
    assert os.readlink(root / "usr/bin/c") == "a"  # dropped, but another package owns it


def test_damaged_payload_is_an_image_format_error(tmp_path: Path) -> None:
    data = build(tmp_path, 1, "gz")
    rpm = read_rpm(data, "p")
    with pytest.raises(ImageFormatError, match="does not decompress"):
        payload(rpm, data[: rpm.payload_offset + 40], "p")
    raw = zlib.decompress(data[rpm.payload_offset :], 16 + zlib.MAX_WBITS)
    with pytest.raises(ImageFormatError, match="not a newc cpio member"):
        list(read_cpio(b"X" + raw[1:], "p"))
    with pytest.raises(ImageFormatError, match=r"cut short|not a newc"):
        list(read_cpio(raw[:200], "p"))


def test_file_conflict_refused_before_writing(tmp_path: Path) -> None:
    """rpm's file conflict: files another installed package owns with other content."""
    other_data = build(tmp_path, 1, "zstd", name="other")
    new_data = build(tmp_path, 2, "zstd")
    other, new = read_rpm(other_data, "other"), read_rpm(new_data, "new")
    db = InstalledRpms([other.package])
    fetched = [_Fetched(cast(RpmCandidate, None), tmp_path / "new.rpm", new, new_data, [])]
    with pytest.raises(ApplyError, match=r"would overwrite /etc/links\.conf, which other-1\.0-1"):
        _check_conflicts(db, fetched)
    same = read_rpm(build(tmp_path, 2, "zstd", name="other"), "same")
    _check_conflicts(InstalledRpms([same.package]), fetched)  # identical files: no conflict
