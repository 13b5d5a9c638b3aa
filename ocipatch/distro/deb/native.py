"""The dpkg/apt adapter's patch steps: plan -> apply -> verify, over an unpacked rootfs.

The image's own apt does the work (dependency resolution, maintainer scripts, conffiles), in a
sandbox; this module decides what to ask it for and checks what it did.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import unquote

from debian.deb822 import Deb822

from ocipatch.distro.base import (
    Action,
    ApplyOutcome,
    InstalledPackage,
    PackageChange,
    Plan,
    PlanItem,
    Requirement,
)
from ocipatch.distro.deb.aptrun import AptRunner, archive_name
from ocipatch.distro.deb.db import (
    DirView,
    iter_stanzas,
    package_of,
    status_stanzas,
)
from ocipatch.distro.deb.repos.resolve import InstallSet
from ocipatch.distro.deb.rules import compare_deb
from ocipatch.errors import ApplyError, ResolveError, VerifyError
from ocipatch.oci.cache import touch

# Never part of a patch layer: caches, logs, apt's indices, dpkg's backups, scratch space and
# the sandbox's mount points.
_EXCLUDED_TREES = (
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/cache/ocipatch",
    "var/log",
    "tmp",
    "var/tmp",
    "proc",
    "sys",
    "dev",
    "run",
)
_EXCLUDED_FILES = frozenset(
    {
        "var/cache/debconf/config.dat-old",
        "var/cache/debconf/templates.dat-old",
        "var/cache/debconf/passwords.dat-old",
        "var/lib/dpkg/status-old",
        "var/lib/dpkg/available-old",
        "var/lib/dpkg/diversions-old",
        "var/lib/dpkg/statoverride-old",
        "var/cache/ldconfig/aux-cache",
        "etc/resolv.conf",
    }
)


# Backups dpkg, ucf and the shadow tools leave beside a file they replaced.
_BACKUP_SUFFIXES = (".dpkg-old", ".ucf-old", ".dpkg-bak", "-old")


def exclude(path: str) -> bool:
    """True for paths the patch layer never carries."""
    if path in _EXCLUDED_FILES or path.endswith(_BACKUP_SUFFIXES):
        return True
    return any(path == t or path.startswith(t + "/") for t in _EXCLUDED_TREES)


def read_status(rootfs: Path) -> dict[str, InstalledPackage]:
    """The installed packages of dpkg's status file in an unpacked rootfs, by name."""
    out: dict[str, InstalledPackage] = {}
    for st in status_stanzas(DirView(rootfs)):
        pkg = package_of(st)
        if pkg:
            out[pkg.name] = pkg
    return out


EXTENDED_STATES = "var/lib/apt/extended_states"
_DPKG_RAN = re.compile(r"Preparing to unpack|Unpacking |Setting up |dpkg: error")


def _dpkg_ran(rootfs: Path) -> bool:
    """dpkg leaves its journal in updates/ while a run is under way or was cut short."""
    updates = rootfs / "var/lib/dpkg/updates"
    return updates.is_dir() and any(updates.iterdir())


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _keep_auto_marks(
    path: Path, before: bytes | None, installed_before: set[str], added: dict[str, str]
) -> None:
    """apt marks every package named on its command line as manually installed; a patch must
    not change which packages `apt-get autoremove` would take. Packages installed before keep
    their marks; a package the patch added came in as a dependency: automatically installed.
    added: name -> architecture (apt's, so the native one for Architecture: all)."""
    if not added:  # the file as it was, byte for byte (so it stays out of the layer)
        if _read_bytes(path) != before:
            if before is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(before)
        return
    kept = [
        st
        for st in (iter_stanzas(before) if before is not None else [])
        if st.get("Package") not in added
    ]
    marks = [
        Deb822({"Package": n, "Architecture": a, "Auto-Installed": "1"}) for n, a in added.items()
    ]
    path.write_text("".join(st.dump() + "\n" for st in [*kept, *marks]))


# The dpkg adapter's outcome is the shared one; the old name stays for its users.
AptOutcome = ApplyOutcome


def too_old_message(items: list[PlanItem]) -> str:
    parts = [
        f"{i.name} needs {i.required} but the repositories offer only {i.available or 'nothing'}"
        for i in items
    ]
    return (
        "; ".join(parts)
        + ": the scanner's database is newer than the package repositories (a mirror that has not"
        " synced yet, or a fix not yet published); update or resync the mirror and rescan, or pass"
        " --ignore-errors to patch the rest and list these as skipped"
    )


def verify_versions(
    plan: Plan, after: Mapping[str, str], *, when: str, ignore_errors: bool = False
) -> list[PlanItem]:
    """Check every planned update reached its requirement (and moved past what was installed);
    returns the items that did not, marked skipped (with --ignore-errors), else VerifyError."""
    failed: list[PlanItem] = []
    for item in plan.updates:
        got = after.get(item.name)
        # A package the update pulls in was not installed before: being there is enough.
        ok = got is not None and (not item.installed or compare_deb(got, item.installed) > 0)
        if ok and got is not None and item.required is not None:
            ok = compare_deb(got, item.required) >= 0
        if not ok:
            item.action = Action.SKIP
            item.reason = f"still at {got or 'nothing'} {when}"
            failed.append(item)
    if failed and not ignore_errors:
        raise VerifyError(
            f"{when}, "
            + "; ".join(
                f"{i.name} is not at {i.required or 'a newer version'} ({i.reason})" for i in failed
            )
        )
    return failed


def deb_key(path: Path) -> tuple[str, str]:
    """(name, version) from a .deb file name as apt saves it: NAME_VERSION_ARCH.deb, with the
    epoch's ':' written as %3a."""
    parts = path.name.removesuffix(".deb").split("_")
    return (parts[0], unquote(parts[1])) if len(parts) >= 2 else (path.name, "")


def plan_of(
    installed: list[InstalledPackage],
    reqs: list[Requirement],
    chosen: InstallSet,
    *,
    ignore_errors: bool = False,
) -> Plan:
    """The Plan for what ocipatch.distro.deb.repos resolved: updates (dependencies with their reason),
    skips; ResolveError when a requirement is out of the repositories' reach."""
    versions = {p.name: p.version for p in installed}
    items: list[PlanItem] = []
    wanted = {r.name: r for r in reqs}
    for it in chosen.items:
        req = wanted.get(it.name)
        items.append(
            PlanItem(
                it.name,
                it.installed or "",
                req.minimum if req else None,
                it.version,
                Action.UPDATE,
                "" if req else it.reason,
                req.vulnerabilities if req else (),
            )
        )
    too_old: list[PlanItem] = []
    for name, why in chosen.skipped:
        req = wanted.get(name)
        item = PlanItem(
            name,
            versions.get(name, ""),
            req.minimum if req else None,
            None,
            Action.SKIP,
            why,
            req.vulnerabilities if req else (),
        )
        items.append(item)
        if req is not None and req.minimum is not None and "held" not in why:
            too_old.append(item)
    if too_old and not ignore_errors:
        raise ResolveError(too_old_message(too_old))
    return Plan(sorted(items, key=lambda i: i.name))


class DpkgPatcher:
    """plan -> apply -> verify with the image's apt.

    With `planned` (the install set ocipatch.distro.deb.repos resolved from the signed indices, its
    packages already verified and in apt's archive directory), apt installs those files and
    never reads a repository: no `apt-get update`, and the layer holds exactly the set the
    result cache was keyed on. Without it, or when apt's own choice could differ (pinning, a
    second architecture), or when apt refuses the set before dpkg ran, apt updates its lists
    and resolves by name.
    """

    def __init__(
        self,
        rootfs: Path,
        runner: AptRunner,
        planned: Callable[[], InstallSet | None] | None = None,
        empty_lists: Path | None = None,
    ) -> None:
        self.rootfs = rootfs
        self.runner = runner
        self.planned = planned
        self.empty_lists = empty_lists
        self._files: list[Path] | None = None  # the planned packages apply installs
        self.notes: list[str] = []

    def _plain_apt(self) -> bool:
        """No pinning and one architecture: ocipatch.distro.deb.repos picks what apt would pick."""
        etc = self.rootfs / "etc/apt"
        pins = [etc / "preferences", *sorted((etc / "preferences.d").glob("*"))]
        if any(p.is_file() and p.stat().st_size > 0 for p in pins):
            return False
        archs = self.rootfs / "var/lib/dpkg/arch"
        return not archs.is_file() or len(archs.read_text(errors="replace").split()) <= 1

    def _plan_from_repos(
        self,
        installed: list[InstalledPackage],
        requirements: list[Requirement] | None,
        ignore_errors: bool,
    ) -> Plan | None:
        if self.planned is None or self.empty_lists is None or not self._plain_apt():
            return None
        chosen = self.planned()
        if chosen is None:
            return None
        reqs = requirements or [Requirement(p.name, None) for p in installed]
        plan = plan_of(installed, reqs, chosen, ignore_errors=ignore_errors)
        names = {i.name for i in plan.updates}
        files = [
            self.runner.archives / archive_name(i.name, i.version, i.arch)
            for i in chosen.items
            if i.name in names
        ]
        if not all(f.is_file() for f in files):
            return None
        self._files = files
        return plan

    def plan(
        self,
        installed: list[InstalledPackage],
        requirements: list[Requirement] | None,
        *,
        ignore_errors: bool = False,
    ) -> Plan:
        planned = self._plan_from_repos(installed, requirements, ignore_errors)
        if planned is not None:
            return planned
        self.runner.update()
        held = self.runner.held()
        if requirements is None:
            requirements = [Requirement(n, None) for n in self.runner.upgradable()]
            requirements += [
                Requirement(n, None)
                for n in sorted(held)
                if n not in {r.name for r in requirements}
            ]
        versions = {p.name: p.version for p in installed}
        cands = self.runner.candidates(sorted({r.name for r in requirements if r.name in versions}))
        items: list[PlanItem] = []
        too_old: list[PlanItem] = []
        for req in sorted(requirements, key=lambda r: r.name):
            inst = versions.get(req.name)
            if inst is None:
                items.append(
                    PlanItem(
                        req.name,
                        "",
                        req.minimum,
                        None,
                        Action.SKIP,
                        "not installed in the image",
                        req.vulnerabilities,
                    )
                )
                continue
            cand = cands.get(req.name)
            avail = cand.candidate if cand else None
            item = PlanItem(
                req.name, inst, req.minimum, avail, Action.UPDATE, "", req.vulnerabilities
            )
            if req.minimum is not None and compare_deb(inst, req.minimum) >= 0:
                continue  # already satisfied: the report is older than the image
            if req.name in held:
                item.action, item.reason = Action.SKIP, "held (apt-mark hold)"
            elif avail is None:
                item.action, item.reason = (
                    Action.SKIP,
                    "not offered by the image's package repositories",
                )
                if req.minimum is not None:
                    too_old.append(item)
            elif req.minimum is not None and compare_deb(avail, req.minimum) < 0:
                item.action, item.reason = (
                    Action.SKIP,
                    f"only {avail} available, {req.minimum} required",
                )
                too_old.append(item)
            elif compare_deb(avail, inst) <= 0:
                continue  # nothing newer (only when updating everything)
            items.append(item)
        if too_old and not ignore_errors:
            raise ResolveError(too_old_message(too_old))
        return Plan(items)

    def apply(self, plan: Plan) -> AptOutcome:
        before = read_status(self.rootfs)
        marks = _read_bytes(self.rootfs / EXTENDED_STATES)
        output = self._install(plan) if plan.updates else ""
        after = read_status(self.rootfs)
        native = after["dpkg"].arch if "dpkg" in after else ""
        added = {
            n: (p.arch if p.arch not in ("", "all") else native)
            for n, p in sorted(after.items())
            if n not in before
        }
        _keep_auto_marks(self.rootfs / EXTENDED_STATES, marks, set(before), added)
        outcome = AptOutcome(output=output)
        for name in sorted(after):
            old = before.get(name)
            new = after[name].version
            if old is None:
                outcome.updated.append(PackageChange(name, "", new))
            elif old.version != new:
                outcome.updated.append(PackageChange(name, old.version, new))
        wanted = {(n, v) for n, _, v in outcome.updated}
        outcome.packages = [p for p in self.runner.downloaded_debs() if deb_key(p) in wanted]
        for p in outcome.packages:
            touch(p)  # apt read them: their last use, for `cache prune`
        # No notes from dpkg's "==> Keeping old config file as default." lines: they do not name
        # the file. patch.py notes each kept conffile from the .dpkg-dist it finds in the diff.
        outcome.notes += self.notes
        return outcome

    def _install(self, plan: Plan) -> str:
        names = [i.name for i in plan.updates]
        if self._files is None or self.empty_lists is None:
            return self.runner.install(names)
        try:
            return self.runner.install_files(self._files, self.empty_lists)
        except ApplyError as e:
            if _DPKG_RAN.search(str(e)) or _dpkg_ran(self.rootfs):
                raise
            # apt refused the set before dpkg touched anything: let apt resolve it itself.
            self.notes.append(f"apt did not take the planned package set ({e}); apt resolved it")
        self.runner.update()
        return self.runner.install(names)

    def verify(self, plan: Plan, *, ignore_errors: bool = False) -> list[PlanItem]:
        after = {n: p.version for n, p in read_status(self.rootfs).items()}
        return verify_versions(plan, after, when="after apt ran", ignore_errors=ignore_errors)
