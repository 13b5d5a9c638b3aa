"""A fake package manager behind the PackageManager protocol (ocipatch/distro/base.py): drives
the orchestrator (ocipatch/patch.py) through every path in seconds, with real images and real
OCI layouts and no package manager.

Its database is `var/lib/fake/db`, one `name version` line per package; its repository is
`FakeRepo` (in memory): each package version ships `usr/share/fake/<name>` holding
`<name> <version>`. A package marked broken installs its file but not its DB entry, so the
orchestrator's verify step sees it still at the old version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ocipatch.context import Context
from ocipatch.distro.base import (
    ALWAYS_EXCLUDED,
    Action,
    ApplyOutcome,
    Dated,
    Flavour,
    InstalledPackage,
    InstallEnv,
    KeyInputs,
    PackageChange,
    Patcher,
    Plan,
    PlanItem,
    Planner,
    Replay,
    Requirement,
    excluded_by,
)
from ocipatch.distro.detect import FileView, OsRelease
from ocipatch.errors import VerifyError
from ocipatch.fs.changes import Change
from ocipatch.fs.merged import MergedView
from ocipatch.resultcache import result_key
from ocipatch.sandbox.base import Sandbox

DB = "var/lib/fake/db"
CACHE = "var/cache/fake"


def parse_db(data: bytes) -> dict[str, str]:
    out = {}
    for line in data.decode().splitlines():
        if line.strip():
            name, version = line.split()
            out[name] = version
    return out


def db_bytes(packages: dict[str, str]) -> bytes:
    return "".join(f"{n} {v}\n" for n, v in sorted(packages.items())).encode()


def version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


@dataclass
class FakeRepo:
    """What the fake repository offers: name -> newest version; broken names do not install."""

    versions: dict[str, str] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)


@dataclass
class Calls:
    """What the orchestrator asked of the fake, by step."""

    keys: int = 0
    installers: int = 0
    applies: int = 0
    flavours: list[Flavour] = field(default_factory=list)


class FakePM:
    name: ClassVar[str] = "fake"
    ecosystem: ClassVar[str] = "fake"
    supported: ClassVar[bool] = True
    state_paths: ClassVar[tuple[str, ...]] = (DB,)
    repo: ClassVar[FakeRepo] = FakeRepo()
    calls: ClassVar[Calls] = Calls()

    @classmethod
    def detect(cls, view: FileView) -> bool:
        return view.exists(DB)

    def read_db(self, view: FileView) -> list[InstalledPackage]:
        data = view.read_file(DB) or b""
        return [InstalledPackage(n, v, "all") for n, v in sorted(parse_db(data).items())]

    def compare(self, a: str, b: str) -> int:
        ka, kb = version_key(a), version_key(b)
        return (ka > kb) - (ka < kb)

    def planner(self, ctx: Context, view: MergedView, inputs: KeyInputs) -> Planner | None:
        return FakePlanner(self, view, inputs)

    def flavour(self, view: FileView, sandbox: Sandbox | None) -> Flavour:
        flavour = Flavour.DIRECT if sandbox is None else Flavour.NATIVE
        self.calls.flavours.append(flavour)
        return flavour

    def installer(self, env: InstallEnv, flavour: Flavour) -> Patcher:
        self.calls.installers += 1
        return FakePatcher(self, env.rootfs)

    def excluded(self, path: str) -> bool:
        return excluded_by((*ALWAYS_EXCLUDED, CACHE), path)

    def file_meta(
        self, changes: list[Change], rootfs: Path, packages: Sequence[Path], replay: Replay | None
    ) -> Dated:
        # No package files to read: every entry takes the layer time.
        return Dated([dataclasses.replace(c, mtime=None) for c in changes], 0)

    def notes(self, changes: Sequence[Change]) -> list[str]:
        return [f"fake: /{c.path} changed" for c in changes if c.path == DB]

    def purl(self, osr: OsRelease | None, name: str, version: str, arch: str) -> str:
        return f"pkg:generic/{name}@{version}?arch={arch}"

    def plan(self, installed: dict[str, str], reqs: list[Requirement] | None) -> Plan:
        wanted = reqs or [Requirement(n, None) for n in sorted(installed)]
        items = []
        for r in wanted:
            have, offered = installed.get(r.name, ""), self.repo.versions.get(r.name)
            item = PlanItem(r.name, have, r.minimum, offered, Action.UPDATE, "", r.vulnerabilities)
            if offered is None or (have and self.compare(offered, have) <= 0):
                item.action, item.reason = Action.SKIP, "no newer version"
            elif r.minimum is not None and self.compare(offered, r.minimum) < 0:
                item.action, item.reason = Action.SKIP, f"only {offered} available"
            items.append(item)
        return Plan(items)


class FakePlanner:
    def __init__(self, pm: FakePM, view: MergedView, inputs: KeyInputs) -> None:
        self.pm, self.view, self.inputs = pm, view, inputs

    def key(self, *, fetch: bool) -> str | None:
        self.pm.calls.keys += 1
        installed = {p.name: p.version for p in self.pm.read_db(self.view)}
        plan = self.pm.plan(installed, self.inputs.requirements)
        doc = [[i.name, i.available, str(i.action)] for i in plan.items]
        return result_key(self.inputs, {"install": doc, "broken": sorted(self.pm.repo.broken)})

    def fetch(self) -> None:
        pass

    def started(self, planning: Future[Any]) -> None:
        pass

    def wait(self) -> None:
        pass


class FakePatcher:
    def __init__(self, pm: FakePM, rootfs: Path) -> None:
        self.pm, self.rootfs = pm, rootfs

    def _db(self) -> dict[str, str]:
        path = self.rootfs / DB
        return parse_db(path.read_bytes()) if path.exists() else {}

    def plan(
        self,
        installed: list[InstalledPackage],
        requirements: list[Requirement] | None,
        *,
        ignore_errors: bool = False,
    ) -> Plan:
        return self.pm.plan({p.name: p.version for p in installed}, requirements)

    def apply(self, plan: Plan) -> ApplyOutcome:
        self.pm.calls.applies += 1
        db, outcome = self._db(), ApplyOutcome()
        for item in plan.updates:
            assert item.available is not None
            target = self.rootfs / "usr/share/fake" / item.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f"{item.name} {item.available}\n")
            (self.rootfs / CACHE).mkdir(parents=True, exist_ok=True)
            (self.rootfs / CACHE / f"{item.name}.pkg").write_text("downloaded")  # never layered
            if item.name not in self.pm.repo.broken:
                db[item.name] = item.available
                outcome.updated.append(PackageChange(item.name, item.installed, item.available))
        (self.rootfs / DB).write_bytes(db_bytes(db))
        return outcome

    def verify(self, plan: Plan, *, ignore_errors: bool = False) -> list[PlanItem]:
        db, failed = self._db(), []
        for item in plan.updates:
            if db.get(item.name) != item.available:
                item.action, item.reason = Action.SKIP, f"still at {db.get(item.name)}"
                failed.append(item)
        if failed and not ignore_errors:
            raise VerifyError("; ".join(f"{i.name} is {i.reason}" for i in failed))
        return failed


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_layout(layout: Path, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, config) of the image tagged `tag`, read with json (not with ocipatch)."""
    index = json.loads((layout / "index.json").read_text())
    desc = next(
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    )
    blob = layout / "blobs" / "sha256"
    manifest = json.loads((blob / desc["digest"].split(":")[1]).read_bytes())
    config = json.loads((blob / manifest["config"]["digest"].split(":")[1]).read_bytes())
    return manifest, config
