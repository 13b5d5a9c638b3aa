"""Fuzzing layer tars: unpack (to disk) and the merged-view indexer read generated tar streams
(every member type, whiteouts, escaping names and links, PAX/GNU headers) and byte-mutated ones.

Property: a value or an OcipatchError (ImageFormatError, UnsafeArchiveError), and nothing
created, changed or deleted outside the root -- symlinks point at a real directory beside it."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from hypothesis import example, given
from hypothesis import strategies as st

from ocipatch.errors import OcipatchError
from ocipatch.fs.merged import MergedView
from ocipatch.fs.unpack import unpack
from tests.fuzz.budget import counted, fuzz_settings, mutated_bytes

BOX = Path(tempfile.mkdtemp(prefix="ocipatch-fuzz-tar-"))
ROOT = BOX / "root"
OUTSIDE = BOX / "outside"


@dataclass(frozen=True)
class BytesLayer:
    digest: str
    data: bytes

    def open_tar(self) -> BinaryIO:
        return io.BytesIO(self.data)


_PARTS = ["a", "b", "etc", "..", ".", "", ".wh.a", ".wh..wh..opq", ".wh..wh.plnk", "é", "x" * 120]
_LONG = "y" * 256  # one byte over NAME_MAX
names = (
    st.lists(st.sampled_from([*_PARTS, _LONG]), min_size=1, max_size=4)
    .map("/".join)
    .flatmap(lambda n: st.sampled_from([n, "/" + n, "./" + n]))
)
links = names | st.sampled_from(
    [str(OUTSIDE), str(OUTSIDE / "sentinel"), "../outside", "/", "..", "", _LONG, "z/" * 2100]
)
_TYPES = [
    tarfile.REGTYPE,
    tarfile.AREGTYPE,
    tarfile.DIRTYPE,
    tarfile.SYMTYPE,
    tarfile.LNKTYPE,
    tarfile.FIFOTYPE,
    tarfile.CHRTYPE,
    tarfile.BLKTYPE,
    tarfile.CONTTYPE,
    b"V",
    b"Z",
]
_TIMES = [0, 1700000000, -1, 2**33, 2**63, 10**30]


@st.composite
def member(draw: st.DrawFn) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(draw(names))
    info.type = draw(st.sampled_from(_TYPES))
    data = draw(st.binary(max_size=64)) if info.type in (tarfile.REGTYPE, b"0") else b""
    info.size = len(data)
    info.linkname = draw(links) if info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    info.mode = draw(st.sampled_from([0o644, 0o755, 0o4755, 0o000, 0o7777]))
    info.uid = draw(st.sampled_from([0, 1000, 2**21, 2**32]))
    info.gid = draw(st.sampled_from([0, 42]))
    info.mtime = draw(st.sampled_from(_TIMES))
    info.devmajor, info.devminor = draw(st.sampled_from([(0, 0), (1, 3), (2**20, 2**20)]))
    if draw(st.booleans()):
        info.pax_headers = {"SCHILY.xattr.user.x": draw(st.text(max_size=8))}
    return info, data


def build_tar(members: list[tuple[tarfile.TarInfo, bytes]], fmt: int) -> bytes | None:
    out = io.BytesIO()
    try:
        with tarfile.open(fileobj=out, mode="w", format=fmt) as tf:
            for info, data in members:
                tf.addfile(info, io.BytesIO(data))
    except (ValueError, OverflowError, UnicodeError, tarfile.TarError):
        return None  # tarfile cannot write it in this format: no input
    return out.getvalue()


tars = st.builds(
    build_tar,
    st.lists(member(), max_size=8),
    st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]),
).filter(lambda b: b is not None)

SEEDS = [
    t
    for t in (
        build_tar(
            [
                (tarfile.TarInfo("etc"), b""),
                (tarfile.TarInfo("etc/os-release"), b"ID=debian\nVERSION_ID=12\n"),
                (tarfile.TarInfo("var/lib/dpkg/status"), b"Package: a\nVersion: 1\n"),
            ],
            fmt,
        )
        for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT)
    )
    if t is not None
]


def _tar_with_pax_mtime(mtime: str) -> bytes:
    """A file whose PAX mtime no file system holds (os.utime raised OverflowError)."""
    info = tarfile.TarInfo("etc/f")
    info.pax_headers = {"mtime": mtime}
    tar = build_tar([(info, b"")], tarfile.PAX_FORMAT)
    assert tar is not None
    return tar


def _tar_with_device(major: int, minor: int) -> bytes:
    info = tarfile.TarInfo("dev/x")
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, major, minor
    tar = build_tar([(info, b"")], tarfile.GNU_FORMAT)
    assert tar is not None
    return tar


def _tar_with_symlink(name: str, target: str) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    tar = build_tar([(info, b"")], tarfile.PAX_FORMAT)
    assert tar is not None
    return tar


def _snapshot(path: Path) -> dict[str, tuple[int, bytes | str]]:
    out: dict[str, tuple[int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st_ = p.lstat()
            body: bytes | str = os.readlink(p) if p.is_symlink() else b""
            if p.is_file() and not p.is_symlink():
                body = p.read_bytes()
            out[str(p.relative_to(path))] = (st_.st_mode, body)
    return out


def _reset() -> None:
    if ROOT.exists():
        for dirpath, dirnames, _ in os.walk(ROOT):  # unpack may leave 0000 directories
            for n in dirnames:
                p = Path(dirpath) / n
                if not p.is_symlink():
                    p.chmod(0o700)
        shutil.rmtree(ROOT)
    shutil.rmtree(OUTSIDE, ignore_errors=True)
    OUTSIDE.mkdir()
    (OUTSIDE / "sentinel").write_bytes(b"keep me\n")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Skipped members are logged as warnings: thousands of lines under fuzzing."""
    logger = logging.getLogger("ocipatch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_layers(blobs: list[bytes], privileged: bool = False) -> None:
    with _quiet():
        _check_layers(blobs, privileged)


def _check_layers(blobs: list[bytes], privileged: bool) -> None:
    layers = [BytesLayer(f"sha256:{i:064x}", b) for i, b in enumerate(blobs)]
    _reset()
    before = _snapshot(OUTSIDE)
    indexed = MergedView(layers)  # indexed by the unpack itself, in the same pass
    with contextlib.suppress(OcipatchError):
        unpack(layers, ROOT, privileged=privileged, on_index=indexed.add_index)
        list(indexed.walk())
    assert sorted(os.listdir(BOX)) == ["outside", "root"], "nothing created beside the root"
    assert _snapshot(OUTSIDE) == before, "nothing outside the root changed"
    try:
        view = MergedView(layers)
        files = [e.path for e in view.walk() if e.type in ("file", "hardlink")]
        view.read_files(files)
        view.listdir("/")
        view.read_file("etc/os-release")
    except OcipatchError:
        pass


@fuzz_settings()
@given(
    st.lists(tars, min_size=1, max_size=2), st.booleans() if os.geteuid() == 0 else st.just(False)
)
@example([_tar_with_pax_mtime("1e30")], False)
@example([_tar_with_pax_mtime("nan")], False)
@example([_tar_with_pax_mtime("-inf")], False)
# mknod: EINVAL for a device number beyond Linux's 12-bit major / 20-bit minor.
@example([_tar_with_device(2**20, 2**20)], True)
# symlink(2): ENOENT for an empty target, ENAMETOOLONG for a 256-byte component.
@example([_tar_with_symlink("a", "")], False)
@example([_tar_with_symlink(_LONG, "a")], False)
@example([_tar_with_symlink("a", _LONG)], False)
@example([_tar_with_symlink(f"{_LONG}/.wh.a", "a")], False)  # lstat: ENAMETOOLONG
@counted("layer tars (generated members)")
def test_unpack_generated_tars(blobs: list[bytes], privileged: bool) -> None:
    check_layers(blobs, privileged)


@fuzz_settings()
@given(
    st.lists(
        mutated_bytes(SEEDS) | tars.flatmap(lambda t: mutated_bytes([t])), min_size=1, max_size=2
    )
)
@example([b""])
@counted("layer tars (mutated bytes)")
def test_unpack_mutated_tars(blobs: list[bytes]) -> None:
    check_layers(blobs)
