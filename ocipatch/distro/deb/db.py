"""Reading dpkg's database: /var/lib/dpkg/status, and distroless /var/lib/dpkg/status.d/*.

Versions are kept exactly as dpkg writes them (epoch included); only packages whose Status says
"installed" count, as `dpkg-query -W` shows them. Distroless stanzas often carry no Status line:
a stanza in status.d exists only for an installed package.
"""

from __future__ import annotations

from collections.abc import Iterator

from debian.deb822 import Deb822

from ocipatch.distro.base import InstalledPackage
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


def read_packages(view: FileView) -> list[InstalledPackage]:
    found: dict[tuple[str, str], InstalledPackage] = {}
    data = view.read_file(STATUS)
    if data is not None:
        for st in iter_stanzas(data):
            pkg = package_of(st)
            if pkg and is_installed(st, default=False):
                found[(pkg.name, pkg.arch)] = pkg
    files = status_d_files(view)
    if files:
        for blob in view.read_files(files).values():
            for st in iter_stanzas(blob):
                pkg = package_of(st)
                if pkg and is_installed(st, default=True):
                    found.setdefault((pkg.name, pkg.arch), pkg)
    return sorted(found.values())
