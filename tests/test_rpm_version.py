"""rpm version comparison: a table of rpmvercmp facts (the behaviour rpm's own tests pin down,
written out here as our own cases), EVR rules, and the real rpm as an oracle when installed."""

from __future__ import annotations

import random
import shutil
import subprocess

import pytest

from ocipatch.distro.rpm.version import Evr, compare_evr, dep_matches, rpmvercmp, split_evr

VERCMP = [
    # equal, and plain numeric order
    ("1.0", "1.0", 0),
    ("1.0", "2.0", -1),
    ("2.0", "1.0", 1),
    ("2.0.1", "2.0.1", 0),
    ("2.0", "2.0.1", -1),
    ("2.0.1a", "2.0.1a", 0),
    ("2.0.1a", "2.0.1", 1),
    ("5.5p1", "5.5p2", -1),
    ("5.5p10", "5.5p1", 1),
    ("10xyz", "10.1xyz", -1),
    ("xyz10", "xyz10.1", -1),
    ("xyz.4", "8", -1),
    ("xyz.4", "2", -1),
    ("5.5p2", "5.6p1", -1),
    ("5.6p1", "6.5p1", -1),
    ("6.0.rc1", "6.0", 1),
    ("10b2", "10a1", 1),
    ("1.0aa", "1.0a", 1),
    ("10.0001", "10.1", 0),
    ("10.0039", "10.39", 0),
    ("4.999.9", "5.0", -1),
    ("20101121", "20101122", -1),
    ("2_0", "2_0", 0),
    ("2.0", "2_0", 0),
    ("a", "a", 0),
    ("a+", "a+", 0),
    ("a+", "a_", 0),
    ("+a", "_a", 0),
    ("+_", "_+", 0),
    ("_+", "+_", 0),
    ("_", "+", 0),
    ("1.0", "1.0.", 0),
    ("1..0", "1.0", 0),
    # numbers beat letters; letters compare as bytes; leading zeros ignored
    ("1.0", "1.a", 1),
    ("a", "1", -1),
    ("1", "a", 1),
    ("010", "10", 0),
    ("1.010", "1.9", 1),
    ("b", "B", 1),
    ("1b.fc17", "1b.fc17", 0),
    ("1b.fc17", "1.fc17", -1),
    ("1.fc17", "1b.fc17", 1),
    ("1g.fc17", "1g.fc17", 0),
    ("1g.fc17", "1.fc17", 1),
    ("1.fc17", "1g.fc17", -1),
    ("fc4", "fc.4", 0),
    # ~ sorts before everything, even the end of the string
    ("1.0~rc1", "1.0~rc1", 0),
    ("1.0~rc1", "1.0", -1),
    ("1.0", "1.0~rc1", 1),
    ("1.0~rc1", "1.0~rc2", -1),
    ("1.0~rc1~git123", "1.0~rc1", -1),
    ("1.0~rc1", "1.0~rc1~git123", 1),
    ("1.0~", "1.0", -1),
    ("1.0~rc1", "1.0arc1", -1),
    # ^ sorts after the end of the string but before any further segment
    ("1.0^", "1.0^", 0),
    ("1.0^", "1.0", 1),
    ("1.0", "1.0^", -1),
    ("1.0^git1", "1.0^git1", 0),
    ("1.0^git1", "1.0", 1),
    ("1.0", "1.0^git1", -1),
    ("1.0^git1", "1.0^git2", -1),
    ("1.0^git1", "1.01", -1),
    ("1.0^20160101", "1.0^20160101", 0),
    ("1.0^20160101", "1.0.1", -1),
    ("1.0^20160102", "1.0^20160101^git1", 1),
    ("1.0~rc1^git1", "1.0~rc1^git1", 0),
    ("1.0~rc1^git1", "1.0~rc1", 1),
    ("1.0^git1~pre", "1.0^git1~pre", 0),
    ("1.0^git1", "1.0^git1~pre", 1),
    ("1.0^git1~pre", "1.0^git1", -1),
    # non-ASCII characters only separate (rpm's risalnum is ASCII)
    ("1.é2", "1.2", 0),
]


@pytest.mark.parametrize(("a", "b", "want"), VERCMP)
def test_rpmvercmp_table(a: str, b: str, want: int) -> None:
    assert rpmvercmp(a, b) == want
    assert rpmvercmp(b, a) == -want


EVR = [
    ("1:1.0-1", "2.0-1", 1),  # the epoch decides first
    ("0:1.0-1", "1.0-1", 0),  # an absent epoch compares as 0
    ("1.0-1", "1.0-2", -1),
    ("1.0-10", "1.0-9", 1),
    ("2:1.0-1", "10:0.1-1", -1),
    ("1.0-1.el9", "1.0-1.el9_1", -1),
    ("1.0", "1.0-1", -1),  # a missing release is older than any release
]


@pytest.mark.parametrize(("a", "b", "want"), EVR)
def test_compare_evr(a: str, b: str, want: int) -> None:
    assert compare_evr(a, b) == want
    assert compare_evr(b, a) == -want


def test_split_evr() -> None:
    assert split_evr("2:1.0-3.el9") == Evr(2, "1.0", "3.el9")
    assert split_evr("1.0") == Evr(None, "1.0", None)
    assert split_evr("0:1.0-1") == Evr(0, "1.0", "1")
    assert split_evr("1.0-rc1-3") == Evr(None, "1.0-rc1", "3")
    assert str(split_evr("7:2.3-4")) == "7:2.3-4"


def test_epoch_none_equals_zero_but_records_differ() -> None:
    assert compare_evr(Evr(None, "1", "1"), Evr(0, "1", "1")) == 0
    assert Evr(None, "1", "1") != Evr(0, "1", "1")


def test_dep_matches_skips_a_missing_release() -> None:
    assert dep_matches("1.0-3", ">=", "1.0")
    assert dep_matches("1.0-3", "=", "1.0")
    assert not dep_matches("1.0-3", "<", "1.0")
    assert dep_matches("1:0.5-1", ">", "2.0")
    assert not dep_matches("0.5-1", ">", "2.0")
    assert dep_matches("anything", "", "")
    assert dep_matches("1.0~rc1-1", "<", "1.0")


RPM = shutil.which("rpm")
needs_rpm = pytest.mark.skipif(RPM is None, reason="rpm not installed")


def _rpm_vercmp(pairs: list[tuple[str, str]]) -> list[int]:
    """rpm's own answers (rpm.vercmp: EVR strings) for many pairs in one run."""
    calls = " ".join(f'print(rpm.vercmp("{a}", "{b}"), " ")' for a, b in pairs)
    out = subprocess.run(
        [str(RPM), "--eval", "%{lua: " + calls + "}"], capture_output=True, text=True, check=True
    ).stdout
    return [int(x) for x in out.split()]


@needs_rpm
def test_table_agrees_with_real_rpm() -> None:
    # rpm.vercmp parses EVRs: a plain version gets a release that cannot decide.
    plain = [(a, b) for a, b, _ in VERCMP if a.isascii() and b.isascii()]
    evrs = [(a, b) for a, b, _ in EVR]
    want = _rpm_vercmp([(f"{a}-0", f"{b}-0") for a, b in plain] + evrs)
    assert [rpmvercmp(a, b) for a, b in plain] + [compare_evr(a, b) for a, b in evrs] == want


@needs_rpm
def test_random_versions_agree_with_real_rpm() -> None:
    rng = random.Random(11)
    alphabet = "0019az.~^_-"

    def version() -> str:
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))).replace("-", "")
        return text or "0"

    pairs = [(version(), version()) for _ in range(400)]
    want = _rpm_vercmp([(f"{a}-1", f"{b}-1") for a, b in pairs])
    assert [rpmvercmp(a, b) for a, b in pairs] == want
