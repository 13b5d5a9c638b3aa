"""What the packages say about their files: owner, group, mode and mtime from each .deb's
data.tar, and the local overrides in dpkg's statoverride file.

A sandbox that is not really root cannot chown, so the patch layer takes ownership from here
rather than from the disk: a root:shadow 2755 file stays root:shadow 2755. Times come from here
too: a package's file keeps the date its data.tar gives it, whatever the installer (dpkg in a
sandbox, ocipatch's own unpacker) left on disk.
"""

from __future__ import annotations

import io
import os
import tarfile
import threading
from collections.abc import Callable, Container, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import zstandard
from debian.arfile import ArError, ArFile
from debian.debfile import DebError, DebFile

from ocipatch.errors import IntegrityError
from ocipatch.fs import rootpath
from ocipatch.fs import whiteout as wh
from ocipatch.fs.changes import Change
from ocipatch.fs.merged import MergedView

_DPKG_DIST = ".dpkg-dist"


@dataclass(frozen=True)
class FileMeta:
    uid: int
    gid: int
    mode: int  # permission bits incl. setuid/setgid/sticky
    # What the data.tar header says beyond owners (None/""/-1 for a statoverride entry):
    mtime: int | None = None
    kind: str = ""  # 'file' (a hard link member: its target's), 'dir', 'symlink'
    size: int = -1  # a file's size
    linkname: str = ""  # a symlink's target


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


def _member_path(raw: str) -> str:
    name = raw[2:] if raw.startswith("./") else raw.lstrip("/")
    return name.rstrip("/")


def _one_deb_meta(deb: Path) -> dict[str, FileMeta]:
    out: dict[str, FileMeta] = {}
    with open_data_tar(deb) as tar:
        for m in tar:
            name = _member_path(m.name)
            if not name or name == ".":
                continue
            meta = FileMeta(m.uid, m.gid, m.mode & 0o7777, int(m.mtime))
            if m.isreg():
                meta = replace(meta, kind="file", size=m.size)
            elif m.isdir():
                meta = replace(meta, kind="dir")
            elif m.issym():
                meta = replace(meta, kind="symlink", linkname=m.linkname)
            elif m.islnk():
                # The same inode as its target (written before it): the target's content.
                target = out.get(_member_path(m.linkname))
                meta = target if target is not None else replace(meta, kind="hardlink")
            out[name] = meta
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


def newest_mtime(debs: list[Path], memo: DebMetaMemo | None = None) -> int:
    """The newest data.tar mtime over the given packages (0 without any)."""
    memo = memo if memo is not None else DebMetaMemo()
    return max(
        (m.mtime or 0 for meta in memo.read(debs) for m in meta.values()),
        default=0,
    )


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


def with_package_metadata(
    changes: list[Change],
    rootfs: Path,
    debs: list[Path],
    memo: DebMetaMemo | None = None,
    *,
    replayed: Mapping[str, FileMeta] | None = None,
) -> list[Change]:
    """Owners, modes and times from the installed .debs (owners then statoverride), not from
    the disk of an unprivileged sandbox or the clock of the run.

    A file or symlink keeps its data.tar mtime while it is what the package shipped (same type,
    and same size or link target: a maintainer script may rewrite a file); a new conffile kept
    beside the image's as `.dpkg-dist` is the package's file too. A re-patch replays the
    previous patch layer (`replayed`, see replayed_meta): what it wrote and this run left as it
    was (the disk still has the time the replay set) keeps that layer's time. Everything else
    (directories, what scripts and dpkg wrote) has no time of its own: the layer time
    (docs/design.md). The disk's times are only compared, never written.
    """
    meta = by_real_path(deb_file_meta(debs, memo), rootfs)
    overrides = read_statoverride(rootfs)
    out = []
    for c in changes:
        m = overrides.get(c.path) or meta.get(c.path)
        if m is not None and c.type in ("file", "dir"):
            c = replace(c, uid=m.uid, gid=m.gid, mode=m.mode)
        elif m is not None and c.type == "symlink":
            c = replace(c, uid=m.uid, gid=m.gid)
        own = _shipped_time(c, meta)
        if own is None and replayed:
            own = _replayed_time(c, replayed)
        out.append(replace(c, mtime=own))
    return out


def by_real_path(meta: Mapping[str, FileMeta], rootfs: Path) -> dict[str, FileMeta]:
    """meta keyed by where each path is in the tree, parents resolved inside it as dpkg and
    debinstall write: in a merged-/usr image (lib -> usr/lib) a package's lib/x.so is
    usr/lib/x.so. A path shipped under its real name wins over one that lands there."""
    real_path = _resolver(rootfs)
    moved: dict[str, FileMeta] = {}
    out: dict[str, FileMeta] = {}
    for path, m in meta.items():
        real = real_path(path)
        (out if real == path else moved)[real] = m
    return moved | out


def _resolver(rootfs: Path) -> Callable[[str], str]:
    """path -> where it is in the tree (parents resolved, the name kept; a parent that is no
    directory there leaves the path as named)."""
    tree = rootpath.DiskTree(rootfs)
    parents: dict[str, str | None] = {"": ""}

    def real_path(path: str) -> str:
        parent, base = wh.split(path)
        if parent not in parents:
            try:
                parents[parent] = rootpath.resolve(tree, parent, need_dir=True)
            except rootpath.RootPathError:
                parents[parent] = None
        real_parent = parents[parent]
        return path if real_parent is None else wh.join(real_parent, base)

    return real_path


def packaged_paths(rootfs: Path) -> set[str]:
    """Where the files the package database lists are in the tree: dpkg's info/*.list, or a
    distroless image's status.d/*.md5sums."""
    listed: set[str] = set()
    info, status_d = rootfs / "var/lib/dpkg/info", rootfs / "var/lib/dpkg/status.d"
    for lst in sorted(info.glob("*.list")) if info.is_dir() else []:
        listed.update(ln.strip() for ln in lst.read_text(errors="replace").splitlines())
    for md5 in sorted(status_d.glob("*.md5sums")) if status_d.is_dir() else []:
        for ln in md5.read_text(errors="replace").splitlines():
            parts = ln.split(None, 1)
            listed.update(parts[1:])
    real_path = _resolver(rootfs)
    names = (wh.normalize(p) for p in listed)
    return {real_path(n) for n in names if n}


def newest_time(changes: list[Change], debs: list[Path], memo: DebMetaMemo | None = None) -> int:
    """The newest time the layer's own times come from: the installed packages' data.tar and
    the entries that keep a time (a replayed layer's included); 0 without any."""
    own = (c.mtime for c in changes if c.mtime is not None)
    return max(newest_mtime(debs, memo), *own, 0)


def replayed_meta(
    view: MergedView, first_replayed: int, packaged: Container[str]
) -> dict[str, FileMeta]:
    """The package files (packaged: see packaged_paths) that the layers from index
    first_replayed up (a previous patch layer that a re-patch replays) put in the merged tree,
    with the times their headers give them: a package's, if ocipatch dated that layer."""
    out: dict[str, FileMeta] = {}
    for e in view.walk() if first_replayed < len(view.layers) else ():
        if e.layer < first_replayed or e.type not in ("file", "hardlink", "symlink"):
            continue
        if e.path not in packaged and e.path.removesuffix(_DPKG_DIST) not in packaged:
            continue  # what scripts or dpkg made (a kept conffile's .dpkg-dist is a package's)
        kind = "symlink" if e.type == "symlink" else "file"
        out[e.path] = FileMeta(e.uid, e.gid, e.mode, e.mtime, kind, e.size, e.linkname)
    return out


def _shipped_time(c: Change, meta: Mapping[str, FileMeta]) -> int | None:
    m = meta.get(c.path)
    if m is None and c.type == "file" and c.path.endswith(_DPKG_DIST):
        m = meta.get(c.path[: -len(_DPKG_DIST)])
    return m.mtime if m is not None and _same_entry(c, m) else None


def _replayed_time(c: Change, replayed: Mapping[str, FileMeta]) -> int | None:
    m = replayed.get(c.path)
    # c.mtime is still the disk's here: a run that rewrote the file left "now" on it.
    if m is None or m.mtime is None or c.mtime != m.mtime or not _same_entry(c, m):
        return None
    return m.mtime


def _same_entry(c: Change, m: FileMeta) -> bool:
    if c.type == "file":
        return m.kind == "file" and m.size == _content_size(c)
    if c.type == "symlink":
        return m.kind == "symlink" and m.linkname == c.linkname
    return False


def _content_size(c: Change) -> int:
    if isinstance(c.source, Path):
        return os.lstat(c.source).st_size
    return len(c.source or b"")


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
