"""apk's choice of packages for a patch: what to upgrade, which new dependencies come along.

Rules (apk-tools' solver, reduced to an upgrade of what is installed):
- A package's candidates are the index entries named like it, from an untagged repository or
  from a repository whose `@tag` world pins the package with (`name@tag`); dependencies of a
  package taken from a tagged repository may come from that repository too.
- World constraints narrow the candidates: `name<2`, `name=1.2-r0`, `name~1.2`, `name><Q1...`
  (one exact package). The best candidate is the highest version; an upgrade never goes down.
- A requirement (a report's fixed version) needs the best candidate at or above it; none is
  ResolveError (exit 11) saying what is offered and why a newer one is not taken, unless
  `ignore_errors`, which lists it as skipped. Without requirements, every installed package
  with a newer candidate is upgraded.
- Dependencies (`D:`) of what is chosen must hold in the final system: names, versioned
  names, and provides (`so:`, `cmd:`, `pc:`, plain and versioned `p:`). One that no installed
  or chosen package meets pulls in its best provider: an installed package's upgrade first,
  then the dependency's own name, then the highest `k:` provider_priority, then the highest
  version. An installed package whose dependency an upgrade breaks is upgraded too, or the
  patch is refused. `!name` conflicts with the final system are refused.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ocipatch.distro.apk.records import Dependency, Record
from ocipatch.distro.apk.version import compare_versions
from ocipatch.distro.base import Action, Plan, PlanItem, Requirement
from ocipatch.errors import ResolveError

__all__ = ["Candidate", "Resolution", "resolve", "satisfies"]

TOO_OLD_HINT = (
    "the scanner's database is newer than the package repositories (a mirror that has not "
    "synced yet, or a fix not yet published); update or resync the mirror and rescan, or pass "
    "--ignore-errors to patch the rest and list these as skipped"
)
NOT_OFFERED_HINT = "check the package names and the image's /etc/apk/repositories"

_version_key = functools.cmp_to_key(compare_versions)


@dataclass(frozen=True)
class Candidate:
    """One package a repository offers."""

    entry: Record
    tag: str = ""  # the repository's `@tag`, "" when untagged
    repo: str = ""  # the repository's URL as the image names it
    url: str = ""  # where the .apk is fetched from

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def version(self) -> str:
        return self.entry.version


@dataclass
class Resolution:
    plan: Plan
    chosen: dict[str, Candidate] = field(default_factory=dict)  # updates and new packages
    notes: list[str] = field(default_factory=list)


def satisfies(rec: Record, dep: Dependency) -> bool:
    """Whether the package `rec` meets `dep` (conflict marks ignored), by name or provides."""
    if dep.op == "><":
        return rec.name == dep.name and rec.checksum == dep.version
    if rec.name == dep.name:
        return dep.matches_version(rec.version)
    # An unversioned provide meets only an unversioned dependency (apk's rule).
    return any(
        p.name == dep.name and (not dep.op or bool(p.version and dep.matches_version(p.version)))
        for p in rec.provides
    )


class _Solver:
    def __init__(
        self,
        installed: Sequence[Record],
        world: Sequence[Dependency],
        candidates: Sequence[Candidate],
    ) -> None:
        self.installed = {r.name: r for r in installed}
        self.world = [w for w in world if not w.conflict]
        self.banned = {w.name for w in world if w.conflict}
        self.candidates = candidates
        self.by_name: dict[str, list[Candidate]] = {}
        for c in candidates:
            self.by_name.setdefault(c.name, []).append(c)
        self.chosen: dict[str, Candidate] = {}
        self.reasons: dict[str, str] = {}
        self.notes: list[str] = []
        self.tags: dict[str, set[str]] = {}  # extra tags a package may come from (inherited)
        for w in self.world:
            if w.tag:
                self.tags.setdefault(w.name, set()).add(w.tag)

    # -- candidates ------------------------------------------------------------------------------
    def allowed_tag(self, c: Candidate) -> bool:
        return not c.tag or c.tag in self.tags.get(c.name, set())

    def world_ok(self, c: Candidate) -> bool:
        return all(satisfies(c.entry, w) for w in self.world if w.name == c.name)

    def usable(self, c: Candidate) -> bool:
        return c.name not in self.banned and self.allowed_tag(c) and self.world_ok(c)

    def best(self, name: str) -> Candidate | None:
        usable = [c for c in self.by_name.get(name, []) if self.usable(c)]
        return max(usable, key=lambda c: _version_key(c.version), default=None)

    def newest_offered(self, name: str) -> Candidate | None:
        return max(self.by_name.get(name, []), key=lambda c: _version_key(c.version), default=None)

    def why_not(self, name: str, minimum: str) -> str:
        """Why a candidate at or above minimum that exists is not taken ('' when none exists)."""
        for c in sorted(self.by_name.get(name, []), key=lambda c: _version_key(c.version)):
            if compare_versions(c.version, minimum) < 0:
                continue
            if not self.allowed_tag(c):
                return (
                    f" ({name} {c.version} is in the repository @{c.tag} {c.repo}, which "
                    f"/etc/apk/world does not pin it to: add {name}@{c.tag} to world to take it)"
                )
            bad = [str(w) for w in self.world if w.name == name and not satisfies(c.entry, w)]
            if bad:
                return (
                    f" (/etc/apk/world holds {', '.join(bad)}, which excludes {name} {c.version})"
                )
        return ""

    # -- the final system ------------------------------------------------------------------------
    def final(self) -> list[Record]:
        out = [self.chosen[n].entry if n in self.chosen else r for n, r in self.installed.items()]
        return out + [c.entry for n, c in self.chosen.items() if n not in self.installed]

    def met(self, dep: Dependency, system: Iterable[Record]) -> bool:
        return any(satisfies(r, dep) for r in system)

    def choose(self, c: Candidate, reason: str, parent_tag: str = "") -> None:
        self.chosen[c.name] = c
        self.reasons[c.name] = reason
        if parent_tag:
            self.tags.setdefault(c.name, set()).add(parent_tag)

    def provider(self, dep: Dependency, tag: str) -> Candidate | None:
        """The candidate apk would take to meet dep (tag: the depending package's repository)."""
        options = []
        for c in self.candidates:
            if not satisfies(c.entry, dep) or c.name in self.banned or not self.world_ok(c):
                continue
            if c.tag and c.tag != tag and not self.allowed_tag(c):
                continue
            inst = self.installed.get(c.name)
            if inst is not None and compare_versions(c.version, inst.version) <= 0:
                continue  # an installed package never goes down
            options.append(c)
        return max(
            options,
            key=lambda c: (
                c.name in self.installed or c.name in self.chosen,
                c.name == dep.name,
                c.entry.provider_priority,
                _version_key(c.version),
                [-ord(ch) for ch in c.name],
            ),
            default=None,
        )

    def close(self) -> None:
        """Add what the chosen packages need and what keeps the installed ones working."""
        changed = True
        while changed:
            changed = False
            for name in sorted(self.chosen):
                changed |= self._needs(self.chosen[name])
            changed |= self._keep_working()

    def _needs(self, c: Candidate) -> bool:
        system = self.final()
        for dep in c.entry.depends:
            if dep.conflict:
                clash = [r for r in system if r.name != c.name and satisfies(r, dep)]
                if clash:
                    raise ResolveError(
                        f"{c.name} {c.version} conflicts with {dep.name} (installed: "
                        f"{clash[0].name} {clash[0].version}), which a patch does not remove; "
                        "update the image with apk itself"
                    )
                continue
            if self.met(dep, system):
                continue
            if self._already_missing(c.name, dep):
                self.notes.append(
                    f"{c.name}: its dependency {dep} was already missing in the image "
                    "(built without it, as apko can); left so"
                )
                continue
            prov = self.provider(dep, c.tag)
            if prov is None:
                raise ResolveError(
                    f"{c.name} {c.version} depends on {dep}, which no installed package "
                    "provides and no repository offers: the repositories are incomplete or "
                    f"mixed; {NOT_OFFERED_HINT}"
                )
            self.choose(prov, f"dependency of {c.name} {c.version} ({dep})", c.tag)
            return True
        return False

    def _already_missing(self, name: str, dep: Dependency) -> bool:
        """The installed version had the same dependency, unmet: the image lives without it."""
        inst = self.installed.get(name)
        if inst is None:
            return False
        before = list(self.installed.values())
        return any(d.name == dep.name and not self.met(d, before) for d in inst.depends)

    def _keep_working(self) -> bool:
        system = self.final()
        for name, rec in sorted(self.installed.items()):
            if name in self.chosen:
                continue
            for dep in rec.depends:
                if dep.conflict or self.met(dep, system) or self._already_missing(name, dep):
                    continue
                cand = self.best(name)
                if cand is None or compare_versions(cand.version, rec.version) <= 0:
                    raise ResolveError(
                        f"the update breaks {name} {rec.version}, which depends on {dep}, and "
                        f"no newer {name} in the repositories fixes it: include {name} in the "
                        f"update or {NOT_OFFERED_HINT}"
                    )
                self.choose(cand, f"keeps working with the update ({dep})")
                return True
        return False


def _requirement_error(solver: _Solver, req: Requirement, repos: str) -> tuple[str, bool]:
    """(message, too_old) for a requirement no usable candidate meets."""
    best = solver.best(req.name)
    offered = best.version if best else "nothing"
    if solver.newest_offered(req.name) is None:
        return f"{req.name} is not offered by the repositories ({repos})", False
    if best is None and req.minimum is None:
        return f"{req.name} has no candidate the image's world allows ({repos})", False
    elsewhere = solver.why_not(req.name, req.minimum or "0")
    return (
        f"{req.name} needs {req.minimum or 'a newer version'} but the repositories ({repos}) "
        f"offer only {offered}{elsewhere}",
        True,
    )


def resolve(
    installed: Sequence[Record],
    world: Sequence[Dependency],
    candidates: Sequence[Candidate],
    requirements: Sequence[Requirement] | None,
    *,
    ignore_errors: bool = False,
) -> Resolution:
    """The plan for `requirements` (None: every upgradable package); see the module doc."""
    solver = _Solver(installed, world, candidates)
    reqs = (
        list(requirements)
        if requirements is not None
        else [Requirement(r.name, None) for r in installed]
    )
    wanted = {r.name: r for r in reqs}
    repos = ", ".join(sorted({c.repo for c in candidates if c.repo})) or "none"
    errors: list[str] = []
    skipped: list[PlanItem] = []
    too_old = False
    for req in sorted(reqs, key=lambda r: r.name):
        inst = solver.installed.get(req.name)
        if inst is None:
            skipped.append(_skip(req, "", f"{req.name} is not installed in the image"))
            continue
        if req.minimum is not None and compare_versions(inst.version, req.minimum) >= 0:
            continue  # already fixed
        cand = solver.best(req.name)
        newer = cand is not None and compare_versions(cand.version, inst.version) > 0
        if req.minimum is None and not newer:
            continue  # up to date
        if (
            cand is not None
            and newer
            and (req.minimum is None or compare_versions(cand.version, req.minimum) >= 0)
        ):
            solver.choose(cand, "required")
            continue
        msg, old = _requirement_error(solver, req, repos)
        too_old |= old
        if ignore_errors:
            skipped.append(_skip(req, inst.version, msg))
        else:
            errors.append(msg)
    if errors:
        raise ResolveError(
            "; ".join(errors) + ": " + (TOO_OLD_HINT if too_old else NOT_OFFERED_HINT)
        )
    solver.close()
    items = [
        PlanItem(
            name,
            inst.version if (inst := solver.installed.get(name)) else "",
            wanted[name].minimum if name in wanted else None,
            c.version,
            Action.UPDATE,
            "" if solver.reasons[name] == "required" else solver.reasons[name],
            wanted[name].vulnerabilities if name in wanted else (),
        )
        for name, c in solver.chosen.items()
    ]
    plan = Plan(sorted(items + skipped, key=lambda i: i.name))
    return Resolution(plan, dict(solver.chosen), sorted(set(solver.notes)))


def _skip(req: Requirement, installed: str, why: str) -> PlanItem:
    return PlanItem(req.name, installed, req.minimum, None, Action.SKIP, why, req.vulnerabilities)
