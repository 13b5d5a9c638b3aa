"""Choosing package versions and their dependencies from verified indices, as apt would.

Candidates follow apt's policy (apt_preferences(5)) without pinning files: every suite has
priority 500, a NotAutomatic suite 1, NotAutomatic + ButAutomaticUpgrades (backports) 100, the
installed version at least 100; versions older than the installed one are never candidates;
the highest priority wins, then the highest version. So backports are used only for packages
already installed from there (or nothing else offers them), bookworm + -updates + -security
simply give the newest version.

Dependencies: Depends and Pre-Depends of every new version must hold in the resulting system
(installed packages with the planned versions swapped in); an unmet group takes the first
alternative whose candidate satisfies it (a real package, else a provider). Installed packages
that a change would break (an unmet Depends, e.g. `libfoo (= old)`, or a Breaks/Conflicts)
are upgraded to their candidate, or resolution fails naming them. Recommends are ignored
(apt-get --no-install-recommends); only the native architecture and `all` are considered.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cmp_to_key
from pathlib import Path

from debian.deb822 import Deb822

from ocipatch.distro.base import InstalledPackage, Requirement
from ocipatch.distro.deb.db import (
    DirView,
    check_version,
    damaged,
    status_d_stanzas,
    status_stanzas,
)
from ocipatch.distro.deb.repos.index import (
    PRIORITY_INSTALLED,
    Group,
    PackageRecord,
    PackagesIndex,
    Relation,
    group_text,
    parse_provides,
    parse_relations,
    source_of,
)
from ocipatch.distro.deb.rules import compare_deb
from ocipatch.errors import ResolveError

# apt-get install upgrades the other installed binaries of a named package's source with it
# (APT::Get::Upgrade-By-Source-Package, default on) since apt 2.6 (Debian 12, Ubuntu 23.04).
BY_SOURCE_SINCE = "2.6~"
TOO_OLD_HINT = (
    "the scanner's database is newer than the package repositories (a mirror that has not "
    "synced yet, or a fix not yet published); update or resync the mirror and rescan"
)


# --- the installed system ------------------------------------------------------------------


@dataclass(frozen=True)
class Installed:
    """An installed package with the relations its dpkg status stanza declares."""

    name: str
    version: str
    arch: str
    depends: tuple[Group, ...] = ()
    pre_depends: tuple[Group, ...] = ()
    provides: tuple[tuple[str, str | None], ...] = ()
    breaks: tuple[Group, ...] = ()
    conflicts: tuple[Group, ...] = ()
    held: bool = False
    source: str = ""  # the source package's name ("" when unknown: the package's own name)


def installed_from_rootfs(rootfs: Path) -> dict[str, Installed]:
    """Installed packages from /var/lib/dpkg/status (and distroless status.d/*)."""
    found: dict[tuple[str, str], Installed] = {}
    view = DirView(rootfs)
    for st in itertools.chain(status_stanzas(view), status_d_stanzas(view)):
        name, version = st.get("Package", "").strip(), st.get("Version", "").strip()
        if name and version:
            check_version(name, version)
            arch = st.get("Architecture", "").strip()
            found.setdefault((name, arch), _installed(st, name, version, arch))
    # Keyed by name: of a multi-arch package (libc6:amd64 and libc6:i386) the native one.
    native = native_arch({f"{n}:{a}": p for (n, a), p in found.items()})
    out: dict[str, Installed] = {}
    for (name, arch), pkg in sorted(found.items()):
        if name not in out or arch == native:
            out[name] = pkg
    return out


def _installed(st: Deb822, name: str, version: str, arch: str) -> Installed:
    try:
        return Installed(
            name=name,
            version=version,
            arch=arch,
            depends=parse_relations(st.get("Depends")),
            pre_depends=parse_relations(st.get("Pre-Depends")),
            provides=parse_provides(st.get("Provides")),
            breaks=parse_relations(st.get("Breaks")),
            conflicts=parse_relations(st.get("Conflicts")),
            held=st.get("Status", "").split(" ")[0] == "hold",
            source=source_of(st.get("Source"), name, version)[0],
        )
    except ValueError as e:
        raise damaged(f"package {name!r} has {e}") from None


def installed_from_packages(packages: Iterable[InstalledPackage]) -> dict[str, Installed]:
    """Installed packages without their relations: installed packages that an upgrade would
    break go unnoticed, so prefer `installed_from_rootfs` where the rootfs is at hand."""
    return {p.name: Installed(p.name, p.version, p.arch, source=p.source) for p in packages}


def native_arch(installed: Mapping[str, Installed]) -> str | None:
    """dpkg's own architecture, else the most common one that is not `all`."""
    for p in installed.values():
        if p.name == "dpkg" and p.arch not in ("", "all"):
            return p.arch
    counts: dict[str, int] = {}
    for p in installed.values():
        if p.arch not in ("", "all"):
            counts[p.arch] = counts.get(p.arch, 0) + 1
    return max(sorted(counts), key=lambda a: counts[a]) if counts else None


# --- what the repositories offer -----------------------------------------------------------


def _cmp_records(a: PackageRecord, b: PackageRecord) -> int:
    return compare_deb(a.version, b.version) or (a.priority > b.priority) - (
        a.priority < b.priority
    )


class Universe:
    """Every package version the configured suites offer for one architecture."""

    def __init__(self, indices: Sequence[PackagesIndex], arch: str) -> None:
        self.indices = list(indices)
        self.arch = arch
        self._versions: dict[str, list[PackageRecord]] = {}

    def versions(self, name: str) -> list[PackageRecord]:
        """Newest first; a version offered by several suites keeps the highest priority."""
        if name not in self._versions:
            best: dict[tuple[str, str], PackageRecord] = {}
            for idx in self.indices:
                for rec in idx.get(name):
                    if rec.arch not in (self.arch, "all"):
                        continue
                    key = (rec.version, rec.arch)
                    if key not in best or rec.priority > best[key].priority:
                        best[key] = rec
            self._versions[name] = sorted(best.values(), key=cmp_to_key(_cmp_records), reverse=True)
        return self._versions[name]

    def providers(self, virtual: str) -> list[str]:
        names: set[str] = set()
        for idx in self.indices:
            names |= idx.provided.get(virtual, set())
        return sorted(names)

    def suites(self) -> str:
        return ", ".join(sorted({i.release.name for i in self.indices})) or "no suites"


# --- the result ----------------------------------------------------------------------------


@dataclass
class InstallItem:
    name: str
    version: str
    arch: str
    filename: str
    sha256: str
    size: int
    url: str
    suite: str
    installed: str | None  # the version it replaces; None for a new package
    reason: str  # "required" | "dependency of X V" | "keeps working with X"
    maintainer_scripts: tuple[str, ...] | None = None  # known once downloaded
    path: Path | None = None  # the verified .deb in the cache, once downloaded
    record: PackageRecord | None = field(default=None, repr=False, compare=False)

    @property
    def has_maintainer_scripts(self) -> bool | None:
        return None if self.maintainer_scripts is None else bool(self.maintainer_scripts)

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "version": self.version,
            "arch": self.arch,
            "installed": self.installed,
            "filename": self.filename,
            "sha256": self.sha256,
            "size": self.size,
            "suite": self.suite,
            "reason": self.reason,
            "has_maintainer_scripts": self.has_maintainer_scripts,
        }


@dataclass
class InstallSet:
    items: list[InstallItem]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why)

    def by_name(self) -> dict[str, InstallItem]:
        return {i.name: i for i in self.items}


# --- the resolver --------------------------------------------------------------------------


def satisfies(version: str, op: str | None, wanted: str | None) -> bool:
    if op is None or wanted is None:
        return True
    c = compare_deb(version, wanted)
    return {"<<": c < 0, "<=": c <= 0, "=": c == 0, ">=": c >= 0, ">>": c > 0}[op]


def _names(groups: Iterable[Group]) -> set[str]:
    return {r.name for g in groups for r in g}


def by_source_default(installed: Mapping[str, Installed]) -> bool:
    """Whether the image's apt upgrades same-source binaries together (apt >= 2.6; an image
    without apt gets the same consistency)."""
    apt = installed.get("apt")
    return apt is None or compare_deb(apt.version, BY_SOURCE_SINCE) >= 0


class Resolver:
    def __init__(
        self,
        universe: Universe,
        installed: Mapping[str, Installed],
        *,
        by_source: bool | None = None,
    ) -> None:
        self.universe = universe
        self.installed = dict(installed)
        self.by_source = by_source_default(installed) if by_source is None else by_source
        self._by_source: dict[str, set[str]] = {}
        for p in self.installed.values():
            self._by_source.setdefault(p.source or p.name, set()).add(p.name)
        self.plan: dict[str, PackageRecord] = {}
        self.reasons: dict[str, str] = {}
        self._queue: list[str] = []
        self._inst_provides: dict[str, set[str]] = {}
        self._rdeps: dict[str, set[str]] = {}  # name -> installed packages whose relations name it
        for p in self.installed.values():
            for virtual, _v in p.provides:
                self._inst_provides.setdefault(virtual, set()).add(p.name)
            for n in _names((*p.depends, *p.pre_depends, *p.breaks, *p.conflicts)):
                self._rdeps.setdefault(n, set()).add(p.name)

    # -- policy -----------------------------------------------------------------------------
    def candidate(self, name: str) -> PackageRecord | None:
        """apt's candidate if it is not the installed version, else None."""
        inst = self.installed.get(name)
        versions = self.universe.versions(name)  # newest first: ties keep the newer
        floor = -1
        if inst is not None:
            # The installed version counts with the best priority of the suites that still
            # carry it, at least 100; older versions are never candidates (priority < 1000).
            floor = PRIORITY_INSTALLED
            newer = []
            for rec in versions:
                c = compare_deb(rec.version, inst.version)
                if c > 0:
                    newer.append(rec)
                elif c == 0:
                    floor = max(floor, rec.priority)
            versions = newer
        best: PackageRecord | None = None
        for rec in versions:
            if rec.priority >= floor and (best is None or rec.priority > best.priority):
                best = rec
        return best

    def _elsewhere(self, req: Requirement) -> str:
        """A hint when a low-priority suite (backports) has what the candidate lacks."""
        for rec in self.universe.versions(req.name):
            if req.minimum is None or compare_deb(rec.version, req.minimum) >= 0:
                return (
                    f" ({rec.version} is in {rec.release.name}, which apt uses only for "
                    "packages installed from there)"
                )
        return ""

    def available(self, name: str) -> str:
        vs = self.universe.versions(name)
        return vs[0].version if vs else "nothing"

    # -- the planned system -----------------------------------------------------------------
    def _current(self, name: str) -> tuple[str, tuple[tuple[str, str | None], ...]] | None:
        if name in self.plan:
            return self.plan[name].version, self.plan[name].provides
        if name in self.installed:
            return self.installed[name].version, self.installed[name].provides
        return None

    def _providers_now(self, virtual: str) -> set[str]:
        names = set(self._inst_provides.get(virtual, set()))
        names |= {n for n, r in self.plan.items() if any(v == virtual for v, _ in r.provides)}
        return names

    def _holds(self, rel: Relation, exclude: str = "") -> str | None:
        """The package (real or providing) that satisfies rel in the planned system."""
        cur = self._current(rel.name)
        if rel.name != exclude and cur is not None and satisfies(cur[0], rel.op, rel.version):
            return rel.name
        for prov in sorted(self._providers_now(rel.name)):
            state = self._current(prov)
            if prov == exclude or state is None:
                continue
            for virtual, pver in state[1]:
                if virtual == rel.name and (
                    rel.op is None or (pver is not None and satisfies(pver, rel.op, rel.version))
                ):
                    return prov
        return None

    # -- adding packages --------------------------------------------------------------------
    def _add(self, rec: PackageRecord, reason: str) -> None:
        if self.plan.get(rec.name) == rec:
            return
        self.plan[rec.name] = rec
        self.reasons.setdefault(rec.name, reason)
        self._queue.append(rec.name)

    def _pick(self, rel: Relation) -> PackageRecord | None:
        inst = self.installed.get(rel.name)
        cand = self.candidate(rel.name)
        if (
            cand is not None
            and not (inst and inst.held)
            and satisfies(cand.version, rel.op, rel.version)
        ):
            return cand
        options: list[PackageRecord] = []
        for prov in self.universe.providers(rel.name):
            c = self.candidate(prov)
            if c is None or (prov in self.installed and self.installed[prov].held):
                continue
            if any(
                v == rel.name
                and (rel.op is None or (pv is not None and satisfies(pv, rel.op, rel.version)))
                for v, pv in c.provides
            ):
                options.append(c)
        options.sort(key=lambda r: (-r.priority, r.name))
        return options[0] if options else None

    def _offer(self, rel: Relation) -> str:
        inst = self.installed.get(rel.name)
        held = " (held)" if inst and inst.held else ""
        cand = self.candidate(rel.name)
        now = f"installed {inst.version}{held}" if inst else "not installed"
        return f"{rel.name}: {now}, repositories offer {cand.version if cand else self.available(rel.name)}"

    def _require(self, group: Group, parent: PackageRecord) -> None:
        if any(self._holds(r) for r in group):
            return
        for rel in group:
            rec = self._pick(rel)
            if rec is not None:
                self._add(rec, f"dependency of {parent.name} {parent.version}")
                return
        raise ResolveError(
            f"{parent.name} {parent.version} depends on {group_text(group)}, which cannot be "
            f"satisfied ({'; '.join(self._offer(r) for r in group)}): the repositories are "
            "incomplete or mixed; check the image's sources"
        )

    # -- keeping installed packages working -------------------------------------------------
    def _upgrade_for(self, name: str, why: str, problem: str) -> None:
        inst = self.installed[name]
        cand = self.candidate(name)
        if cand is None or inst.held:
            held = " and it is held" if inst.held else ""
            raise ResolveError(
                f"{problem}, and no newer {name} in the repositories fixes it (installed "
                f"{inst.version}, available {self.available(name)}{held}): include {name} in "
                "the update or check the image's sources"
            )
        self._add(cand, f"keeps working with {why}")

    def _check_installed(self) -> bool:
        changed_before = set(self.plan)
        touched = set(self.plan)
        for rec in self.plan.values():
            touched |= {v for v, _ in rec.provides}
            if rec.name in self.installed:
                touched |= {v for v, _ in self.installed[rec.name].provides}
        suspects = sorted({n for t in touched for n in self._rdeps.get(t, set())} - set(self.plan))
        for name in suspects:
            inst = self.installed[name]
            for group in (*inst.pre_depends, *inst.depends):
                if not any(self._holds(r) for r in group) and _names([group]) & touched:
                    bad = ", ".join(
                        f"{r.name} {self.plan[r.name].version}"
                        for r in group
                        if r.name in self.plan
                    ) or group_text(group)
                    self._upgrade_for(
                        name,
                        bad,
                        f"{name} {inst.version} needs {group_text(group)} but would get {bad}",
                    )
                    break
            else:
                for group in (*inst.breaks, *inst.conflicts):
                    for rel in group:
                        hit = self._holds(rel, exclude=name)
                        if hit in self.plan:
                            self._upgrade_for(
                                name,
                                f"{hit} {self.plan[hit].version}",
                                f"{name} {inst.version} breaks {rel} and {hit} "
                                f"{self.plan[hit].version} would be installed",
                            )
        for rec in list(self.plan.values()):
            for group in (*rec.breaks, *rec.conflicts):
                for rel in group:
                    hit = self._holds(rel, exclude=rec.name)
                    if hit is None:
                        continue
                    if hit in self.plan:
                        raise ResolveError(
                            f"{rec.name} {rec.version} breaks {rel}, and {hit} "
                            f"{self.plan[hit].version} is also to be installed: the repositories "
                            "offer no consistent set; check the image's sources"
                        )
                    self._upgrade_for(
                        hit,
                        f"{rec.name} {rec.version}",
                        f"{rec.name} {rec.version} breaks {rel}, installed as {hit} "
                        f"{self.installed[hit].version}",
                    )
        return set(self.plan) != changed_before

    def _close(self) -> None:
        while True:
            while self._queue:
                rec = self.plan[self._queue.pop(0)]
                for group in (*rec.pre_depends, *rec.depends):
                    self._require(group, rec)
            if not self._check_installed() and not self._queue:
                return

    def _same_source(self, named: Sequence[PackageRecord]) -> None:
        """Upgrade installed binaries whose candidate comes from the same source version as a
        named upgrade, as apt-get install does; one that cannot be installed is left alone
        (apt's MarkInstall gives up on it quietly too)."""
        for rec in named:
            for name in sorted(self._by_source.get(rec.source, set()) - set(self.plan)):
                cand = self.candidate(name)
                if (
                    cand is None
                    or self.installed[name].held
                    or (cand.source, cand.source_version) != (rec.source, rec.source_version)
                ):
                    continue
                saved = dict(self.plan), dict(self.reasons), list(self._queue)
                try:
                    self._add(cand, f"built from the same source as {rec.name}")
                    self._close()
                except ResolveError:
                    self.plan, self.reasons, self._queue = saved[0], saved[1], saved[2]

    # -- entry point ------------------------------------------------------------------------
    def resolve(
        self, requirements: Sequence[Requirement], *, ignore_errors: bool = False
    ) -> InstallSet:
        skipped: list[tuple[str, str]] = []
        errors: list[str] = []
        too_old = False
        for req in sorted(requirements, key=lambda r: r.name):
            inst = self.installed.get(req.name)
            if req.minimum is not None and inst and compare_deb(inst.version, req.minimum) >= 0:
                continue  # already new enough
            if inst and inst.held:
                skipped.append((req.name, "held (apt-mark hold)"))
                continue
            cand = self.candidate(req.name)
            if cand is None and inst is not None and req.minimum is None:
                continue  # the newest version is installed
            offered = cand.version if cand else self.available(req.name)
            if cand is None or (
                req.minimum is not None and compare_deb(cand.version, req.minimum) < 0
            ):
                suites = self.universe.suites()
                if offered == "nothing":
                    msg = f"{req.name} is not offered by the repositories ({suites})"
                else:
                    too_old = True
                    msg = (
                        f"{req.name} needs {req.minimum or 'a version'} but the repositories "
                        f"({suites}) offer only {offered}{self._elsewhere(req)}"
                    )
                if ignore_errors:
                    skipped.append((req.name, msg))
                else:
                    errors.append(msg)
                continue
            self._add(cand, "required")
        if errors:
            hint = TOO_OLD_HINT if too_old else "check the package names and the image's sources"
            raise ResolveError("; ".join(errors) + ": " + hint)
        self._close()
        if self.by_source:
            named = [
                self.plan[r.name]
                for r in sorted(requirements, key=lambda r: r.name)
                if r.name in self.plan and r.name in self.installed
            ]
            self._same_source(named)
        items = []
        for name in sorted(self.plan):
            rec = self.plan[name]
            inst = self.installed.get(name)
            items.append(
                InstallItem(
                    name=rec.name,
                    version=rec.version,
                    arch=rec.arch,
                    filename=rec.filename,
                    sha256=rec.sha256,
                    size=rec.size,
                    url=rec.url,
                    suite=rec.release.name,
                    installed=inst.version if inst else None,
                    reason=self.reasons[name],
                    record=rec,
                )
            )
        return InstallSet(items, skipped)


def resolve(
    universe: Universe,
    installed: Mapping[str, Installed],
    requirements: Sequence[Requirement],
    *,
    ignore_errors: bool = False,
    by_source: bool | None = None,
) -> InstallSet:
    return Resolver(universe, installed, by_source=by_source).resolve(
        requirements, ignore_errors=ignore_errors
    )
