"""Safe extraction of an image's layers into a directory, for the sandboxed package-manager runs.

Layers are applied bottom-up with the whiteout rules of ocipatch.fs.whiteout (deletions happen on
disk). Safety policy -- nothing may be created, changed or deleted outside `dest`:

- A member name or hardlink target that climbs above the root with `..` raises
  UnsafeArchiveError before anything is written for that member (no legitimate layer has one;
  GNU tar refuses them too). Members applied before it stay inside dest.
- A leading `/` is dropped (`/etc/x` is `etc/x` in the root), as GNU tar and runtimes do.
- Parent directories are resolved *inside* the root: a symlinked parent is followed as in a
  chroot (absolute targets restart at dest, `..` stops at dest), like containerd's fs.RootPath.
  This is what a runtime applying the layer does, and it can never leave dest.
- The final component is never followed: an existing symlink at that path is removed and
  replaced; files are created with O_EXCL|O_NOFOLLOW, hard links with linkat() without
  AT_SYMLINK_FOLLOW (a hard link to a symlink links the symlink, not what it points to).
- Symlinks are stored as they are (they may point anywhere; they are just never followed when
  writing).

Ownership: unprivileged, every file belongs to the invoking user, so the intended uid, gid, mode,
mtime and xattrs of every path are recorded in an OwnershipMap; on disk, modes gain u+rw (files)
or u+rwx (directories) and lose setuid/setgid/sticky, so the tree stays usable and a world-
readable copy never carries a setuid file of the invoking user. Device nodes are skipped (but
recorded, with on_disk=False). Privileged (root), ownership, modes, xattrs and device nodes are
applied for real, and the map records the same values.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import stat
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ocipatch import runs
from ocipatch.errors import ImageFormatError
from ocipatch.fs import rootpath
from ocipatch.fs import whiteout as wh
from ocipatch.fs.merged import (
    LayerIndexer,
    Op,
    TarLayer,
    checked_mtime,
    hardlink_target,
    member_name,
    member_type,
    scan_layer,
)

log = logging.getLogger(__name__)

OWNERSHIP_FILE = "ownership.json"
OWNERSHIP_FORMAT = 1
_XATTR_PREFIX = "SCHILY.xattr."
_CHUNK = 1 << 20

# on_index(layer digest, index ops, captured contents by ordinal)
OnIndex = Callable[[str, list[Op], dict[int, bytes]], None]


@dataclass(frozen=True, slots=True)
class Owner:
    """The intended metadata of one path, as the layers say (not as the disk has it)."""

    type: str  # 'file', 'dir', 'symlink', 'char', 'block', 'fifo'
    uid: int
    gid: int
    mode: int  # permission bits incl. setuid/setgid/sticky, no file type
    mtime: int
    linkname: str = ""  # symlink target
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    on_disk: bool = True  # False for device nodes an unprivileged unpack could not create

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": self.type,
            "uid": self.uid,
            "gid": self.gid,
            "mode": self.mode,
            "mtime": self.mtime,
        }
        if self.linkname:
            doc["linkname"] = self.linkname
        if self.type in ("char", "block"):
            doc["devmajor"] = self.devmajor
            doc["devminor"] = self.devminor
        if self.xattrs:
            doc["xattrs"] = {
                k: base64.b64encode(v).decode("ascii") for k, v in sorted(self.xattrs.items())
            }
        if not self.on_disk:
            doc["on_disk"] = False
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Owner:
        return cls(
            type=doc["type"],
            uid=int(doc["uid"]),
            gid=int(doc["gid"]),
            mode=int(doc["mode"]),
            mtime=int(doc["mtime"]),
            linkname=doc.get("linkname", ""),
            devmajor=int(doc.get("devmajor", 0)),
            devminor=int(doc.get("devminor", 0)),
            xattrs={k: base64.b64decode(v) for k, v in doc.get("xattrs", {}).items()},
            on_disk=bool(doc.get("on_disk", True)),
        )


class OwnershipMap:
    """path -> Owner for every path of an unpacked tree; `privileged` says whether the disk
    itself carries the real owners (unpacked as root) or only this map does."""

    def __init__(self, entries: Mapping[str, Owner] | None = None, *, privileged: bool = False):
        self._entries: dict[str, Owner] = dict(entries or {})
        self.privileged = privileged

    def get(self, path: str) -> Owner | None:
        return self._entries.get(path)

    def __getitem__(self, path: str) -> Owner:
        return self._entries[path]

    def __setitem__(self, path: str, owner: Owner) -> None:
        self._entries[path] = owner

    def __delitem__(self, path: str) -> None:
        del self._entries[path]

    def pop(self, path: str) -> Owner | None:
        return self._entries.pop(path, None)

    def __contains__(self, path: object) -> bool:
        return path in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def items(self) -> Iterator[tuple[str, Owner]]:
        for path in sorted(self._entries):
            yield path, self._entries[path]

    def copy(self) -> OwnershipMap:
        return OwnershipMap(self._entries, privileged=self.privileged)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": OWNERSHIP_FORMAT,
            "privileged": self.privileged,
            "entries": {p: o.to_json() for p, o in self.items()},
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> OwnershipMap:
        if doc.get("format") != OWNERSHIP_FORMAT:
            raise ImageFormatError(
                f"ownership map has format {doc.get('format')!r}, expected {OWNERSHIP_FORMAT}: "
                "unpack the image again"
            )
        return cls(
            {p: Owner.from_json(o) for p, o in doc["entries"].items()},
            privileged=bool(doc["privileged"]),
        )

    def save(self, path: Path) -> None:
        """Write as JSON (atomically: a temporary file renamed over path)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = runs.mkstemp(path.parent, suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.to_json(), f, separators=(",", ":"), sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> OwnershipMap:
        return cls.from_json(json.loads(path.read_text("utf-8")))


def xattrs_of(member: tarfile.TarInfo) -> dict[str, bytes]:
    """Extended attributes from PAX `SCHILY.xattr.*` records (tarfile hands binary values over
    as surrogate-escaped text)."""
    out: dict[str, bytes] = {}
    for key, value in member.pax_headers.items():
        if key.startswith(_XATTR_PREFIX):
            out[key[len(_XATTR_PREFIX) :]] = value.encode("utf-8", "surrogateescape")
    return out


def unpack(
    layers: Sequence[TarLayer],
    dest: Path,
    *,
    privileged: bool | None = None,
    ownership: OwnershipMap | None = None,
    on_index: OnIndex | None = None,
) -> OwnershipMap:
    """Apply layers (bottom first) into dest, which is created if missing.

    With on_index, each layer is also indexed as it is extracted (one pass instead of two) and
    on_index(digest, ops, captured) receives what `merged.index_layer` would have built.

    privileged defaults to "running as root". Returns the intended metadata of every path; save
    it with `OwnershipMap.save(state_dir / OWNERSHIP_FILE)`. To apply more layers over a tree an
    earlier call unpacked, pass that call's map as ownership: it is updated in place (deletions
    included) and returned. Raises UnsafeArchiveError for entries escaping the root and
    ImageFormatError for malformed layers.
    """
    if ownership is not None:
        if privileged is not None and privileged != ownership.privileged:
            raise ValueError("privileged differs from the ownership map being continued")
        privileged = ownership.privileged
    if privileged is None:
        privileged = os.geteuid() == 0
    dest.mkdir(parents=True, exist_ok=True)
    u = _Unpacker(dest, privileged, ownership)
    for layer in layers:
        u.apply_layer(layer, on_index)
    u.finish()
    return u.ownership


class _Unpacker:
    def __init__(self, dest: Path, privileged: bool, ownership: OwnershipMap | None) -> None:
        self.root = os.path.abspath(dest)
        self.privileged = privileged
        self.ownership = ownership if ownership is not None else OwnershipMap(privileged=privileged)
        self._dirs: dict[str, int] = {}  # directory -> mtime, applied at the end
        self._dir_cache: dict[str, str] = {}  # resolved parent directories; cleared on delete
        # Recorded device nodes that are not on disk.
        self._off_disk = {p for p, o in self.ownership.items() if not o.on_disk}
        self._written: set[str] = set()
        self._digest = ""
        self._tree = rootpath.DiskTree(self.root)

    def abs(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    # -- resolution inside the root -----------------------------------------------------------
    def resolve_dir(self, rel: str, *, create: bool) -> str | None:
        """The real path of directory rel, following symlinks inside the root.

        With create, missing directories are made (recorded as root-owned 0755, what tar
        extraction gives an unlisted parent) and a non-directory raises ImageFormatError;
        without, a missing or non-directory component gives None.
        """
        if create and rel in self._dir_cache:
            return self._dir_cache[rel]
        try:
            real = rootpath.resolve(
                self._tree, rel, need_dir=True, mkdir=self._implicit_dir if create else None
            )
        except rootpath.RootPathError as e:
            raise ImageFormatError(f"layer {self._digest}: {e}: the image is malformed") from None
        if create and real is not None:
            self._dir_cache[rel] = real
        return real

    def _implicit_dir(self, real: str) -> None:
        os.mkdir(self.abs(real), 0o700)
        os.chmod(self.abs(real), 0o755)
        self._record(real, Owner("dir", 0, 0, 0o755, 0))

    # -- layers ---------------------------------------------------------------------------------
    def apply_layer(self, layer: TarLayer, on_index: OnIndex | None = None) -> None:
        self._digest = layer.digest
        self._written = set()
        indexer = LayerIndexer(layer.digest, capture=True) if on_index is not None else None

        def visit(ordinal: int, m: tarfile.TarInfo, tf: tarfile.TarFile) -> None:
            real = self.apply_member(m, tf)
            if indexer is not None:
                # A captured file is read back from where it was just written: the stream
                # has moved past it.
                indexer.visit(ordinal, m, lambda: self._read_back(real))

        scan_layer(layer, visit)
        if indexer is not None and on_index is not None:
            on_index(layer.digest, indexer.ops, indexer.captured)

    def _read_back(self, real: str | None) -> bytes:
        if real is None:
            return b""
        fd = os.open(self.abs(real), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def apply_member(self, m: tarfile.TarInfo, tf: tarfile.TarFile) -> str | None:
        """Apply one member; returns the path (in the root) of a regular file it wrote."""
        name = member_name(self._digest, m.name)
        kind = wh.classify(name)
        if kind == "whiteout":
            parent, base = wh.split(wh.whiteout_target(name))
            rparent = self.resolve_dir(parent, create=False)
            if rparent is not None:
                self.remove_lower(wh.join(rparent, base), include_self=True)
            return None
        if kind == "opaque":
            rdir = self.resolve_dir(wh.opaque_dir(name), create=False)
            if rdir is not None:
                self.remove_lower(rdir, include_self=False)
            return None
        if kind == "meta":
            return None
        typ = member_type(m)
        if typ is None:
            log.warning(
                "layer %s: skipping %r of unsupported tar type %r", self._digest, m.name, m.type
            )
            return None
        if not name:
            return None  # the root itself: dest keeps its own metadata
        # Validate a hardlink target and the metadata before anything changes on disk.
        link = hardlink_target(self._digest, name, m.linkname) if typ == "hardlink" else ""
        mtime = checked_mtime(self._digest, name, m, typ)
        parent, base = wh.split(name)
        rparent = self.resolve_dir(parent, create=True)
        assert rparent is not None
        real = wh.join(rparent, base)
        self._mark_written(real)
        path = self.abs(real)
        try:
            old = os.lstat(path)
        except FileNotFoundError:
            old = None
        if old is not None and not (typ == "dir" and stat.S_ISDIR(old.st_mode)):
            self.remove_all(real)
        if real in self._off_disk:
            self._off_disk.discard(real)
            self.ownership.pop(real)

        if typ == "hardlink":
            self._hardlink(real, name, link)
            return None
        owner = Owner(
            type=typ,
            uid=m.uid,
            gid=m.gid,
            mode=m.mode & 0o7777,
            mtime=mtime,
            linkname=m.linkname if typ == "symlink" else "",
            devmajor=m.devmajor if typ in ("char", "block") else 0,
            devminor=m.devminor if typ in ("char", "block") else 0,
            xattrs=xattrs_of(m),
        )
        if typ == "dir":
            if old is None or not stat.S_ISDIR(old.st_mode):
                os.mkdir(path, 0o700)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                self._set_meta_fd(fd, owner)
            finally:
                os.close(fd)
            self._dirs[real] = owner.mtime
        elif typ == "file":
            fd = os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
            try:
                src = tf.extractfile(m)
                if src is not None:
                    while chunk := src.read(_CHUNK):
                        _write_all(fd, chunk)
                self._set_meta_fd(fd, owner)
                os.utime(fd, ns=(owner.mtime * 10**9, owner.mtime * 10**9))
            finally:
                os.close(fd)
            self._record(real, owner)
            return real
        elif typ == "symlink":
            os.symlink(m.linkname, path)
            if self.privileged:
                os.chown(path, owner.uid, owner.gid, follow_symlinks=False)
            os.utime(path, ns=(owner.mtime * 10**9,) * 2, follow_symlinks=False)
        elif typ == "fifo" or self.privileged:
            if not self._special(path, owner):
                owner = replace(owner, on_disk=False)
                self._off_disk.add(real)
        else:
            owner = replace(owner, on_disk=False)
            self._off_disk.add(real)
        self._record(real, owner)
        return None

    def _special(self, path: str, owner: Owner) -> bool:
        """mknod/mkfifo; False (logged) if this process may not create the node."""
        kind = {"char": stat.S_IFCHR, "block": stat.S_IFBLK, "fifo": stat.S_IFIFO}[owner.type]
        try:
            os.mknod(path, 0o600 | kind, os.makedev(owner.devmajor, owner.devminor))
        except PermissionError:
            log.warning("cannot create device node %s here; recorded but skipped", path)
            return False
        # The node was just created by us and is not a symlink: path-based calls are safe.
        if self.privileged:
            os.chown(path, owner.uid, owner.gid, follow_symlinks=False)
        os.chmod(path, self._disk_mode(owner))
        os.utime(path, ns=(owner.mtime * 10**9,) * 2, follow_symlinks=False)
        return True

    def _hardlink(self, real: str, name: str, link: str) -> None:
        tparent, tbase = wh.split(link)
        rparent = self.resolve_dir(tparent, create=False)
        target = wh.join(rparent, tbase) if rparent is not None else None
        towner = self.ownership.get(target) if target is not None else None
        if target is not None and target in self._off_disk and towner is not None:
            self._off_disk.add(real)  # a link to a skipped device node is skipped too
            self._record(real, towner)
            return
        try:
            tst = os.lstat(self.abs(target)) if target is not None else None
        except FileNotFoundError:
            tst = None
        if target is None or tst is None:
            raise ImageFormatError(
                f"layer {self._digest}: hardlink {name!r} points to {link!r}, which does not "
                "exist: the image is malformed"
            )
        if stat.S_ISDIR(tst.st_mode):
            raise ImageFormatError(
                f"layer {self._digest}: hardlink {name!r} points to directory {link!r}: the "
                "image is malformed"
            )
        # follow_symlinks=False: linkat() without AT_SYMLINK_FOLLOW links a symlink itself.
        os.link(self.abs(target), self.abs(real), follow_symlinks=False)
        if towner is None:  # the target predates this unpack: take what the disk says
            towner = Owner(
                # A socket (no layer type) was recorded as "dir" before: kept so.
                rootpath.file_type(tst.st_mode) or "dir",
                tst.st_uid,
                tst.st_gid,
                stat.S_IMODE(tst.st_mode),
                int(tst.st_mtime),
            )
        self._record(real, towner)

    def _disk_mode(self, owner: Owner) -> int:
        if self.privileged:
            return owner.mode
        keep = owner.mode & 0o777
        return keep | (0o700 if owner.type == "dir" else 0o600)

    def _set_meta_fd(self, fd: int, owner: Owner) -> None:
        if self.privileged:
            os.fchown(fd, owner.uid, owner.gid)  # before chmod: chown clears setuid bits
            for key, value in sorted(owner.xattrs.items()):
                try:
                    os.setxattr(fd, key, value)
                except OSError as e:
                    log.warning("cannot set xattr %s (%s); recorded only", key, e.strerror)
        os.fchmod(fd, self._disk_mode(owner))

    def _record(self, real: str, owner: Owner) -> None:
        self.ownership[real] = owner

    def _mark_written(self, real: str) -> None:
        p = real
        while p and p not in self._written:
            self._written.add(p)
            p = wh.split(p)[0]

    # -- deletion -------------------------------------------------------------------------------
    def remove_lower(self, real: str, *, include_self: bool) -> None:
        """Whiteout rule 3 on disk: remove what lower layers put at/under real."""
        if include_self and real not in self._written:
            self.remove_all(real)
            return
        try:
            st = os.lstat(self.abs(real))
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            return
        for child in sorted(os.listdir(self.abs(real))):
            self.remove_lower(wh.join(real, child), include_self=True)
        # Recorded-only device nodes under real are not in the listing.
        prefix = real + "/" if real else ""
        for p in [p for p in self._off_disk if p.startswith(prefix)]:
            if p not in self._written:
                self._forget(p)

    def remove_all(self, real: str) -> None:
        """Remove real and everything below it (never following symlinks)."""
        self._dir_cache.clear()
        path = self.abs(real)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                self._rmtree(real)
            else:
                os.unlink(path)
                self._forget(real)
        prefix = real + "/"
        for p in [p for p in self._off_disk if p == real or p.startswith(prefix)]:
            self._forget(p)

    def _rmtree(self, real: str) -> None:
        path = self.abs(real)
        with contextlib.suppress(OSError):  # ours always have u+rwx; pre-existing ones may not
            os.chmod(path, 0o700)
        with os.scandir(path) as it:
            entries = list(it)
        for ent in entries:
            child = wh.join(real, ent.name)
            if ent.is_dir(follow_symlinks=False):
                self._rmtree(child)
            else:
                os.unlink(ent.path)
                self._forget(child)
        os.rmdir(path)
        self._forget(real)

    def _forget(self, real: str) -> None:
        self.ownership.pop(real)
        self._dirs.pop(real, None)
        self._off_disk.discard(real)

    def finish(self) -> None:
        """Directory mtimes last (writing children changed them), deepest first."""
        for real in sorted(self._dirs, key=lambda p: p.count("/"), reverse=True):
            ns = self._dirs[real] * 10**9
            try:
                os.utime(self.abs(real), ns=(ns, ns), follow_symlinks=False)
            except FileNotFoundError:  # removed by a later layer without being forgotten
                continue


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
