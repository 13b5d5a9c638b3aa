"""apk resolution for a patch (ocipatch.distro.apk.resolve): candidates, pins, world constraints,
provides, new dependencies, lower-only repositories, --ignore-errors."""

from __future__ import annotations

import pytest

from ocipatch.distro.apk.records import Dependency, Record, parse_deps
from ocipatch.distro.apk.resolve import Candidate, resolve, satisfies
from ocipatch.distro.base import Requirement
from ocipatch.errors import ResolveError

REPO = "https://apk.example/main"
EDGE = "https://apk.example/edge"


def rec(name: str, version: str, depends: str = "", provides: str = "", k: int = 0) -> Record:
    fields = [("C", "Q1" + "A" * 26 + "A="), ("P", name), ("V", version), ("A", "x86_64")]
    if k:
        fields.append(("k", str(k)))
    if depends:
        fields.append(("D", depends))
    if provides:
        fields.append(("p", provides))
    return Record(fields)


def cand(name: str, version: str, *, tag: str = "", **kw: object) -> Candidate:
    return Candidate(rec(name, version, **kw), tag=tag, repo=EDGE if tag else REPO)  # type: ignore[arg-type]


def world(text: str) -> list[Dependency]:
    return parse_deps(text)


def updates(res: object) -> dict[str, str]:
    return {i.name: i.available or "" for i in res.plan.updates}  # type: ignore[attr-defined]


def test_every_upgradable_package_without_requirements() -> None:
    installed = [rec("a", "1.0-r0"), rec("b", "2.0-r0"), rec("c", "1.0-r1")]
    cands = [cand("a", "1.0-r1"), cand("a", "1.0-r2"), cand("b", "2.0-r0"), cand("c", "1.0-r0")]
    res = resolve(installed, world("a b c"), cands, None)
    assert updates(res) == {"a": "1.0-r2"}  # b is current, c only lower: never down
    assert res.plan.skipped == []


def test_requirement_reaches_fixed_version_and_already_fixed_is_left() -> None:
    installed = [rec("a", "1.0-r0"), rec("b", "2.0-r0")]
    cands = [cand("a", "1.0-r1"), cand("a", "1.1_rc1-r0"), cand("b", "2.1-r0")]
    res = resolve(
        installed, world("a b"), cands, [Requirement("a", "1.0-r1"), Requirement("b", "2.0-r0")]
    )
    # the best candidate is taken (1.1_rc1 > 1.0-r1), b is already at its fixed version
    assert updates(res) == {"a": "1.1_rc1-r0"}
    item = res.plan.updates[0]
    assert (item.installed, item.required, item.reason) == ("1.0-r0", "1.0-r1", "")


def test_lower_only_repository_is_a_resolve_error_with_the_apt_wording() -> None:
    installed = [rec("a", "1.2-r0")]
    cands = [cand("a", "1.1-r0")]
    with pytest.raises(ResolveError) as e:
        resolve(installed, [], cands, [Requirement("a", "1.2-r3")])
    msg = str(e.value)
    assert e.value.exit_code == 11
    assert "a needs 1.2-r3 but the repositories (https://apk.example/main) offer only 1.1-r0" in msg
    assert "the scanner's database is newer than the package repositories" in msg
    assert "--ignore-errors" in msg


def test_not_offered_is_named() -> None:
    with pytest.raises(ResolveError, match="zz is not offered by the repositories"):
        resolve([rec("zz", "1-r0")], [], [cand("a", "1-r0")], [Requirement("zz", "2-r0")])


def test_ignore_errors_skips_and_patches_the_rest() -> None:
    installed = [rec("a", "1.0-r0"), rec("b", "1.0-r0")]
    cands = [cand("a", "0.9-r0"), cand("b", "1.0-r1")]
    reqs = [Requirement("a", "1.0-r1", ("CVE-1",)), Requirement("b", "1.0-r1")]
    res = resolve(installed, [], cands, reqs, ignore_errors=True)
    assert updates(res) == {"b": "1.0-r1"}
    (skip,) = res.plan.skipped
    assert (skip.name, skip.vulnerabilities) == ("a", ("CVE-1",))
    assert "offer only 0.9-r0" in skip.reason


def test_tagged_repository_only_for_pinned_packages() -> None:
    installed = [rec("a", "1.0-r0"), rec("b", "1.0-r0")]
    cands = [cand("a", "1.0-r1"), cand("a", "2.0-r0", tag="edge"), cand("b", "2.0-r0", tag="edge")]
    res = resolve(installed, world("a b@edge"), cands, None)
    assert updates(res) == {"a": "1.0-r1", "b": "2.0-r0"}


def test_unpinned_fix_in_tagged_repository_says_how_to_take_it() -> None:
    installed = [rec("a", "1.0-r0")]
    cands = [cand("a", "1.0-r0"), cand("a", "2.0-r0", tag="edge")]
    with pytest.raises(ResolveError) as e:
        resolve(installed, world("a"), cands, [Requirement("a", "2.0-r0")])
    assert "a 2.0-r0 is in the repository @edge" in str(e.value)
    assert "add a@edge to world" in str(e.value)


@pytest.mark.parametrize(
    ("constraint", "expected"),
    [
        ("a<2", "1.9-r0"),
        ("a<=1.5-r0", None),  # already at the highest allowed
        ("a=1.5-r0", None),  # pinned to the installed version: nothing to do
        ("a~1.9", "1.9-r0"),
        ("a>=1", "2.1-r0"),
        ("a", "2.1-r0"),
    ],
)
def test_world_constraints(constraint: str, expected: str | None) -> None:
    installed = [rec("a", "1.5-r0")]
    cands = [cand("a", v) for v in ("1.5-r0", "1.9-r0", "2.0-r0", "2.1-r0")]
    res = resolve(installed, world(constraint), cands, None)
    assert updates(res) == ({"a": expected} if expected else {})


def test_world_constraint_blocking_a_fix_is_named() -> None:
    installed = [rec("a", "1.5-r0")]
    cands = [cand("a", "1.9-r0"), cand("a", "2.0-r0")]
    with pytest.raises(ResolveError, match=r"world holds a<2, which excludes a 2.0-r0"):
        resolve(installed, world("a<2"), cands, [Requirement("a", "2.0-r0")])


def test_new_dependency_through_so_provides() -> None:
    installed = [rec("libcrypto3", "3.3.2-r0", provides="so:libcrypto.so.3=3")]
    cands = [
        cand("libcrypto3", "3.3.2-r1", depends="so:libz.so.1", provides="so:libcrypto.so.3=3"),
        cand("zlib", "1.3.1-r0", provides="so:libz.so.1=1.3.1"),
        cand("zlib", "1.3.1-r1", provides="so:libz.so.1=1.3.1"),
    ]
    res = resolve(installed, [], cands, [Requirement("libcrypto3", "3.3.2-r1")])
    assert updates(res) == {"libcrypto3": "3.3.2-r1", "zlib": "1.3.1-r1"}
    z = next(i for i in res.plan.updates if i.name == "zlib")
    assert z.installed == "" and "dependency of libcrypto3 3.3.2-r1 (so:libz.so.1)" in z.reason


def test_provider_priority_and_cmd_pc_provides() -> None:
    installed = [rec("app", "1-r0")]
    cands = [
        cand("app", "2-r0", depends="cmd:sh pc:zlib>=1.2"),
        cand("dash", "0.5-r0", provides="cmd:sh", k=5),
        cand("busybox-binsh", "1.36-r0", provides="cmd:sh", k=100),
        cand("zlib-dev", "1.3-r0", provides="pc:zlib=1.3"),
        cand("zlib-old-dev", "1.1-r0", provides="pc:zlib=1.1"),
    ]
    res = resolve(installed, [], cands, None)
    assert updates(res) == {"app": "2-r0", "busybox-binsh": "1.36-r0", "zlib-dev": "1.3-r0"}


def test_installed_provider_is_upgraded_rather_than_a_new_one_added() -> None:
    installed = [
        rec("app", "1-r0", depends="so:libx.so.1"),
        rec("libx", "1-r0", provides="so:libx.so.1=1"),
    ]
    cands = [
        cand("app", "2-r0", depends="so:libx.so.1>=2"),
        cand("libx", "2-r0", provides="so:libx.so.1=2"),
        cand("libx-alt", "9-r0", provides="so:libx.so.1=9", k=999),
    ]
    res = resolve(installed, [], cands, [Requirement("app", "2-r0")])
    assert updates(res) == {"app": "2-r0", "libx": "2-r0"}


def test_unversioned_provide_does_not_meet_versioned_dependency() -> None:
    assert satisfies(rec("x", "1-r0", provides="foo"), Dependency.parse("foo"))
    assert not satisfies(rec("x", "1-r0", provides="foo"), Dependency.parse("foo>=1"))
    assert satisfies(rec("x", "1-r0", provides="foo=2"), Dependency.parse("foo>=1"))


def test_upgrade_that_breaks_an_installed_package_upgrades_it_too() -> None:
    installed = [rec("libcrypto3", "3.0-r0"), rec("libssl3", "3.0-r0", depends="libcrypto3=3.0-r0")]
    cands = [cand("libcrypto3", "3.1-r0"), cand("libssl3", "3.1-r0", depends="libcrypto3=3.1-r0")]
    res = resolve(installed, [], cands, [Requirement("libcrypto3", "3.1-r0")])
    assert updates(res) == {"libcrypto3": "3.1-r0", "libssl3": "3.1-r0"}
    assert "keeps working" in next(i for i in res.plan.updates if i.name == "libssl3").reason


def test_upgrade_that_breaks_an_installed_package_without_a_fix_is_refused() -> None:
    installed = [rec("libcrypto3", "3.0-r0"), rec("libssl3", "3.0-r0", depends="libcrypto3=3.0-r0")]
    with pytest.raises(ResolveError, match=r"breaks libssl3 3.0-r0"):
        resolve(
            installed, [], [cand("libcrypto3", "3.1-r0")], [Requirement("libcrypto3", "3.1-r0")]
        )


def test_missing_dependency_is_refused() -> None:
    installed = [rec("a", "1-r0")]
    with pytest.raises(ResolveError, match=r"a 2-r0 depends on so:libnone.so.1"):
        resolve(installed, [], [cand("a", "2-r0", depends="so:libnone.so.1")], None)


def test_dependency_already_missing_in_the_image_is_not_added() -> None:
    # apko images may lack a declared dependency; a patch does not add it.
    installed = [rec("ca", "1-r0", depends="wolfi-baselayout")]
    cands = [cand("ca", "2-r0", depends="wolfi-baselayout"), cand("wolfi-baselayout", "1-r0")]
    res = resolve(installed, [], cands, None)
    assert updates(res) == {"ca": "2-r0"}
    assert res.notes and "wolfi-baselayout was already missing" in res.notes[0]


def test_conflict_with_installed_package_is_refused() -> None:
    installed = [rec("a", "1-r0"), rec("b", "1-r0")]
    with pytest.raises(ResolveError, match="a 2-r0 conflicts with b"):
        resolve(installed, [], [cand("a", "2-r0", depends="!b")], None)


def test_dependency_of_pinned_package_may_come_from_its_repository() -> None:
    installed = [rec("a", "1-r0")]
    cands = [cand("a", "2-r0", tag="edge", depends="libnew"), cand("libnew", "1-r0", tag="edge")]
    res = resolve(installed, world("a@edge"), cands, None)
    assert updates(res) == {"a": "2-r0", "libnew": "1-r0"}
