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

from ocipatch.distro.deb.rules import compare_deb

Comparator = Callable[[str, str], int]

__all__ = ["Comparator", "comparator", "compare_apk", "compare_deb", "compare_rpm", "sort_key"]

ECOSYSTEMS = ("deb", "apk", "rpm")


def _sign(n: int) -> int:
    return (n > 0) - (n < 0)


def _cmp_str(a: str, b: str) -> int:
    return (a > b) - (a < b)


# --- rpm -------------------------------------------------------------------------------------


def _ascii_alnum(c: str) -> bool:
    # rpm uses its own locale-independent risalnum(): ASCII only.
    return c.isascii() and c.isalnum()


def _ascii_digit(c: str) -> bool:
    return "0" <= c <= "9"


def rpmvercmp(a: str, b: str) -> int:
    """rpm's segment comparison of one version or release string (no epoch handling).

    Separators (anything but ASCII letters, digits, '~', '^') only split segments; a numeric
    segment beats an alphabetic one; '~' sorts before everything, even the end of the string;
    '^' sorts after the end of the string but before any further segment.
    """
    if a == b:
        return 0
    i, j, la, lb = 0, 0, len(a), len(b)
    while i < la or j < lb:
        while i < la and not _ascii_alnum(a[i]) and a[i] not in "~^":
            i += 1
        while j < lb and not _ascii_alnum(b[j]) and b[j] not in "~^":
            j += 1
        ca = a[i] if i < la else ""
        cb = b[j] if j < lb else ""
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
        if not ca or not cb:
            break
        numeric = _ascii_digit(ca)
        same_kind = _ascii_digit if numeric else (lambda c: c.isascii() and c.isalpha())
        si, sj = i, j
        while i < la and same_kind(a[i]):
            i += 1
        while j < lb and same_kind(b[j]):
            j += 1
        seg_a, seg_b = a[si:i], b[sj:j]
        if not seg_b:
            # Segments of different kinds: the numeric one is newer.
            return 1 if numeric else -1
        if numeric:
            seg_a, seg_b = seg_a.lstrip("0"), seg_b.lstrip("0")
            if len(seg_a) != len(seg_b):
                return 1 if len(seg_a) > len(seg_b) else -1
        if seg_a != seg_b:
            return 1 if seg_a > seg_b else -1
    if i >= la and j >= lb:
        return 0
    return 1 if i < la else -1


def _parse_evr(evr: str) -> tuple[str, str, str | None]:
    """Split [epoch:]version[-release] the way rpm's rpmverParse does."""
    if not evr:
        raise ValueError("empty rpm version")
    k = 0
    while k < len(evr) and _ascii_digit(evr[k]):
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


# --- apk -------------------------------------------------------------------------------------
# Token kinds, in the order apk-tools requires them to appear in a version:
#   digit{.digit}...{letter}{_suffix{number}}...{~hash}{-r#}
_INITIAL, _DIGIT, _LETTER, _SUFFIX, _SUFFIX_NO, _HASH, _REVISION, _END, _INVALID = range(9)

# Suffix ranks: the pre-release ones sort below "no suffix" (_NO_SUFFIX), the rest above.
_NO_SUFFIX = 5
_SUFFIX_RANK = {
    "alpha": 1,
    "beta": 2,
    "pre": 3,
    "rc": 4,
    "cvs": 6,
    "svn": 7,
    "git": 8,
    "hg": 9,
    "p": 10,
}


class _ApkTokens:
    """Walks an apk version string one token at a time (kind, value, text)."""

    def __init__(self, s: str) -> None:
        self.s = s
        self.pos = 0
        self.kind = _INITIAL
        self.number = 0
        self.rank = 0
        self.text = ""
        self._digits()

    def _span(self, accept: Callable[[str], bool]) -> str:
        start = self.pos
        while self.pos < len(self.s) and accept(self.s[self.pos]):
            self.pos += 1
        return self.s[start : self.pos]

    def _digits(self) -> None:
        self.text = self._span(_ascii_digit)
        if not self.text:
            self.kind = _INVALID
        else:
            self.number = int(self.text)

    def advance(self) -> None:
        s, kind = self.s, self.kind
        if self.pos >= len(s):
            self.kind = _END
            return
        c = s[self.pos]
        if "a" <= c <= "z":
            if kind > _DIGIT:
                self.kind = _INVALID
                return
            self.text = c
            self.kind = _LETTER
            self.pos += 1
        elif c == "." or _ascii_digit(c):
            if c == "." and kind > _DIGIT:
                self.kind = _INVALID
                return
            if c == ".":
                self.pos += 1
            if kind in (_INITIAL, _DIGIT):
                self.kind = _DIGIT
            elif kind == _SUFFIX:
                self.kind = _SUFFIX_NO
            else:
                self.kind = _INVALID
                return
            self._digits()
        elif c == "_":
            if kind > _SUFFIX_NO:
                self.kind = _INVALID
                return
            self.pos += 1
            # Characters outside ASCII count as part of the run, as in apk's ctype table.
            self.text = self._span(lambda ch: "a" <= ch <= "z" or not ch.isascii())
            rank = _SUFFIX_RANK.get(self.text)
            if rank is None:
                self.kind = _INVALID
                return
            self.rank = rank
            self.kind = _SUFFIX
        elif c == "~":
            if kind >= _HASH:
                self.kind = _INVALID
                return
            self.pos += 1
            self.text = self._span(lambda ch: ch in "0123456789abcdef" or not ch.isascii())
            self.kind = _HASH if self.text else _INVALID
        elif c == "-":
            if kind >= _REVISION or not s.startswith("-r", self.pos):
                self.kind = _INVALID
                return
            self.pos += 2
            self.kind = _REVISION
            self._digits()
        else:
            self.kind = _INVALID


def _apk_token_cmp(ta: _ApkTokens, tb: _ApkTokens) -> int:
    kind = ta.kind
    if kind == _DIGIT and (ta.text.startswith("0") or tb.text.startswith("0")):
        # A leading zero after a dot makes the component compare as a string ("1.05" < "1.5").
        return _cmp_str(ta.text, tb.text)
    if kind in (_INITIAL, _DIGIT, _SUFFIX_NO, _REVISION):
        return _sign(ta.number - tb.number)
    if kind == _SUFFIX:
        return _sign(ta.rank - tb.rank)
    # Letters and commit hashes compare as strings (by byte value).
    return _cmp_str(ta.text, tb.text)


def compare_apk(a: str, b: str) -> int:
    """Order two Alpine package versions as apk-tools does (e.g. 1.2_rc1-r0 < 1.2-r0)."""
    ta, tb = _ApkTokens(a), _ApkTokens(b)
    while ta.kind == tb.kind and ta.kind < _END:
        rc = _apk_token_cmp(ta, tb)
        if rc:
            return rc
        ta.advance()
        tb.advance()
    if ta.kind == tb.kind:
        return 0
    # Equal so far: the longer version is newer, unless what follows is a pre-release suffix.
    if ta.kind == _SUFFIX and ta.rank < _NO_SUFFIX:
        return -1
    if tb.kind == _SUFFIX and tb.rank < _NO_SUFFIX:
        return 1
    return -1 if ta.kind > tb.kind else 1


# --- lookup ----------------------------------------------------------------------------------

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
