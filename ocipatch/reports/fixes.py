"""Which of a report's vulnerabilities a patch layer fixes.

A re-patch rebuilds the one patch layer from the original layers, so the layer carries the fixes
of every round. What it fixes is therefore read from the two ends, never from this round's plan:
a report vulnerability is fixed when its package is installed in the original image (the base
layers) below the report's fixed version and, in the patched image, at or above it. Versions
compare with the function the caller passes (the package manager's own ordering); a package
the report names several times (e.g. for two architectures) counts by its lowest version.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ocipatch.reports.model import PackageUpdate, UpdateManifest

Compare = Callable[[str, str], int]


@dataclass(frozen=True)
class Fixed:
    """A report package the patch brought to its fixed version, and the version it has now."""

    update: PackageUpdate
    version: str


def lowest_versions(packages: Iterable[tuple[str, str]], compare: Compare) -> dict[str, str]:
    """name -> its lowest version, from (name, version) pairs."""
    out: dict[str, str] = {}
    for name, version in packages:
        if name not in out or _below(compare, version, out[name]):
            out[name] = version
    return out


def _cmp(compare: Compare, a: str, b: str) -> int | None:
    try:
        return compare(a, b)
    except ValueError:  # a version the ordering cannot read: no evidence either way
        return None


def _below(compare: Compare, a: str, b: str) -> bool:
    c = _cmp(compare, a, b)
    return c is not None and c < 0


def after_patch(
    before: Mapping[str, str], updated: Iterable[tuple[str, str, str]]
) -> dict[str, str]:
    """The source's versions with a patch's (name, from, to) updates applied."""
    out = dict(before)
    out.update((name, new) for name, _, new in updated if new)
    return out


def fixed_by_patch(
    report: UpdateManifest | None,
    base: Mapping[str, str],
    patched: Mapping[str, str],
    compare: Compare,
) -> list[Fixed]:
    """The report's packages below their fixed version in `base` and at or above it in
    `patched` (both name -> version)."""
    if report is None:
        return []
    out = []
    for update in report.updates:
        was, now = base.get(update.name), patched.get(update.name)
        if was is None or now is None:
            continue
        before = _cmp(compare, was, update.fixed_version)
        after = _cmp(compare, now, update.fixed_version)
        if before is not None and after is not None and before < 0 <= after:
            out.append(Fixed(update, now))
    return out


def fixed_ids(fixed: Iterable[Fixed]) -> list[str]:
    """The vulnerability IDs the fixed packages close, sorted, once each."""
    return sorted({v for f in fixed for v in f.update.vulnerability_ids})
