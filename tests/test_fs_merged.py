"""MergedView over real synthetic tar layers: whiteouts, opaque dirs, symlinks, hardlinks, batches.

The helpers at the top (MemLayer, tar_of, F/D/S/H/WH/OPQ, three_layers) are shared with the other
tests/test_fs_* modules.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pytest
import zstandard

from ocipatch.errors import ImageFormatError, UnsafeArchiveError
from ocipatch.fs.compress import open_decompressed
from ocipatch.fs.merged import MergedView, TarLayer

MTIME = 1_700_000_000


# -- helpers shared by the tests/test_fs_* modules ------------------------------------------------
@dataclass
class M:
    """A tar member to write."""

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = MTIME
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    pax: dict[str, str] = field(default_factory=dict)


def F(name: str, data: bytes | str = b"", mode: int = 0o644, uid: int = 0, gid: int = 0) -> M:
    raw = data.encode() if isinstance(data, str) else data
    return M(name, tarfile.REGTYPE, raw, mode, uid, gid)


def D(name: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> M:
    return M(name, tarfile.DIRTYPE, b"", mode, uid, gid)


def S(name: str, target: str) -> M:
    return M(name, tarfile.SYMTYPE, mode=0o777, linkname=target)


def H(name: str, target: str) -> M:
    return M(name, tarfile.LNKTYPE, linkname=target)


def WH(parent: str, name: str) -> M:
    """A whiteout, spelled literally (independent of the module under test)."""
    return M(f"{parent}/.wh.{name}" if parent else f".wh.{name}", mode=0)


def OPQ(directory: str) -> M:
    return M(f"{directory}/.wh..wh..opq" if directory else ".wh..wh..opq", mode=0)


def tar_of(*members: M) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type, info.mode, info.uid, info.gid = m.type, m.mode, m.uid, m.gid
            info.mtime, info.linkname = m.mtime, m.linkname
            info.devmajor, info.devminor = m.devmajor, m.devminor
            info.pax_headers = dict(m.pax)
            info.size = len(m.data) if m.type == tarfile.REGTYPE else 0
            t.addfile(info, io.BytesIO(m.data) if m.type == tarfile.REGTYPE else None)
    return buf.getvalue()


class NonSeekable:
    """What a registry blob looks like: read() and close(), nothing else."""

    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        return self._inner.read(n)

    def close(self) -> None:
        self.closed = True


class MemLayer:
    """A TarLayer over bytes (optionally compressed), counting how often it is streamed."""

    def __init__(self, data: bytes, compression: str = "none") -> None:
        self.data = data
        self.compression = compression
        self.digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.opened = 0

    def open_tar(self) -> BinaryIO:
        self.opened += 1
        return open_decompressed(NonSeekable(self.data), self.compression)  # type: ignore[arg-type]


def layer(*members: M) -> MemLayer:
    return MemLayer(tar_of(*members))


OS_RELEASE_1 = "ID=debian\nVERSION_ID=12\n"
OS_RELEASE_2 = "ID=debian\nVERSION_ID=12.5\n"


def three_layers() -> list[MemLayer]:
    """A base layer and two upper layers exercising every whiteout and link rule."""
    base = layer(
        D("etc"),
        D("usr"),
        D("usr/lib"),
        F("usr/lib/os-release", OS_RELEASE_1),
        S("etc/os-release", "../usr/lib/os-release"),
        S("etc/alt", "/usr/lib/os-release"),
        S("lib", "usr/lib"),
        D("var/lib/dpkg", mode=0o755),  # parents var, var/lib not listed: implicit
        F("var/lib/dpkg/status", "base status\n"),
        D("var/lib/dpkg/status.d"),
        F("var/lib/dpkg/status.d/base", "Package: base\n"),
        F("var/lib/dpkg/status.d/libc6", "Package: libc6\nVersion: 1\n"),
        D("opt"),
        D("opt/app"),
        F("opt/app/a.txt", "a"),
        D("opt/app/sub"),
        F("opt/app/sub/deep.txt", "deep"),
        D("data"),
        F("data/keep", "keep"),
        F("data/gone", "gone"),
        D("data/gonedir"),
        F("data/gonedir/x", "x"),
        D("bin"),
        F("bin/busybox", "BUSYBOX", mode=0o755),
        H("bin/sh", "bin/busybox"),
        D("usr/share/doc"),
        F("usr/share/doc/readme", "doc"),
        F("usr/bin/passwd", "pw", mode=0o4755, uid=0, gid=0),
        F("etc/shadow", "sh", mode=0o640, uid=0, gid=42),
    )
    mid = layer(
        WH("data", "gone"),
        WH("data", "gonedir"),
        D("opt/app"),
        F("opt/app/new.txt", "new"),  # before the opaque marker of its own layer: must stay
        OPQ("opt/app"),
        F("var/lib/dpkg/status.d/libc6", "Package: libc6\nVersion: 2\n"),
        F("var/lib/dpkg/status.d/openssl", "Package: openssl\n"),
        F("usr/lib/os-release", OS_RELEASE_2),
        F("lib/extra.so", "EXTRA"),  # written through the symlink lib -> usr/lib
    )
    top = layer(
        F("var/lib/dpkg/status", "top status\n"),
        F("data/gone", "back"),  # re-added, then whited out in the same layer: stays
        WH("data", "gone"),
        WH("var/lib/dpkg/status.d", "base"),
        F("usr/share/doc", "now a file"),  # replaces a directory and its children
        H("usr/bin/sh2", "bin/busybox"),  # hardlink to a file of a lower layer
        S("loop1", "loop2"),
        S("loop2", "loop1"),
        D("data/keepdir"),
        F("data/keepdir/f", "f"),
    )
    return [base, mid, top]


EXPECTED_PATHS = {
    "bin", "bin/busybox", "bin/sh", "data", "data/gone", "data/keep", "data/keepdir",
    "data/keepdir/f", "etc", "etc/alt", "etc/os-release", "etc/shadow", "lib", "loop1", "loop2",
    "opt", "opt/app", "opt/app/new.txt", "usr", "usr/bin", "usr/bin/passwd", "usr/bin/sh2",
    "usr/lib", "usr/lib/extra.so", "usr/lib/os-release", "usr/share", "usr/share/doc", "var",
    "var/lib", "var/lib/dpkg", "var/lib/dpkg/status", "var/lib/dpkg/status.d",
    "var/lib/dpkg/status.d/libc6", "var/lib/dpkg/status.d/openssl",
}  # fmt: skip


# -- tests ----------------------------------------------------------------------------------------
def test_merged_tree_three_layers(tmp_path: Path) -> None:
    view = MergedView(three_layers(), tmp_path / "idx")
    paths = [e.path for e in view.walk()]
    assert set(paths) == EXPECTED_PATHS
    assert not any(".wh." in p for p in paths)
    # Sorted component-wise: every parent right before its subtree.
    assert paths == sorted(paths, key=lambda p: p.split("/"))


def test_symlinked_os_release() -> None:
    view = MergedView(three_layers())
    assert view.read_file("/etc/os-release") == OS_RELEASE_2.encode()
    assert view.read_file("etc/alt") == OS_RELEASE_2.encode()
    link = view.entry("/etc/os-release")
    assert link is not None and link.type == "symlink" and link.linkname == "../usr/lib/os-release"
    target = view.entry("/etc/os-release", follow_symlinks=True)
    assert target is not None and target.path == "usr/lib/os-release" and target.layer == 1
    # A path through a symlinked parent resolves like the kernel would.
    assert view.read_file("/lib/extra.so") == b"EXTRA"
    assert view.read_file("/usr/lib/extra.so") == b"EXTRA"
    assert view.listdir("/lib") == ["extra.so", "os-release"]


def test_whiteouts_and_opaque_dirs() -> None:
    view = MergedView(three_layers())
    assert view.read_file("data/gone") == b"back"
    assert not view.exists("data/gonedir") and not view.exists("data/gonedir/x")
    assert view.listdir("data") == ["gone", "keep", "keepdir"]
    assert view.listdir("/opt/app") == ["new.txt"]
    assert view.read_file("opt/app/a.txt") is None
    assert view.entry("opt/app/sub/deep.txt") is None
    # A file over a directory hides the directory's children.
    doc = view.entry("usr/share/doc")
    assert doc is not None and doc.type == "file" and doc.layer == 2
    assert not view.exists("usr/share/doc/readme")
    assert view.listdir("usr/share/doc") == []


def test_hardlinks() -> None:
    view = MergedView(three_layers())
    sh = view.entry("bin/sh")
    assert sh is not None and sh.type == "hardlink" and sh.linkname == "bin/busybox"
    assert sh.size == len(b"BUSYBOX") and sh.mode == 0o755
    assert view.read_files(["bin/sh", "/usr/bin/sh2", "bin/busybox"]) == {
        "bin/sh": b"BUSYBOX",
        "/usr/bin/sh2": b"BUSYBOX",
        "bin/busybox": b"BUSYBOX",
    }


def test_metadata_and_implicit_parents() -> None:
    view = MergedView(three_layers())
    pw = view.entry("usr/bin/passwd")
    assert pw is not None and (pw.mode, pw.uid, pw.gid, pw.mtime) == (0o4755, 0, 0, MTIME)
    shadow = view.entry("/etc/shadow")
    assert shadow is not None and (shadow.mode, shadow.gid) == (0o640, 42)
    var = view.entry("var")
    assert var is not None and var.type == "dir" and var.mode == 0o755
    root = view.entry("/")
    assert root is not None and root.type == "dir" and root.path == ""
    assert view.listdir("/")[:3] == ["bin", "data", "etc"]


def test_loops_and_absent_paths() -> None:
    view = MergedView(three_layers())
    assert not view.exists("loop1")
    assert view.read_file("loop1") is None
    loop = view.entry("loop1")
    assert loop is not None and loop.type == "symlink"
    assert view.entry("loop1", follow_symlinks=True) is None
    assert view.read_file("nope") is None and view.listdir("nope") == []
    assert view.read_file("/etc") is None  # a directory is not a file
    assert view.listdir("etc/os-release") == []


def test_package_db_reads_touch_only_needed_layers() -> None:
    layers = three_layers()
    view = MergedView(layers)  # no cache: every read streams the layer holding the file
    names = view.listdir("/var/lib/dpkg/status.d")
    assert names == ["libc6", "openssl"]
    assert [lay.opened for lay in layers] == [1, 1, 1]  # one indexing pass each
    got = view.read_files(f"/var/lib/dpkg/status.d/{n}" for n in names)
    assert got == {
        "/var/lib/dpkg/status.d/libc6": b"Package: libc6\nVersion: 2\n",
        "/var/lib/dpkg/status.d/openssl": b"Package: openssl\n",
    }
    assert [lay.opened for lay in layers] == [1, 2, 1]  # both files: one pass over layer 1
    assert view.read_file("/var/lib/dpkg/status") == b"top status\n"
    assert [lay.opened for lay in layers] == [1, 2, 2]


def test_package_db_is_captured_while_indexing(tmp_path: Path) -> None:
    """With a cache, dpkg's database and os-release are kept during the indexing pass: reading
    them streams no layer again, now or in a later run."""
    layers = three_layers()
    view = MergedView(layers, tmp_path / "idx")
    names = view.listdir("/var/lib/dpkg/status.d")
    got = view.read_files(f"/var/lib/dpkg/status.d/{n}" for n in names)
    assert got["/var/lib/dpkg/status.d/libc6"] == b"Package: libc6\nVersion: 2\n"
    assert view.read_file("/var/lib/dpkg/status") == b"top status\n"
    assert [lay.opened for lay in layers] == [1, 1, 1]
    again = three_layers()
    assert MergedView(again, tmp_path / "idx").read_file("/var/lib/dpkg/status") == b"top status\n"
    assert [lay.opened for lay in again] == [0, 0, 0]


def test_index_cache_is_reused(tmp_path: Path) -> None:
    cache = tmp_path / "idx"
    layers = three_layers()
    MergedView(layers, cache).exists("etc")
    files = sorted(cache.glob("*.index.json"))
    assert len(files) == 3
    doc = json.loads(files[0].read_text())
    assert doc["format"] == 1 and doc["digest"].startswith("sha256:")
    again = three_layers()
    view = MergedView(again, cache)
    assert set(e.path for e in view.walk()) == EXPECTED_PATHS
    assert [lay.opened for lay in again] == [0, 0, 0]
    # A corrupt cache file is rebuilt, not trusted.
    files[0].write_text("{not json")
    third = three_layers()
    assert set(e.path for e in MergedView(third, cache).walk()) == EXPECTED_PATHS
    assert sum(lay.opened for lay in third) == 1


def _gzip_members(data: bytes, parts: int) -> bytes:
    step = len(data) // parts + 1
    return b"".join(gzip.compress(data[i : i + step], mtime=0) for i in range(0, len(data), step))


def _zstd_frames(data: bytes, parts: int) -> bytes:
    step = len(data) // parts + 1
    cctx = zstandard.ZstdCompressor()
    return b"".join(cctx.compress(data[i : i + step]) for i in range(0, len(data), step))


def _plain(data: bytes, _parts: int) -> bytes:
    return data


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_compressed_layers(compression: str) -> None:
    """Multi-member gzip and multi-frame zstd layers read to their end."""
    raws = [lay.data for lay in three_layers()]
    enc = {"gzip": _gzip_members, "zstd": _zstd_frames, "none": _plain}[compression]
    layers = [MemLayer(enc(raw, 3), compression) for raw in raws]
    view = MergedView(layers)
    assert set(e.path for e in view.walk()) == EXPECTED_PATHS
    assert view.read_file("var/lib/dpkg/status") == b"top status\n"  # in the last part of top


def test_many_files_one_pass() -> None:
    members = [D("many")] + [F(f"many/f{i:05d}", f"content {i}") for i in range(3000)]
    lay = layer(*members)
    view = MergedView([lay])
    assert len(view.listdir("many")) == 3000
    got = view.read_files(f"many/f{i:05d}" for i in range(0, 3000, 7))
    assert len(got) == len(range(0, 3000, 7)) and got["many/f00007"] == b"content 7"
    assert lay.opened == 2


@pytest.mark.parametrize("data", [b"", b"\0" * 1024])
def test_empty_layers(data: bytes) -> None:
    view = MergedView([MemLayer(data), layer(F("a", "1"))])
    assert [e.path for e in view.walk()] == ["a"]


def test_duplicate_member_last_wins() -> None:
    view = MergedView([layer(F("a", "first"), F("a", "second"))])
    assert view.read_file("a") == b"second"


@pytest.mark.parametrize(
    "bad",
    [F("../escape", "x"), F("a/../../escape", "x"), H("h", "../../etc/passwd")],
    ids=["dotdot", "nested-dotdot", "hardlink-dotdot"],
)
def test_escaping_names_are_refused(bad: M) -> None:
    view = MergedView([layer(F("a", "1"), bad)])
    with pytest.raises(UnsafeArchiveError, match=r"outside the root|escapes the root"):
        view.exists("a")


def test_malformed_layers() -> None:
    with pytest.raises(ImageFormatError, match="not a readable tar"):
        MergedView([MemLayer(b"this is not a tar archive" * 40)]).exists("a")
    with pytest.raises(ImageFormatError, match="does not exist"):
        MergedView([layer(H("h", "missing"))]).exists("h")
    with pytest.raises(ImageFormatError, match="not a readable tar"):
        MergedView([MemLayer(gzip.compress(b"x" * 2000)[:-30], "gzip")]).exists("a")
    with pytest.raises(ImageFormatError, match="not a readable tar"):
        MergedView([MemLayer(b"not gzip at all" * 100, "gzip")]).exists("a")
    with pytest.raises(ImageFormatError, match="not a readable tar"):
        MergedView([MemLayer(b"not zstd at all" * 100, "zstd")]).exists("a")


def _check_protocol(layers: Sequence[TarLayer]) -> None:  # mypy: MemLayer is a TarLayer
    MergedView(layers)


_check_protocol([MemLayer(b"")])
