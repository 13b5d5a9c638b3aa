"""The package-manager adapter interface: one adapter per package manager (dpkg, apk, rpm).

Each adapter splits its work into steps the orchestrator calls in order:
read_db -> plan -> apply -> verify. This module holds the shared types and the registry of
adapters; detection asks each adapter in turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

from ocipatch.distro.detect import FileView


@dataclass(frozen=True, order=True)
class InstalledPackage:
    name: str
    version: str
    arch: str
    source: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "arch": self.arch}


class PackageManager(Protocol):
    """One package manager's knowledge: where its database lives and how to read it."""

    name: ClassVar[str]  # "dpkg" | "apk" | "rpm"
    ecosystem: ClassVar[str]  # version-comparison family: "deb" | "apk" | "rpm"

    @classmethod
    def detect(cls, view: FileView) -> bool: ...

    def read_db(self, view: FileView) -> list[InstalledPackage]: ...


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
    action: str  # "update" | "skip"
    reason: str = ""
    vulnerabilities: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "installed": self.installed,
            "required": self.required,
            "available": self.available,
            "action": self.action,
            "reason": self.reason,
        }


@dataclass
class Plan:
    items: list[PlanItem]

    @property
    def updates(self) -> list[PlanItem]:
        return [i for i in self.items if i.action == "update"]

    @property
    def skipped(self) -> list[PlanItem]:
        return [i for i in self.items if i.action == "skip"]


@dataclass
class ApplyOutcome:
    updated: list[tuple[str, str, str]] = field(default_factory=list)  # (name, from, to)
    notes: list[str] = field(default_factory=list)
    output: str = ""
    # The package files that were installed: the patch layer takes owners and modes from them.
    debs: list[Path] = field(default_factory=list)


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
