"""The one in-root writer of package payloads: what a direct installer (a .deb's data.tar today;
an .apk's tar.gz or an rpm's cpio next) does to an unpacked rootfs, whatever the package format.

- Parents are resolved inside the root, following symlinks as a chroot would (fs/rootpath.py):
  nothing can be written outside the root; missing parents are created root 0755.
- Files and symlinks are written beside their final name (`<name>.ocipatch-new`) and renamed
  over it, so a reader never sees half a file; a symlink in the final place is replaced, never
  followed. A directory in the place of a file is an ApplyError naming the package.
- Owners and modes are applied on disk when running as root, and recorded in the OwnershipMap
  otherwise (the disk keeps u+r so the layer writer can read it; setuid bits live in the map).
Each operation returns the real path it wrote (in-root, relative), for the installer's records.
(fs/unpack.py applies image layers, whose whiteout and opaque-directory rules differ; both
resolve through fs/rootpath.py.)
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import IO

from ocipatch.errors import ApplyError, IntegrityError
from ocipatch.fs import rootpath
from ocipatch.fs import whiteout as wh
from ocipatch.fs.unpack import Owner, OwnershipMap

_CHUNK = 1 << 20
_NEW_SUFFIX = ".ocipatch-new"


class RootWriter:
    """Writes entries into `root`, keeping `ownership` up to date. `pkg` in each call names
    the package for messages."""

    def __init__(self, root: Path, ownership: OwnershipMap) -> None:
        self.root = os.path.abspath(root)
        self.ownership = ownership
        self.privileged = ownership.privileged
        self._tree = rootpath.DiskTree(self.root)

    def abs(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    # -- resolution inside the root -----------------------------------------------------------
    def resolve_dir(self, rel: str, *, create: bool, pkg: str = "") -> str | None:
        """The real path of directory rel, symlinks followed inside the root. Missing parts are
        created (root 0755) with create, else None; a non-directory raises / gives None."""
        try:
            return rootpath.resolve(
                self._tree, rel, need_dir=True, mkdir=self._implicit_dir if create else None
            )
        except rootpath.SymlinkLoop:
            raise ApplyError(f"{pkg}: too many symlinks resolving /{rel} in the image") from None
        except rootpath.NotADirectory as e:
            raise ApplyError(
                f"{pkg} needs /{rel} to be a directory, but the image has a file at /{e.component}"
            ) from None

    def _implicit_dir(self, real: str) -> None:
        self._mkdir(real, Owner("dir", 0, 0, 0o755, 0))

    def _place(self, rel: str, pkg: str = "") -> str:
        """The real path where a new entry rel goes: parents resolved, missing ones created."""
        parent, base = wh.split(rel)
        rparent = self.resolve_dir(parent, create=True, pkg=pkg)
        assert rparent is not None
        return wh.join(rparent, base)

    def real_path(self, rel: str) -> str | None:
        """The real path of rel: parents resolved, the final component not followed."""
        parent, base = wh.split(rel)
        rparent = self.resolve_dir(parent, create=False)
        return None if rparent is None else wh.join(rparent, base)

    # -- writing --------------------------------------------------------------------------------
    def _disk_mode(self, owner: Owner) -> int:
        if self.privileged:
            return owner.mode
        # Readable by us for the layer writer; setuid bits live only in the map.
        return (owner.mode & 0o777) | (0o700 if owner.type == "dir" else 0o400)

    def _set_meta(self, path: str, owner: Owner, *, fd: int | None = None) -> None:
        ns = (owner.mtime * 10**9, owner.mtime * 10**9)
        if fd is None:  # a symlink we just created
            if self.privileged:
                os.chown(path, owner.uid, owner.gid, follow_symlinks=False)
            os.utime(path, ns=ns, follow_symlinks=False)
            return
        if self.privileged:
            os.fchown(fd, owner.uid, owner.gid)  # before chmod: chown clears setuid bits
        os.fchmod(fd, self._disk_mode(owner))
        os.utime(fd, ns=ns)

    def _mkdir(self, real: str, owner: Owner) -> None:
        path = self.abs(real)
        os.mkdir(path, 0o700)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            self._set_meta(path, owner, fd=fd)
        finally:
            os.close(fd)
        self.ownership[real] = owner

    def _replace(self, real: str, tmp: str, pkg: str) -> None:
        final = self.abs(real)
        try:
            st = os.lstat(final)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            os.unlink(self.abs(tmp))
            raise ApplyError(f"{pkg} ships a file at /{real}, where the image has a directory")
        os.rename(self.abs(tmp), final)

    def _tmp_name(self, real: str) -> str:
        tmp = real + _NEW_SUFFIX
        try:
            st = os.lstat(self.abs(tmp))
        except FileNotFoundError:
            return tmp
        if stat.S_ISDIR(st.st_mode):
            raise ApplyError(f"/{tmp} is a directory: remove it from the image")
        os.unlink(self.abs(tmp))
        return tmp

    def _write_file(self, real: str, src: IO[bytes] | None, owner: Owner) -> str:
        """Write the content to a temporary name beside real; returns that name."""
        tmp = self._tmp_name(real)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.abs(tmp), flags, 0o600)
        try:
            if src is not None:
                while chunk := src.read(_CHUNK):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
            self._set_meta(self.abs(tmp), owner, fd=fd)
        finally:
            os.close(fd)
        return tmp

    # -- entries ------------------------------------------------------------------------------
    def directory(self, name: str, owner: Owner, pkg: str) -> str | None:
        """A directory the package ships; one that exists (maybe through a symlink) is left
        alone (None)."""
        real = self._place(name, pkg)
        if self.resolve_dir(real, create=False) is not None:
            return None
        if os.path.lexists(self.abs(real)):
            raise ApplyError(f"{pkg} ships the directory /{name}, where the image has a file")
        self._mkdir(real, owner)
        return real

    def file(
        self, name: str, src: IO[bytes] | None, owner: Owner, pkg: str, *, suffix: str = ""
    ) -> str:
        """A regular file, written beside its final name and renamed over it; with `suffix`
        written beside the existing one instead (a kept configuration file)."""
        real = self._place(name, pkg) + suffix
        tmp = self._write_file(real, src, owner)
        self._replace(real, tmp, pkg)
        self.ownership[real] = owner
        return real

    def symlink(self, name: str, owner: Owner, pkg: str) -> str:
        real = self._place(name, pkg)
        try:
            if os.readlink(self.abs(real)) == owner.linkname:
                # Same link: keep the inode (dpkg would rewrite it; the layer must not care).
                self.ownership[real] = owner
                return real
        except OSError:
            pass
        tmp = self._tmp_name(real)
        os.symlink(owner.linkname, self.abs(tmp))
        self._set_meta(self.abs(tmp), owner)
        self._replace(real, tmp, pkg)
        self.ownership[real] = owner
        return real

    def hardlink(self, name: str, target: str, pkg: str) -> str:
        real = self._place(name, pkg)
        rtarget = self.real_path(target)
        if (
            rtarget is None
            or not os.path.isfile(self.abs(rtarget))
            or os.path.islink(self.abs(rtarget))
        ):
            raise IntegrityError(f"package {pkg}: hard link /{name} points to missing /{target}")
        tmp = self._tmp_name(real)
        os.link(self.abs(rtarget), self.abs(tmp), follow_symlinks=False)
        self._replace(real, tmp, pkg)
        towner = self.ownership.get(rtarget)
        if towner is not None:
            self.ownership[real] = towner
        return real

    def write_file(self, rel: str, data: bytes, owner: Owner) -> None:
        """Write a file of ocipatch's own (a status.d stanza) atomically."""
        real = self._place(rel)
        tmp = self._write_file(real, io.BytesIO(data), owner)
        self._replace(real, tmp, "ocipatch")
        self.ownership[real] = owner

    def remove_file(self, rel: str) -> None:
        real = self.real_path(rel)
        if (
            real is not None
            and os.path.isfile(self.abs(real))
            and not os.path.islink(self.abs(real))
        ):
            os.unlink(self.abs(real))
            self.ownership.pop(real)
