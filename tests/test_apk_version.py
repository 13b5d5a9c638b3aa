"""apk version rules: apk-tools' own test cases (test/unit/version.data) and a table of our own."""

from __future__ import annotations

from functools import cmp_to_key
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocipatch.distro.apk.version import (
    compare_versions,
    is_valid_version,
    op_mask,
    version_match,
)
from tests.apk_formats import VERSION_DATA


def _upstream_cases() -> list[str]:
    lines: list[str] = []
    if not VERSION_DATA.is_file():
        return lines
    for raw in VERSION_DATA.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


UPSTREAM = _upstream_cases()


@pytest.mark.skipif(not VERSION_DATA.is_file(), reason="no ../shared/formats/apk-version.data")
def test_upstream_cases_are_all_there() -> None:
    assert len(UPSTREAM) > 750
    assert sum(1 for c in UPSTREAM if len(c.split(" ")) == 3) > 700


@pytest.mark.parametrize("case", UPSTREAM)
def test_upstream_case(case: str) -> None:
    # Same grammar as apk-tools' test/unit/version_test.c: "v", "!v", "a op b", "a !op b".
    parts = case.split(" ")
    if len(parts) == 3:
        a, op, b = parts
        invert = op.startswith("!")
        assert version_match(a, op.lstrip("!"), b) is not invert
    else:
        (v,) = parts
        invert = v.startswith("!")
        assert is_valid_version(v[1:] if invert else v) is not invert


ORDER = [
    # ascending; each adjacent pair strictly increases
    "1.0_alpha",
    "1.0_alpha1",
    "1.0_alpha2_pre1",
    "1.0_beta",
    "1.0_pre1",
    "1.0_rc1",
    "1.0_rc1-r1",
    "1.0",
    "1.0-r1",
    "1.0-r10",
    "1.0_cvs1",
    "1.0_svn",
    "1.0_git20200101",
    "1.0_hg",
    "1.0_p1",
    "1.0_p2",
    "1.0a",
    "1.0b",
    "1.0.1",
    "1.1",
    "1.10",
    "2",
]


def test_ascending_table() -> None:
    for lower, higher in pairwise(ORDER):
        assert compare_versions(lower, higher) == -1, (lower, higher)
        assert compare_versions(higher, lower) == 1, (higher, lower)
    shuffled = list(reversed(ORDER))
    assert sorted(shuffled, key=cmp_to_key(compare_versions)) == ORDER


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [
        ("1.2.3-r0", "1.2.3-r0", 0),
        ("1.2.3", "1.2.3-r0", -1),  # any revision beats none
        ("3.0.8-r0", "3.0.10-r0", -1),  # numeric, not lexical
        ("1.01", "1.1", -1),  # a leading zero compares as a string
        ("1.001", "1.01", -1),
        ("1.0~abc", "1.0~abd", -1),  # commit hashes: string order
        ("1.0~1234-r1", "1.0~1234-r0", 1),
        ("1.0_p1", "1.0_rc9", 1),
        ("20230201-r23", "20230201-r3", 1),
        ("18446744073709551616", "0", 0),  # apk's uint64 wraps
        ("1.0bc", "1.0", 1),  # invalid tail: apk compares what it could read
    ],
)
def test_pairs(a: str, b: str, want: int) -> None:
    assert compare_versions(a, b) == want
    assert compare_versions(b, a) == -want


@pytest.mark.parametrize(
    "version",
    [
        "",
        "a",
        "1.0-r",
        "1.0_foo",
        "1.0-r1-r2",
        "1.0~",
        "1.0~xyz",
        "1..0",
        "1.0 ",
        "1.0-1",
        "1_p1.2",
    ],
)
def test_invalid(version: str) -> None:
    assert not is_valid_version(version)


@pytest.mark.parametrize(
    "version", ["0", "1.2.3", "1.2.3a", "1.2_rc1_p2", "1.0_git20240101~1a2b-r12", "2.36a_pre1"]
)
def test_valid(version: str) -> None:
    assert is_valid_version(version)


def test_operators() -> None:
    assert version_match("1.2-r1", ">=", "1.2")
    assert version_match("1.2", "<=", "1.2")
    assert not version_match("1.3", "<", "1.2")
    assert version_match("3.6.9", "~", "3.6")  # fuzzy: same leading tokens
    assert not version_match("3.7", "~", "3.6")
    assert version_match("3.5", "<~", "3.6")
    assert op_mask("<=") == op_mask("=<")
    for bad in ("", "!", "==x", "<>x"):
        with pytest.raises(ValueError):
            op_mask(bad)


_part = st.integers(min_value=0, max_value=30).map(str)
_versions = st.builds(
    lambda nums, letter, suf, rev: ".".join(nums) + letter + suf + rev,
    st.lists(_part, min_size=1, max_size=4),
    st.sampled_from(["", "a", "z"]),
    st.sampled_from(["", "_alpha", "_rc2", "_p1", "_git3", "_pre1_p2"]),
    st.sampled_from(["", "-r0", "-r1", "-r12"]),
)


@given(_versions, _versions, _versions)
def test_total_order(a: str, b: str, c: str) -> None:
    assert is_valid_version(a)
    assert compare_versions(a, b) == -compare_versions(b, a)
    assert compare_versions(a, a) == 0
    if compare_versions(a, b) <= 0 and compare_versions(b, c) <= 0:
        assert compare_versions(a, c) <= 0
