"""Distroless Debian images: status.d, no shell, patched with a tooling image's apt.

Unit part (no network): the installer that copies a .deb's files into a rootfs (hand-made .debs:
merged-/usr symlinks, conffiles, obsolete files, escapes, owners), the synthesized status file
and its stubs, status.d rewriting. End to end: distroless fixtures built from real bookworm
.debs (tools/build_distroless.py) in a real registry, the tooling image a Debian 12 minbase
pushed there too; results checked with skopeo, umoci, trivy and the .debs apt downloaded
(read with dpkg-deb, not with ocipatch).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pwd
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from debian.debian_support import version_compare

from ocipatch.context import Context
from ocipatch.distro.deb.aptrun import SOURCES_INSIDE, AptConfig
from ocipatch.distro.deb.debinstall import RootInstaller, read_deb
from ocipatch.distro.deb.tooling import (
    DistrolessPatcher,
    StatusD,
    ToolingAptRunner,
    deb_file_name,
    default_tooling_ref,
    install_packages,
    missing_dependencies,
    parse_simulation,
    tooling_rootfs,
)
from ocipatch.distro.detect import OsRelease
from ocipatch.errors import ApplyError, UnsafeArchiveError, UnsupportedError
from ocipatch.fs.unpack import OwnershipMap
from ocipatch.oci.types import Platform
from ocipatch.progress import Progress
from ocipatch.sandbox.select import select_sandbox
from tests.archive import trivy_report
from tests.mtimes import check_layer_times, expected_layer_time, top_symlinks
from tests.plugins.aptrepo import scratch_dir
from tests.plugins.images import skopeo, trivy_packages, umoci_unpack
from tools.aptrepo import DebFile, DebSpec

ROOT = Path(__file__).resolve().parents[1]
OCIPATCH = ROOT / ".venv" / "bin" / "ocipatch"
STATUS_D = "var/lib/dpkg/status.d"


# -- hand-made .debs ---------------------------------------------------------------------------
def _tar_gz(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as tf:
        for info, data in entries:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _info(name: str, kind: str = "file", data: bytes = b"", **kw: Any) -> tarfile.TarInfo:
    t = tarfile.TarInfo(name)
    t.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
              "hardlink": tarfile.LNKTYPE}[kind]  # fmt: skip
    t.size = len(data) if kind == "file" else 0
    t.mode = kw.get("mode", 0o755 if kind == "dir" else 0o644)
    t.uid, t.gid = kw.get("uid", 0), kw.get("gid", 0)
    t.mtime = kw.get("mtime", 1700000000)
    t.linkname = kw.get("link", "")
    return t


def make_deb(
    out: Path,
    name: str,
    version: str,
    members: list[tuple[str, str, bytes, dict[str, Any]]],
    *,
    conffiles: Sequence[str] = (),
    scripts: tuple[str, ...] = (),
    arch: str = "amd64",
) -> Path:
    """A .deb written by hand (ar + tar.gz), so members can be anything, even hostile."""
    control = (
        f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\n"
        f"Maintainer: t <t@example.invalid>\nDescription: test\n"
    ).encode()
    md5 = "".join(
        f"{hashlib.md5(d).hexdigest()}  {n.removeprefix('./')}\n"
        for n, k, d, _ in members
        if k == "file"
    ).encode()
    ctl: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (_info("./control", data=control), control),
        (_info("./md5sums", data=md5), md5),
    ]
    if conffiles:
        text = "".join(f"{c}\n" for c in conffiles).encode()
        ctl.append((_info("./conffiles", data=text), text))
    for s in scripts:
        body = b"#!/bin/sh\nexit 0\n"
        ctl.append((_info(f"./{s}", data=body, mode=0o755), body))
    data = [(_info(n, k, d, **kw), d if k == "file" else None) for n, k, d, kw in members]
    parts = [("debian-binary", b"2.0\n"), ("control.tar.gz", _tar_gz(ctl)),
             ("data.tar.gz", _tar_gz(data))]  # fmt: skip
    ar = io.BytesIO()
    ar.write(b"!<arch>\n")
    for pname, pdata in parts:
        ar.write(f"{pname:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(pdata):<10}`\n".encode())
        ar.write(pdata + (b"\n" if len(pdata) % 2 else b""))
    path = out / f"{name}_{version}_{arch}.deb"
    path.write_bytes(ar.getvalue())
    return path


def merged_rootfs(root: Path) -> Path:
    """A merged-/usr tree (lib -> usr/lib) holding foo 1.0 as a distroless image would."""
    (root / "usr/lib/x").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "lib").symlink_to("usr/lib")
    (root / "usr/lib/x/libfoo.so.1").write_bytes(b"old lib")
    (root / "usr/lib/x/libfoo-gone.so").write_bytes(b"dropped in 2.0")
    (root / "usr/lib/x/shared.txt").write_bytes(b"also listed by bar")
    (root / "etc/foo.conf").write_bytes(b"edited by the image\n")
    sd = root / STATUS_D
    sd.mkdir(parents=True)
    (sd / "foo").write_text(
        "Package: foo\nVersion: 1.0\nArchitecture: amd64\nDepends: libgcc-s1, bar (>= 1)\n"
        "Description: test\n"
    )
    (sd / "foo.md5sums").write_text(
        "x  lib/x/libfoo.so.1\nx  lib/x/libfoo-gone.so\nx  lib/x/shared.txt\n"
    )
    (sd / "bar").write_text(
        "Package: bar\nVersion: 1.5\nArchitecture: amd64\nDescription: t\n\n"
        "Package: baz\nStatus: install ok installed\nVersion: 3\nArchitecture: all\n"
        "Pre-Depends: awk\nDepends: debconf (>= 0.5) | debconf-2.0\nDescription: t\n"
    )
    (sd / "bar.md5sums").write_text("x  lib/x/shared.txt\n")
    return root


FOO2: list[tuple[str, str, bytes, dict[str, Any]]] = [
    ("./", "dir", b"", {}),
    ("./lib/", "dir", b"", {}),
    ("./lib/x/", "dir", b"", {}),
    ("./lib/x/libfoo.so.1", "file", b"new lib", {"mode": 0o4755, "gid": 42}),
    ("./lib/x/libfoo.so.1.0", "hardlink", b"", {"link": "./lib/x/libfoo.so.1"}),
    ("./usr/", "dir", b"", {}),
    ("./usr/share/", "dir", b"", {}),
    ("./usr/share/foo/", "dir", b"", {"mode": 0o750, "gid": 42}),
    ("./usr/share/foo/data", "file", b"data", {}),
    ("./usr/bin/", "dir", b"", {}),
    ("./usr/bin/foo", "symlink", b"", {"link": "../lib/x/libfoo.so.1"}),
    ("./etc/", "dir", b"", {}),
    ("./etc/foo.conf", "file", b"new default\n", {}),
]


@pytest.mark.parametrize("privileged", [True, False])
def test_install_follows_merged_usr_and_records_owners(tmp_path: Path, privileged: bool) -> None:
    if privileged and os.geteuid() != 0:
        pytest.skip("chown needs root")
    root = merged_rootfs(tmp_path / "root")
    deb = make_deb(tmp_path, "foo", "2.0", FOO2, conffiles=["/etc/foo.conf"],
                   scripts=("postinst",))  # fmt: skip
    own = OwnershipMap(privileged=privileged)
    updated, notes = install_packages(root, own, [read_deb(deb)])

    assert updated == [("foo", "1.0", "2.0")]
    assert notes == ["maintainer scripts were not run (a distroless image has no shell): "
                     "foo (postinst)"]  # fmt: skip
    assert (root / "lib").is_symlink(), "the merged-/usr symlink is kept, as dpkg keeps it"
    lib = root / "usr/lib/x/libfoo.so.1"
    assert lib.read_bytes() == b"new lib"
    assert os.path.samefile(lib, root / "usr/lib/x/libfoo.so.1.0")
    assert os.readlink(root / "usr/bin/foo") == "../lib/x/libfoo.so.1"
    owner = own["usr/lib/x/libfoo.so.1"]
    assert (owner.uid, owner.gid, owner.mode) == (0, 42, 0o4755)
    assert own["usr/share/foo"].mode == 0o750 and own["usr/share/foo"].gid == 42
    st = lib.stat()
    if privileged:
        assert (st.st_gid, st.st_mode & 0o7777) == (42, 0o4755)
    else:
        assert st.st_mode & 0o7000 == 0, "no setuid file of the invoking user on disk"
    # Obsolete: listed by foo 1.0 only -> gone; listed by bar too -> kept.
    assert not (root / "usr/lib/x/libfoo-gone.so").exists()
    assert (root / "usr/lib/x/shared.txt").exists()
    # Conffile the image edited: kept, the new one beside it.
    assert (root / "etc/foo.conf").read_bytes() == b"edited by the image\n"
    assert (root / "etc/foo.conf.dpkg-dist").read_bytes() == b"new default\n"
    # status.d: the control file as the stanza (no Status: the image had none), new md5sums.
    sd = root / STATUS_D
    assert (sd / "foo").read_bytes() == read_deb(deb).control
    assert "lib/x/libfoo.so.1\n" in (sd / "foo.md5sums").read_text()
    assert "libfoo-gone" not in (sd / "foo.md5sums").read_text()
    assert not (root / "var/lib/dpkg/status").exists()
    assert StatusD(root).packages()["foo"].version == "2.0"
    assert not list(root.rglob("*.ocipatch-new"))


def test_conffile_replaced_when_unchanged_or_recorded(tmp_path: Path) -> None:
    root = merged_rootfs(tmp_path / "root")
    # The image's conffile is what foo 1.0 shipped, as a Conffiles field records.
    old_md5 = hashlib.md5(b"edited by the image\n").hexdigest()
    stanza = (root / STATUS_D / "foo").read_text()
    (root / STATUS_D / "foo").write_text(
        stanza.replace("Package: foo\n", "Package: foo\nStatus: install ok installed\n")
        + f"Conffiles:\n /etc/foo.conf {old_md5}\n"
    )
    deb = make_deb(tmp_path, "foo", "2.0", FOO2, conffiles=["/etc/foo.conf"])
    install_packages(root, OwnershipMap(privileged=os.geteuid() == 0), [read_deb(deb)])
    assert (root / "etc/foo.conf").read_bytes() == b"new default\n"
    assert not (root / "etc/foo.conf.dpkg-dist").exists()
    text = (root / STATUS_D / "foo").read_text()
    assert text.startswith("Package: foo\nStatus: install ok installed\n")
    new_md5 = hashlib.md5(b"new default\n").hexdigest()
    assert text.endswith(f"Conffiles:\n /etc/foo.conf {new_md5}\n")


def test_multi_stanza_file_keeps_the_other_stanzas(tmp_path: Path) -> None:
    root = merged_rootfs(tmp_path / "root")
    before = (root / STATUS_D / "bar").read_text()
    deb = make_deb(tmp_path, "baz", "4", [("./usr/", "dir", b"", {})], arch="all")
    install_packages(root, OwnershipMap(privileged=os.geteuid() == 0), [read_deb(deb)])
    after = (root / STATUS_D / "bar").read_text()
    assert after.startswith(before.split("\n\n")[0] + "\n\n"), "bar's stanza byte for byte"
    assert "Package: baz\nStatus: install ok installed\nVersion: 4\n" in after
    assert not (root / STATUS_D / "baz").exists()


@pytest.mark.parametrize(
    "member",
    [("./../escape", "file", b"x", {}), ("./usr/.wh.bin", "file", b"x", {})],
)
def test_refuses_escapes_and_whiteout_names(
    tmp_path: Path, member: tuple[str, str, bytes, dict[str, Any]]
) -> None:
    root = merged_rootfs(tmp_path / "root")
    deb = make_deb(tmp_path, "evil", "1", [member])
    with pytest.raises(UnsafeArchiveError):
        RootInstaller(root, OwnershipMap()).install(read_deb(deb))
    assert not (tmp_path / "escape").exists()


def test_symlinked_parents_stay_inside_the_root(tmp_path: Path) -> None:
    root = merged_rootfs(tmp_path / "root")
    (root / "opt").symlink_to("../../../../..")  # resolves to the root, as in a chroot
    (tmp_path / "outside").mkdir()
    deb = make_deb(tmp_path, "evil", "1", [("./opt/outside/pwned", "file", b"x", {})])
    RootInstaller(root, OwnershipMap()).install(read_deb(deb))
    assert (root / "outside/pwned").read_bytes() == b"x"
    assert list((tmp_path / "outside").iterdir()) == []


def test_file_over_directory_is_an_error(tmp_path: Path) -> None:
    root = merged_rootfs(tmp_path / "root")
    deb = make_deb(tmp_path, "evil", "1", [("./usr/lib/x", "file", b"x", {})])
    with pytest.raises(ApplyError, match="where the image has a directory"):
        RootInstaller(root, OwnershipMap()).install(read_deb(deb))


def test_synthesized_status_stubs_only_unmet_dependencies(tmp_path: Path) -> None:
    root = merged_rootfs(tmp_path / "root")
    status = StatusD(root)
    installed = status.installed()
    assert sorted(installed) == ["bar", "baz", "foo"]
    assert missing_dependencies(installed) == {
        "libgcc-s1": "99999:0",
        "awk": "99999:0",
        "debconf": "99999:0",
    }
    text = status.synthesize("arm64")
    assert text.count("Status: install ok installed\n") == 6
    assert "Package: libgcc-s1\nStatus: install ok installed\n" in text
    assert "Architecture: arm64\nMulti-Arch: allowed\nVersion: 99999:0\n" in text
    assert status.arch(Platform("linux", "arm64")) == "amd64", "the packages say amd64"
    # A stanza set apt's own parser accepts, with the stubs meeting every dependency.
    (tmp_path / "status").write_text(text)
    out = subprocess.run(
        ["dpkg-query", f"--admindir={tmp_path}", "-W", "-f", "${Package} ${Version}\n"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout  # fmt: skip
    assert "libgcc-s1 99999:0" in out and "foo 1.0" in out


def test_versioned_stub_meets_its_constraint(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / STATUS_D).mkdir(parents=True)
    (root / STATUS_D / "a").write_text(
        "Package: a\nVersion: 1\nArchitecture: all\nDepends: b (= 2.0), c (<< 3)\n"
    )
    assert missing_dependencies(StatusD(root).installed()) == {"b": "2.0", "c": "3~"}


def test_default_tooling_ref() -> None:
    assert default_tooling_ref(OsRelease("debian", "12")) == "docker.io/library/debian:12-slim"
    assert default_tooling_ref(OsRelease("debian", "12.5")) == "docker.io/library/debian:12-slim"
    assert default_tooling_ref(OsRelease("ubuntu", "22.04")) == "docker.io/library/ubuntu:22.04"
    with pytest.raises(UnsupportedError, match="--tooling-image"):
        default_tooling_ref(OsRelease("wolfi", "20230201"))


def test_parse_simulation_and_file_names() -> None:
    out = (
        "Inst libssl3 [3.0.20-1~deb12u2] (3.0.22-1~deb12u2 Debian-Security:12/stable-security "
        "[arm64])\nInst newdep (1:2.0-1 Debian:12/stable [all])\nConf libssl3 (3.0.22)\n"
    )
    assert parse_simulation(out) == [
        ("libssl3", "3.0.22-1~deb12u2", "arm64"),
        ("newdep", "1:2.0-1", "all"),
    ]
    assert deb_file_name("zlib1g", "1:1.3", "arm64") == "zlib1g_1%3a1.3_arm64.deb"


# -- end to end -----------------------------------------------------------------------------------
def _need_root_tools() -> None:
    if os.geteuid() != 0 or shutil.which("umoci") is None:
        pytest.skip("the distroless e2e runs as root (tooling image built with mmdebstrap)")


def run_ocipatch(
    *args: str, user: str | None = None, home: Path | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [str(OCIPATCH), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "DOCKER_"))}
    if user is not None:
        pw = pwd.getpwnam(user)
        cmd = ["setpriv", f"--reuid={user}", f"--regid={pw.pw_gid}", "--clear-groups", *cmd]
        env["HOME"] = str(home)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd="/")


def patch_json(*args: str, **kw: Any) -> dict[str, Any]:
    r = run_ocipatch("patch", "--json", *args, **kw)
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


@pytest.fixture(scope="module")
def work() -> Iterator[Path]:
    # Outside pytest's 0700 base directory, so that the unprivileged run can reach it; on a
    # tmpfs when there is one (a slow disk takes seconds per tree of the tooling image).
    d = Path(tempfile.mkdtemp(prefix="ocipatch-distroless-", dir=scratch_dir()))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def env(debian_layout: Path, registry: Any, work: Path) -> dict[str, Any]:
    """The registry holding the tooling image and the distroless fixtures, and what the
    archive offers today for their packages."""
    _need_root_tools()
    from tools.build_distroless import (
        build_distroless_image,
        installed_versions,
        newest_versions,
    )

    host = registry.host
    tooling = f"{host}/tooling/debian:12-slim"
    skopeo(
        "copy", "-q", "--dest-tls-verify=false", f"oci:{debian_layout}:12", f"docker://{tooling}"
    )
    single = build_distroless_image(work / "dl-amd64", "12", merged_usr=True)
    multi = build_distroless_image(work / "dl-multi", "12", arches=("amd64", "arm64"))
    ref = f"{host}/distroless/base:12"
    mref = f"{host}/distroless/multi:12"
    skopeo("copy", "-q", "--dest-tls-verify=false", f"oci:{single}:12", f"docker://{ref}")
    skopeo("copy", "-q", "--all", "--dest-tls-verify=false", f"oci:{multi}:12", f"docker://{mref}")
    needed: dict[str, dict[str, str]] = {}
    installed: dict[str, dict[str, str]] = {}
    for arch in ("amd64", "arm64"):
        installed[arch] = installed_versions(arch)
        newest = newest_versions(arch, list(installed[arch]))
        needed[arch] = {
            n: newest[n]
            for n, v in installed[arch].items()
            if n in newest and version_compare(newest[n], v) > 0
        }
    assert "libssl3" in needed["amd64"], "bookworm main lags bookworm-security for libssl3"
    raw = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{ref}"))
    return {
        "host": host,
        "tooling": tooling,
        "ref": ref,
        "multi": mref,
        "layers": raw["Layers"],
        "installed": installed,
        "needed": needed,
        "cache": work / "cache-root",
    }


def _report(path: Path, env: dict[str, Any], names: tuple[str, ...]) -> Path:
    fixed = {n: env["needed"]["amd64"][n] for n in names}
    path.write_text(json.dumps(trivy_report(env["installed"]["amd64"], fixed)))
    path.chmod(0o644)
    return path


@pytest.fixture(scope="module")
def first(env: dict[str, Any], work: Path) -> dict[str, Any]:
    """Root patch of the amd64 image with a report naming libssl3 only."""
    report = _report(work / "libssl3.json", env, ("libssl3",))
    return patch_json(
        "-i", env["ref"], "-r", str(report), "-t", "12-first", "--cache-dir", str(env["cache"]),
        "--tooling-image", env["tooling"],
    )  # fmt: skip


def _deb_tar(deb: Path) -> tarfile.TarFile:
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                          check=True).stdout  # fmt: skip
    return tarfile.open(fileobj=io.BytesIO(data))


def _control(deb: Path, member: str) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["dpkg-deb", "-e", str(deb), d], check=True)
        return (Path(d) / member).read_bytes()


def check_image(
    env: dict[str, Any],
    ref: str,
    arch: str,
    expect: dict[str, str],
    tmp: Path,
    base_layers: list[str],
) -> Path:
    """The patched image: base layers kept plus one, trivy's versions, status.d, files equal
    to the new packages' (content, owner, mode), nothing of the tooling. Returns the rootfs."""
    tmp.mkdir(parents=True, exist_ok=True)
    layout = tmp / "layout"
    skopeo("copy", "-q", "--src-tls-verify=false", "--override-arch", arch,
           f"docker://{ref}", f"oci:{layout}:p")  # fmt: skip
    info = json.loads(skopeo("inspect", f"oci:{layout}:p"))
    assert info["Architecture"] == arch
    assert info["Layers"][:-1] == base_layers, "original layers kept byte for byte"
    assert len(info["Layers"]) == len(base_layers) + 1, "exactly one patch layer"
    seen = trivy_packages(layout, tmp)
    for name, version in expect.items():
        assert seen[name] == version, name
    with tarfile.open(layout / "blobs/sha256" / info["Layers"][-1].split(":")[1]) as t:
        layer = {m.name: m for m in t.getmembers()}
    # Package paths (lib/ in an image without merged-/usr: zlib1g ships /lib/<triplet>/) and
    # status.d: nothing of the tooling image.
    allowed = ("usr/", "lib/", "etc/", f"{STATUS_D}/")
    assert all(n.startswith(allowed) for n in layer), sorted(layer)
    rootfs = umoci_unpack(layout, "p", tmp / "bundle")
    for banned in ("bin/sh", "usr/bin/sh", "usr/bin/bash", "usr/bin/dpkg", "usr/bin/apt-get",
                   "var/lib/dpkg/status", "var/lib/apt", "var/cache/apt", "etc/apt",
                   "var/cache/ocipatch", "var/log/apt"):  # fmt: skip
        assert not os.path.lexists(rootfs / banned), banned
    sd = rootfs / STATUS_D
    cache_debs = env["cache"] / "apt" / "debs"
    debs = []
    for name, version in expect.items():
        (deb,) = [
            p
            for a in (arch, "all")
            if (p := cache_debs / deb_file_name(name, version, a)).is_file()
        ]
        debs.append(deb)
        assert (sd / name).read_bytes() == _control(deb, "control"), f"status.d/{name}"
        assert (sd / f"{name}.md5sums").read_bytes() == _control(deb, "md5sums")
        with _deb_tar(deb) as tar:
            for m in tar.getmembers():
                path = m.name.removeprefix("./")
                if not m.isreg():
                    continue
                f = tar.extractfile(m)
                assert f is not None
                assert (rootfs / path).read_bytes() == f.read(), path
                if path in layer:
                    lm = layer[path]
                    assert (lm.uid, lm.gid, lm.mode) == (m.uid, m.gid, m.mode), path
    # Times: package files keep their .deb's, status.d and the rest get the layer time.
    blobs = layout / "blobs/sha256"
    config = json.loads(skopeo("inspect", "--config", f"oci:{layout}:p"))
    check_layer_times(
        blobs / info["Layers"][-1].split(":")[1],
        debs,
        expected_layer_time(debs, config.get("created")),
        top_symlinks(*(blobs / d.split(":")[1] for d in base_layers)),
    )
    return rootfs


def test_patch_from_report_then_everything(env: dict[str, Any], first: dict[str, Any],
                                           work: Path) -> None:  # fmt: skip
    out = first
    assert out["status"] == "patched"
    assert [(u["name"], u["to"]) for u in out["updated"]] == [
        ("libssl3", env["needed"]["amd64"]["libssl3"])
    ]
    assert out["vulnerabilities_fixed"] == ["CVE-2099-0000"]
    assert any("maintainer scripts were not run" in n and "libssl3" in n for n in out["notes"])
    root = check_image(env, f"{env['host']}/distroless/base:12-first", "amd64",
                       {"libssl3": env["needed"]["amd64"]["libssl3"]}, work / "c1",
                       env["layers"])  # fmt: skip
    assert (root / "lib").is_symlink(), "merged-/usr kept"
    so = root / "usr/lib/x86_64-linux-gnu/libssl.so.3"
    assert so.read_bytes()[:4] == b"\x7fELF"

    # Again, without a report: everything newer (tzdata too), still one patch layer.
    again = patch_json(
        "-i", f"{env['host']}/distroless/base:12-first", "-t", "12-all",
        "--cache-dir", str(env["cache"]), "--tooling-image", env["tooling"],
    )  # fmt: skip
    assert {u["name"]: u["to"] for u in again["updated"]} == {
        n: v for n, v in env["needed"]["amd64"].items() if n != "libssl3"
    }
    check_image(env, f"{env['host']}/distroless/base:12-all", "amd64", env["needed"]["amd64"],
                work / "c2", env["layers"])  # fmt: skip
    same = patch_json(
        "-i", f"{env['host']}/distroless/base:12-all", "-t", "12-same",
        "--cache-dir", str(env["cache"]), "--tooling-image", env["tooling"],
    )  # fmt: skip
    assert same["status"] == "up-to-date"

    # The tooling image's tree in the cache was not touched by any run.
    (tree,) = (env["cache"] / "tooling").iterdir()
    marker = (tree / ".ocipatch-complete").stat().st_mtime_ns
    touched = [p for p in tree.rglob("*") if p.lstat().st_mtime_ns > marker]
    assert touched == []


def test_unprivileged_run_gives_the_same_layer(env: dict[str, Any], first: dict[str, Any],
                                               work: Path) -> None:  # fmt: skip
    report = _report(work / "libssl3-user.json", env, ("libssl3",))
    home = work / "home"
    home.mkdir(mode=0o777, exist_ok=True)
    user = patch_json(
        "-i", env["ref"], "-r", str(report), "-t", "12-user",
        "--cache-dir", str(work / "cache-user"), "--tooling-image", env["tooling"],
        user="nobody", home=home,
    )  # fmt: skip
    assert user["image"]["digest"] == first["image"]["digest"], "byte-identical to root's"


def test_arm64_in_a_two_platform_index_on_this_host(env: dict[str, Any], work: Path) -> None:
    before = json.loads(skopeo("inspect", "--raw", "--tls-verify=false",
                               f"docker://{env['multi']}"))  # fmt: skip
    out = patch_json(
        "--platform", "linux/arm64", "-i", env["multi"], "--cache-dir", str(env["cache"]),
        "--tooling-image", env["tooling"],
    )  # fmt: skip
    assert {u["name"]: u["to"] for u in out["updated"]} == env["needed"]["arm64"]
    after = json.loads(skopeo("inspect", "--raw", "--tls-verify=false",
                              f"docker://{env['host']}/distroless/multi:12-patched"))  # fmt: skip
    plat = {m["platform"]["architecture"]: m["digest"] for m in after["manifests"]}
    old = {m["platform"]["architecture"]: m["digest"] for m in before["manifests"]}
    assert plat["amd64"] == old["amd64"], "the other platform is kept as it was"
    assert plat["arm64"] != old["arm64"]
    base = json.loads(skopeo("inspect", "--tls-verify=false", "--override-arch", "arm64",
                             f"docker://{env['multi']}"))["Layers"]  # fmt: skip
    root = check_image(env, f"{env['host']}/distroless/multi:12-patched", "arm64",
                       env["needed"]["arm64"], work / "arm", base)  # fmt: skip
    elf = (root / "usr/lib/aarch64-linux-gnu/libssl.so.3").read_bytes()
    assert int.from_bytes(elf[18:20], "little") == 183, "an aarch64 ELF (EM_AARCH64)"


def test_default_tooling_image_error_names_the_option(env: dict[str, Any], work: Path) -> None:
    r = run_ocipatch("patch", "-i", env["ref"], "-t", "12-x", "--cache-dir",
                     str(work / "cache-default"))  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert "docker.io/library/debian:12-slim" in r.stderr and "--tooling-image" in r.stderr


@pytest.fixture(scope="module")
def tooling_tree(debian_layout: Path, work: Path) -> Path:
    """The Debian 12 minbase unpacked as a tooling image (through ocipatch's cache)."""
    ctx = Context.create(cache_dir=work / "cache-root")  # shared with the e2e runs
    return tooling_rootfs(ctx, f"oci:{debian_layout}:12", True, Progress(quiet=True))


def test_new_dependency_and_stubs_with_a_local_repository(
    tooling_tree: Path, apt_repo_factory: Any, work: Path
) -> None:
    """arm64 packages from a signed local repository, resolved by the amd64 tooling's apt:
    the image's unmet dependencies are stubbed, a new dependency of the update is added."""
    served = apt_repo_factory(
        [
            DebSpec("foo", "2.0", arch="arm64", depends=["newdep (>= 1)", "libc6 (>= 2.30)"],
                    files=[DebFile("/usr/lib/foo/libfoo.so", b"v2", mode=0o755)]),
            DebSpec("newdep", "1.0", arch="arm64", files=[DebFile("/usr/share/newdep/x", b"n")]),
            DebSpec("unrelated", "9", arch="arm64"),
        ],
        suite="bookworm",
    )  # fmt: skip
    base = Path(tempfile.mkdtemp(prefix="local-", dir=work))
    target = base / "rootfs"
    (target / STATUS_D).mkdir(parents=True)
    (target / "usr/lib/foo").mkdir(parents=True)
    (target / "usr/lib/foo/libfoo.so").write_bytes(b"v1")
    (target / "usr/lib/foo/old.so").write_bytes(b"gone in 2.0")
    (target / STATUS_D / "foo").write_text(
        "Package: foo\nVersion: 1.0\nArchitecture: arm64\nDepends: libc6 (>= 2.30)\n"
        "Maintainer: t <t@example.invalid>\nDescription: test\n"
    )
    (target / STATUS_D / "foo.md5sums").write_text(
        "x  usr/lib/foo/libfoo.so\nx  usr/lib/foo/old.so\n"
    )
    sources = base / "sources"
    sources.mkdir()
    shutil.copyfile(served.keyring, sources / "local.gpg")
    (sources / "local.sources").write_text(
        served.repo.sources_text(served.url, f"{SOURCES_INSIDE}/local.gpg")
    )
    state = base / "state"
    state.mkdir()
    status = StatusD(target)
    (state / "status").write_text(status.synthesize(status.arch(Platform("linux", "arm64"))))
    runner = ToolingAptRunner(
        tooling_tree,
        select_sandbox("auto"),
        AptConfig(cache_dir=base / "apt", timeout=120, log=base / "apt.log"),
        state,
        "arm64",
        set(),
        sources_dir=sources,
    )
    own = OwnershipMap(privileged=os.geteuid() == 0)
    patcher = DistrolessPatcher(target, runner, own)
    installed = list(status.packages().values())
    plan = patcher.plan(installed, None)
    assert [(i.name, i.available) for i in plan.updates] == [("foo", "2.0")]
    out = patcher.apply(plan)
    assert out.updated == [("foo", "1.0", "2.0"), ("newdep", "", "1.0")]
    assert "added newdep: new dependencies of the updates" in out.notes
    assert patcher.verify(plan) == []
    assert (target / "usr/lib/foo/libfoo.so").read_bytes() == b"v2"
    assert not (target / "usr/lib/foo/old.so").exists()
    assert (target / "usr/share/newdep/x").read_bytes() == b"n"
    assert (target / STATUS_D / "newdep.md5sums").is_file(), "the image uses md5sums"
    assert not (target / STATUS_D / "libc6").exists(), "a stub never reaches the image"
    assert sorted(p.name for p in out.packages) == [
        "foo_2.0_arm64.deb",
        "newdep_1.0_arm64.deb",
    ]


def test_layer_file_meta_gz_roundtrip() -> None:
    """_tar_gz writes what DebFile reads back (guards the hand-made .deb helper)."""
    blob = _tar_gz([(_info("./a", data=b"x"), b"x")])
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as t:
        assert t.getnames() == ["./a"]


def test_status_d_symlink_is_resolved_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "inside").mkdir()
    (root / "inside/pkg").write_text("Package: pkg\nVersion: 1\nArchitecture: all\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "host").write_text("Package: host\nVersion: 1\nArchitecture: all\n")
    # Absolute: means <root>/inside, never the host's directory of that name.
    (root / STATUS_D).symlink_to("/inside")
    (root / "inside/evil").symlink_to(outside / "host")
    assert sorted(StatusD(root).packages()) == ["pkg"]
