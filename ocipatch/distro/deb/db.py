"""Reading dpkg's database: /var/lib/dpkg/status, and distroless /var/lib/dpkg/status.d/*. The
one reader of both, for every caller: over an image's merged layers (a FileView) or over an
unpacked rootfs (DirView, paths resolved inside it).

Versions are kept exactly as dpkg writes them (epoch included); only packages whose Status says
"installed" count, as `dpkg-query -W` shows them. Distroless stanzas often carry no Status line:
a stanza in status.d exists only for an installed package.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from debian.deb822 import Deb822

from ocipatch.distro.base import InstalledPackage
from ocipatch.distro.deb.repos.sources import image_path
from ocipatch.distro.detect import FileView

STATUS = "var/lib/dpkg/status"
STATUS_D = "var/lib/dpkg/status.d"


def iter_stanzas(data: bytes) -> Iterator[Deb822]:
    yield from Deb822.iter_paragraphs(data.decode("utf-8", "replace").splitlines(keepends=True))


def is_installed(stanza: Deb822, default: bool) -> bool:
    status = stanza.get("Status")
    if status is None:
        return default
    words = status.split()
    return len(words) == 3 and words[2] == "installed"


def package_of(stanza: Deb822) -> InstalledPackage | None:
    name = stanza.get("Package")
    version = stanza.get("Version")
    if not name or not version:
        return None
    source = stanza.get("Source", "").split(" ", 1)[0]
    return InstalledPackage(
        name.strip(), version.strip(), stanza.get("Architecture", "").strip(), source
    )


def status_d_files(view: FileView) -> list[str]:
    """The stanza files in status.d: every file but the *.md5sums beside them (package names
    may hold dots, e.g. libpython3.11-minimal, so only that suffix is excluded)."""
    if not view.exists(STATUS_D):
        return []
    return [f"{STATUS_D}/{n}" for n in view.listdir(STATUS_D) if not n.endswith(".md5sums")]


class DirView:
    """A FileView over an unpacked rootfs: parents resolved inside it as in a chroot, the final
    component never followed (a symlinked database file is not read)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, path: str) -> Path:
        parent, _, name = path.strip("/").rpartition("/")
        return image_path(self.root, "/" + parent) / name

    def exists(self, path: str) -> bool:
        return os.path.lexists(self._path(path))

    def read_file(self, path: str) -> bytes | None:
        p = self._path(path)
        return p.read_bytes() if p.is_file() and not p.is_symlink() else None

    def listdir(self, path: str) -> list[str]:
        p = self._path(path)
        return sorted(os.listdir(p)) if p.is_dir() and not p.is_symlink() else []

    def read_files(self, paths: list[str]) -> dict[str, bytes]:
        found = ((p, self.read_file(p)) for p in paths)
        return {p: data for p, data in found if data is not None}


def status_stanzas(view: FileView, *, installed_only: bool = True) -> Iterator[Deb822]:
    """The status file's stanzas (of installed packages only, unless told otherwise)."""
    data = view.read_file(STATUS)
    for st in iter_stanzas(data) if data is not None else ():
        if not installed_only or is_installed(st, default=False):
            yield st


def status_d_stanzas(view: FileView) -> Iterator[Deb822]:
    """The stanzas of distroless status.d files: installed unless their Status says not."""
    files = status_d_files(view)
    for blob in view.read_files(files).values() if files else ():
        for st in iter_stanzas(blob):
            if is_installed(st, default=True):
                yield st


def read_packages(view: FileView) -> list[InstalledPackage]:
    found: dict[tuple[str, str], InstalledPackage] = {}
    for st in status_stanzas(view):
        pkg = package_of(st)
        if pkg:
            found[(pkg.name, pkg.arch)] = pkg
    for st in status_d_stanzas(view):
        pkg = package_of(st)
        if pkg:
            found.setdefault((pkg.name, pkg.arch), pkg)
    return sorted(found.values())
