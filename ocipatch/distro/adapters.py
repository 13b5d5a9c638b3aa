"""The base of package managers ocipatch detects but does not patch yet (none today): each says so in
one line, and answers the rest of the PackageManager protocol (distro/base.py) with its
ecosystem's rules, so the contract tests hold for it already. A real adapter replaces its
class in the table (distro/registry.py ADAPTERS) when its patcher lands."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from ocipatch.context import Context
from ocipatch.distro.base import (
    ALWAYS_EXCLUDED,
    Dated,
    Flavour,
    InstalledPackage,
    InstallEnv,
    KeyInputs,
    Patcher,
    Planner,
    Replay,
    excluded_by,
)
from ocipatch.distro.detect import FileView, OsRelease
from ocipatch.distro.versions import comparator
from ocipatch.errors import UnsupportedError
from ocipatch.fs.changes import Change
from ocipatch.fs.merged import MergedView
from ocipatch.sandbox.base import Sandbox
from ocipatch.vex import package_purl


class _NotYet:
    """A package manager we detect so that we can say so, but do not patch yet."""

    name: ClassVar[str] = ""
    ecosystem: ClassVar[str] = ""
    supported: ClassVar[bool] = False
    state_paths: ClassVar[tuple[str, ...]] = ()  # no planner
    paths: ClassVar[tuple[str, ...]] = ()  # its installed-package database, any of these
    caches: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def detect(cls, view: FileView) -> bool:
        return any(view.exists(p) for p in cls.paths)

    def _unsupported(self) -> UnsupportedError:
        return UnsupportedError(
            f"{self.name} images are not supported yet: ocipatch handles dpkg (Debian, Ubuntu) today"
        )

    def read_db(self, view: FileView) -> list[InstalledPackage]:
        raise self._unsupported()

    def compare(self, a: str, b: str) -> int:
        return comparator(self.ecosystem)(a, b)

    def planner(self, ctx: Context, view: MergedView, inputs: KeyInputs) -> Planner | None:
        return None

    def flavour(self, view: FileView, sandbox: Sandbox | None) -> Flavour:
        raise self._unsupported()

    def installer(self, env: InstallEnv, flavour: Flavour) -> Patcher:
        raise self._unsupported()

    def excluded(self, path: str) -> bool:
        return excluded_by((*ALWAYS_EXCLUDED, *self.caches), path)

    def file_meta(
        self, changes: list[Change], rootfs: Path, packages: Sequence[Path], replay: Replay | None
    ) -> Dated:
        return Dated(changes, max((c.mtime for c in changes if c.mtime is not None), default=0))

    def notes(self, changes: Sequence[Change]) -> list[str]:
        return []

    def purl(self, osr: OsRelease | None, name: str, version: str, arch: str) -> str:
        distro_id, distro_version = (osr.id, osr.version_id) if osr else (self.name, None)
        return package_purl(self.ecosystem, distro_id, name, version, arch, distro_version)
