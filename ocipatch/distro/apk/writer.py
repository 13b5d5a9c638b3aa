"""Writing package files into an unpacked root without ever leaving it.

The rules of ocipatch.fs.unpack: parents are resolved inside the root by ocipatch.fs.rootpath
(a symlinked parent is followed as in a chroot; `..` stops at the root); the final component
is never followed (files are written beside their name with O_EXCL|O_NOFOLLOW and renamed over
it, so a symlink there is replaced, not written through); names that climb out are refused.
Unprivileged, the intended uid, gid and mode live in the OwnershipMap and the disk keeps u+rw;
as root they are applied for real.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import IO

from ocipatch.errors import ApplyError, UnsafeArchiveError
from ocipatch.fs import rootpath
from ocipatch.fs import whiteout as wh
from ocipatch.fs.unpack import Owner, OwnershipMap

_CHUNK = 1 << 20
_TMP_SUFFIX = ".ocipatch-new"

__all__ = ["RootWriter", "member_path"]


def member_path(pkg: str, raw: str) -> str:
    """A package member name as a relative path; refuses `..` and the whiteout prefix."""
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"package {pkg}: member {raw!r} climbs out of the root")
    if any(p.startswith(wh.PREFIX) for p in parts):
        raise UnsafeArchiveError(f"package {pkg}: member {raw!r} uses the reserved prefix .wh.")
    return "/".join(parts)


class RootWriter:
    """Creates, replaces and removes entries below `root`, keeping `ownership` current."""

    def __init__(self, root: Path, ownership: OwnershipMap) -> None:
        self.root = os.path.abspath(root)
        self.ownership = ownership
        self.privileged = ownership.privileged
        self._tree = rootpath.DiskTree(self.root)

    def abs(self, real: str) -> str:
        return os.path.join(self.root, real) if real else self.root

    # -- resolution ------------------------------------------------------------------------------
    def resolve_dir(self, rel: str, *, create: bool) -> str | None:
        try:
            return rootpath.resolve(
                self._tree, rel, need_dir=True, mkdir=self._implicit_dir if create else None
            )
        except rootpath.SymlinkLoop:
            raise ApplyError(f"too many symlinks resolving /{rel} in the image") from None
        except rootpath.NotADirectory as e:
            raise ApplyError(
                f"/{rel} must be a directory, but the image has a file at /{e.component}"
            ) from None

    def place(self, rel: str) -> str:
        """Where a new entry rel goes: parents resolved (missing ones made), final not followed."""
        parent, base = wh.split(rel)
        rparent = self.resolve_dir(parent, create=True)
        assert rparent is not None
        return wh.join(rparent, base)

    def real_path(self, rel: str) -> str | None:
        """rel with its parents resolved (None when they do not exist); final not followed."""
        parent, base = wh.split(rel)
        rparent = self.resolve_dir(parent, create=False)
        return None if rparent is None else wh.join(rparent, base)

    def lstat(self, real: str) -> os.stat_result | None:
        try:
            return os.lstat(self.abs(real))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def read(self, real: str) -> bytes | None:
        """A regular file's content (never through a symlink); None for anything else."""
        try:
            fd = os.open(self.abs(real), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            return f.read() if stat.S_ISREG(os.fstat(f.fileno()).st_mode) else None

    # -- metadata --------------------------------------------------------------------------------
    def _disk_mode(self, owner: Owner) -> int:
        if self.privileged:
            return owner.mode
        return (owner.mode & 0o777) | (0o700 if owner.type == "dir" else 0o600)

    def _set_meta(self, path: str, owner: Owner, fd: int | None) -> None:
        ns = (owner.mtime * 10**9,) * 2
        if fd is None:  # a symlink just created
            if self.privileged:
                os.chown(path, owner.uid, owner.gid, follow_symlinks=False)
            os.utime(path, ns=ns, follow_symlinks=False)
            return
        if self.privileged:
            os.fchown(fd, owner.uid, owner.gid)  # before chmod: chown clears setuid bits
        os.fchmod(fd, self._disk_mode(owner))
        os.utime(fd, ns=ns)

    def _implicit_dir(self, real: str) -> None:
        self._mkdir(real, Owner("dir", 0, 0, 0o755, 0))

    def _mkdir(self, real: str, owner: Owner) -> None:
        path = self.abs(real)
        os.mkdir(path, 0o700)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            self._set_meta(path, owner, fd)
        finally:
            os.close(fd)
        self.ownership[real] = owner

    # -- entries ---------------------------------------------------------------------------------
    def mkdir(self, rel: str, owner: Owner) -> tuple[str, bool]:
        """(real path, created): an existing directory (also through a symlink) is kept."""
        real = self.place(rel)
        existing = self.resolve_dir(real, create=False)
        if existing is not None:
            return existing, False
        if os.path.lexists(self.abs(real)):
            raise ApplyError(f"a package ships the directory /{rel}, where the image has a file")
        self._mkdir(real, owner)
        return real, True

    def _tmp(self, real: str) -> str:
        tmp = real + _TMP_SUFFIX
        st = self.lstat(tmp)
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                raise ApplyError(f"/{tmp} is a directory: remove it from the image")
            os.unlink(self.abs(tmp))
        return tmp

    def _replace(self, real: str, tmp: str) -> None:
        st = self.lstat(real)
        if st is not None and stat.S_ISDIR(st.st_mode):
            os.unlink(self.abs(tmp))
            raise ApplyError(f"a package ships a file at /{real}, where the image has a directory")
        os.rename(self.abs(tmp), self.abs(real))

    def write_file(self, rel: str, src: IO[bytes] | bytes | None, owner: Owner) -> str:
        """Write a regular file atomically (beside its name, then renamed); its real path."""
        real = self.place(rel)
        tmp = self._tmp(real)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.abs(tmp), flags, 0o600)
        try:
            if isinstance(src, bytes):
                _write_all(fd, src)
            elif src is not None:
                while chunk := src.read(_CHUNK):
                    _write_all(fd, chunk)
            self._set_meta(self.abs(tmp), owner, fd)
        finally:
            os.close(fd)
        self._replace(real, tmp)
        self.ownership[real] = owner
        return real

    def symlink(self, rel: str, owner: Owner) -> str:
        real = self.place(rel)
        tmp = self._tmp(real)
        os.symlink(owner.linkname, self.abs(tmp))
        self._set_meta(self.abs(tmp), owner, None)
        self._replace(real, tmp)
        self.ownership[real] = owner
        return real

    def hardlink(self, rel: str, target_rel: str, pkg: str) -> str:
        real = self.place(rel)
        target = self.real_path(target_rel)
        st = self.lstat(target) if target is not None else None
        if target is None or st is None or not stat.S_ISREG(st.st_mode):
            raise UnsafeArchiveError(
                f"package {pkg}: hard link /{rel} points to missing /{target_rel}"
            )
        tmp = self._tmp(real)
        os.link(self.abs(target), self.abs(tmp), follow_symlinks=False)
        self._replace(real, tmp)
        towner = self.ownership.get(target)
        if towner is not None:
            self.ownership[real] = towner
        return real

    def remove(self, real: str) -> bool:
        """Remove a file or symlink (never a directory); whether something was removed."""
        st = self.lstat(real)
        if st is None or stat.S_ISDIR(st.st_mode):
            return False
        os.unlink(self.abs(real))
        self.ownership.pop(real)
        return True

    def rmdir_if_empty(self, real: str) -> bool:
        st = self.lstat(real)
        if st is None or not stat.S_ISDIR(st.st_mode) or os.listdir(self.abs(real)):
            return False
        with contextlib.suppress(OSError):
            os.rmdir(self.abs(real))
            self.ownership.pop(real)
            return True
        return False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
