"""tools/aptrepo.py: the .debs, the signed repository, the server with tampering, and apt-get
against it inside the sandboxes over a real Debian minbase rootfs."""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from ocipatch.distro.deb.aptrun import APT_NO_PRIVILEGE_DROP, apt_env
from ocipatch.sandbox.base import RunSpec
from tests.plugins.aptrepo import UNPRIVILEGED_UID, ServedRepo, run_in_sandbox
from tools.aptrepo import (
    DebFile,
    DebSpec,
    RepoServer,
    Signer,
    build_deb,
    build_repo,
    deb_control,
)
from tools.aptrepo import main as aptrepo_main
from tools.debian_rootfs import (
    RootfsBuildError,
    archive_sources,
    build_rootfs_tarball,
    parse_deb822_sources,
)

SHADOW_FILE = DebFile("/usr/bin/ocipatch-tool", "#!/bin/sh\necho tool\n", mode=0o2755, gid=42)


def _ar_members(deb: Path) -> list[str]:
    data = deb.read_bytes()
    assert data.startswith(b"!<arch>\n")
    pos, names = 8, []
    while pos < len(data):
        header = data[pos : pos + 60]
        names.append(header[:16].decode().strip().rstrip("/"))
        size = int(header[48:58].decode().strip())
        pos += 60 + size + (size & 1)
    return names


def _data_members(deb: Path) -> dict[str, tarfile.TarInfo]:
    raw = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(raw.stdout)) as tf:
        return {m.name: m for m in tf.getmembers()}


# --- .debs ------------------------------------------------------------------------------------


def test_deb_keeps_owner_group_and_mode(tmp_path: Path) -> None:
    spec = DebSpec(
        "ocipatch-tool",
        "1:2.0-1",
        arch="amd64",
        depends=["libc6 (>= 2.36)", "ocipatch-base"],
        files=[
            SHADOW_FILE,
            DebFile("/etc/ocipatch-tool.conf", "a=1\n"),
            DebFile("/usr/share/ocipatch", kind="dir", mode=0o750),
            DebFile("/usr/bin/ocipatch-t", kind="symlink", target="ocipatch-tool"),
        ],
        conffiles=["/etc/ocipatch-tool.conf"],
        scripts={"postinst": "#!/bin/sh\necho hi\n"},
        extra_fields={"Source": "ocipatch-src (2.0-1)"},
    )
    deb = build_deb(spec, tmp_path)
    assert deb.name == "ocipatch-tool_2.0-1_amd64.deb"  # no epoch in the file name
    m = _data_members(deb)
    tool = m["./usr/bin/ocipatch-tool"]
    assert (tool.uid, tool.gid, tool.mode) == (0, 42, 0o2755)
    assert m["./usr/share/ocipatch"].mode == 0o750
    assert m["./usr/bin/ocipatch-t"].linkname == "ocipatch-tool"
    assert all(x.mtime == 1700000000 for x in m.values())
    control = deb_control(deb)
    assert "Version: 1:2.0-1\n" in control
    assert "Depends: libc6 (>= 2.36), ocipatch-base\n" in control
    assert "Source: ocipatch-src (2.0-1)\n" in control
    info = subprocess.run(["dpkg-deb", "--info", str(deb)], capture_output=True, text=True)
    assert "conffiles" in info.stdout and "postinst" in info.stdout and "md5sums" in info.stdout


@pytest.mark.parametrize(
    ("compression", "member"),
    [
        ("xz", "data.tar.xz"),
        ("zstd", "data.tar.zst"),
        ("gzip", "data.tar.gz"),
        ("none", "data.tar"),
    ],
)
def test_deb_compression(compression: str, member: str, tmp_path: Path) -> None:
    spec = DebSpec("ocipatch-c", "1.0", files=[SHADOW_FILE], compression=compression)  # type: ignore[arg-type]
    deb = build_deb(spec, tmp_path)
    assert _ar_members(deb) == ["debian-binary", _control_member(compression), member]
    assert _data_members(deb)["./usr/bin/ocipatch-tool"].gid == 42


def _control_member(compression: str) -> str:
    return {"xz": "control.tar.xz", "zstd": "control.tar.zst", "gzip": "control.tar.gz",
            "none": "control.tar"}[compression]  # fmt: skip


def test_deb_is_reproducible(tmp_path: Path) -> None:
    spec = DebSpec("ocipatch-r", "1.0", files=[SHADOW_FILE], scripts={"postinst": "#!/bin/sh\n"})
    a = build_deb(spec, tmp_path / "a").read_bytes()
    b = build_deb(spec, tmp_path / "b").read_bytes()
    assert a == b


def test_deb_cli_as_unprivileged_user_uses_fakeroot() -> None:
    out = Path(tempfile.mkdtemp(prefix="ocipatch-debcli-", dir="/tmp"))
    try:
        os.chown(out, UNPRIVILEGED_UID, UNPRIVILEGED_UID)
        tool = Path(__file__).resolve().parents[1] / "tools/aptrepo.py"
        proc = subprocess.run(
            ["setpriv", f"--reuid={UNPRIVILEGED_UID}", f"--regid={UNPRIVILEGED_UID}",
             "--clear-groups", "env", "-i", "PATH=/usr/bin:/bin", "HOME=/tmp",
             sys.executable, str(tool), "deb", "--name", "ocipatch-cli", "--version", "1.0",
             "--file", "/usr/bin/ocipatch-cli:2755:0:42:#!/bin/sh\\necho cli\\n",
             "--out", str(out)],
            capture_output=True, text=True, cwd="/", check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        deb = Path(proc.stdout.strip())
        m = _data_members(deb)["./usr/bin/ocipatch-cli"]
        assert (m.uid, m.gid, m.mode) == (0, 42, 0o2755)
    finally:
        subprocess.run(["rm", "-rf", str(out)], check=False)


# --- the repository ---------------------------------------------------------------------------


def _gpgv(keyring: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["gpgv", "--keyring", str(keyring), *map(str, files)], capture_output=True, text=True
    )


def _release_entries(release: str, algo: str) -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    lines = release.splitlines()
    start = lines.index(f"{algo}:") + 1
    for ln in lines[start:]:
        if not ln.startswith(" "):
            break
        digest, size, name = ln.split()
        out[name] = (digest, int(size))
    return out


def test_pool_repo_indexes_and_signatures(tmp_path: Path, apt_signer: Signer) -> None:
    debs = [
        build_deb(DebSpec("ocipatch-a", "1.0"), tmp_path / "debs"),
        build_deb(DebSpec("ocipatch-a", "2.0"), tmp_path / "debs"),
        build_deb(DebSpec("libocipatch1", "1.0", arch="amd64"), tmp_path / "debs"),
    ]
    repo = build_repo(tmp_path / "repo", debs, signer=apt_signer, suite="s1", by_hash=True)
    dists = repo.root / "dists/s1"
    assert repo.architectures == ["amd64"]
    assert (repo.root / "pool/main/libo/libocipatch1/libocipatch1_1.0_amd64.deb").exists()
    release = (dists / "Release").read_text()
    assert "Suite: s1\n" in release and "Acquire-By-Hash: yes\n" in release
    sha = _release_entries(release, "SHA256")
    assert set(sha) == {f"main/binary-amd64/Packages{ext}" for ext in ("", ".gz", ".xz")}
    for name, (digest, size) in sha.items():
        data = (dists / name).read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (digest, size)
        assert (dists / name).parent.joinpath("by-hash/SHA256", digest).read_bytes() == data
    for name, (digest, _size) in _release_entries(release, "MD5Sum").items():
        assert hashlib.md5((dists / name).read_bytes()).hexdigest() == digest
    packages = (dists / "main/binary-amd64/Packages").read_bytes()
    assert gzip.decompress((dists / "main/binary-amd64/Packages.gz").read_bytes()) == packages
    assert lzma.decompress((dists / "main/binary-amd64/Packages.xz").read_bytes()) == packages
    stanzas = packages.decode().split("\n\n")
    assert [s.splitlines()[0] for s in stanzas] == [
        "Package: libocipatch1", "Package: ocipatch-a", "Package: ocipatch-a"
    ]  # fmt: skip
    for stanza in stanzas:
        fields = dict(ln.split(": ", 1) for ln in stanza.splitlines() if ": " in ln)
        deb = (repo.root / fields["Filename"]).read_bytes()
        assert fields["SHA256"] == hashlib.sha256(deb).hexdigest()
        assert int(fields["Size"]) == len(deb)
    assert _gpgv(repo.keyring, dists / "InRelease").returncode == 0
    assert _gpgv(repo.keyring, dists / "Release.gpg", dists / "Release").returncode == 0
    (dists / "Release").write_text(release.replace("s1", "s2"))
    assert _gpgv(repo.keyring, dists / "Release.gpg", dists / "Release").returncode != 0


def test_flat_repo(tmp_path: Path, apt_signer: Signer) -> None:
    deb = build_deb(DebSpec("ocipatch-flat", "1.0"), tmp_path / "debs")
    repo = build_repo(tmp_path / "repo", [deb], signer=apt_signer, flat=True)
    assert repo.suite == "./"
    assert {p.name for p in repo.root.iterdir()} >= {
        "Packages", "Packages.gz", "Packages.xz", "Release", "InRelease", "Release.gpg",
        "ocipatch-flat_1.0_all.deb",
    }  # fmt: skip
    assert "Filename: ocipatch-flat_1.0_all.deb" in (repo.root / "Packages").read_text()
    assert "Components" not in repo.sources_text("http://x", "/k.gpg")
    assert _gpgv(repo.keyring, repo.root / "InRelease").returncode == 0


def test_repo_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        aptrepo_main(["deb", "--name", "ocipatch-cli", "--version", "1.0", "--out", str(tmp_path)])
        == 0
    )
    deb = Path(capsys.readouterr().out.strip())
    assert aptrepo_main(["repo", "--out", str(tmp_path / "repo"), "--by-hash", str(deb)]) == 0
    keyring = Path(capsys.readouterr().out.strip())
    assert keyring == tmp_path / "repo/archive-keyring.gpg"
    assert _gpgv(keyring, tmp_path / "repo/dists/ocipatch-test/InRelease").returncode == 0


def test_server_serves_and_tampers(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a/file").write_bytes(b"real")
    with RepoServer(tmp_path) as server:

        def get(path: str) -> bytes:
            with urllib.request.urlopen(f"{server.url}/{path}", timeout=5) as r:
                return bytes(r.read())

        assert get("a/file") == b"real"
        server.tamper("a/file", b"fake")
        assert get("a/file") == b"fake"
        server.tamper("/a/file", lambda b: b.upper())
        assert get("a/file") == b"REAL"
        server.untamper()
        assert get("a/file") == b"real"
        with pytest.raises(urllib.error.HTTPError):
            get("missing")
        assert "GET /a/file" in server.requests


# --- apt-get against it, inside the sandboxes -------------------------------------------------


def _packages(name_suffix: str = "") -> list[DebSpec]:
    base = DebSpec(
        "ocipatch-base",
        "1.0",
        files=[DebFile("/usr/share/ocipatch-base/data", "base\n")],
    )
    tool = DebSpec(
        "ocipatch-tool",
        "2.0",
        depends=["ocipatch-base (>= 1.0)"],
        files=[SHADOW_FILE, DebFile("/etc/ocipatch-tool.conf", "a=1\n", mode=0o640, gid=42)],
        conffiles=["/etc/ocipatch-tool.conf"],
        scripts={"postinst": "#!/bin/sh\nset -e\nchgrp shadow /etc/ocipatch-tool.conf\n"},
        compression="zstd",
    )
    return [base, tool]


def _apt(repo: ServedRepo, *args: str) -> str:
    opts = " ".join([*APT_NO_PRIVILEGE_DROP, *repo.apt_options()])
    return f"apt-get {opts} {' '.join(args)}"


def _apt_spec(rootfs: Path, repo: ServedRepo, script: str) -> RunSpec:
    return RunSpec(rootfs, ["sh", "-c", script], env=apt_env(), timeout=300)


APT_CASES = [("bwrap", None), ("bwrap", UNPRIVILEGED_UID), ("proot", UNPRIVILEGED_UID)]


@pytest.mark.parametrize(
    ("backend", "user"), APT_CASES, ids=["bwrap-root", "bwrap-nobody", "proot-nobody"]
)
def test_apt_install_from_local_repo(
    backend: str,
    user: int | None,
    apt_repo_factory: Callable[..., ServedRepo],
    debian_rootfs: Callable[..., Path],
) -> None:
    repo = apt_repo_factory(_packages(), by_hash=True)
    rootfs = debian_rootfs(owner=user)
    repo.write_sources(rootfs)
    script = " && ".join([
        _apt(repo, "update"),
        _apt(repo, "install", "-y", "--no-install-recommends", "ocipatch-tool"),
        "dpkg-query -W -f='${Package} ${Version} ${Status}\\n' ocipatch-base ocipatch-tool",
    ])  # fmt: skip
    r = run_in_sandbox(backend, _apt_spec(rootfs, repo, script), user=user)
    assert r.returncode == 0, r.stdout
    assert "ocipatch-base 1.0 install ok installed" in r.stdout
    assert "ocipatch-tool 2.0 install ok installed" in r.stdout
    assert "by-hash/SHA256/" in " ".join(repo.server.requests)  # apt took the by-hash path
    tool = rootfs / "usr/bin/ocipatch-tool"
    assert tool.stat().st_mode & 0o7777 == 0o2755
    assert (rootfs / "etc/ocipatch-tool.conf").read_text() == "a=1\n"


def _update_and_install(
    repo: ServedRepo, rootfs: Path, backend: str = "bwrap"
) -> subprocess.CompletedProcess[str]:
    script = " && ".join([
        _apt(repo, "update"),
        _apt(repo, "install", "-y", "--no-install-recommends", "ocipatch-tool"),
    ])  # fmt: skip
    return run_in_sandbox(backend, _apt_spec(rootfs, repo, script))


@pytest.mark.parametrize("backend", ["bwrap", "proot"])
def test_tampered_deb_is_refused(
    backend: str,
    apt_repo_factory: Callable[..., ServedRepo],
    debian_rootfs: Callable[..., Path],
) -> None:
    repo = apt_repo_factory(_packages())
    rootfs = debian_rootfs()
    repo.write_sources(rootfs)
    deb = "pool/main/o/ocipatch-tool/ocipatch-tool_2.0_all.deb"
    repo.tamper(deb, lambda b: b[:-64] + bytes(64))  # same size, other bytes
    r = _update_and_install(repo, rootfs, backend)
    assert r.returncode != 0
    assert "Hash Sum mismatch" in r.stdout, r.stdout
    assert not (rootfs / "usr/bin/ocipatch-tool").exists()


def test_tampered_packages_is_refused(
    apt_repo_factory: Callable[..., ServedRepo], debian_rootfs: Callable[..., Path]
) -> None:
    repo = apt_repo_factory(_packages())
    rootfs = debian_rootfs()
    repo.write_sources(rootfs)
    index = "dists/ocipatch-test/main/binary-amd64/Packages"

    def evil(text: bytes) -> bytes:
        return text.replace(b"Version: 2.0", b"Version: 9.0")

    repo.tamper(index, evil)
    repo.tamper(index + ".gz", lambda _b: gzip.compress(evil(_raw(repo, index)), mtime=0))
    repo.tamper(index + ".xz", lambda _b: lzma.compress(evil(_raw(repo, index))))
    r = _update_and_install(repo, rootfs)
    assert r.returncode != 0
    assert "Hash Sum mismatch" in r.stdout or "File has unexpected size" in r.stdout, r.stdout


def _raw(repo: ServedRepo, rel: str) -> bytes:
    return (repo.root / rel).read_bytes()


def test_tampered_or_foreign_signature_is_refused(
    apt_repo_factory: Callable[..., ServedRepo], debian_rootfs: Callable[..., Path]
) -> None:
    repo = apt_repo_factory(_packages())
    rootfs = debian_rootfs()
    repo.write_sources(rootfs)
    inrelease = "dists/ocipatch-test/InRelease"
    repo.tamper(inrelease, lambda b: b.replace(b"Label: ocipatch-test", b"Label: evil-archive"))
    repo.tamper("dists/ocipatch-test/Release.gpg", b"")
    r = _update_and_install(repo, rootfs)
    assert r.returncode != 0
    assert "BADSIG" in r.stdout or "signatures were invalid" in r.stdout, r.stdout
    # Untampered, but signed by a key the rootfs does not trust.
    repo.server.untamper()
    with Signer() as other:
        (rootfs / "etc/apt/keyrings/ocipatch-test.gpg").write_bytes(other.keyring.read_bytes())
    r = _update_and_install(repo, rootfs)
    assert r.returncode != 0
    assert "NO_PUBKEY" in r.stdout, r.stdout


# --- tools/debian_rootfs.py -------------------------------------------------------------------

HOST_SOURCES = """\
Types: deb
# a comment inside the stanza
URIs: http://mirror.invalid/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.invalid/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Enabled: no
Types: deb
URIs: http://disabled.invalid/debian
Suites: bookworm
"""


def test_archive_sources_from_host_deb822(tmp_path: Path) -> None:
    (tmp_path / "debian.sources").write_text(HOST_SOURCES)
    (tmp_path / "other.list").write_text("deb http://ignored.invalid/ bookworm main\n")
    assert len(parse_deb822_sources(HOST_SOURCES)) == 2
    only_base = archive_sources("bookworm", sources_dir=tmp_path)
    assert only_base == (
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    full = archive_sources("bookworm", updates=True, sources_dir=tmp_path)
    assert "Suites: bookworm-updates\n" in full and "Suites: bookworm-security\n" in full
    assert "debian-security" in full and "disabled.invalid" not in full
    with pytest.raises(RootfsBuildError, match="no apt source for suite 'trixie'"):
        archive_sources("trixie", sources_dir=tmp_path)


def test_minbase_tarball_is_cached_and_clean(debian_rootfs_tar: Path) -> None:
    assert build_rootfs_tarball() == debian_rootfs_tar  # second call: the cache, no rebuild
    with tarfile.open(debian_rootfs_tar) as tf:
        names = set(tf.getnames())
        members = tf.getmembers()
    assert "./etc/resolv.conf" not in names and "./etc/hostname" not in names
    assert not [m.name for m in members if m.ischr() or m.isblk()]  # no device nodes
    assert "./var/lib/dpkg/status" in names and "./usr/bin/apt-get" in names
    assert max(m.mtime for m in members) <= 1700000000  # SOURCE_DATE_EPOCH clamps


@pytest.mark.slow
def test_minbase_tarball_is_reproducible(debian_rootfs_tar: Path, tmp_path: Path) -> None:
    again = build_rootfs_tarball(cache_dir=tmp_path)
    assert again.name == debian_rootfs_tar.name
    assert again.read_bytes() == debian_rootfs_tar.read_bytes()
