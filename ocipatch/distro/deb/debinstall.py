"""Installing a .deb's files into an unpacked rootfs without dpkg: what `dpkg --unpack` does to
the filesystem, done by file copying, so it works for any architecture and needs no shell.

dpkg's rules kept here:
- A directory the package ships that already exists (also as a symlink to a directory, as on
  merged-/usr systems where /lib -> usr/lib) is left as it is; a missing one is created with
  the package's owner and mode.
- Files and symlinks are written beside their final name and renamed over it, so a reader never
  sees half a file; a symlink in the final place is replaced, never followed.
- Parents are resolved inside the root, following symlinks as a chroot would: nothing can be
  written outside the root; a member that climbs out with `..` is refused.
- Conffiles: a file the image changed is kept and the package's version is written beside it
  as `<name>.dpkg-dist` (dpkg's --force-confold). Without the md5sums dpkg records in its
  status file, "changed" means "differs from the new version" (see docs/adapters.md).
- Files of the old version that the new one no longer ships (known from the old md5sums) are
  removed, unless another package lists them or the new version wrote the same real path.

Owners and modes come from the data.tar headers: applied on disk when running as root, and
recorded in the OwnershipMap otherwise (the disk keeps u+r so the layer writer can read it).
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import stat
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import zstandard
from debian.deb822 import Deb822

from ocipatch.distro.deb.debmeta import control_files, open_data_tar
from ocipatch.errors import ApplyError, IntegrityError, UnsafeArchiveError
from ocipatch.fs import rootpath
from ocipatch.fs import whiteout as wh
from ocipatch.fs.unpack import Owner, OwnershipMap

MAINTAINER_SCRIPTS = ("preinst", "postinst", "prerm", "postrm", "config", "triggers")
_CHUNK = 1 << 20
_NEW_SUFFIX = ".ocipatch-new"


@dataclass
class DebPackage:
    """One .deb: its control data and where it is; the payload is read when installed."""

    path: Path
    name: str
    version: str
    arch: str
    control: bytes  # the control file as shipped
    md5sums: bytes | None
    conffiles: list[str]  # paths relative to the root, no leading /
    scripts: list[str]  # maintainer scripts (and triggers) the package carries

    @property
    def stanza(self) -> Deb822:
        return Deb822(self.control.decode("utf-8", "replace"))


def read_deb(path: Path) -> DebPackage:
    files = control_files(path)
    control = files.get("control")
    if control is None:
        raise IntegrityError(f"package {path.name} has no control file")
    md5sums = files.get("md5sums")
    conf = files.get("conffiles", b"")
    scripts = [s for s in MAINTAINER_SCRIPTS if s in files]
    st = Deb822(control.decode("utf-8", "replace"))
    if not st.get("Package") or not st.get("Version"):
        raise IntegrityError(f"package {path.name} has no Package or Version in its control file")
    conffiles = []
    for line in conf.decode("utf-8", "replace").splitlines():
        words = line.split()
        # dpkg >= 1.20 flags lines ("remove-on-upgrade /path"); the path is the last word.
        if words and words[-1].startswith("/") and words[0] != "remove-on-upgrade":
            conffiles.append(words[-1].lstrip("/"))
    return DebPackage(
        path,
        st["Package"].strip(),
        st["Version"].strip(),
        st.get("Architecture", "").strip(),
        control,
        md5sums,
        conffiles,
        scripts,
    )


def md5sums_paths(data: bytes | None) -> list[str]:
    """The paths of an md5sums file ("<md5>  <path>" lines), relative to the root."""
    out = []
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2:
            out.append(parts[1].strip().lstrip("/"))
    return out


@dataclass
class Installed:
    """What installing one package did."""

    written: set[str] = field(default_factory=set)  # real paths (relative) written
    deb_paths: set[str] = field(default_factory=set)  # member paths as the package names them
    kept_conffiles: list[str] = field(default_factory=list)  # image's version kept (real paths)
    removed: list[str] = field(default_factory=list)  # obsolete files of the old version
    conffile_md5: dict[str, str] = field(default_factory=dict)  # the new version's conffiles
    newest_mtime: int = 0  # newest mtime in the payload: the package's build time


class RootInstaller:
    """Writes package payloads into `root`, keeping `ownership` up to date."""

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

    # -- one package ---------------------------------------------------------------------------
    def install(
        self,
        pkg: DebPackage,
        *,
        conffile_md5: dict[str, str] | None = None,
    ) -> Installed:
        """Unpack pkg's data.tar into the root.

        conffile_md5: path -> md5 of the conffiles as the old version shipped them, when the
        image recorded them (a Conffiles field); else an existing conffile that differs from
        the new one counts as changed and is kept.
        """
        done = Installed()
        tar = open_data_tar(pkg.path)  # streams zstd payloads (Ubuntu's) too
        try:
            with tar:
                self._unpack_members(pkg, tar, conffile_md5, done)
        except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error, zstandard.ZstdError) as e:
            raise IntegrityError(f"package {pkg.path.name} is damaged: {e}") from None
        return done

    def _unpack_members(
        self,
        pkg: DebPackage,
        tar: tarfile.TarFile,
        conffile_md5: dict[str, str] | None,
        done: Installed,
    ) -> None:
        conffiles = set(pkg.conffiles)
        for m in tar:
            name = _member_name(pkg.name, m.name)
            if not name:
                continue
            done.deb_paths.add(name)
            done.newest_mtime = max(done.newest_mtime, int(m.mtime))
            owner = Owner(
                type="dir" if m.isdir() else "symlink" if m.issym() else "file",
                uid=m.uid,
                gid=m.gid,
                mode=m.mode & 0o7777,
                mtime=int(m.mtime),
                linkname=m.linkname if m.issym() else "",
            )
            if m.isdir():
                self._dir(name, owner, pkg.name, done)
            elif m.isreg() and name in conffiles:
                src = tar.extractfile(m)
                data = src.read() if src is not None else b""
                done.conffile_md5[name] = hashlib.md5(data, usedforsecurity=False).hexdigest()
                keep = self._conffile_changed(name, data, conffile_md5)
                self._file(name, io.BytesIO(data), owner, pkg.name, done, keep=keep)
            elif m.isreg():
                self._file(name, tar.extractfile(m), owner, pkg.name, done, keep=False)
            elif m.issym():
                self._symlink(name, owner, pkg.name, done)
            elif m.islnk():
                self._hardlink(name, _member_name(pkg.name, m.linkname), pkg.name, done)
            else:
                raise IntegrityError(
                    f"package {pkg.path.name} holds {m.name!r} of a type dpkg does not install "
                    "(device or fifo)"
                )

    def _dir(self, name: str, owner: Owner, pkg: str, done: Installed) -> None:
        real = self._place(name, pkg)
        if self.resolve_dir(real, create=False) is not None:
            return  # exists (maybe through a symlink): dpkg leaves it alone
        if os.path.lexists(self.abs(real)):
            raise ApplyError(f"{pkg} ships the directory /{name}, where the image has a file")
        self._mkdir(real, owner)
        done.written.add(real)

    def _file(
        self,
        name: str,
        src: IO[bytes] | None,
        owner: Owner,
        pkg: str,
        done: Installed,
        *,
        keep: bool,
    ) -> None:
        real = self._place(name, pkg)
        if keep:
            real = real + ".dpkg-dist"
            done.kept_conffiles.append(real[: -len(".dpkg-dist")])
        tmp = self._write_file(real, src, owner)
        self._replace(real, tmp, pkg)
        self.ownership[real] = owner
        done.written.add(real)

    def _symlink(self, name: str, owner: Owner, pkg: str, done: Installed) -> None:
        real = self._place(name, pkg)
        try:
            if os.readlink(self.abs(real)) == owner.linkname:
                # Same link: keep the inode (dpkg would rewrite it; the layer must not care).
                self.ownership[real] = owner
                done.written.add(real)
                return
        except OSError:
            pass
        tmp = self._tmp_name(real)
        os.symlink(owner.linkname, self.abs(tmp))
        self._set_meta(self.abs(tmp), owner)
        self._replace(real, tmp, pkg)
        self.ownership[real] = owner
        done.written.add(real)

    def _hardlink(self, name: str, target: str, pkg: str, done: Installed) -> None:
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
        done.written.add(real)

    def _conffile_changed(self, name: str, new: bytes, conffile_md5: dict[str, str] | None) -> bool:
        """dpkg --force-confold: keep the image's conffile when the image changed it."""
        real = self.real_path(name)
        if real is None:
            return False
        path = self.abs(real)
        if os.path.islink(path) or not os.path.isfile(path):
            return False
        current = _file_md5(path)
        if conffile_md5 is not None and name in conffile_md5:
            return current != conffile_md5[name]
        return current != hashlib.md5(new, usedforsecurity=False).hexdigest()

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

    # -- obsolete files ------------------------------------------------------------------------
    def remove_obsolete(self, old_paths: list[str], done: Installed, protected: set[str]) -> None:
        """Remove files the old version listed (md5sums) and the new one does not ship, unless
        another package lists them (protected: real paths) or the new version wrote them."""
        for name in sorted(set(old_paths) - done.deb_paths):
            real = self.real_path(name)
            if real is None or real in done.written or real in protected:
                continue
            try:
                st = os.lstat(self.abs(real))
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                os.unlink(self.abs(real))
                self.ownership.pop(real)
                done.removed.append(real)


def _member_name(pkg: str, raw: str) -> str:
    """A data.tar member name as a relative path; refuses escapes and whiteout names."""
    name = raw[2:] if raw.startswith("./") else raw.lstrip("/")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafeArchiveError(f"package {pkg}: member {raw!r} climbs out of the root")
    if any(p.startswith(wh.PREFIX) for p in parts):
        raise UnsafeArchiveError(f"package {pkg}: member {raw!r} uses the reserved prefix .wh.")
    return "/".join(parts)


def _file_md5(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()
