"""The package-manager adapter interface: one adapter per package manager (dpkg, apk, rpm).

The orchestrator (ocipatch/patch.py) knows no package manager: it asks the adapter of the
image (ocipatch/distro/registry.py ADAPTERS) for everything ecosystem-specific, in the order
detect -> read_db -> compare (the report's requirements) -> planner (the result-cache key) ->
flavour -> installer (plan -> apply -> verify) -> excluded / file_meta / notes (the layer) ->
purl (the VEX). This module holds that protocol and the records that cross it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol

from ocipatch.distro.detect import FileView, OsRelease

if TYPE_CHECKING:
    from ocipatch.context import Context
    from ocipatch.fs.changes import Change, Snapshot
    from ocipatch.fs.merged import MergedView
    from ocipatch.fs.unpack import OwnershipMap
    from ocipatch.oci.types import Platform
    from ocipatch.progress import Progress
    from ocipatch.sandbox.base import Sandbox

# Never part of a layer whatever the package manager: scratch space, logs, the sandbox's mount
# points and the run's own cache. Every adapter's excluded() leaves these out (and may more).
ALWAYS_EXCLUDED = ("proc", "sys", "dev", "run", "tmp", "var/tmp", "var/log", "var/cache/ocipatch")


def excluded_by(trees: Sequence[str], path: str) -> bool:
    """Whether path is one of trees or below one."""
    return any(path == t or path.startswith(t + "/") for t in trees)


def always_excluded(path: str) -> bool:
    return excluded_by(ALWAYS_EXCLUDED, path)


@dataclass(frozen=True, order=True)
class InstalledPackage:
    name: str
    version: str
    arch: str
    source: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "arch": self.arch}


class Action(enum.StrEnum):
    """What a plan does with a package (the strings are the JSON output's)."""

    UPDATE = "update"
    SKIP = "skip"


class Flavour(enum.Enum):
    """How an image's packages are installed."""

    NATIVE = "native"  # the image's own package manager, run in a sandbox over the rootfs
    TOOLING = "tooling"  # a tooling image's package manager over the rootfs (distroless)
    DIRECT = "direct"  # ocipatch writes the packages' files itself; no script runs


class PackageChange(NamedTuple):
    """One updated package: `old` is "" for a package the update newly installs."""

    name: str
    old: str
    new: str


@dataclass(frozen=True)
class Requirement:
    """A package that must end at `minimum` or above (None: whatever is newest)."""

    name: str
    minimum: str | None
    vulnerabilities: tuple[str, ...] = ()


@dataclass
class PlanItem:
    name: str
    installed: str
    required: str | None
    available: str | None
    action: Action
    reason: str = ""
    vulnerabilities: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "installed": self.installed,
            "required": self.required,
            "available": self.available,
            "action": str(self.action),
            "reason": self.reason,
        }


@dataclass
class Plan:
    items: list[PlanItem]

    @property
    def updates(self) -> list[PlanItem]:
        return [i for i in self.items if i.action == Action.UPDATE]

    @property
    def skipped(self) -> list[PlanItem]:
        return [i for i in self.items if i.action == Action.SKIP]


@dataclass
class ApplyOutcome:
    updated: list[PackageChange] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    output: str = ""
    # The package files that were installed: the patch layer takes owners and modes from them.
    packages: list[Path] = field(default_factory=list)


class Patcher(Protocol):
    """The patch steps of an adapter, over an unpacked rootfs."""

    def plan(
        self,
        installed: list[InstalledPackage],
        requirements: list[Requirement] | None,
        *,
        ignore_errors: bool = False,
    ) -> Plan: ...

    def apply(self, plan: Plan) -> ApplyOutcome: ...

    def verify(self, plan: Plan, *, ignore_errors: bool = False) -> list[PlanItem]: ...


@dataclass
class InstallEnv:
    """What an installer works with: the unpacked tree and the run's settings."""

    ctx: Context
    rootfs: Path
    ownership: OwnershipMap
    work: Path  # the run's scratch directory (logs, empty lists)
    snapshot: Future[Snapshot]  # the tree before the patch (a tooling install waits for it)
    sandbox: Sandbox | None  # None: --sandbox none
    osr: OsRelease | None
    platform: Platform
    progress: Progress
    timeout: float | None
    mirrors: list[tuple[str, str]]
    insecure: bool
    tooling_image: str | None


@dataclass(frozen=True)
class KeyInputs:
    """What the result-cache key holds besides the plan (ocipatch/resultcache.py)."""

    layers: list[str]  # the digests of every layer the patch starts from
    requirements: list[Requirement] | None
    sandboxed: bool  # whether the install runs scripts (--sandbox none does not)
    compression: str
    ignore_errors: bool
    mirrors: list[tuple[str, str]]
    times: dict[str, int | None]  # the layer time's inputs besides the packages


class Planner(Protocol):
    """Plans from the repositories' signed indices, read through the merged layers before
    (or while) the tree is unpacked: the result-cache key, and the plan's packages fetched
    ahead so the installer finds them in place."""

    def key(self, *, fetch: bool) -> str | None:
        """Plan and return the result key (None: no plan here, nothing is cached); fetch the
        plan's packages right away when `fetch`, else on fetch()."""
        ...

    def fetch(self) -> None: ...

    def started(self, planning: Future[Any]) -> None:
        """The thread that runs key()/fetch(): waiting for packages ends if it fails."""
        ...

    def wait(self) -> None:
        """Until the fetched-ahead packages are in place (or planning failed)."""
        ...


@dataclass
class Dated:
    """The layer's changes with the packages' owners, modes and times, and the newest time
    a package gave a file (the layer time's input)."""

    changes: list[Change]
    newest: int


@dataclass(frozen=True)
class Replay:
    """A re-patch: the previous patch layer (the layers above `keep`) of `view`."""

    view: MergedView
    keep: int


class PackageManager(Protocol):
    """Everything ecosystem-specific the orchestrator needs. An instance serves one run (it
    may keep what planning read for the installer and the layer)."""

    name: ClassVar[str]  # "dpkg" | "apk" | "rpm"
    ecosystem: ClassVar[str]  # version rule and purl type: "deb" | "apk" | "rpm"
    supported: ClassVar[bool]  # False: detected only, to say it is not supported yet
    # What planning reads through the merged layers (trees walked, files), besides the
    # repositories: the result key depends on these. Empty: no planner.
    state_paths: ClassVar[tuple[str, ...]]

    @classmethod
    def detect(cls, view: FileView) -> bool: ...

    def read_db(self, view: FileView) -> list[InstalledPackage]: ...

    def compare(self, a: str, b: str) -> int:
        """The ecosystem's version order: -1, 0 or 1."""
        ...

    def planner(self, ctx: Context, view: MergedView, inputs: KeyInputs) -> Planner | None:
        """The result-cache planner, or None when this image cannot be planned ahead."""
        ...

    def flavour(self, view: FileView, sandbox: Sandbox | None) -> Flavour: ...

    def installer(self, env: InstallEnv, flavour: Flavour) -> Patcher: ...

    def excluded(self, path: str) -> bool:
        """Paths never part of a layer (caches, logs, lists)."""
        ...

    def file_meta(
        self, changes: list[Change], rootfs: Path, packages: Sequence[Path], replay: Replay | None
    ) -> Dated:
        """Owners, modes and times of the changed files from the package files installed."""
        ...

    def notes(self, changes: Sequence[Change]) -> list[str]:
        """What the user should know about changed files (e.g. kept configuration files)."""
        ...

    def purl(self, osr: OsRelease | None, name: str, version: str, arch: str) -> str: ...
