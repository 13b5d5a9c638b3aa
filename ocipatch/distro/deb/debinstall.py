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

import zstandard
from debian.deb822 import Deb822

from ocipatch.distro.deb.debmeta import control_files, open_data_tar
from ocipatch.errors import IntegrityError, UnsafeArchiveError
from ocipatch.fs import whiteout as wh
from ocipatch.fs.rootwriter import RootWriter
from ocipatch.fs.unpack import Owner

MAINTAINER_SCRIPTS = ("preinst", "postinst", "prerm", "postrm", "config", "triggers")
_DPKG_DIST = ".dpkg-dist"  # dpkg --force-confold: the package's conffile beside the kept one


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


class RootInstaller(RootWriter):
    """Writes .debs' payloads into `root` (dpkg's rules above), keeping `ownership` up to date."""

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
                self._record(done, self.directory(name, owner, pkg.name))
            elif m.isreg() and name in conffiles:
                src = tar.extractfile(m)
                data = src.read() if src is not None else b""
                done.conffile_md5[name] = hashlib.md5(data, usedforsecurity=False).hexdigest()
                keep = self._conffile_changed(name, data, conffile_md5)
                if keep:
                    done.kept_conffiles.append(self._place(name, pkg.name))
                suffix = _DPKG_DIST if keep else ""
                written = self.file(name, io.BytesIO(data), owner, pkg.name, suffix=suffix)
                self._record(done, written)
            elif m.isreg():
                self._record(done, self.file(name, tar.extractfile(m), owner, pkg.name))
            elif m.issym():
                self._record(done, self.symlink(name, owner, pkg.name))
            elif m.islnk():
                target = _member_name(pkg.name, m.linkname)
                self._record(done, self.hardlink(name, target, pkg.name))
            else:
                raise IntegrityError(
                    f"package {pkg.path.name} holds {m.name!r} of a type dpkg does not install "
                    "(device or fifo)"
                )

    @staticmethod
    def _record(done: Installed, real: str | None) -> None:
        if real is not None:
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
