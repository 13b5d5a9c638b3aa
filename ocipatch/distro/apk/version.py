"""apk version rules, step for step as apk-tools' src/version.c (2.x and 3.x agree).

A version is `digit{.digit}...{letter}{_suffix{number}}...{~hash}{-r#}`. Two versions are
walked token by token; the first differing token decides. When one version runs out, the other
is greater unless its next token is a pre-release suffix (`_alpha _beta _pre _rc`); `_cvs _svn
_git _hg _p` sort after the release. An invalid tail (e.g. `1.0bc`) stops the walk: whatever
was equal so far decides, then the token kinds are compared (END > ... means "less").
tests/test_apk_version.py holds the cases (and apk-tools' own, when shared/ has them).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "compare_versions",
    "is_valid_version",
    "op_mask",
    "version_match",
]


class _Tok(IntEnum):
    # The order matters: a token may only follow tokens of a lower kind (see _next).
    INITIAL_DIGIT = 0
    DIGIT = 1
    LETTER = 2
    SUFFIX = 3
    SUFFIX_NO = 4
    COMMIT_HASH = 5
    REVISION_NO = 6
    END = 7
    INVALID = 8


# apk's suffix enum: pre-releases below NONE (the release itself), post-releases above.
_SUFFIXES = {
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
_SUFFIX_NONE = 5
_UINT64 = 1 << 64

# Result bits of a comparison, as apk's APK_VERSION_* masks; a dependency operator is a mask.
LESS = 1
EQUAL = 2
GREATER = 4
FUZZY = 8
_RESULT = {-1: LESS, 0: EQUAL, 1: GREATER}


@dataclass
class _Walker:
    """One version string and the token under the cursor."""

    text: str
    pos: int = 0
    token: _Tok = _Tok.INITIAL_DIGIT
    suffix: int = 0
    number: int = 0
    value: str = ""

    def _span(self, allowed: str) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in allowed:
            self.pos += 1
        return self.text[start : self.pos]

    def digits(self) -> None:
        self.value = self._span("0123456789")
        # apk pulls the number into a uint64 and lets it wrap.
        self.number = int(self.value) % _UINT64 if self.value else 0
        if not self.value:
            self.token = _Tok.INVALID

    def first(self) -> None:
        self.token = _Tok.INITIAL_DIGIT
        self.digits()

    def next(self) -> None:
        if self.pos >= len(self.text):
            self.token = _Tok.END
            return
        c = self.text[self.pos]
        if "a" <= c <= "z":
            self._letter(c)
        elif c == "." or "0" <= c <= "9":
            self._number(c)
        elif c == "_":
            self._suffix()
        elif c == "~":
            self._commit_hash()
        elif c == "-":
            self._revision()
        else:
            self.token = _Tok.INVALID

    def _letter(self, c: str) -> None:
        if self.token > _Tok.DIGIT:
            self.token = _Tok.INVALID
            return
        self.value = c
        self.token = _Tok.LETTER
        self.pos += 1

    def _number(self, c: str) -> None:
        if c == ".":
            if self.token > _Tok.DIGIT:
                self.token = _Tok.INVALID
                return
            self.pos += 1
        if self.token in (_Tok.INITIAL_DIGIT, _Tok.DIGIT):
            self.token = _Tok.DIGIT
        elif self.token == _Tok.SUFFIX:
            self.token = _Tok.SUFFIX_NO
        else:
            self.token = _Tok.INVALID
            return
        self.digits()

    def _suffix(self) -> None:
        if self.token > _Tok.SUFFIX_NO:
            self.token = _Tok.INVALID
            return
        self.pos += 1
        self.value = self._span("abcdefghijklmnopqrstuvwxyz")
        self.suffix = _SUFFIXES.get(self.value, 0)
        self.token = _Tok.SUFFIX if self.suffix else _Tok.INVALID

    def _commit_hash(self) -> None:
        if self.token >= _Tok.COMMIT_HASH:
            self.token = _Tok.INVALID
            return
        self.pos += 1
        self.value = self._span("0123456789abcdef")
        self.token = _Tok.COMMIT_HASH if self.value else _Tok.INVALID

    def _revision(self) -> None:
        if self.token >= _Tok.REVISION_NO or not self.text.startswith("-r", self.pos):
            self.token = _Tok.INVALID
            return
        self.pos += 2
        self.token = _Tok.REVISION_NO
        self.digits()


def _cmp(a: int | str, b: int | str) -> int:
    return int(a > b) - int(a < b)  # type: ignore[operator]


def _token_cmp(ta: _Walker, tb: _Walker) -> int:
    kind = ta.token
    if kind == _Tok.DIGIT and (ta.value.startswith("0") or tb.value.startswith("0")):
        # A leading zero makes apk compare the digits as strings (like Gentoo: 1.01 < 1.1).
        return _cmp(ta.value, tb.value)
    if kind in (_Tok.INITIAL_DIGIT, _Tok.DIGIT, _Tok.SUFFIX_NO, _Tok.REVISION_NO):
        return _cmp(ta.number, tb.number)
    if kind == _Tok.LETTER:
        return _cmp(ta.value, tb.value)
    if kind == _Tok.SUFFIX:
        return _cmp(ta.suffix, tb.suffix)
    return _cmp(ta.value, tb.value)  # commit hashes: plain string order


def _compare(a: str, b: str, fuzzy: bool) -> int:
    ta, tb = _Walker(a), _Walker(b)
    ta.first()
    tb.first()
    while ta.token == tb.token and ta.token < _Tok.END:
        r = _token_cmp(ta, tb)
        if r:
            return r
        ta.next()
        tb.next()
    if ta.token == tb.token:
        return 0
    if tb.token == _Tok.END and fuzzy:
        return 0  # `~` matches any version that starts with b's tokens
    # Equal so far: the longer one wins unless what follows is a pre-release suffix.
    if ta.token == _Tok.SUFFIX and ta.suffix < _SUFFIX_NONE:
        return -1
    if tb.token == _Tok.SUFFIX and tb.suffix < _SUFFIX_NONE:
        return 1
    return _cmp(tb.token, ta.token)


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as apk orders versions a and b (invalid versions are ordered too, as apk does)."""
    return _compare(a, b, fuzzy=False)


def is_valid_version(version: str) -> bool:
    """True when apk accepts the string as a version (`apk version --check`)."""
    w = _Walker(version)
    w.first()
    while w.token < _Tok.END:
        w.next()
    return w.token == _Tok.END


def op_mask(op: str) -> int:
    """The result mask of a dependency operator (`<`, `<=`, `=`, `>=`, `>`, `~`, `<~`, `>~`).

    Raises ValueError for an empty operator or a character apk does not know.
    """
    bits = {"<": LESS, ">": GREATER, "=": EQUAL, "~": FUZZY | EQUAL}
    if not op or any(c not in bits for c in op):
        raise ValueError(f"not an apk version operator: {op!r}")
    mask = 0
    for c in op:
        mask |= bits[c]
    return mask


def version_match(a: str, op: str, b: str) -> bool:
    """Whether version a satisfies `op b` (e.g. version_match("1.2-r1", ">=", "1.2"))."""
    mask = op_mask(op)
    return bool(_RESULT[_compare(a, b, fuzzy=bool(mask & FUZZY))] & mask)
