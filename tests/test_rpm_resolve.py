"""dnf-like choice of packages (ocipatch.distro.rpm.resolve): best EVR per name and arch,
multilib, obsoletes, requires met by names, provides, sonames and file provides, versioned
requires, the keep-working rule, and the apt/apk wording of a fixed version not offered.

Installed packages are real rpm headers (rpmbuild via tools/rpmrepo.py) where their requires
matter; candidates are primary.xml entries as createrepo_c writes them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ocipatch.distro.base import Requirement
from ocipatch.distro.rpm.header import Dependency, Package, read_rpm_file
from ocipatch.distro.rpm.repomd import PrimaryEntry
from ocipatch.distro.rpm.repos import RpmCandidate
from ocipatch.distro.rpm.resolve import provides, resolve
from ocipatch.errors import ResolveError

_OPS = {"<": 2, ">": 4, "=": 8, "<=": 10, ">=": 12}


def dep(text: str) -> Dependency:
    parts = text.split()
    if len(parts) == 3:
        return Dependency(parts[0], _OPS[parts[1]], parts[2])
    return Dependency(parts[0])


def cand(
    nevra: str,
    *,
    requires: tuple[str, ...] = (),
    provides: tuple[str, ...] = (),
    obsoletes: tuple[str, ...] = (),
    conflicts: tuple[str, ...] = (),
    files: tuple[str, ...] = (),
    repo: str = "baseos",
) -> RpmCandidate:
    """`name-[e:]v-r.arch` as a primary entry (its self-provide added, as createrepo_c does)."""
    rest, arch = nevra.rsplit(".", 1)
    name, ver, rel = rest.rsplit("-", 2)
    epoch = None
    if ":" in ver:
        e, ver = ver.split(":")
        epoch = int(e)
    evr = (f"{epoch}:" if epoch else "") + f"{ver}-{rel}"
    entry = PrimaryEntry(
        name, arch, epoch, ver, rel, ("sha256", "0" * 64), f"Packages/{name}-{ver}-{rel}.{arch}.rpm",
        provides=(Dependency(name, 8, evr), *map(dep, provides)),
        requires=tuple(map(dep, requires)),
        obsoletes=tuple(map(dep, obsoletes)),
        conflicts=tuple(map(dep, conflicts)),
        files=files,
    )  # fmt: skip
    return RpmCandidate(entry, repo, f"http://m.invalid/{entry.href}")


def inst(name: str, evr: str, arch: str = "x86_64") -> Package:
    """An installed package known by its NEVRA only (as from an rpmmanifest)."""
    epoch = None
    if ":" in evr:
        e, evr = evr.split(":")
        epoch = int(e)
    ver, rel = evr.rsplit("-", 1)
    return Package(name, ver, rel, epoch, arch)


def updates(res: object) -> dict[str, tuple[str, str]]:
    plan = res.plan  # type: ignore[attr-defined]
    return {i.name: (i.installed, i.available) for i in plan.updates}


# -- choosing versions ---------------------------------------------------------------------------


def test_best_evr_same_arch_or_noarch_and_epoch() -> None:
    installed = [inst("openssl", "1:3.0.7-24.el9"), inst("tzdata", "2024a-1.el9", "noarch")]
    cands = [
        cand("openssl-1:3.0.7-27.el9.x86_64"),
        cand("openssl-1:3.0.7-28.el9.aarch64"),  # another arch: never
        cand("openssl-3.5.0-1.el9.x86_64"),  # no epoch: lower than 1:3.0.7
        cand("tzdata-2024b-1.el9.noarch"),
        cand("tzdata-2023c-1.el9.noarch"),
        cand("tzdata-2099a-1.el9.src"),  # a source package: never installed
    ]
    res = resolve(installed, cands, None)
    assert updates(res) == {
        "openssl": ("1:3.0.7-24.el9", "1:3.0.7-27.el9"),
        "tzdata": ("2024a-1.el9", "2024b-1.el9"),
    }
    assert res.plan.skipped == []


def test_tilde_and_caret_versions() -> None:
    installed = [inst("a", "1.0~rc1-1"), inst("b", "1.0-1")]
    cands = [cand("a-1.0-1.x86_64"), cand("b-1.0^git1-1.x86_64")]
    assert updates(resolve(installed, cands, None)) == {
        "a": ("1.0~rc1-1", "1.0-1"),
        "b": ("1.0-1", "1.0^git1-1"),
    }


def test_fixed_version_met_and_already_fixed() -> None:
    installed = [inst("curl", "7.76.1-26.el9"), inst("zlib", "1.2.11-40.el9")]
    cands = [cand("curl-7.76.1-29.el9.x86_64"), cand("zlib-1.2.11-41.el9.x86_64")]
    res = resolve(
        installed,
        cands,
        [Requirement("curl", "7.76.1-28.el9", ("CVE-1",)), Requirement("zlib", "1.2.11-40.el9")],
    )
    assert updates(res) == {"curl": ("7.76.1-26.el9", "7.76.1-29.el9")}
    item = res.plan.updates[0]
    assert item.required == "7.76.1-28.el9" and item.vulnerabilities == ("CVE-1",)
    # a fixed version without release: any release of that version meets it
    res2 = resolve(installed, cands, [Requirement("curl", "7.76.1")])
    assert res2.plan.updates == [] or updates(res2)["curl"][1] == "7.76.1-29.el9"


def test_fixed_version_not_offered_is_lower_version_message() -> None:
    installed = [inst("curl", "7.76.1-26.el9")]
    cands = [cand("curl-7.76.1-27.el9.x86_64")]
    with pytest.raises(ResolveError) as e:
        resolve(installed, cands, [Requirement("curl", "7.76.1-30.el9")])
    msg = str(e.value)
    assert "curl needs 7.76.1-30.el9 but the repositories (baseos) offer only 7.76.1-27.el9" in msg
    assert "scanner's database is newer" in msg and "--ignore-errors" in msg
    res = resolve(installed, cands, [Requirement("curl", "7.76.1-30.el9")], ignore_errors=True)
    assert res.plan.updates == []
    [skip] = res.plan.skipped
    assert skip.name == "curl" and skip.installed == "7.76.1-26.el9" and "offer only" in skip.reason


def test_not_offered_and_not_installed() -> None:
    installed = [inst("curl", "7.76.1-26.el9")]
    with pytest.raises(ResolveError, match=r"curl is not offered.*check the package names"):
        resolve(installed, [cand("zlib-1-1.x86_64")], [Requirement("curl", "8")])
    res = resolve(installed, [], [Requirement("nginx", "1.2")])
    assert res.plan.skipped[0].reason == "nginx is not installed in the image"


def test_other_arch_named_in_message() -> None:
    installed = [inst("glibc", "2.34-100.el9", "i686")]
    cands = [cand("glibc-2.34-110.el9.x86_64")]
    with pytest.raises(
        ResolveError, match=r"offer only nothing \(glibc-2.34-110.el9.x86_64 is for"
    ):
        resolve(installed, cands, [Requirement("glibc", "2.34-110.el9")])


def test_multilib_each_arch_upgraded() -> None:
    installed = [inst("glibc", "2.34-100.el9"), inst("glibc", "2.34-100.el9", "i686")]
    cands = [cand("glibc-2.34-110.el9.x86_64"), cand("glibc-2.34-110.el9.i686")]
    res = resolve(installed, cands, [Requirement("glibc", "2.34-110.el9")])
    assert updates(res) == {
        "glibc.i686": ("2.34-100.el9", "2.34-110.el9"),
        "glibc.x86_64": ("2.34-100.el9", "2.34-110.el9"),
    }
    assert {c.entry.arch for c in res.chosen.values()} == {"x86_64", "i686"}


# -- obsoletes -----------------------------------------------------------------------------------


def test_obsoleting_package_replaces_installed() -> None:
    installed = [inst("python3-foo", "1.0-1")]
    cands = [cand("python3.11-foo-2.0-1.x86_64", obsoletes=("python3-foo < 2.0",))]
    res = resolve(installed, cands, [Requirement("python3-foo", "1.5")])
    [item] = res.plan.updates
    assert item.name == "python3.11-foo" and item.installed == "1.0-1"
    assert item.reason == "obsoletes python3-foo 1.0-1" and item.required == "1.5"
    assert res.replaces == {("python3.11-foo", "x86_64"): [("python3-foo", "x86_64")]}
    # an obsoletes range that does not cover the installed version: no replacement
    cands2 = [cand("python3.11-foo-2.0-1.x86_64", obsoletes=("python3-foo < 1.0",))]
    with pytest.raises(ResolveError):
        resolve(installed, cands2, [Requirement("python3-foo", "1.5")])


# -- dependencies --------------------------------------------------------------------------------


def test_provides_rules() -> None:
    c = cand(
        "bash-5.1-1.x86_64",
        provides=("/bin/sh", "config(bash) = 5.1-1", "libfoo.so.1()(64bit)"),
        files=("/usr/bin/bash",),
    )
    from ocipatch.distro.rpm.resolve import _candidate

    pkg = _candidate(c)
    assert provides(pkg, dep("bash >= 5"))
    assert not provides(pkg, dep("bash > 5.1-1"))
    assert provides(pkg, dep("bash > 5.0"))
    assert provides(pkg, dep("/usr/bin/bash")) and provides(pkg, dep("/bin/sh"))
    assert not provides(pkg, dep("/usr/bin/zsh"))
    assert provides(pkg, dep("libfoo.so.1()(64bit)"))
    assert not provides(pkg, dep("libfoo.so.1"))
    assert provides(pkg, dep("config(bash) = 5.1-1"))
    # an unversioned provide meets a versioned require (rpm's rule)
    assert provides(pkg, dep("libfoo.so.1()(64bit) >= 9"))


def test_new_dependency_by_soname_file_and_versioned_name() -> None:
    installed = [inst("app", "1.0-1")]
    cands = [
        cand(
            "app-1.1-1.x86_64",
            requires=("libnew.so.2()(64bit)", "/usr/bin/helper", "common >= 2.0", "rpmlib(X)"),
        ),
        cand("libnew-2.0-1.x86_64", provides=("libnew.so.2()(64bit)",)),
        cand("libnew-2.0-1.i686", provides=("libnew.so.2",)),
        cand("helper-1-1.noarch", files=("/usr/bin/helper",)),
        cand("common-1.9-1.noarch"),
        cand("common-2.1-1.noarch"),
    ]
    res = resolve(installed, cands, [Requirement("app", "1.1")])
    got = updates(res)
    assert got["app"] == ("1.0-1", "1.1-1")
    assert got["libnew"] == ("", "2.0-1") and got["helper"] == ("", "1-1")
    assert got["common"] == ("", "2.1-1")
    assert ("libnew", "x86_64") in res.chosen
    reasons = {i.name: i.reason for i in res.plan.updates}
    assert reasons["libnew"].startswith("dependency of app-1.1-1.x86_64 (libnew.so.2()(64bit))")


def test_missing_dependency_is_resolve_error() -> None:
    installed = [inst("app", "1.0-1")]
    cands = [cand("app-1.1-1.x86_64", requires=("libgone.so.9()(64bit)",))]
    with pytest.raises(ResolveError, match=r"app-1.1-1.x86_64 requires libgone.so.9\(\)\(64bit\)"):
        resolve(installed, cands, [Requirement("app", "1.1")])


def test_conflict_refused() -> None:
    installed = [inst("app", "1.0-1"), inst("old", "1-1")]
    cands = [cand("app-1.1-1.x86_64", conflicts=("old < 2",))]
    with pytest.raises(ResolveError, match="conflicts with old < 2"):
        resolve(installed, cands, [Requirement("app", "1.1")])


# -- with real installed headers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def headers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Package]:
    if shutil.which("rpmbuild") is None:
        pytest.skip("rpmbuild not installed")
    from tools.rpmrepo import RpmFile, RpmSpec, build_rpm

    out = tmp_path_factory.mktemp("rpms")
    specs = [
        RpmSpec("openssl-libs", "3.0.7", "24.el9", epoch=1,
                provides=["libssl.so.3()(64bit)"],
                files=[RpmFile("/usr/lib64/libssl.so.3", "elf")]),
        RpmSpec("openssl", "3.0.7", "24.el9", epoch=1,
                requires=["openssl-libs(x86-64) = 1:3.0.7-24.el9", "/bin/sh"],
                provides=["openssl(x86-64) = 1:3.0.7-24.el9"]),
        RpmSpec("bash", "5.1.8", "9.el9", files=[RpmFile("/bin/sh", "x", 0o755)],
                requires=["libtinfo.so.6()(64bit)"]),
    ]  # fmt: skip
    return {s.name: read_rpm_file(build_rpm(s, out, None).path).package for s in specs}


def test_upgrade_that_breaks_installed_upgrades_it_too(headers: dict[str, Package]) -> None:
    installed = list(headers.values())
    cands = [
        cand("openssl-libs-1:3.0.7-27.el9.x86_64",
             provides=("libssl.so.3()(64bit)", "openssl-libs(x86-64) = 1:3.0.7-27.el9")),
        cand("openssl-1:3.0.7-27.el9.x86_64",
             requires=("openssl-libs(x86-64) = 1:3.0.7-27.el9",)),
    ]  # fmt: skip
    res = resolve(installed, cands, [Requirement("openssl-libs", "1:3.0.7-27.el9")])
    got = updates(res)
    assert got["openssl-libs"] == ("1:3.0.7-24.el9", "1:3.0.7-27.el9")
    assert got["openssl"] == ("1:3.0.7-24.el9", "1:3.0.7-27.el9")
    reason = {i.name: i.reason for i in res.plan.updates}["openssl"]
    assert reason.startswith("keeps working with the update (openssl-libs(x86-64) = ")
    # no newer openssl offered: refused, named
    with pytest.raises(ResolveError, match=r"the update breaks openssl 1:3.0.7-24.el9"):
        resolve(installed, cands[:1], [Requirement("openssl-libs", "1:3.0.7-27.el9")])


def test_already_unmet_requirement_is_left(headers: dict[str, Package]) -> None:
    """bash's libtinfo is not installed (an image built without it): not pulled in."""
    installed = list(headers.values())
    cands = [
        cand("bash-5.1.8-10.el9.x86_64", requires=("libtinfo.so.6()(64bit)",), files=("/bin/sh",))
    ]
    res = resolve(installed, cands, [Requirement("bash", "5.1.8-10.el9")])
    assert updates(res) == {"bash": ("5.1.8-9.el9", "5.1.8-10.el9")}
    assert any("libtinfo.so.6()(64bit)" in n for n in res.notes)


def test_upgrade_dropping_a_listed_file_breaks_its_users(headers: dict[str, Package]) -> None:
    """primary lists */bin/*: a bash upgrade without /bin/sh breaks openssl's requirement."""
    installed = list(headers.values())
    cands = [cand("bash-5.1.8-10.el9.x86_64")]
    with pytest.raises(
        ResolveError, match=r"breaks openssl 1:3.0.7-24.el9, which requires /bin/sh"
    ):
        resolve(installed, cands, [Requirement("bash", "5.1.8-10.el9")])


def test_file_outside_primary_scope_kept_by_upgrade(headers: dict[str, Package]) -> None:
    """primary does not list /usr/lib64 files: the upgraded openssl-libs is taken to keep the
    file its installed version has (a new package requiring it is satisfied)."""
    installed = list(headers.values())
    libs_evr = "1:3.0.7-27.el9"
    cands = [
        cand(f"openssl-libs-{libs_evr}.x86_64", provides=(f"openssl-libs(x86-64) = {libs_evr}",)),
        cand(f"openssl-{libs_evr}.x86_64", requires=("app", f"openssl-libs(x86-64) = {libs_evr}")),
        cand("app-1-1.x86_64", requires=("/usr/lib64/libssl.so.3",)),
    ]
    res = resolve(installed, cands, [Requirement("openssl-libs", libs_evr)])
    assert set(updates(res)) == {"openssl-libs", "openssl", "app"}
    # a path primary would list (*/bin/*) is not assumed
    cands[2] = cand("app-1-1.x86_64", requires=("/usr/bin/openssl-helper",))
    with pytest.raises(ResolveError, match="requires /usr/bin/openssl-helper"):
        resolve(installed, cands, [Requirement("openssl-libs", libs_evr)])


def test_file_provide_from_installed_header(headers: dict[str, Package]) -> None:
    """A new package requiring /bin/sh: met by the installed bash's file list."""
    installed = list(headers.values())
    cands = [cand("openssl-1:3.0.7-28.el9.x86_64", requires=("/bin/sh", "libssl.so.3()(64bit)"))]
    res = resolve(installed, cands, [Requirement("openssl", "1:3.0.7-28.el9")])
    assert set(updates(res)) == {"openssl"}


def test_installed_from_real_rpm_repo(tmp_path: Path) -> None:
    """Candidates read from a real createrepo_c primary (the repos path) resolve the same."""
    if shutil.which("createrepo_c") is None:
        pytest.skip("createrepo_c not installed")
    from ocipatch.distro.rpm.repomd import decompress, parse_primary, parse_repomd
    from tools.rpmrepo import RpmSpec, build_repo

    repo = build_repo(
        tmp_path / "r",
        [RpmSpec("zlib", "1.2.11", "41.el9", requires=["libc.so.6()(64bit)"]),
         RpmSpec("glibc", "2.34", "110.el9", provides=["libc.so.6()(64bit)"])],
        None,
    )  # fmt: skip
    md = parse_repomd(repo.repomd.read_bytes(), "repomd.xml")
    data = decompress((repo.root / md.files["primary"].href).read_bytes(), "p.gz", "p")
    cands = [RpmCandidate(e, "r", e.href) for e in parse_primary(data, "p")]
    res = resolve([inst("zlib", "1.2.11-40.el9")], cands, None)
    assert updates(res) == {
        "zlib": ("1.2.11-40.el9", "1.2.11-41.el9"),
        "glibc": ("", "2.34-110.el9"),
    }


def test_repository_arch_filter() -> None:
    from ocipatch.distro.rpm.repos import runs_on

    assert runs_on("x86_64", "amd64") and runs_on("i686", "x86_64") and runs_on("noarch", "s390x")
    assert not runs_on("src", "x86_64") and not runs_on("aarch64", "x86_64")
    assert runs_on("aarch64", "arm64") and not runs_on("x86_64", "aarch64")
    assert runs_on("armv7hl", "armv7l") and runs_on("riscv64", "riscv64")


def test_manifest_only_installed_take_requires_from_repository_twin() -> None:
    """An rpmmanifest gives only NEVRAs: the repository's entry of the same NEVRA supplies the
    installed package's requires, so an upgrade that breaks it is caught."""
    installed = [inst("app", "1.0-1"), inst("lib", "1.0-1")]
    cands = [
        cand("app-1.0-1.x86_64", requires=("lib = 1.0-1",)),
        cand("lib-1.0-1.x86_64"),
        cand("lib-1.1-1.x86_64"),
    ]
    with pytest.raises(
        ResolveError, match=r"the update breaks app 1.0-1, which requires lib = 1.0-1"
    ):
        resolve(installed, cands, [Requirement("lib", "1.1")])
    cands.append(cand("app-1.1-1.x86_64", requires=("lib = 1.1-1",)))
    res = resolve(installed, cands, [Requirement("lib", "1.1")])
    assert updates(res) == {"app": ("1.0-1", "1.1-1"), "lib": ("1.0-1", "1.1-1")}


def test_repository_priority_wins_over_version() -> None:
    installed = [inst("nginx", "1:1.20.1-14.el9")]
    high = cand("nginx-1:1.20.1-16.el9.x86_64", repo="appstream")
    low = cand("nginx-1:1.26.1-1.el9.x86_64", repo="epel")
    high = RpmCandidate(high.entry, high.repo, high.url, priority=10)
    res = resolve(installed, [high, low], None)
    assert updates(res) == {"nginx": ("1:1.20.1-14.el9", "1:1.20.1-16.el9")}
    with pytest.raises(
        ResolveError, match=r"1:1.26.1-1.el9.x86_64 in epel is not taken.*priority=99"
    ):
        resolve(installed, [high, low], [Requirement("nginx", "1:1.26")])
    # equal priorities: the highest version, wherever it is
    res = resolve(installed, [cand("nginx-1:1.20.1-16.el9.x86_64"), low], None)
    assert updates(res)["nginx"][1] == "1:1.26.1-1.el9"
