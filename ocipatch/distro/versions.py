"""Package version ordering, one pure function per ecosystem.

Each `compare_*` returns -1, 0 or 1 like a classic cmp(). They agree with the real tools:
`compare_deb` with `dpkg --compare-versions` (through python-debian), `compare_rpm` with rpm's
own `rpmverCmp` (rpm >= 4.16: epoch, `~`, `^`, a missing release sorting before any release),
`compare_apk` with apk-tools' tokenizer (digits, letter, `_suffix`, `~hash`, `-rN`).
tests/test_versions.py checks them against dpkg and rpm on generated samples.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cmp_to_key
from typing import Any

from ocipatch.distro.apk.version import compare_versions
from ocipatch.distro.deb.rules import compare_deb
from ocipatch.distro.rpm.version import rpmvercmp

Comparator = Callable[[str, str], int]

__all__ = ["Comparator", "comparator", "compare_apk", "compare_deb", "compare_rpm", "sort_key"]

ECOSYSTEMS = ("deb", "apk", "rpm")


def _sign(n: int) -> int:
    return (n > 0) - (n < 0)


def _cmp_str(a: str, b: str) -> int:
    return (a > b) - (a < b)


# --- rpm -------------------------------------------------------------------------------------


def _parse_evr(evr: str) -> tuple[str, str, str | None]:
    """Split [epoch:]version[-release] the way rpm's rpmverParse does."""
    if not evr:
        raise ValueError("empty rpm version")
    k = 0
    while k < len(evr) and "0" <= evr[k] <= "9":
        k += 1
    if k < len(evr) and evr[k] == ":":
        epoch, rest = (evr[:k] or "0"), evr[k + 1 :]
    else:
        epoch, rest = "0", evr
    dash = rest.rfind("-")
    if dash < 0:
        return epoch, rest, None
    return epoch, rest[:dash], rest[dash + 1 :]


def compare_rpm(a: str, b: str) -> int:
    """Order two rpm EVR strings ([epoch:]version[-release]); no epoch means epoch 0."""
    ea, va, ra = _parse_evr(a)
    eb, vb, rb = _parse_evr(b)
    rc = rpmvercmp(ea, eb) or rpmvercmp(va, vb)
    if rc:
        return rc
    if ra is None or rb is None:
        # rpm: a missing release sorts before any release, even an empty one.
        return (ra is not None) - (rb is not None)
    return rpmvercmp(ra, rb)


# --- apk: apk-tools' rules (distro/apk/version.py) -------------------------------------------

compare_apk = compare_versions


_COMPARATORS: dict[str, Comparator] = {"deb": compare_deb, "apk": compare_apk, "rpm": compare_rpm}


def comparator(ecosystem: str) -> Comparator:
    """The comparison function for 'deb', 'apk' or 'rpm'; ValueError for anything else."""
    try:
        return _COMPARATORS[ecosystem]
    except KeyError:
        raise ValueError(
            f"no version comparison for package ecosystem {ecosystem!r} "
            f"(known: {', '.join(ECOSYSTEMS)})"
        ) from None


def sort_key(ecosystem: str) -> Callable[[str], Any]:
    """A key function for sorted(): versions of one ecosystem in ascending order."""
    return cmp_to_key(comparator(ecosystem))
