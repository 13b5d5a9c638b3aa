"""The table of package managers (ADAPTERS) and detection over an image's filesystem."""

from __future__ import annotations

from ocipatch.distro.apk.adapter import Apk
from ocipatch.distro.base import PackageManager
from ocipatch.distro.deb.adapter import Dpkg
from ocipatch.distro.detect import FileView
from ocipatch.distro.rpm.adapter import Rpm

# Asked in order; the first whose database the image holds patches it. A list, not a tuple,
# so a test can register an adapter of its own (tests/fake_adapter.py).
ADAPTERS: list[type[PackageManager]] = [Dpkg, Apk, Rpm]


def detect(view: FileView) -> PackageManager | None:
    for cls in ADAPTERS:
        if cls.detect(view):
            return cls()
    return None


def supported_ecosystems() -> set[str]:
    """The ecosystems of the adapters that patch (a report of another is refused early)."""
    return {cls.ecosystem for cls in ADAPTERS if cls.supported}


def known_names() -> str:
    """The package managers detected, for messages: "dpkg, apk or rpm"."""
    names = [cls.name for cls in ADAPTERS]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
