"""dnf's choice of packages for a patch, reduced to an upgrade of what is installed.

Rules:
- A package's candidates are the repository entries of its name (from the repositories of the
  best `priority=` that offer the name), of its arch or noarch (an
  installed noarch package may become any arch the image runs); each installed arch of a
  multilib name is upgraded on its own. The best candidate is the highest EVR (rpmvercmp,
  epoch absent = 0); an upgrade never goes down.
- A requirement (a report's fixed version) needs the best candidate at or above it, else a
  candidate that obsoletes the installed package; none is ResolveError (exit 11) saying what is
  offered, unless `ignore_errors`, which lists it as skipped. Without requirements, every
  installed package with a newer candidate is upgraded, and obsoleted ones replaced.
- Requires of what is chosen must hold in the final system: package names, provides
  (versioned with rpm's overlap rule: an unversioned provide meets any version), sonames
  (`libc.so.6()(64bit)`) and file provides (`/usr/bin/sh`, from the installed headers' file
  lists and primary's `<file>` entries). An unmet one pulls in its best provider: an installed
  package's upgrade first, then the dependency's own name, then the same arch, then the
  highest EVR. `rpmlib(...)` and rich (boolean) dependencies are not solved here (noted).
  An installed package whose requires an upgrade breaks is upgraded too, or the patch is
  refused. Conflicts of a chosen package with the final system are refused.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ocipatch.distro.base import Action, Plan, PlanItem, Requirement
from ocipatch.distro.rpm.header import Dependency, Package
from ocipatch.distro.rpm.repos import RpmCandidate
from ocipatch.distro.rpm.version import compare_evr, dep_matches, split_evr
from ocipatch.errors import ResolveError

__all__ = ["Resolution", "resolve"]

TOO_OLD_HINT = (
    "the scanner's database is newer than the package repositories (a mirror that has not "
    "synced yet, or a fix not yet published); update or resync the mirror and rescan, or pass "
    "--ignore-errors to patch the rest and list these as skipped"
)
NOT_OFFERED_HINT = "check the package names and the image's /etc/yum.repos.d (or /etc/zypp/repos.d)"

Key = tuple[str, str]  # (name, arch) of an installed package


@dataclass(frozen=True)
class _Pkg:
    """What the solver needs of an installed package or a candidate."""

    name: str
    arch: str
    evr: str
    provides: tuple[Dependency, ...]
    requires: tuple[Dependency, ...]
    obsoletes: tuple[Dependency, ...]
    conflicts: tuple[Dependency, ...]
    files: frozenset[str]
    complete_files: bool = True  # False: primary.xml, which lists only some paths


def in_primary_scope(path: str) -> bool:
    """The files createrepo_c lists in primary.xml: /etc/*, */bin/*, /usr/lib/sendmail."""
    return path.startswith("/etc/") or "bin/" in path or path == "/usr/lib/sendmail"


def _installed(p: Package) -> _Pkg:
    h = p.header is not None
    return _Pkg(
        p.name,
        p.arch or "noarch",
        p.evr,
        tuple(p.provides()) if h else (),
        tuple(p.requires()) if h else (),
        tuple(p.obsoletes()) if h else (),
        tuple(p.conflicts()) if h else (),
        frozenset(f.path for f in p.files()) if h else frozenset(),
    )


def _candidate(c: RpmCandidate) -> _Pkg:
    e = c.entry
    return _Pkg(
        e.name,
        e.arch,
        e.evr,
        e.provides,
        e.requires,
        e.obsoletes,
        e.conflicts,
        frozenset(e.files),
        complete_files=False,
    )


_evr_key = functools.cmp_to_key(compare_evr)


def _twin(p: Package, same: dict[tuple[str, str, str], RpmCandidate]) -> RpmCandidate | None:
    """The repository entry of exactly this installed NEVRA (epoch absent or 0 alike)."""
    arch = p.arch or "noarch"
    evr = f"{p.version}-{p.release}"
    return same.get((p.name, arch, f"{p.epoch}:{evr}" if p.epoch else evr))


def _overlaps(provide: Dependency, dep: Dependency) -> bool:
    """rpm's rpmdsCompare: do a provide's and a require's version ranges meet?"""
    if not provide.op or not dep.op or not provide.version or not dep.version:
        return True
    if provide.op == "=":
        return dep_matches(provide.version, dep.op, dep.version)
    if dep.op == "=":
        return dep_matches(dep.version, provide.op, provide.version)
    rc = compare_evr(split_evr(provide.version), split_evr(dep.version), release_optional=True)
    lo_p, lo_d = "<" in provide.op, "<" in dep.op
    if lo_p == lo_d:
        return True  # both open in the same direction
    if rc == 0:
        return "=" in provide.op and "=" in dep.op
    return (rc < 0) == lo_d  # e.g. provide >= 1, require < 2


def provides(pkg: _Pkg, dep: Dependency) -> bool:
    """Whether `pkg` meets `dep` (a name, a provide, or a file it holds)."""
    if dep.name.startswith("/") and dep.name in pkg.files:
        return True
    if pkg.name == dep.name and _overlaps(Dependency(pkg.name, 8, pkg.evr), dep):
        return True
    return any(p.name == dep.name and _overlaps(p, dep) for p in pkg.provides)


class _Index:
    """What a set of packages provides, by name: its own name, its provides, its files."""

    def __init__(self, pkgs: Iterable[_Pkg]) -> None:
        self.by_name: dict[str, list[tuple[_Pkg, Dependency | None]]] = {}
        self.pkgs = list(pkgs)
        for p in self.pkgs:
            self.by_name.setdefault(p.name, []).append((p, Dependency(p.name, 8, p.evr)))
            for d in p.provides:
                self.by_name.setdefault(d.name, []).append((p, d))
            for f in p.files:
                self.by_name.setdefault(f, []).append((p, None))

    def providers(self, dep: Dependency) -> list[_Pkg]:
        return [p for p, d in self.by_name.get(dep.name, []) if d is None or _overlaps(d, dep)]


def _solvable(dep: Dependency) -> bool:
    """rpmlib() features are the installer's; rich (boolean) dependencies are not solved."""
    return not dep.name.startswith(("rpmlib(", "("))


@dataclass
class Resolution:
    plan: Plan
    chosen: dict[Key, RpmCandidate] = field(default_factory=dict)  # by what it replaces/adds
    replaces: dict[Key, list[Key]] = field(default_factory=dict)  # obsoleted installed packages
    notes: list[str] = field(default_factory=list)


def _by_priority(candidates: Sequence[RpmCandidate]) -> list[RpmCandidate]:
    """dnf's priority=: a name offered by a higher-priority (lower number) repository is taken
    only from there, whatever version the others have."""
    top: dict[str, int] = {}
    for c in candidates:
        top[c.name] = min(top.get(c.name, c.priority), c.priority)
    return [c for c in candidates if c.priority == top[c.name]]


class _Solver:
    def __init__(self, installed: Sequence[Package], candidates: Sequence[RpmCandidate]) -> None:
        self.candidates = _by_priority(candidates)
        kept = {id(c) for c in self.candidates}
        self.outranked = [c for c in candidates if id(c) not in kept]
        same = {(c.name, c.entry.arch, c.entry.evr): c for c in self.candidates}
        self.installed: dict[Key, _Pkg] = {}
        for p in installed:
            if not p.is_gpg_pubkey:
                pkg = _installed(p)
                if p.header is None:  # an rpmmanifest line: the repository's entry tells more
                    twin = _twin(p, same)
                    pkg = _candidate(twin) if twin is not None else pkg
                self.installed[(pkg.name, pkg.arch)] = pkg
        self.cpkg = {id(c): _candidate(c) for c in self.candidates}
        self.by_name: dict[str, list[RpmCandidate]] = {}
        self.obsoleting: dict[str, list[RpmCandidate]] = {}
        for c in self.candidates:
            self.by_name.setdefault(c.name, []).append(c)
            for o in c.entry.obsoletes:
                self.obsoleting.setdefault(o.name, []).append(c)
        self.offered = _Index(self.cpkg.values())
        self.by_pkg = {id(self.cpkg[id(c)]): c for c in self.candidates}
        self.before = _Index(self.installed.values())
        self._final: _Index | None = None
        self.chosen: dict[Key, RpmCandidate] = {}
        self.reasons: dict[Key, str] = {}
        self.replaces: dict[Key, list[Key]] = {}
        self.notes: list[str] = []

    # -- candidates ------------------------------------------------------------------------------
    def arch_ok(self, inst_arch: str, cand_arch: str) -> bool:
        if cand_arch in ("src", "nosrc"):
            return False
        return cand_arch in (inst_arch, "noarch") or inst_arch == "noarch"

    def best(self, name: str, arch: str) -> RpmCandidate | None:
        usable = [c for c in self.by_name.get(name, []) if self.arch_ok(arch, c.entry.arch)]
        return max(
            usable, key=lambda c: (_evr_key(c.entry.evr), c.entry.arch == arch), default=None
        )

    def obsoleter(self, key: Key) -> RpmCandidate | None:
        inst = self.installed[key]
        found = [
            c
            for c in self.obsoleting.get(inst.name, [])
            if c.name != inst.name
            and self.arch_ok(inst.arch, c.entry.arch)
            and any(
                o.name == inst.name and _overlaps(Dependency(inst.name, 8, inst.evr), o)
                for o in c.entry.obsoletes
            )
        ]
        return max(found, key=lambda c: _evr_key(c.entry.evr), default=None)

    # -- the final system ------------------------------------------------------------------------
    def gone(self) -> set[Key]:
        out = set(self.chosen)
        for keys in self.replaces.values():
            out.update(keys)
        return out

    def final(self) -> _Index:
        if self._final is None:
            gone = self.gone()
            self._final = _Index(
                [p for k, p in self.installed.items() if k not in gone]
                + [self.cpkg[id(c)] for c in self.chosen.values()]
            )
        return self._final

    def met(self, dep: Dependency, system: _Index) -> bool:
        if system.providers(dep):
            return True
        # A path primary.xml does not list: an upgrade keeps the file its installed version had.
        if dep.name.startswith("/") and not in_primary_scope(dep.name):
            names = {p.name for p in system.pkgs if not p.complete_files}
            return any(p.name in names for p in self.before.providers(dep))
        return False

    def choose(self, key: Key, c: RpmCandidate, reason: str) -> None:
        self.chosen[key] = c
        self.reasons[key] = reason
        self._final = None

    def provider(self, dep: Dependency, arch: str) -> RpmCandidate | None:
        options = []
        for pkg in {id(p): p for p in self.offered.providers(dep)}.values():
            c = self.by_pkg[id(pkg)]
            inst = self.installed.get((c.name, c.entry.arch))
            if inst is not None and compare_evr(pkg.evr, inst.evr) <= 0:
                continue  # an installed package never goes down
            options.append(c)
        return max(
            options,
            key=lambda c: (
                any(k[0] == c.name for k in self.installed),
                c.name == dep.name,
                c.entry.arch in (arch, "noarch"),
                _evr_key(c.entry.evr),
                [-ord(ch) for ch in c.name],
            ),
            default=None,
        )

    def close(self) -> None:
        changed = True
        while changed:
            changed = False
            for key in sorted(self.chosen):
                changed |= self._needs(key, self.chosen[key])
                if changed:
                    break
            changed = changed or self._keep_working()

    def _needs(self, key: Key, c: RpmCandidate) -> bool:
        pkg, system = self.cpkg[id(c)], self.final()
        for dep in pkg.conflicts:
            clash = [p for p in system.providers(dep) if p.name != pkg.name]
            if clash:
                raise ResolveError(
                    f"{c.entry.nevra} conflicts with {dep} (installed: {clash[0].name} "
                    f"{clash[0].evr}), which a patch does not remove; update the image with "
                    "dnf itself"
                )
        for dep in pkg.requires:
            if not _solvable(dep):
                continue
            if self.met(dep, system) or self._already_missing(key, dep):
                continue
            prov = self.provider(dep, pkg.arch)
            if prov is None:
                raise ResolveError(
                    f"{c.entry.nevra} requires {dep}, which no installed package provides and "
                    f"no repository offers: the repositories are incomplete or mixed; "
                    f"{NOT_OFFERED_HINT}"
                )
            pk = (prov.name, prov.entry.arch)
            inst = [k for k in self.installed if k[0] == prov.name]
            if pk not in self.installed and inst:
                pk = inst[0]
            self.choose(pk, prov, f"dependency of {c.entry.nevra} ({dep})")
            return True
        return False

    def _already_missing(self, key: Key, dep: Dependency) -> bool:
        """The installed version had the same requirement, unmet: the image lives without it."""
        inst = self.installed.get(key)
        if inst is None:
            return False
        if any(d.name == dep.name for d in inst.requires) and not self.met(dep, self.before):
            self.notes.append(
                f"{key[0]}: its requirement {dep} was already unmet in the image; left so"
            )
            return True
        return False

    def _keep_working(self) -> bool:
        system, gone = self.final(), self.gone()
        for key, pkg in sorted(self.installed.items()):
            if key in gone:
                continue
            for dep in pkg.requires:
                if not _solvable(dep) or self.met(dep, system):
                    continue
                if not self.met(dep, self.before):
                    continue  # already unmet before the patch
                cand = self.best(*key)
                if cand is None or compare_evr(cand.entry.evr, pkg.evr) <= 0:
                    raise ResolveError(
                        f"the update breaks {pkg.name} {pkg.evr}, which requires {dep}, and no "
                        f"newer {pkg.name} in the repositories fixes it: include {pkg.name} in "
                        f"the update or {NOT_OFFERED_HINT}"
                    )
                self.choose(key, cand, f"keeps working with the update ({dep})")
                return True
        return False


def _at_least(evr: str, minimum: str) -> bool:
    return compare_evr(evr, minimum) >= 0


def _requirement_error(
    solver: _Solver, req: Requirement, arch: str, repos: str
) -> tuple[str, bool]:
    offered = solver.by_name.get(req.name, [])
    if not offered:
        return f"{req.name} is not offered by the repositories ({repos})", False
    best = solver.best(req.name, arch)
    other = max(offered, key=lambda c: _evr_key(c.entry.evr))
    elsewhere = ""
    if best is None or (
        req.minimum and not _at_least(best.entry.evr, req.minimum)
        and _at_least(other.entry.evr, req.minimum)
    ):  # fmt: skip
        elsewhere = f" ({other.entry.nevra} is for {other.entry.arch}, the image has {arch})"
    hidden = [
        c
        for c in solver.outranked
        if c.name == req.name
        and solver.arch_ok(arch, c.entry.arch)
        and (req.minimum is None or _at_least(c.entry.evr, req.minimum))
    ]
    if hidden:
        elsewhere += (
            f" ({hidden[0].entry.nevra} in {hidden[0].repo} is not taken: its repository has "
            f"priority={hidden[0].priority}, and {req.name} is offered by one of priority="
            f"{offered[0].priority}, which wins as in dnf)"
        )
    got = best.entry.evr if best else "nothing"
    return (
        f"{req.name} needs {req.minimum or 'a newer version'} but the repositories ({repos}) "
        f"offer only {got}{elsewhere}",
        True,
    )


def resolve(
    installed: Sequence[Package],
    candidates: Sequence[RpmCandidate],
    requirements: Sequence[Requirement] | None,
    *,
    ignore_errors: bool = False,
) -> Resolution:
    """The plan for `requirements` (None: every upgradable package); see the module doc."""
    solver = _Solver(installed, candidates)
    names = sorted({k[0] for k in solver.installed})
    reqs = list(requirements) if requirements is not None else [Requirement(n, None) for n in names]
    wanted = {r.name: r for r in reqs}
    multilib = {n for n in names if sum(k[0] == n for k in solver.installed) > 1}
    repos = ", ".join(sorted({c.repo for c in candidates})) or "none"
    errors: list[str] = []
    skipped: list[PlanItem] = []
    too_old = False
    for req in sorted(reqs, key=lambda r: r.name):
        keys = sorted(k for k in solver.installed if k[0] == req.name)
        if not keys:
            skipped.append(_skip(req, "", f"{req.name} is not installed in the image"))
            continue
        for key in keys:
            msg = _require(solver, key, req)
            if msg is None:
                continue
            text, old = _requirement_error(solver, req, key[1], repos)
            too_old |= old
            if ignore_errors:
                skipped.append(_skip(req, solver.installed[key].evr, text))
            else:
                errors.append(text)
    if errors:
        raise ResolveError(
            "; ".join(errors) + ": " + (TOO_OLD_HINT if too_old else NOT_OFFERED_HINT)
        )
    solver.close()
    items = [_item(solver, key, c, wanted, multilib) for key, c in solver.chosen.items()]
    plan = Plan(sorted(items + skipped, key=lambda i: i.name))
    return Resolution(plan, dict(solver.chosen), dict(solver.replaces), sorted(set(solver.notes)))


def _require(solver: _Solver, key: Key, req: Requirement) -> str | None:
    """Choose what brings `key` to `req`; a non-None return means it cannot be met."""
    inst = solver.installed[key]
    if req.minimum is not None and _at_least(inst.evr, req.minimum):
        return None  # already fixed
    cand = solver.best(*key)
    newer = cand is not None and compare_evr(cand.entry.evr, inst.evr) > 0
    if (
        cand is not None
        and newer
        and (req.minimum is None or _at_least(cand.entry.evr, req.minimum))
    ):
        solver.choose(key, cand, "required")
        return None
    obs = solver.obsoleter(key)
    if obs is not None:
        new_key = (obs.name, obs.entry.arch)
        solver.choose(new_key, obs, f"obsoletes {inst.name} {inst.evr}")
        solver.replaces.setdefault(new_key, []).append(key)
        return None
    if req.minimum is None:
        return None  # up to date
    return "not met"


def _item(
    solver: _Solver, key: Key, c: RpmCandidate, wanted: dict[str, Requirement], multilib: set[str]
) -> PlanItem:
    inst = solver.installed.get(key)
    replaced = solver.replaces.get(key, [])
    req_name = replaced[0][0] if replaced else key[0]
    name = f"{key[0]}.{key[1]}" if key[0] in multilib else key[0]
    req = wanted.get(req_name)
    reason = solver.reasons[key]
    return PlanItem(
        name,
        inst.evr if inst else (solver.installed[replaced[0]].evr if replaced else ""),
        req.minimum if req else None,
        c.entry.evr,
        Action.UPDATE,
        "" if reason == "required" else reason,
        req.vulnerabilities if req else (),
    )


def _skip(req: Requirement, installed: str, why: str) -> PlanItem:
    return PlanItem(req.name, installed, req.minimum, None, Action.SKIP, why, req.vulnerabilities)
