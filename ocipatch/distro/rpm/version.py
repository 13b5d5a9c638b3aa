"""rpm's version comparison, step for step as rpmvercmp() in rpm's rpmio/rpmvercmp.c.

Both strings are cut into segments: runs of ASCII digits or ASCII letters; anything else
only separates. Segment by segment: a numeric segment beats an alphabetic one; numbers
compare by value (leading zeros dropped, then length, then digits); letters compare as
bytes. `~` sorts before everything, even the end of the string (`1.0~rc1 < 1.0`); `^`
sorts after the end of the string but before any further segment (`1.0 < 1.0^git1 < 1.0.1`).
When one string runs out, the one with segments left is newer.

An EVR compares epoch (absent = 0, as rpm does), then version, then release. In dependency
matching rpm skips the release when either side has none (`foo >= 1.0` matches `1.0-3`).
tests/test_rpm_version.py holds the cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

__all__ = ["Evr", "compare_evr", "dep_matches", "rpmvercmp", "split_evr"]

_DIGITS = frozenset("0123456789")
_ALPHA = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_ALNUM = _DIGITS | _ALPHA


def _skip_separators(s: str, i: int) -> int:
    while i < len(s) and s[i] not in _ALNUM and s[i] not in "~^":
        i += 1
    return i


def _span(s: str, i: int, chars: frozenset[str]) -> int:
    while i < len(s) and s[i] in chars:
        i += 1
    return i


_T = TypeVar("_T", int, str)


def _cmp(a: _T, b: _T) -> int:
    return (a > b) - (a < b)


def rpmvercmp(a: str, b: str) -> int:
    """-1, 0 or 1 as version (or release) `a` is older than, equal to or newer than `b`."""
    if a == b:
        return 0
    i = j = 0
    while i < len(a) or j < len(b):
        i, j = _skip_separators(a, i), _skip_separators(b, j)
        ca, cb = a[i : i + 1], b[j : j + 1]
        if ca == "~" or cb == "~":
            if ca != "~":
                return 1
            if cb != "~":
                return -1
            i, j = i + 1, j + 1
            continue
        if ca == "^" or cb == "^":
            if not ca:
                return -1
            if not cb:
                return 1
            if ca != "^":
                return 1
            if cb != "^":
                return -1
            i, j = i + 1, j + 1
            continue
        if not (ca and cb):
            break
        numeric = ca in _DIGITS
        kind = _DIGITS if numeric else _ALPHA
        ei, ej = _span(a, i, kind), _span(b, j, kind)
        if ej == j:
            # b's segment is of the other kind: a number beats letters.
            return 1 if numeric else -1
        seg_a, seg_b = a[i:ei], b[j:ej]
        if numeric:
            seg_a, seg_b = seg_a.lstrip("0"), seg_b.lstrip("0")
            if len(seg_a) != len(seg_b):
                return 1 if len(seg_a) > len(seg_b) else -1
        rc = _cmp(seg_a, seg_b)
        if rc:
            return rc
        i, j = ei, ej
    if i >= len(a) and j >= len(b):
        return 0
    return -1 if i >= len(a) else 1


@dataclass(frozen=True)
class Evr:
    """epoch:version-release; `epoch` None when absent, `release` None when not given."""

    epoch: int | None
    version: str
    release: str | None = None

    def __str__(self) -> str:
        e = f"{self.epoch}:" if self.epoch is not None else ""
        return e + self.version + (f"-{self.release}" if self.release is not None else "")


def split_evr(text: str) -> Evr:
    """`[epoch:]version[-release]` as rpm's rpmdsParseEVR cuts it (last '-' starts the release).

    An epoch that is not all digits is left in the version, as rpm does.
    """
    epoch: int | None = None
    head, colon, rest = text.partition(":")
    if colon and head.isdigit():
        epoch, text = int(head), rest
    elif colon and not head:
        epoch, text = 0, rest
    version, dash, release = text.rpartition("-")
    if not dash:
        return Evr(epoch, text, None)
    return Evr(epoch, version, release)


def compare_evr(a: Evr | str, b: Evr | str, *, release_optional: bool = False) -> int:
    """-1, 0 or 1: epoch (None = 0), version, release (rpmVersionCompare / rpmdsCompareEVR).

    A missing release (None) compares lower than any release, unless `release_optional`,
    when it is skipped as rpm does for a dependency without a release.
    """
    ea = split_evr(a) if isinstance(a, str) else a
    eb = split_evr(b) if isinstance(b, str) else b
    rc = _cmp(ea.epoch or 0, eb.epoch or 0)
    if rc:
        return rc
    rc = rpmvercmp(ea.version, eb.version)
    if rc:
        return rc
    if ea.release is None or eb.release is None:
        if release_optional:
            return 0
        return _cmp(int(ea.release is not None), int(eb.release is not None))
    return rpmvercmp(ea.release, eb.release)


def dep_matches(candidate: Evr | str, op: str, wanted: Evr | str) -> bool:
    """Does a package of EVR `candidate` satisfy `op wanted` (op: < <= = >= > or "")?"""
    if not op:
        return True
    rc = compare_evr(candidate, wanted, release_optional=True)
    return {"<": rc < 0, "<=": rc <= 0, "=": rc == 0, ">=": rc >= 0, ">": rc > 0}[op]
