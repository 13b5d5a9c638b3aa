"""Version ordering per ecosystem, checked against dpkg and rpm themselves where they run."""

from __future__ import annotations

import random
import shutil
import subprocess
from functools import cmp_to_key
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocipatch.distro.versions import (
    comparator,
    compare_apk,
    compare_deb,
    compare_rpm,
    rpmvercmp,
    sort_key,
)

# --- tables ----------------------------------------------------------------------------------

DEB_TABLE = [
    ("1.0", "1.0", 0),
    ("1.0", "1.0-0", 0),  # no revision is revision "0"
    ("0:1.0", "1.0", 0),
    ("1:1.0", "2.0", 1),  # epoch wins
    ("1.0~rc1", "1.0", -1),  # tilde sorts before everything, even the end
    ("1.0~~", "1.0~", -1),
    ("1.0~~a", "1.0~~", 1),
    ("1.0+deb12u1", "1.0", 1),
    ("3.0.11-1~deb12u2", "3.0.11-1~deb12u1", 1),
    ("3.0.15-1~deb12u1", "3.0.15-1", -1),
    ("1.2.13.dfsg-2", "1:1.2.13.dfsg-1", -1),
    ("2.36-9+deb12u7", "2.36-9+deb12u10", -1),  # numeric, not lexical
    ("1.0a", "1.0", 1),
    ("1.0a", "1.0+", -1),  # letters before non-letters
    ("1.0-1ubuntu1.2", "1.0-1ubuntu1.10", -1),
    ("010", "10", 0),
]

RPM_TABLE = [
    ("1.0-1", "1.0-1", 0),
    ("1:1.1.1k-5.el8_5", "1:1.1.1k-4.el8", 1),
    ("1:1.0", "2.0", 1),
    ("0:1.0", "1.0", 0),
    ("1.0~rc1", "1.0", -1),
    ("1.0^git1", "1.0", 1),
    ("1.0^git1", "1.0.1", -1),
    ("1.0", "1.0-1", -1),  # rpm >= 4.16: no release sorts first
    ("1.0a", "1.0", 1),
    ("1.a", "1.1", -1),  # numeric segment beats alpha
    ("2.35-7.cm2", "2.35-10.cm2", -1),
    ("7.61.1-12.amzn2.0.1", "7.61.1-9.amzn2.0.1", 1),
    ("1.1.0i-lp151.8.6.1", "1.1.0i-lp151.8.3.1", 1),
    ("01", "1", 0),
    ("1..0", "1.0", 0),
]

# Orderings the apk-tools rules imply (digits, letter, _suffix, ~hash, -rN), written here.
APK_TABLE = [
    ("1.2.5-r9", "1.2.5-r8", 1),
    ("3.3.3-r0", "3.3.2-r5", 1),
    ("1.2.5-r10", "1.2.5-r9", 1),
    ("1.0", "1.0-r0", -1),  # a revision makes it newer
    ("1.0-r0", "1.0-r0", 0),
    ("1.0_rc1", "1.0", -1),  # pre-release suffixes sort before the release
    ("1.0_alpha", "1.0_beta", -1),
    ("1.0_beta2", "1.0_pre1", -1),
    ("1.0_pre1", "1.0_rc1", -1),
    ("1.0_rc1-r5", "1.0-r0", -1),
    ("1.0_p1", "1.0", 1),  # post-release suffixes sort after
    ("1.0_p10", "1.0_p9", 1),
    ("1.0_cvs", "1.0_svn", -1),
    ("1.0_git", "1.0_hg", -1),
    ("1.0_hg", "1.0_p", -1),
    ("1.0_alpha_pre2", "1.0_alpha", -1),
    ("1.0a", "1.0", 1),
    ("1.0a", "1.0b", -1),
    ("1.0b-r3", "1.0a-r9", 1),
    ("1.0.1", "1.0a", 1),
    ("1.10", "1.9", 1),
    ("1.05", "1.5", -1),  # a leading zero after a dot compares as text
    ("1.05", "1.049", 1),
    ("006", "1.0.0", 1),  # but not in the first component
    ("20240101", "3.1", 1),
    ("1.0~abc1", "1.0", 1),  # a commit hash
    ("1.0~abc1", "1.0~abd0", -1),
    ("1.0~abc-r1", "1.0~abc-r0", 1),
    ("1.36.1_p1-r0", "1.36.1-r29", 1),
    ("1.37.0_rc1-r0", "1.36.1-r30", 1),
    ("0.9.28.1", "0.9.28-r2", 1),
    ("2.12r-r5", "2.12r-r4", 1),
]


@pytest.mark.parametrize(("a", "b", "want"), DEB_TABLE)
def test_deb_table(a: str, b: str, want: int) -> None:
    assert compare_deb(a, b) == want
    assert compare_deb(b, a) == -want


@pytest.mark.parametrize(("a", "b", "want"), RPM_TABLE)
def test_rpm_table(a: str, b: str, want: int) -> None:
    assert compare_rpm(a, b) == want
    assert compare_rpm(b, a) == -want


@pytest.mark.parametrize(("a", "b", "want"), APK_TABLE)
def test_apk_table(a: str, b: str, want: int) -> None:
    assert compare_apk(a, b) == want
    assert compare_apk(b, a) == -want


def test_apk_sorted_chain() -> None:
    chain = [
        "1.0_alpha1",
        "1.0_alpha2",
        "1.0_beta",
        "1.0_pre",
        "1.0_rc1",
        "1.0",
        "1.0-r1",
        "1.0_p1",
        "1.0a",
        "1.0.1",
        "1.1",
        "1.10",
        "2",
    ]
    shuffled = chain[:]
    random.Random(7).shuffle(shuffled)
    assert sorted(shuffled, key=sort_key("apk")) == chain


def test_comparator_lookup() -> None:
    assert comparator("deb") is compare_deb
    assert comparator("apk") is compare_apk
    assert comparator("rpm") is compare_rpm
    with pytest.raises(ValueError, match="pacman"):
        comparator("pacman")


def test_invalid_deb_version_raises_value_error() -> None:
    with pytest.raises(ValueError):
        compare_deb("1.0 beta", "1.0")
    with pytest.raises(ValueError):
        compare_rpm("", "1.0")


def test_rpmvercmp_is_segment_only() -> None:
    # rpmvercmp has no notion of epochs: the ':' is just a separator there.
    assert rpmvercmp("1:1.0", "2.0") == -1
    assert compare_rpm("1:1.0", "2.0") == 1


# --- the real tools ---------------------------------------------------------------------------

DEB_CHARS = "0123456789" * 3 + "abzAZ.+~"


def _deb_version(rnd: random.Random) -> str:
    upstream = rnd.choice("0123456789") + "".join(
        rnd.choice(DEB_CHARS) for _ in range(rnd.randint(0, 6))
    )
    version = upstream
    if rnd.random() < 0.6:
        version += (
            "-"
            + rnd.choice("0123456789")
            + "".join(rnd.choice(DEB_CHARS) for _ in range(rnd.randint(0, 4)))
        )
    if rnd.random() < 0.15:
        version = f"{rnd.randint(0, 2)}:{version}"
    return version


def _mutate(rnd: random.Random, v: str, alphabet: str) -> str:
    # Near-identical pairs exercise the interesting branches far more than random pairs.
    i = rnd.randrange(len(v))
    return (
        v[:i] + rnd.choice(alphabet) + v[i + 1 :]
        if rnd.random() < 0.5
        else v + rnd.choice(alphabet)
    )


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="dpkg is not installed")
def test_deb_agrees_with_dpkg() -> None:
    rnd = random.Random(20240501)
    pairs = []
    for _ in range(300):
        a = _deb_version(rnd)
        b = _deb_version(rnd) if rnd.random() < 0.4 else _mutate(rnd, a, "0123456789a~+.")
        if b.endswith("-") or ":" in b[2:] or b.startswith(("~", ".", "+")):
            b = a
        pairs.append((a, b))
    # One shell for all pairs: dpkg's exit status says lt (-1), eq (0) or gt (1).
    script = "".join(
        f"if dpkg --compare-versions '{a}' lt '{b}'; then echo -1; "
        f"elif dpkg --compare-versions '{a}' eq '{b}'; then echo 0; else echo 1; fi\n"
        for a, b in pairs
    )
    proc = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    assert not proc.stderr, "the sample must hold only versions dpkg accepts"
    out = proc.stdout.split()
    assert len(out) == len(pairs)
    mismatches = [
        (a, b, int(got))
        for (a, b), got in zip(pairs, out, strict=True)
        if compare_deb(a, b) != int(got)
    ]
    assert not mismatches, mismatches[:10]


RPM_CHARS = "0123456789" * 3 + "abcAZ" + ".-_~^+:" * 2


def _rpm_version(rnd: random.Random) -> str:
    return "".join(rnd.choice(RPM_CHARS) for _ in range(rnd.randint(1, 8)))


@pytest.mark.skipif(shutil.which("rpm") is None, reason="rpm is not installed")
def test_rpm_agrees_with_rpm(tmp_path: Path) -> None:
    rnd = random.Random(4180)
    pairs = [("1.0", "1.0-1"), ("1.0-", "1.0"), (":1", "1"), ("a:1", "1"), ("-1", "1")]
    for _ in range(2000):
        a = _rpm_version(rnd)
        pairs.append((a, _rpm_version(rnd) if rnd.random() < 0.5 else _mutate(rnd, a, RPM_CHARS)))
    # rpm's Lua has rpm.vercmp (rpmverCmp on two EVR strings): one rpm process for all pairs.
    lines = ["local P = {"]
    lines += [f"{{[==[{a}]==], [==[{b}]==]}}," for a, b in pairs]
    lines.append("}")
    lines.append(
        "for _, p in ipairs(P) do local ok, r = pcall(rpm.vercmp, p[1], p[2]); "
        "io.write((ok and tostring(r) or 'E') .. '\\n') end"
    )
    script = tmp_path / "vercmp.lua"
    script.write_text("\n".join(lines))
    out = subprocess.run(
        ["rpm", "--eval", f"%{{lua: dofile('{script}')}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len(out) == len(pairs)

    def mine(a: str, b: str) -> str:
        try:
            return str(compare_rpm(a, b))
        except ValueError:
            return "E"

    mismatches = [(a, b, got) for (a, b), got in zip(pairs, out, strict=True) if mine(a, b) != got]
    assert not mismatches, mismatches[:10]


# --- properties -------------------------------------------------------------------------------

_deb_part = st.text(alphabet="0123456789abzAZ.+~", max_size=6)
deb_versions = st.builds(
    lambda epoch, first, rest, rev: (
        (f"{epoch}:" if epoch is not None else "") + first + rest + (f"-{rev}" if rev else "")
    ),
    st.one_of(st.none(), st.integers(0, 3)),
    st.sampled_from("0123456789"),
    _deb_part,
    st.one_of(st.just(""), st.builds(lambda d, r: d + r, st.sampled_from("0123456789"), _deb_part)),
)
apk_versions = st.from_regex(
    r"\A[0-9]{1,3}(\.[0-9]{1,3}){0,3}[a-z]?(_(alpha|beta|pre|rc|cvs|svn|git|hg|p)[0-9]{0,2}){0,2}"
    r"(~[0-9a-f]{1,4})?(-r[0-9]{1,2})?\Z"
)
rpm_versions = st.text(alphabet="0123456789abZ.-_~^:", min_size=1, max_size=10)


@settings(max_examples=300)
@given(deb_versions, deb_versions)
def test_deb_antisymmetric(a: str, b: str) -> None:
    assert compare_deb(a, b) == -compare_deb(b, a)
    assert compare_deb(a, a) == 0


@settings(max_examples=200)
@given(deb_versions, deb_versions, deb_versions)
def test_deb_transitive(a: str, b: str, c: str) -> None:
    x, y, z = sorted([a, b, c], key=cmp_to_key(compare_deb))
    assert compare_deb(x, y) <= 0
    assert compare_deb(y, z) <= 0
    assert compare_deb(x, z) <= 0


@settings(max_examples=300)
@given(apk_versions, apk_versions)
def test_apk_antisymmetric(a: str, b: str) -> None:
    assert compare_apk(a, b) == -compare_apk(b, a)
    assert compare_apk(a, a) == 0


@settings(max_examples=300)
@given(rpm_versions, rpm_versions)
def test_rpm_antisymmetric(a: str, b: str) -> None:
    assert compare_rpm(a, b) == -compare_rpm(b, a)
    assert compare_rpm(a, a) == 0
