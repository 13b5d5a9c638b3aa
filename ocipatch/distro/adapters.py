"""The table of package-manager adapters and detection over an image's filesystem."""

from __future__ import annotations

from typing import ClassVar

from ocipatch.distro.base import InstalledPackage, PackageManager
from ocipatch.distro.deb.db import STATUS, STATUS_D, read_packages
from ocipatch.distro.detect import FileView
from ocipatch.errors import UnsupportedError


class Dpkg:
    name: ClassVar[str] = "dpkg"
    ecosystem: ClassVar[str] = "deb"

    @classmethod
    def detect(cls, view: FileView) -> bool:
        return view.exists(STATUS) or view.exists(STATUS_D)

    @classmethod
    def is_distroless(cls, view: FileView) -> bool:
        return view.exists(STATUS_D) and not view.exists(STATUS)

    def read_db(self, view: FileView) -> list[InstalledPackage]:
        return read_packages(view)


class _NotYet:
    """A package manager we detect so that we can say so, but do not read yet."""

    name: ClassVar[str] = ""
    ecosystem: ClassVar[str] = ""
    paths: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def detect(cls, view: FileView) -> bool:
        return any(view.exists(p) for p in cls.paths)

    def read_db(self, view: FileView) -> list[InstalledPackage]:
        raise UnsupportedError(
            f"{self.name} images are not supported yet: ocipatch handles dpkg (Debian, Ubuntu) today"
        )


class Apk(_NotYet):
    name = "apk"
    ecosystem = "apk"
    paths = ("lib/apk/db/installed",)


class Rpm(_NotYet):
    name = "rpm"
    ecosystem = "rpm"
    paths = (
        "var/lib/rpm/Packages",
        "var/lib/rpm/Packages.db",
        "var/lib/rpm/rpmdb.sqlite",
        "usr/lib/sysimage/rpm/rpmdb.sqlite",
        "usr/lib/sysimage/rpm/Packages.db",
        "var/lib/rpmmanifest/container-manifest-2",
    )


ADAPTERS: tuple[type[PackageManager], ...] = (Dpkg, Apk, Rpm)


def detect(view: FileView) -> PackageManager | None:
    for cls in ADAPTERS:
        if cls.detect(view):
            return cls()
    return None
