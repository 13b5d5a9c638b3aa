"""The one internal model every scanner report becomes, and the rules that build it.

A report lists vulnerable OS packages, often several times per package (one entry per
vulnerability), and an entry's fixed version may name several versions (one per upstream
branch, e.g. "1.2.3, 1.3.1"). What the patch step needs is one minimum version per package:

- an entry requires the lowest listed version that is greater than the installed one; an entry
  whose listed versions are all <= the installed version is already satisfied and dropped;
- the entries of one package combine: the highest requirement wins, vulnerability IDs add up;
- entries without a fixed version (nothing to install yet) and language packages are skipped.

Versions compare with the ecosystem's own rules (deb, apk or rpm), chosen from the OS family.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ocipatch.distro.versions import Comparator, comparator
from ocipatch.errors import ReportError, UnsupportedError
from ocipatch.reports.identity import ReportIdentity

# OS family (Trivy's Metadata.OS.Family, or an /etc/os-release ID) -> package ecosystem.
_DEB_FAMILIES = frozenset({"debian", "ubuntu"})
_APK_FAMILIES = frozenset({"alpine", "wolfi", "chainguard"})
_RPM_FAMILIES = frozenset(
    {
        "redhat",
        "rhel",
        "centos",
        "rocky",
        "alma",
        "almalinux",
        "amazon",
        "amzn",
        "oracle",
        "ol",
        "fedora",
        "cbl-mariner",
        "mariner",
        "azurelinux",
        "photon",
        "sles",
        "slem",
        "suse",
    }
)


def normalize_family(family: str) -> str:
    """Lower-case, trimmed OS family as written in reports (e.g. 'Debian ' -> 'debian')."""
    return family.strip().lower()


def ecosystem_for_os(family: str) -> str:
    """'deb', 'apk' or 'rpm' for an OS family; UnsupportedError for one ocipatch cannot handle."""
    fam = normalize_family(family)
    if fam in _DEB_FAMILIES:
        return "deb"
    if fam in _APK_FAMILIES:
        return "apk"
    if fam in _RPM_FAMILIES or fam.startswith(("opensuse", "suse")):
        return "rpm"
    raise UnsupportedError(
        f"the report is for OS {family!r}, whose package manager ocipatch does not know "
        "(supported: Debian/Ubuntu, Alpine/Wolfi, and RPM-based distributions)"
    )


@dataclass(frozen=True)
class PackageUpdate:
    """One package that must reach at least `fixed_version` (the requirement)."""

    name: str
    installed_version: str
    fixed_version: str
    vulnerability_ids: tuple[str, ...]
    source: str | None = None


@dataclass(frozen=True)
class UpdateManifest:
    """What a report asks for: the OS and platform it was made for, and the OS updates."""

    os_type: str
    os_version: str
    arch: str
    variant: str | None
    updates: list[PackageUpdate] = field(default_factory=list)
    lang_updates_ignored: int = 0
    identity: ReportIdentity | None = None  # the image the report was made from, if it says

    @property
    def ecosystem(self) -> str:
        return ecosystem_for_os(self.os_type)

    def update_for(self, name: str) -> PackageUpdate | None:
        for update in self.updates:
            if update.name == name:
                return update
        return None


@dataclass(frozen=True)
class ReportEntry:
    """One vulnerable-package line of a report, before the requirement rules run."""

    name: str
    installed_version: str
    fixed_version: str
    vulnerability_id: str
    source: str | None = None


def split_fixed_versions(fixed: str) -> list[str]:
    """'1.2.3, 1.3.1' -> ['1.2.3', '1.3.1'] (Trivy joins per-branch fixes with ', ')."""
    return [v.strip() for v in fixed.split(",") if v.strip()]


def _compare(cmp: Comparator, a: str, b: str, entry: ReportEntry, report: str) -> int:
    try:
        return cmp(a, b)
    except ValueError as e:
        raise ReportError(
            f"{report}: package {entry.name} has a version that cannot be compared "
            f"({a!r} vs {b!r}: {e}); fix or regenerate the report"
        ) from None


def entry_requirement(entry: ReportEntry, cmp: Comparator, report: str = "report") -> str | None:
    """The version this entry requires, or None if the installed version already satisfies it."""
    best: str | None = None
    for candidate in split_fixed_versions(entry.fixed_version):
        if _compare(cmp, candidate, entry.installed_version, entry, report) <= 0:
            continue
        if best is None or _compare(cmp, candidate, best, entry, report) < 0:
            best = candidate
    return best


def build_updates(
    entries: Iterable[ReportEntry], ecosystem: str, report: str = "report"
) -> list[PackageUpdate]:
    """Apply the requirement rules to report entries; one PackageUpdate per package, by name."""
    cmp = comparator(ecosystem)
    required: dict[str, str] = {}
    installed: dict[str, str] = {}
    sources: dict[str, str | None] = {}
    vulns: dict[str, set[str]] = {}
    for entry in entries:
        if not entry.fixed_version.strip():
            continue
        need = entry_requirement(entry, cmp, report)
        if need is None:
            continue
        name = entry.name
        if name not in required or _compare(cmp, need, required[name], entry, report) > 0:
            required[name] = need
        # Several entries may disagree on the installed version (e.g. multi-arch copies of one
        # package); the lowest is the one that still needs the update.
        if (
            name not in installed
            or _compare(cmp, entry.installed_version, installed[name], entry, report) < 0
        ):
            installed[name] = entry.installed_version
        if entry.source and not sources.get(name):
            sources[name] = entry.source
        else:
            sources.setdefault(name, None)
        if entry.vulnerability_id:
            vulns.setdefault(name, set()).add(entry.vulnerability_id)
        else:
            vulns.setdefault(name, set())
    return [
        PackageUpdate(
            name=name,
            installed_version=installed[name],
            fixed_version=required[name],
            vulnerability_ids=tuple(sorted(vulns[name])),
            source=sources[name],
        )
        for name in sorted(required)
    ]
