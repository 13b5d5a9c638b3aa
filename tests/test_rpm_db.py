"""Reading every rpmdb backend and the rpmmanifest files: the real samples in
../shared/formats give exactly their expected lists; dbs made here by the real rpm (SQLite)
and the real Berkeley DB (db_load: both byte orders, small pages for overflow chains, big
pages for inline values) give what the real `rpm -qa` gives; damage is ImageFormatError."""

from __future__ import annotations

import contextlib
import io
import os
import random
import shutil
import sqlite3
import struct
import tarfile
import time
from pathlib import Path

import pytest

from ocipatch.distro.rpm.db import (
    DbLocation,
    RootDir,
    find_rpmdb,
    manifest_epoch,
    packages_of,
    parse_nevra,
    read_bdb,
    read_db_file,
    read_installed,
    read_manifest,
    read_ndb,
    read_sqlite,
)
from ocipatch.distro.rpm.header import Package
from ocipatch.errors import ImageFormatError
from ocipatch.fs.merged import MergedView
from tests.rpm_formats import (
    NEVRA,
    bdb_dump,
    bdb_from_blobs,
    build_rpm,
    expected,
    install_justdb,
    is_complete,
    needs_db_load,
    needs_formats,
    needs_rpmbuild,
    rpm_qa,
    sample_dirs,
)
from tests.test_fs_merged import MemLayer

DB_NAMES = ("rpmdb.sqlite", "Packages", "Packages.db")
DB_SAMPLES = [d for kind in ("rpmdb-sqlite", "rpmdb-bdb", "rpmdb-ndb") for d in sample_dirs(kind)]
MANIFEST_SAMPLES = sample_dirs("rpm-container-manifest")


def nevras(packages: list[Package]) -> list[NEVRA]:
    return [(p.name, p.epoch, p.version, p.release, p.arch) for p in packages]


def db_file(sample: Path) -> Path:
    return next(sample / n for n in DB_NAMES if (sample / n).exists())


# --- the real samples ---------------------------------------------------------------------------


@needs_formats
@pytest.mark.parametrize("sample", DB_SAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_sample_db_gives_its_expected_list(sample: Path) -> None:
    got = nevras(read_db_file(db_file(sample)).packages)
    oracle = sample / "rpm-qa.json"
    if oracle.exists():  # the real rpm 4.18's -qa: same packages, same order
        assert got == expected(oracle)
    want = sample / "expected.json"
    if want.exists():
        if is_complete(want):
            assert got == expected(want)
        else:  # the source asserted only some packages
            assert set(expected(want)) <= set(got)


@needs_formats
def test_sample_gpg_pubkeys_are_set_apart() -> None:
    sles = next(d for d in DB_SAMPLES if d.name == "sles-12sp4-fossa")
    db = read_db_file(db_file(sles))
    assert [k.name for k in db.gpg_pubkeys] == ["gpg-pubkey", "gpg-pubkey"]
    # no arch; SUSE's older rpm wrote the literal SOURCERPM "(none)"
    assert all(k.arch is None and k.source_name is None for k in db.gpg_pubkeys)
    assert all(not p.is_gpg_pubkey for p in db.packages)


@needs_formats
@pytest.mark.parametrize("sample", MANIFEST_SAMPLES, ids=lambda p: p.name)
def test_sample_manifest_gives_its_expected_list(sample: Path) -> None:
    entries = read_manifest((sample / "container-manifest-2").read_bytes())
    assert nevras([e.package() for e in entries]) == expected(sample / "expected.json")


@needs_formats
def test_largest_sample_reads_fast() -> None:
    largest = max((db_file(d) for d in DB_SAMPLES), key=lambda p: p.stat().st_size)
    start = time.perf_counter()
    db = read_db_file(largest)
    assert db.packages and time.perf_counter() - start < 2.0


# --- SQLite: read-only and immutable ------------------------------------------------------------


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir()}


@needs_formats
def test_sqlite_read_creates_no_file_and_changes_nothing(tmp_path: Path) -> None:
    sample = next(d for d in DB_SAMPLES if (d / "rpmdb.sqlite").exists())
    shutil.copy(sample / "rpmdb.sqlite", tmp_path / "rpmdb.sqlite")
    data = (tmp_path / "rpmdb.sqlite").read_bytes()
    assert data[18:20] == b"\x02\x02"  # WAL mode, as rpm leaves it
    before = _snapshot(tmp_path)
    os.chmod(tmp_path, 0o555)  # a read-only directory, like a layer's
    try:
        assert list(read_sqlite(tmp_path / "rpmdb.sqlite"))
    finally:
        os.chmod(tmp_path, 0o755)
    assert _snapshot(tmp_path) == before
    assert (tmp_path / "rpmdb.sqlite").read_bytes() == data


def _pending_wal(tmp_path: Path, db: Path) -> Path:
    """A copy of `db` with one more package only in its WAL (a writer that did not close)."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(db, work / "rpmdb.sqlite")
    con = sqlite3.connect(work / "rpmdb.sqlite")
    con.execute("PRAGMA wal_autocheckpoint=0")
    blob = con.execute("SELECT blob FROM Packages ORDER BY hnum LIMIT 1").fetchone()[0]
    con.execute("INSERT INTO Packages (hnum, blob) VALUES (999, ?)", (blob,))
    con.commit()
    frozen = tmp_path / "frozen"
    frozen.mkdir()
    for name in ("rpmdb.sqlite", "rpmdb.sqlite-wal"):
        shutil.copy(work / name, frozen / name)
    con.close()
    return frozen / "rpmdb.sqlite"


@needs_formats
def test_sqlite_committed_wal_frames_are_read(tmp_path: Path) -> None:
    sample = next(d for d in DB_SAMPLES if (d / "rpmdb.sqlite").exists())
    frozen = _pending_wal(tmp_path, sample / "rpmdb.sqlite")
    before = _snapshot(frozen.parent)
    rows = list(read_sqlite(frozen))
    assert rows[-1][0] == 999 and len(rows) == len(list(read_sqlite(sample / "rpmdb.sqlite"))) + 1
    assert _snapshot(frozen.parent) == before


# --- dbs made here by the real tools ------------------------------------------------------------


@pytest.fixture(scope="module")
def made_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real rpm SQLite db of: epoch 0 (present), no epoch, a ~300 KiB header, a tilde."""
    if RPMBUILD_MISSING:
        pytest.skip("rpmbuild not installed")
    top = tmp_path_factory.mktemp("rpms")
    rpms = [
        build_rpm(top, "t-zero", epoch=0),
        build_rpm(top, "t-epoch", epoch=3, version="2.1", release="7.fc40", arch="x86_64"),
        build_rpm(top, "t-big", version="2.0~rc1", release="3.el9", nfiles=3000),
    ]
    return install_justdb(tmp_path_factory.mktemp("root"), rpms)


RPMBUILD_MISSING = shutil.which("rpmbuild") is None or shutil.which("rpm") is None


@needs_rpmbuild
def test_made_sqlite_db_equals_rpm_qa(made_db: Path) -> None:
    got = nevras(read_db_file(made_db).packages)
    assert got == rpm_qa(made_db.parent, "sqlite")
    assert ("t-zero", 0, "1.0", "1", "noarch") in got  # epoch 0 stays 0
    assert ("t-big", None, "2.0~rc1", "3.el9", "noarch") in got  # absent stays None


@needs_rpmbuild
@needs_db_load
@pytest.mark.parametrize("order", ["<", ">"], ids=["little-endian", "big-endian"])
@pytest.mark.parametrize("pagesize", [512, 4096, 65536])
def test_bdb_in_both_byte_orders_and_page_sizes(
    made_db: Path, tmp_path: Path, order: str, pagesize: int
) -> None:
    blobs = list(read_sqlite(made_db))
    target = bdb_from_blobs(tmp_path / "Packages", blobs, order, pagesize)
    got = read_db_file(target).packages
    # the real rpm (bdb_ro backend) reads the same file the same way
    assert nevras(got) == rpm_qa(tmp_path, "bdb_ro")
    assert sorted(nevras(got)) == sorted(nevras(read_db_file(made_db).packages))
    big = next(p for p in got if p.name == "t-big")
    assert len(big.files()) > 3000  # the ~300 KiB header came back whole


@needs_rpmbuild
@needs_db_load
@pytest.mark.parametrize("order", ["<", ">"], ids=["little-endian", "big-endian"])
def test_bdb_with_page_checksums(made_db: Path, tmp_path: Path, order: str) -> None:
    blobs = list(read_sqlite(made_db))
    target = bdb_from_blobs(tmp_path / "Packages", blobs, order, pagesize=1024, chksum=True)
    assert target.read_bytes()[26] & 1  # the meta page says so
    assert sorted(read_bdb(target.read_bytes())) == sorted(blobs)


@needs_db_load
def test_bdb_empty_and_counter_only(tmp_path: Path) -> None:
    empty = bdb_from_blobs(tmp_path / "a" / "Packages", [])
    assert read_db_file(empty).packages == []
    if shutil.which("rpm"):
        assert rpm_qa(empty.parent, "bdb_ro") == []
    # rpm keeps its next-record counter under key 0: not a package
    counter = bdb_from_blobs(tmp_path / "b" / "Packages", [(0, b"\x05\x00\x00\x00")])
    assert read_db_file(counter).packages == []


# --- locating the db in an image ----------------------------------------------------------------


def _tar(members: dict[str, bytes | str]) -> bytes:
    """A layer: bytes are files, a str is a symlink target."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _view(members: dict[str, bytes | str]) -> MergedView:
    return MergedView([MemLayer(_tar(members))])  # type: ignore[list-item]


@needs_formats
@pytest.mark.parametrize("sample", DB_SAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_read_installed_through_an_image_view(sample: Path) -> None:
    db = db_file(sample)
    view = _view(
        {
            f"usr/lib/sysimage/rpm/{db.name}": db.read_bytes(),
            "var/lib/rpm": "../../usr/lib/sysimage/rpm",
        }
    )
    found = read_installed(view)
    assert found is not None and found.location is not None
    assert found.location.directory == "var/lib/rpm"  # reached through the symlink
    assert nevras(found.packages) == nevras(read_db_file(db).packages)


@needs_formats
def test_find_rpmdb_reports_the_directory_and_backend() -> None:
    ndb = next(d for d in DB_SAMPLES if (d / "Packages.db").exists())
    view = _view({"usr/lib/sysimage/rpm/Packages.db": (ndb / "Packages.db").read_bytes()})
    assert find_rpmdb(view) == DbLocation(
        "usr/lib/sysimage/rpm/Packages.db", "ndb", "usr/lib/sysimage/rpm"
    )
    assert find_rpmdb(_view({"etc/os-release": b"ID=x\n"})) is None
    assert read_installed(_view({"etc/os-release": b"ID=x\n"})) is None


@needs_formats
def test_manifest_is_read_when_there_is_no_rpmdb() -> None:
    sample = MANIFEST_SAMPLES[0]
    view = _view(
        {"var/lib/rpmmanifest/container-manifest-2": (sample / "container-manifest-2").read_bytes()}
    )
    found = read_installed(view)
    assert found is not None and found.location is None
    assert found.manifest == "var/lib/rpmmanifest/container-manifest-2"
    assert nevras(found.packages) == expected(sample / "expected.json")


def test_manifest_1_is_read_when_only_it_exists() -> None:
    text = b"filesystem-1.1-9.cm2.x86_64\nvim-2:9.0-1.cm2.x86_64\ngpg-pubkey-3135ce90-5e6fda74\n"
    found = read_installed(_view({"var/lib/rpmmanifest/container-manifest-1": text}))
    assert found is not None
    assert nevras(found.packages) == [
        ("filesystem", None, "1.1", "9.cm2", "x86_64"),
        ("vim", 2, "9.0", "1.cm2", "x86_64"),
    ]


# --- manifests ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nevra", "want"),
    [
        ("bash-5.1.8-9.el9.x86_64", ("bash", None, "5.1.8", "9.el9", "x86_64")),
        ("name-1:2.3-4.el9.x86_64", ("name", 1, "2.3", "4.el9", "x86_64")),
        (
            "perl-IO-Socket-SSL-2.073-1.el9.noarch",
            ("perl-IO-Socket-SSL", None, "2.073", "1.el9", "noarch"),
        ),
        (
            "kernel-core-0:5.14.0-70.13.1.el9_0.aarch64",
            ("kernel-core", 0, "5.14.0", "70.13.1.el9_0", "aarch64"),
        ),
        ("x-1.0~rc1^git2-3.fc40.i686", ("x", None, "1.0~rc1^git2", "3.fc40", "i686")),
    ],
)
def test_parse_nevra(nevra: str, want: NEVRA) -> None:
    e = parse_nevra(nevra)
    assert (e.name, e.epoch, e.version, e.release, e.arch) == want


@pytest.mark.parametrize(
    "bad", ["bash", "bash-5.1.x86_64", "a-x:1-2.noarch", "-1-2.noarch", "a-1-2"]
)
def test_parse_nevra_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_nevra(bad)


def test_manifest_epoch_convention() -> None:
    assert manifest_epoch("(none)", "0", "x") is None
    assert manifest_epoch("2", "2", "x") == 2
    assert manifest_epoch("0", "0", "x") == 0  # an explicit epoch 0 is kept
    assert manifest_epoch("(none)", "1", "x") == 1  # trivy's reading of field 9


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (b"a\t1.0-1\t1\t2\tV\t(none)\t5\tx86_64\t0\n", "line 1"),  # 9 fields
        (
            b"ok\t1.0-1\t1\t2\tV\t(none)\t5\tx86_64\t0\tok.src.rpm\nb\t1.0\t1\t2\tV\t(none)\t5\tx\t0\ts\n",
            "line 2",
        ),
        (b"a\t1.0-1\tnow\t2\tV\t(none)\t5\tx86_64\t0\ta.src.rpm\n", "line 1"),
        (b"\xff\xfe", "not a text file"),
        (b"just-a-name\n", "line 1"),
    ],
)
def test_bad_manifest_is_image_format_error(text: bytes, where: str) -> None:
    with pytest.raises(ImageFormatError, match=where):
        read_manifest(text, "var/lib/rpmmanifest/container-manifest-2")


def test_empty_manifest_has_no_packages() -> None:
    assert read_manifest(b"") == [] and read_manifest(b"\n\n") == []


# --- damaged databases --------------------------------------------------------------------------


@needs_formats
@pytest.mark.parametrize("sample", DB_SAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_truncated_db_is_image_format_error(sample: Path, tmp_path: Path) -> None:
    db = db_file(sample)
    data = db.read_bytes()
    for cut in (0, 100, len(data) // 3, len(data) // 2, len(data) - 4096):
        target = tmp_path / str(cut) / db.name
        target.parent.mkdir()
        target.write_bytes(data[:cut])
        with pytest.raises(ImageFormatError, match=str(target.parent)):
            read_db_file(target)


@needs_formats
def test_corrupt_pages_never_crash() -> None:
    """Flipped bytes give packages or ImageFormatError, never another exception."""
    rng = random.Random(7)
    for sample in DB_SAMPLES:
        db = db_file(sample)
        if db.name == "rpmdb.sqlite":
            continue
        data = bytearray(db.read_bytes())
        reader = read_bdb if db.name == "Packages" else read_ndb
        for _ in range(60):
            broken = bytearray(data)
            for _ in range(8):
                broken[rng.randrange(len(broken))] = rng.randrange(256)
            with contextlib.suppress(ImageFormatError):
                packages_of(list(reader(bytes(broken), "x")), "x")


def test_not_a_db_is_image_format_error(tmp_path: Path) -> None:
    junk = tmp_path / "Packages"
    junk.write_bytes(b"\0" * 8192)
    with pytest.raises(ImageFormatError, match="not a BerkeleyDB hash"):
        read_db_file(junk)
    junk = tmp_path / "Packages.db"
    junk.write_bytes(b"RpmQ" + b"\0" * 8192)
    with pytest.raises(ImageFormatError, match="NDB"):
        read_db_file(junk)
    junk = tmp_path / "rpmdb.sqlite"
    junk.write_bytes(b"SQLite format 3\0" + b"\xff" * 8192)
    with pytest.raises(ImageFormatError, match=r"rpmdb\.sqlite"):
        read_db_file(junk)


@needs_formats
@needs_db_load
@pytest.mark.parametrize("order", ["<", ">"], ids=["little-endian", "big-endian"])
@pytest.mark.parametrize("sample", DB_SAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_sample_as_a_many_bucket_bdb(sample: Path, order: str, tmp_path: Path) -> None:
    """Each sample's blobs rewritten by Berkeley DB with one package per bucket (the spares
    table in use) and 512-byte pages (every header an overflow chain)."""
    source = read_db_file(db_file(sample))
    blobs = [(p.record, p.header.blob) for p in source.packages + source.gpg_pubkeys if p.header]
    target = bdb_from_blobs(tmp_path / "Packages", blobs, order, pagesize=512, ffactor=1)
    got = read_db_file(target)
    assert sorted(nevras(got.packages)) == sorted(nevras(source.packages))
    assert len(got.gpg_pubkeys) == len(source.gpg_pubkeys)
    # the same records as the real Berkeley DB reads (rpm's bdb_ro is no oracle here: it
    # fails on a db whose bucket 0 page was never written, which this layout can give)
    real = sorted((struct.unpack(order + "I", k)[0], v) for k, v in bdb_dump(target))
    assert sorted(read_bdb(target.read_bytes())) == real


@needs_formats
def test_unpacked_root_with_an_absolute_symlink(tmp_path: Path) -> None:
    """`var/lib/rpm -> /usr/lib/sysimage/rpm` is followed inside the root, not on the host."""
    sample = next(d for d in DB_SAMPLES if (d / "Packages.db").exists())
    root = tmp_path / "root"
    (root / "usr/lib/sysimage/rpm").mkdir(parents=True)
    shutil.copy(sample / "Packages.db", root / "usr/lib/sysimage/rpm/Packages.db")
    (root / "var/lib").mkdir(parents=True)
    (root / "var/lib/rpm").symlink_to("/usr/lib/sysimage/rpm")
    found = read_installed(RootDir(root))
    assert found is not None and found.location is not None
    assert found.location.path == "var/lib/rpm/Packages.db"
    assert nevras(found.packages) == nevras(read_db_file(sample / "Packages.db").packages)
    escape = tmp_path / "escape"
    (escape / "var/lib").mkdir(parents=True)
    (escape / "var/lib/rpm").symlink_to(str(root / "usr/lib/sysimage/rpm"))  # a host path
    assert read_installed(RootDir(escape)) is None


@needs_formats
def test_view_with_a_pending_wal(tmp_path: Path) -> None:
    sample = next(d for d in DB_SAMPLES if (d / "rpmdb.sqlite").exists())
    frozen = _pending_wal(tmp_path, sample / "rpmdb.sqlite")
    view = _view(
        {
            "var/lib/rpm/rpmdb.sqlite": frozen.read_bytes(),
            "var/lib/rpm/rpmdb.sqlite-wal": frozen.with_name("rpmdb.sqlite-wal").read_bytes(),
        }
    )
    found = read_installed(view)
    assert found is not None
    assert found.packages[-1].record == 999
    assert len(found.packages) == len(read_db_file(sample / "rpmdb.sqlite").packages) + 1
