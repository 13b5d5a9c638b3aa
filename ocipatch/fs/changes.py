"""Changes to a root filesystem, and how to find them: snapshot before, diff after.

A Change is one entry of a patch layer: a path added or changed (with the metadata the image must
show, not what the disk of an unprivileged run says), a deletion (written as a whiteout), or an
opaque directory. `snapshot` records an unpacked rootfs; after the package manager ran, `diff`
lists what changed, using the OwnershipMap of `unpack` for the intended owners and modes.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocipatch.fs import whiteout as wh
from ocipatch.fs.rootpath import file_type
from ocipatch.fs.unpack import OwnershipMap

ENTRY_TYPES = ("file", "dir", "symlink", "hardlink", "char", "block", "fifo")
CHANGE_TYPES = (*ENTRY_TYPES, "delete", "opaque")
SNAPSHOT_FORMAT = 1
_CHUNK = 1 << 20

Exclude = Callable[[str], bool]


@dataclass(frozen=True)
class Change:
    """One entry of a patch layer.

    type is one of ENTRY_TYPES, or 'delete' (path is whited out from the layers below) or
    'opaque' (the directory path hides everything the layers below put in it). For 'file',
    source is the content: a Path read when the layer is written (never followed if a symlink),
    bytes, or None for empty. linkname is a symlink's target as stored, or a hardlink's target
    path (relative to the root, written before it in the same layer or present below). mtime
    is the entry's own time (a package file's data.tar date) or None: the layer time then
    (ocipatch.fs.layerwriter).
    """

    path: str
    type: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int | None = None
    linkname: str = ""
    source: Path | bytes | None = None
    xattrs: Mapping[str, bytes] = field(default_factory=dict, hash=False)
    devmajor: int = 0
    devminor: int = 0

    def __post_init__(self) -> None:
        norm = wh.normalize(self.path)
        if not norm:
            raise ValueError("a change cannot name the root directory")
        if self.type not in CHANGE_TYPES:
            raise ValueError(f"unknown change type {self.type!r}")
        if wh.is_special(norm):
            raise ValueError(f"{self.path!r}: names starting {wh.PREFIX!r} are reserved")
        object.__setattr__(self, "path", norm)
        if self.type == "hardlink":
            object.__setattr__(self, "linkname", wh.normalize(self.linkname))

    @classmethod
    def file(
        cls,
        path: str,
        source: Path | bytes | None,
        *,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        mtime: int | None = None,
        xattrs: Mapping[str, bytes] | None = None,
    ) -> Change:
        return cls(path, "file", mode, uid, gid, mtime, source=source, xattrs=xattrs or {})

    @classmethod
    def dir(
        cls, path: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: int | None = None
    ) -> Change:
        return cls(path, "dir", mode, uid, gid, mtime)

    @classmethod
    def symlink(
        cls, path: str, target: str, *, uid: int = 0, gid: int = 0, mtime: int | None = None
    ) -> Change:
        return cls(path, "symlink", 0o777, uid, gid, mtime, linkname=target)

    @classmethod
    def hardlink(cls, path: str, target: str) -> Change:
        return cls(path, "hardlink", linkname=target)

    @classmethod
    def delete(cls, path: str) -> Change:
        return cls(path, "delete")

    @classmethod
    def opaque(cls, path: str) -> Change:
        return cls(path, "opaque")

    @property
    def tar_name(self) -> str:
        """The member name this change is written under."""
        if self.type == "delete":
            return wh.whiteout_name_for(self.path)
        if self.type == "opaque":
            return wh.opaque_name_for(self.path)
        return self.path


def sort_changes(changes: list[Change]) -> list[Change]:
    return sorted(changes, key=lambda c: wh.sort_key(c.tar_name))


# -- snapshot -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SnapEntry:
    """What snapshot saw at a path: the disk state, plus the metadata the image intends."""

    type: str
    size: int
    disk_mode: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    linkname: str
    rdev: int
    fingerprint: str  # sha256 of a regular file's content, "" if not hashed
    uid: int  # intended owner and mode (from the OwnershipMap, or the disk)
    gid: int
    mode: int
    xattrs: Mapping[str, bytes]


@dataclass
class Snapshot:
    root: Path
    entries: dict[str, SnapEntry]
    ownership: OwnershipMap

    def save(self, path: Path) -> None:
        doc = {
            "format": SNAPSHOT_FORMAT,
            "root": str(self.root),
            "entries": {
                p: [
                    e.type,
                    e.size,
                    e.disk_mode,
                    e.mtime_ns,
                    e.ctime_ns,
                    e.ino,
                    e.linkname,
                    e.rdev,
                    e.fingerprint,
                    e.uid,
                    e.gid,
                    e.mode,
                    {k: v.hex() for k, v in sorted(e.xattrs.items())},
                ]
                for p, e in sorted(self.entries.items())
            },
            "ownership": self.ownership.to_json(),
        }
        path.write_text(json.dumps(doc, separators=(",", ":")), "utf-8")

    @classmethod
    def load(cls, path: Path) -> Snapshot:
        doc = json.loads(path.read_text("utf-8"))
        if doc.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"{path}: unknown snapshot format {doc.get('format')!r}")
        entries = {p: _snap_entry(row) for p, row in doc["entries"].items()}
        return cls(Path(doc["root"]), entries, OwnershipMap.from_json(doc["ownership"]))


def _snap_entry(row: list[Any]) -> SnapEntry:
    typ, size, disk_mode, mtime_ns, ctime_ns, ino, linkname, rdev, fp, uid, gid, mode, xa = row
    return SnapEntry(
        typ,
        size,
        disk_mode,
        mtime_ns,
        ctime_ns,
        ino,
        linkname,
        rdev,
        fp,
        uid,
        gid,
        mode,
        {k: bytes.fromhex(v) for k, v in xa.items()},
    )


def _scan(root: Path, exclude: Exclude | None) -> dict[str, os.stat_result]:
    """lstat of every path under root, by relative path; excluded paths and subtrees left out."""
    out: dict[str, os.stat_result] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            for ent in it:
                path = wh.join(rel, ent.name)
                if exclude is not None and exclude(path):
                    continue
                st = ent.stat(follow_symlinks=False)
                out[path] = st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(path)
    return out


def _sha256(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _intended(
    path: str, st: os.stat_result, ownership: OwnershipMap, before: SnapEntry | None
) -> tuple[int, int, int, Mapping[str, bytes]]:
    """(uid, gid, mode, xattrs) the image should show for path.

    Privileged unpacks put the real owners and modes on disk, so the disk is the truth. Otherwise
    the OwnershipMap says who owns a path; its mode wins as long as the disk mode is what it was
    at snapshot time (the package manager did not chmod the path). A path the map does not know
    was created during the run, by a root-in-the-sandbox process: root-owned, disk mode.
    """
    disk_mode = stat.S_IMODE(st.st_mode)
    owner = ownership.get(path)
    if ownership.privileged:
        return st.st_uid, st.st_gid, disk_mode, owner.xattrs if owner is not None else {}
    if owner is None or not owner.on_disk:
        return 0, 0, disk_mode, {}
    unchanged = before is None or before.disk_mode == disk_mode
    return owner.uid, owner.gid, owner.mode if unchanged else disk_mode, owner.xattrs


def snapshot(
    root: Path, ownership: OwnershipMap, *, exclude: Exclude | None = None, hash_files: bool = True
) -> Snapshot:
    """Record root (type, size, mode, times, inode, link target, content hash of regular files).

    hash_files lets `diff` drop files that were rewritten with the same content (dpkg rewrites
    every file of an upgraded package); without it such files count as changed. Pass the same
    exclude as to `diff`.
    """
    own = ownership.copy()  # the caller may keep updating its map during the run
    entries: dict[str, SnapEntry] = {}
    for path, st in _scan(root, exclude).items():
        typ = file_type(st.st_mode)
        if typ is None:
            continue
        full = os.path.join(root, path)
        uid, gid, mode, xattrs = _intended(path, st, own, None)
        entries[path] = SnapEntry(
            type=typ,
            size=st.st_size if typ == "file" else 0,
            disk_mode=stat.S_IMODE(st.st_mode),
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
            ino=st.st_ino,
            linkname=os.readlink(full) if typ == "symlink" else "",
            rdev=st.st_rdev if typ in ("char", "block") else 0,
            fingerprint=_sha256(full) if typ == "file" and hash_files else "",
            uid=uid,
            gid=gid,
            mode=mode,
            xattrs=dict(xattrs),
        )
    return Snapshot(Path(root), entries, own)


def diff(
    snap: Snapshot,
    root: Path,
    exclude: Exclude | None = None,
    *,
    ownership: OwnershipMap | None = None,
) -> list[Change]:
    """What changed under root since snap, as Changes sorted for writing.

    A path counts as changed when its type, link target, device number, intended owner/mode/
    xattrs, or content changed (content: size, else unchanged inode+mtime+ctime, else the hash).
    A change of mtime alone is not a change. Deleting a directory gives one deletion, not one
    per child. exclude(path) -> True leaves path and its subtree out on both sides. ownership
    (default: the snapshot's copy) gives the intended owners of the tree after the run; pass the
    map the sandbox updated if it recorded owners of new files. Files sharing an inode among the
    added ones are written once and hard-linked. Changes carry the disk's mtimes, which a
    package manager's run sets to "now": a patch dates them itself (debmeta.with_package_metadata).
    """
    own = ownership if ownership is not None else snap.ownership
    after = _scan(root, exclude)
    changes: list[Change] = []
    excluded: dict[str, bool] = {}

    def is_excluded(path: str) -> bool:
        if exclude is None:
            return False
        if path not in excluded:
            parent = wh.split(path)[0]
            excluded[path] = exclude(path) or (bool(parent) and is_excluded(parent))
        return excluded[path]

    for path in snap.entries:
        if path in after or is_excluded(path):
            continue
        parent = wh.split(path)[0]
        # Only the top of a deleted subtree needs a whiteout; below a parent that became a
        # non-directory, the parent's new entry replaces everything already.
        if parent == "" or (parent in after and stat.S_ISDIR(after[parent].st_mode)):
            changes.append(Change.delete(path))

    links: dict[tuple[int, int], str] = {}
    for path in sorted(after, key=wh.sort_key):
        st = after[path]
        typ = file_type(st.st_mode)
        if typ is None:
            continue
        full = os.path.join(root, path)
        b = snap.entries.get(path)
        uid, gid, mode, xattrs = _intended(path, st, own, b)
        linkname = os.readlink(full) if typ == "symlink" else ""
        rdev = st.st_rdev if typ in ("char", "block") else 0
        if b is not None and b.type == typ:
            same_meta = (b.uid, b.gid, b.mode, dict(b.xattrs), b.linkname, b.rdev) == (
                uid,
                gid,
                mode,
                dict(xattrs),
                linkname,
                rdev,
            )
            if same_meta and (typ != "file" or not _content_changed(b, st, full)):
                continue
        mtime = int(st.st_mtime)
        if typ == "file":
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in links:
                changes.append(Change.hardlink(path, links[key]))
                continue
            if st.st_nlink > 1:
                links[key] = path
            changes.append(
                Change.file(
                    path, Path(full), mode=mode, uid=uid, gid=gid, mtime=mtime, xattrs=xattrs
                )
            )
        elif typ == "dir":
            changes.append(Change.dir(path, mode=mode, uid=uid, gid=gid, mtime=mtime))
        elif typ == "symlink":
            changes.append(Change.symlink(path, linkname, uid=uid, gid=gid, mtime=mtime))
        else:
            changes.append(
                Change(
                    path,
                    typ,
                    mode,
                    uid,
                    gid,
                    mtime,
                    devmajor=os.major(rdev),
                    devminor=os.minor(rdev),
                )
            )
    return sort_changes(changes)


def _content_changed(b: SnapEntry, st: os.stat_result, full: str) -> bool:
    if b.size != st.st_size:
        return True
    if (b.ino, b.mtime_ns, b.ctime_ns) == (st.st_ino, st.st_mtime_ns, st.st_ctime_ns):
        return False
    if not b.fingerprint:
        return True
    return _sha256(full) != b.fingerprint
