"""Every package manager of ADAPTERS (ocipatch/distro/registry.py), and the tests' fake, against
the same expectations: detection on its own fixture (and only there), read_db, the version
order, the paths never in a layer, the purl. A new adapter adds its row to CASES."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from ocipatch.distro.base import ALWAYS_EXCLUDED, InstalledPackage, PackageManager
from ocipatch.distro.detect import OsRelease
from ocipatch.distro.registry import ADAPTERS, detect
from ocipatch.errors import UnsupportedError
from tests.fake_adapter import FakePM

DPKG_STATUS = b"""Package: libfoo1
Status: install ok installed
Architecture: amd64
Version: 1.2-3

Package: gone
Status: deinstall ok config-files
Architecture: amd64
Version: 0.1

Package: tool
Status: install ok installed
Architecture: all
Source: toolsrc
Version: 1:2.0
"""


# container-manifest-2: `rpm -qa --qf` with 10 tab-separated fields (db.py).
RPM_MANIFEST = (
    b"bash\t5.1.8-9.el9\t1700000000\t1690000000\tRocky\t(none)\t100\tx86_64\t0\t"
    b"bash-5.1.8-9.el9.src.rpm\n"
    b"tool\t2.0-1.el9\t1700000000\t1690000000\t(none)\t1\t5\tnoarch\t1\ttool-2.0-1.el9.src.rpm\n"
    b"gpg-pubkey\tabcd1234-5f000000\t1700000000\t1690000000\t(none)\t(none)\t0\t(none)\t0\t(none)\n"
)


class DictView:
    """A FileView over a dict of path -> bytes (directories implied)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def exists(self, path: str) -> bool:
        path = path.strip("/")
        return path in self.files or any(p.startswith(path + "/") for p in self.files)

    def read_file(self, path: str) -> bytes | None:
        return self.files.get(path.strip("/"))

    def listdir(self, path: str) -> list[str]:
        prefix = path.strip("/") + "/"
        return sorted({p[len(prefix) :].split("/")[0] for p in self.files if p.startswith(prefix)})

    def read_files(self, paths: list[str]) -> dict[str, bytes]:
        return {p: self.files[p.strip("/")] for p in paths if p.strip("/") in self.files}


@dataclass
class Case:
    fixtures: list[dict[str, bytes]]  # images it detects (several DB layouts)
    packages: list[tuple[str, str]] | None  # read_db of the first; None: "not supported yet"
    ascending: list[str]  # versions in its order
    db_paths: list[str]  # its database: always part of a layer
    cache: str  # a path it downloads into: never part of a layer
    purl_prefix: str
    extra: dict[str, str] = field(default_factory=dict)


CASES: dict[str, Case] = {
    "dpkg": Case(
        [
            {"var/lib/dpkg/status": DPKG_STATUS},
            {"var/lib/dpkg/status.d/libfoo1": DPKG_STATUS.split(b"\n\n")[0] + b"\n"},
        ],
        [("libfoo1", "1.2-3"), ("tool", "1:2.0")],
        ["1.0~rc1", "1.0", "1.0-1", "1.0+b1", "1.10", "1:0.9"],
        ["var/lib/dpkg/status", "var/lib/dpkg/status.d/libfoo1"],
        "var/cache/apt/archives/libfoo1_1.2-3_amd64.deb",
        "pkg:deb/",
    ),
    "apk": Case(
        [
            {"lib/apk/db/installed": b"P:musl\nV:1.2.5-r0\nA:x86_64\n\n"},
            {"usr/lib/apk/db/installed": b"P:musl\nV:1.2.5-r0\nA:x86_64\n\n"},  # apko
        ],
        [("musl", "1.2.5-r0")],
        ["1.0_alpha1", "1.0_rc1", "1.0", "1.0-r1", "1.0.1", "1.1"],
        ["lib/apk/db/installed", "usr/lib/apk/db/installed"],
        "var/cache/apk/musl-1.2.5-r0.apk",
        "pkg:apk/",
    ),
    "rpm": Case(
        [
            {"var/lib/rpmmanifest/container-manifest-2": RPM_MANIFEST},
            {"var/lib/rpm/rpmdb.sqlite": b"SQLite format 3\x00"},
            {"usr/lib/sysimage/rpm/rpmdb.sqlite": b"SQLite format 3\x00"},
        ],
        [("bash", "5.1.8-9.el9"), ("tool", "1:2.0-1.el9")],  # gpg-pubkey skipped
        ["1.0~rc1", "1.0", "1.0^git1", "1.0.1", "1.1", "1:0.5"],
        ["var/lib/rpm/rpmdb.sqlite"],
        "var/cache/dnf/updates/packages/bash.rpm",
        "pkg:rpm/",
    ),
    "fake": Case(
        [{"var/lib/fake/db": b"a 1.0\nb 2.0\n"}],
        [("a", "1.0"), ("b", "2.0")],
        ["1.0", "1.2", "2.0", "10.0"],
        ["var/lib/fake/db"],
        "var/cache/fake/a.pkg",
        "pkg:generic/",
    ),
}
ALL = [*ADAPTERS, FakePM]
OSR = OsRelease("someos", "1.2")


def case(pm: type[PackageManager]) -> Case:
    return CASES[pm.name]


def test_every_adapter_has_a_row() -> None:
    assert {pm.name for pm in ALL} <= set(CASES), "add the new package manager to CASES"
    assert len({pm.name for pm in ADAPTERS}) == len(ADAPTERS)


@pytest.mark.parametrize("pm", ALL, ids=lambda c: c.name)
def test_detects_its_own_database_only(pm: type[PackageManager]) -> None:
    for files in case(pm).fixtures:
        view = DictView(files)
        assert pm.detect(view), files
        others = [o.name for o in ALL if o is not pm and o.detect(view)]
        assert others == [], f"{others} also claim {sorted(files)}"
    assert not pm.detect(DictView({"etc/os-release": b"ID=x\n"}))


def test_registry_detects_the_table_order() -> None:
    for pm in ADAPTERS:
        found = detect(DictView(case(pm).fixtures[0]))
        assert found is not None and found.name == pm.name
    assert detect(DictView({})) is None


@pytest.mark.parametrize("pm", ALL, ids=lambda c: c.name)
def test_read_db(pm: type[PackageManager]) -> None:
    c = case(pm)
    view = DictView(c.fixtures[0])
    if c.packages is None:
        assert not pm.supported
        with pytest.raises(UnsupportedError, match="not supported yet"):
            pm().read_db(view)
        return
    assert pm.supported
    got = pm().read_db(view)
    assert all(isinstance(p, InstalledPackage) for p in got)
    assert sorted((p.name, p.version) for p in got) == c.packages


@pytest.mark.parametrize("pm", ALL, ids=lambda c: c.name)
def test_version_order(pm: type[PackageManager]) -> None:
    versions, compare = case(pm).ascending, pm().compare
    for i, a in enumerate(versions):
        assert compare(a, a) == 0
        for b in versions[i + 1 :]:
            assert (compare(a, b), compare(b, a)) == (-1, 1), (a, b)


@pytest.mark.parametrize("pm", ALL, ids=lambda c: c.name)
def test_excluded_paths(pm: type[PackageManager]) -> None:
    c, excluded = case(pm), pm().excluded
    for tree in ALWAYS_EXCLUDED:
        assert excluded(tree) and excluded(f"{tree}/x/y"), tree
    assert excluded(c.cache)
    for path in [*c.db_paths, "usr/bin/tool", "etc/passwd", "usr/lib/x.so", "var/lib/logrotate"]:
        assert not excluded(path), path


@pytest.mark.parametrize("pm", ALL, ids=lambda c: c.name)
def test_purl(pm: type[PackageManager]) -> None:
    purl = pm().purl(OSR, "libfoo1", "1.2-3", "amd64")
    assert purl.startswith(case(pm).purl_prefix), purl
    # The arch in the ecosystem's own spelling, as scanners write it (apk: x86_64).
    assert "/libfoo1@1.2-3" in purl and ("arch=amd64" in purl or "arch=x86_64" in purl), purl
    assert " " not in purl


@pytest.mark.parametrize("pm", ALL, ids=lambda c: c.name)
def test_state_paths(pm: type[PackageManager]) -> None:
    """What the result key reads includes the package database (a patch of another set of
    installed packages is another patch); a package manager without a planner reads nothing."""
    if not pm.state_paths:  # no planner (apk fetches its indexes in the installer; rpm: none yet)
        return
    db = case(pm).db_paths[0]
    assert any(db == p or db.startswith(p + "/") for p in pm.state_paths), pm.state_paths
