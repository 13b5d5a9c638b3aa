"""Reading dpkg's database: /var/lib/dpkg/status, and distroless /var/lib/dpkg/status.d/*. The
one reader of both, for every caller: over an image's merged layers (a FileView) or over an
unpacked rootfs (DirView, paths resolved inside it).

Versions are kept exactly as dpkg writes them (epoch included); only packages whose Status says
"installed" count, as `dpkg-query -W` shows them. Distroless stanzas often carry no Status line:
a stanza in status.d exists only for an installed package.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from debian.deb822 import Deb822

from ocipatch.distro.base import InstalledPackage
from ocipatch.distro.deb.repos.sources import image_path
from ocipatch.distro.deb.rules import is_deb_version
from ocipatch.distro.detect import FileView
from ocipatch.errors import ImageFormatError

STATUS = "var/lib/dpkg/status"
STATUS_D = "var/lib/dpkg/status.d"


# dpkg ends a line at "\n" only. str.splitlines() and python-debian's value check also break at
# \r, \v, \f, \x1c-\x1e, \x85, \u2028 and \u2029, so one of those inside a Description made
# the whole database unreadable (ValueError); for parsing they read as spaces.
_OTHER_BREAKS = str.maketrans(dict.fromkeys("\r\v\f\x1c\x1d\x1e\x85\u2028\u2029", " "))


def control_lines(text: str) -> list[str]:
    """deb822 text (a dpkg database, a Packages or Release file) as lines the way dpkg and apt
    split it, ready for python-debian."""
    return text.translate(_OTHER_BREAKS).split("\n")


def iter_stanzas(data: bytes) -> Iterator[Deb822]:
    yield from Deb822.iter_paragraphs(control_lines(data.decode("utf-8", "replace")))


def is_installed(stanza: Deb822, default: bool) -> bool:
    status = stanza.get("Status")
    if status is None:
        return default
    words = status.split()
    return len(words) == 3 and words[2] == "installed"


def damaged(detail: str) -> ImageFormatError:
    return ImageFormatError(
        f"the image's dpkg database is damaged: {detail}; dpkg and apt cannot work on it either"
    )


def check_version(name: str, version: str, what: str = "version") -> None:
    """ImageFormatError unless `version` is a Debian version (ordering it would fail later)."""
    if not is_deb_version(version):
        raise damaged(f"package {name!r} has {what} {version!r}, which is not a Debian version")


# python-debian hands back an alternative it cannot parse as its raw text, in place of a name.
_PACKAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9+.\-]*")


def relation_problem(alt: Mapping[str, Any]) -> str | None:
    """What is wrong with one parsed alternative of a relation field, or None."""
    name = str(alt.get("name", ""))
    if not _PACKAGE_NAME.fullmatch(name):
        return f"a relation {name!r} that is not NAME [(OP VERSION)]"
    version = alt.get("version")
    if version and not is_deb_version(version[1]):
        return f"a relation on {name} at version {version[1]!r}, which is not a Debian version"
    return None


def package_of(stanza: Deb822) -> InstalledPackage | None:
    name = stanza.get("Package")
    version = stanza.get("Version")
    if not name or not version:
        return None
    check_version(name.strip(), version.strip())
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
