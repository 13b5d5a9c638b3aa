"""The dpkg/apt adapter's patch steps: plan -> apply -> verify, over an unpacked rootfs.

The image's own apt does the work (dependency resolution, maintainer scripts, conffiles), in a
sandbox; this module decides what to ask it for and checks what it did.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote

from ocipatch.distro.apt import AptRunner
from ocipatch.distro.base import ApplyOutcome, InstalledPackage, Plan, PlanItem, Requirement
from ocipatch.distro.dpkgdb import STATUS, is_installed, iter_stanzas, package_of
from ocipatch.distro.versions import compare_deb
from ocipatch.errors import ResolveError, VerifyError

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
    path = rootfs / STATUS
    out: dict[str, InstalledPackage] = {}
    if path.is_file():
        for st in iter_stanzas(path.read_bytes()):
            pkg = package_of(st)
            if pkg and is_installed(st, default=False):
                out[pkg.name] = pkg
    return out


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
        ok = got is not None and compare_deb(got, item.installed) > 0
        if ok and got is not None and item.required is not None:
            ok = compare_deb(got, item.required) >= 0
        if not ok:
            item.action = "skip"
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


class DpkgPatcher:
    def __init__(self, rootfs: Path, runner: AptRunner) -> None:
        self.rootfs = rootfs
        self.runner = runner

    def plan(
        self,
        installed: list[InstalledPackage],
        requirements: list[Requirement] | None,
        *,
        ignore_errors: bool = False,
    ) -> Plan:
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
                        "skip",
                        "not installed in the image",
                        req.vulnerabilities,
                    )
                )
                continue
            cand = cands.get(req.name)
            avail = cand.candidate if cand else None
            item = PlanItem(req.name, inst, req.minimum, avail, "update", "", req.vulnerabilities)
            if req.minimum is not None and compare_deb(inst, req.minimum) >= 0:
                continue  # already satisfied: the report is older than the image
            if req.name in held:
                item.action, item.reason = "skip", "held (apt-mark hold)"
            elif avail is None:
                item.action, item.reason = "skip", "not offered by the image's package repositories"
                if req.minimum is not None:
                    too_old.append(item)
            elif req.minimum is not None and compare_deb(avail, req.minimum) < 0:
                item.action, item.reason = "skip", f"only {avail} available, {req.minimum} required"
                too_old.append(item)
            elif compare_deb(avail, inst) <= 0:
                continue  # nothing newer (only when updating everything)
            items.append(item)
        if too_old and not ignore_errors:
            raise ResolveError(too_old_message(too_old))
        return Plan(items)

    def apply(self, plan: Plan) -> AptOutcome:
        before = read_status(self.rootfs)
        output = self.runner.install([i.name for i in plan.updates]) if plan.updates else ""
        after = read_status(self.rootfs)
        outcome = AptOutcome(output=output)
        for name in sorted(after):
            old = before.get(name)
            new = after[name].version
            if old is None:
                outcome.updated.append((name, "", new))
            elif old.version != new:
                outcome.updated.append((name, old.version, new))
        wanted = {(n, v) for n, _, v in outcome.updated}
        outcome.debs = [p for p in self.runner.downloaded_debs() if deb_key(p) in wanted]
        # No notes from dpkg's "==> Keeping old config file as default." lines: they do not name
        # the file. patch.py notes each kept conffile from the .dpkg-dist it finds in the diff.
        return outcome

    def verify(self, plan: Plan, *, ignore_errors: bool = False) -> list[PlanItem]:
        after = {n: p.version for n, p in read_status(self.rootfs).items()}
        return verify_versions(plan, after, when="after apt ran", ignore_errors=ignore_errors)
