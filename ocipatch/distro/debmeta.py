"""What the packages say about their files: owner, group and mode from each .deb's data.tar,
and the local overrides in dpkg's statoverride file.

A sandbox that is not really root cannot chown, so the patch layer takes ownership from here
rather than from the disk: a root:shadow 2755 file stays root:shadow 2755.
"""

from __future__ import annotations

import io
import os
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import zstandard
from debian.arfile import ArError, ArFile
from debian.debfile import DebError, DebFile

from ocipatch.errors import IntegrityError


@dataclass(frozen=True)
class FileMeta:
    uid: int
    gid: int
    mode: int  # permission bits incl. setuid/setgid/sticky


def open_data_tar(deb: Path) -> tarfile.TarFile:
    """The data.tar of a .deb as a streaming TarFile. zstd members (Ubuntu's) are decompressed
    with the zstandard library: python-debian would need the unzstd program for them."""
    try:
        ar = ArFile(str(deb))
        zst = next((n for n in ar.getnames() if n == "data.tar.zst"), None)
        if zst is not None:
            member = ar.getmember(zst)
            stream = zstandard.ZstdDecompressor().stream_reader(member)  # type: ignore[arg-type]
            return tarfile.open(fileobj=stream, mode="r|")
        return DebFile(str(deb)).data.tgz()
    except (
        DebError,
        ArError,
        OSError,
        EOFError,
        ValueError,
        tarfile.TarError,
        zstandard.ZstdError,
    ) as e:
        raise IntegrityError(f"cannot read package {deb.name}: {e}") from None


def control_files(deb: Path) -> dict[str, bytes]:
    """The files of a .deb's control area (control, md5sums, conffiles, scripts...) by name,
    whatever its compression (zstd with the zstandard library)."""
    try:
        ar = ArFile(str(deb))
        name = next((n for n in ar.getnames() if n.startswith("control.tar")), None)
        if name is None:
            raise IntegrityError(f"package {deb.name} has no control area")
        raw = ar.getmember(name).read()
        if name.endswith(".zst"):
            raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
        out: dict[str, bytes] = {}
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:*") as tar:
            for m in tar:
                f = tar.extractfile(m) if m.isreg() else None
                if f is not None:
                    out[m.name.removeprefix("./")] = f.read()
        return out
    except (ArError, OSError, EOFError, ValueError, tarfile.TarError, zstandard.ZstdError) as e:
        raise IntegrityError(f"cannot read package {deb.name}: {e}") from None


def _one_deb_meta(deb: Path) -> dict[str, FileMeta]:
    out: dict[str, FileMeta] = {}
    with open_data_tar(deb) as tar:
        for m in tar:
            name = m.name[2:] if m.name.startswith("./") else m.name.lstrip("/")
            name = name.rstrip("/")
            if name and name != ".":
                out[name] = FileMeta(m.uid, m.gid, m.mode & 0o7777)
    return out


def deb_file_meta(debs: list[Path], memo: DebMetaMemo | None = None) -> dict[str, FileMeta]:
    """path (relative, no leading ./) -> metadata, over every file of the given .debs (a later
    package wins a path two ship). Decompression releases the GIL: packages are read in
    parallel. With memo, packages it already read are not read again."""
    memo = memo if memo is not None else DebMetaMemo()
    out: dict[str, FileMeta] = {}
    for meta in memo.read(debs):
        out.update(meta)
    return out


class DebMetaMemo:
    """Per-package metadata read once, by file identity (a hard link is the same package):
    a thread can read the packages of a plan while dpkg installs them."""

    def __init__(self) -> None:
        self._done: dict[tuple[int, int, int], dict[str, FileMeta]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(deb: Path) -> tuple[int, int, int]:
        st = deb.stat()
        return (st.st_dev, st.st_ino, st.st_size)

    def read(self, debs: list[Path]) -> list[dict[str, FileMeta]]:
        """Each package's metadata, in the order given."""
        keys = [self._key(d) for d in debs]
        with self._lock:
            todo = {k: d for k, d in zip(keys, debs, strict=True) if k not in self._done}
        if todo:
            with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
                read = dict(zip(todo, pool.map(_one_deb_meta, todo.values()), strict=True))
            with self._lock:
                self._done.update(read)
        with self._lock:
            return [self._done[k] for k in keys]


def _id(name: str, table: dict[str, int]) -> int | None:
    if name.startswith("#"):
        return int(name[1:])
    return table.get(name)


def read_statoverride(rootfs: Path) -> dict[str, FileMeta]:
    """dpkg-statoverride entries ("user group mode path"), names resolved with the image's own
    passwd and group files (never the host's)."""
    path = rootfs / "var/lib/dpkg/statoverride"
    if not path.is_file():
        return {}
    users = _table(rootfs / "etc/passwd")
    groups = _table(rootfs / "etc/group")
    out: dict[str, FileMeta] = {}
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split(None, 3)
        if len(parts) != 4:
            continue
        uid, gid = _id(parts[0], users), _id(parts[1], groups)
        if uid is None or gid is None:
            continue
        try:
            mode = int(parts[2], 8)
        except ValueError:
            continue
        out[parts[3].lstrip("/")] = FileMeta(uid, gid, mode)
    return out


def _table(path: Path) -> dict[str, int]:
    table: dict[str, int] = {}
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            f = line.split(":")
            if len(f) >= 3 and f[2].isdigit():
                table[f[0]] = int(f[2])
    return table
