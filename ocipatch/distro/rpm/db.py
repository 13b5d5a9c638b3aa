"""The installed-package databases of rpm images, read in pure Python (no librpm).

Three rpmdb backends store the same header blobs (header.py):
- SQLite `rpmdb.sqlite`: table `Packages(hnum, blob)`. rpm leaves it in WAL mode, so it is
  opened through a `file:...?mode=ro&immutable=1` URI: SQLite then neither takes locks nor
  creates `-wal`/`-shm` files, and the image's files stay untouched.
- BerkeleyDB hash `Packages` (magic 0x061561): walked bucket by bucket from the meta page
  (page size, max_bucket, spares), following each bucket's page chain; values larger than a
  page's share sit on chains of overflow pages. Either byte order (the meta magic tells).
  Key 0 holds rpm's next-record counter, not a package.
- SUSE NDB `Packages.db`: little-endian slot pages ("RpmP" header, 16-byte "Slot" entries),
  each pointing at a "BlbS" blob in 16-byte blocks.
And the distroless manifests of CBL-Mariner / Azure Linux: `var/lib/rpmmanifest/container-
manifest-2` (10 tab-separated fields) and `container-manifest-1` (`rpm -qa` NEVRA lines).

A damaged database raises ImageFormatError naming the file and the page/slot/line at fault.
See docs/rpm.md for the epoch convention of the manifests.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import struct
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ocipatch.distro.rpm.header import Package, parse_header
from ocipatch.errors import ImageFormatError
from ocipatch.fs import rootpath

__all__ = [
    "DB_DIRS",
    "DB_FILES",
    "MANIFEST_PATHS",
    "DbLocation",
    "InstalledRpms",
    "ManifestEntry",
    "RootDir",
    "find_rpmdb",
    "manifest_epoch",
    "packages_of",
    "parse_nevra",
    "read_bdb",
    "read_blobs",
    "read_db_file",
    "read_installed",
    "read_manifest",
    "read_ndb",
    "read_sqlite",
]

# rpm's db directories, relative to the image root: the classic one first, then the one
# Fedora 36+, openSUSE and SLE 15 use (there /var/lib/rpm is often a symlink to it).
DB_DIRS = ("var/lib/rpm", "usr/lib/sysimage/rpm")
# Backend of each file name, in the order rpm's autodetection prefers them.
DB_FILES = {"rpmdb.sqlite": "sqlite", "Packages.db": "ndb", "Packages": "bdb"}
MANIFEST_PATHS = (
    "var/lib/rpmmanifest/container-manifest-2",
    "var/lib/rpmmanifest/container-manifest-1",
)
_FIX = "the image's rpm database is damaged; rebuild the image or restore the file"


class RootDir:
    """An unpacked root on disk as a Reader: symlinks resolved inside the root (an image's
    absolute `/var/lib/rpm -> /usr/lib/sysimage/rpm` never reaches the host's files)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _real(self, path: str) -> str | None:
        try:
            return rootpath.resolve(rootpath.DiskTree(self.root), path)
        except rootpath.RootPathError:
            raise _fail(f"/{path}", "too many symlinks") from None

    def exists(self, path: str) -> bool:
        real = self._real(path)
        return real is not None and (real == "" or os.path.lexists(self.root / real))

    def read_file(self, path: str) -> bytes | None:
        real = self._real(path)
        if not real:
            return None
        try:
            fd = os.open(self.root / real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            return f.read() if stat.S_ISREG(os.fstat(f.fileno()).st_mode) else None


class Reader(Protocol):
    """What this module needs of an image: distro.detect.FileView fits."""

    def exists(self, path: str) -> bool: ...

    def read_file(self, path: str) -> bytes | None: ...


def _fail(where: str, what: str) -> ImageFormatError:
    return ImageFormatError(f"{where}: {what}; {_FIX}")


# --- SQLite ------------------------------------------------------------------------------------


def read_sqlite(path: Path, where: str | None = None) -> Iterator[tuple[int, bytes]]:
    """(hnum, blob) of every row of `Packages`, opened read-only and immutable.

    Immutable means SQLite ignores a `-wal` file; rpm checkpoints on close, so one that
    holds frames is a db left mid-transaction. Then the db and its WAL are copied to a
    private directory and read there, so the committed frames count and the image's files
    are still not touched.
    """
    where = where or str(path)
    wal = path.with_name(path.name + "-wal")
    if wal.is_file() and wal.stat().st_size > 0:
        return _read_sqlite_bytes(path.read_bytes(), where, wal.read_bytes())
    return iter(_sqlite_rows(path, where, immutable=True))


def _sqlite_rows(path: Path, where: str, immutable: bool) -> list[tuple[int, bytes]]:
    quoted = urllib.parse.quote(str(path.resolve()))
    uri = f"file:{quoted}?mode=ro&immutable=1" if immutable else f"file:{quoted}?mode=rw"
    try:
        con = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as e:
        raise _fail(where, f"cannot open as SQLite ({e})") from None
    try:
        rows = con.execute("SELECT hnum, blob FROM Packages ORDER BY hnum").fetchall()
    except sqlite3.Error as e:
        raise _fail(where, f"not a readable rpm SQLite database ({e})") from None
    finally:
        con.close()
    for hnum, blob in rows:
        if not isinstance(blob, bytes) or not isinstance(hnum, int):
            raise _fail(where, f"row {hnum}: the blob is not binary")
    return rows


def _read_sqlite_bytes(
    data: bytes, where: str, wal: bytes | None = None
) -> Iterator[tuple[int, bytes]]:
    """The rows of a db given as bytes (and its WAL's), read from a private copy."""
    with tempfile.TemporaryDirectory(prefix="ocipatch-rpmdb-") as tmp:
        copy = Path(tmp) / "rpmdb.sqlite"
        copy.write_bytes(data)
        if wal:
            copy.with_name("rpmdb.sqlite-wal").write_bytes(wal)
        return iter(_sqlite_rows(copy, where, immutable=not wal))


# --- BerkeleyDB hash ---------------------------------------------------------------------------

_HASH_MAGIC = 0x061561
_P_INVALID, _P_HASH_UNSORTED, _P_OVERFLOW, _P_HASHMETA, _P_HASH = 0, 2, 7, 8, 13
_H_KEYDATA, _H_DUPLICATE, _H_OFFPAGE, _H_OFFDUP = 1, 2, 3, 4
_PAGE_HEADER = 26  # lsn 8, pgno, prev, next (4 each), entries, hf_offset (2 each), level, type
# With page checksums (meta flag 1) the header is followed by 2 bytes of padding and a 4-byte
# checksum before the item offsets / overflow data.
_PAGE_HEADER_CHKSUM = 32
_META_CHKSUM = 0x01


@dataclass
class _Bdb:
    data: bytes
    where: str
    order: str  # "<" or ">"
    pagesize: int
    overhead: int = _PAGE_HEADER  # bytes before a page's item offsets or overflow data

    def page(self, pgno: int) -> bytes:
        start = pgno * self.pagesize
        if pgno <= 0 or start + self.pagesize > len(self.data):
            raise _fail(self.where, f"page {pgno} is outside the file (truncated?)")
        return self.data[start : start + self.pagesize]

    def header(self, page: bytes) -> tuple[int, int, int, int]:
        """(next page, entries, hf_offset, type) of a page."""
        nxt, entries, hf = struct.unpack_from(self.order + "IHH", page, 16)
        return nxt, entries, hf, page[25]

    def overflow(self, pgno: int, total: int, at: str) -> bytes:
        """A big value: the chain of overflow pages from `pgno`, `total` bytes in all."""
        out, seen = bytearray(), set()
        while pgno and len(out) < total:
            if pgno in seen:
                raise _fail(self.where, f"{at}: overflow chain loops at page {pgno}")
            seen.add(pgno)
            page = self.page(pgno)
            nxt, _, used, ptype = self.header(page)
            if ptype != _P_OVERFLOW or self.overhead + used > self.pagesize:
                raise _fail(self.where, f"{at}: page {pgno} is not an overflow page")
            out += page[self.overhead : self.overhead + used]
            pgno = nxt
        if len(out) != total:
            raise _fail(self.where, f"{at}: overflow value has {len(out)} of {total} bytes")
        return bytes(out)

    def item(self, page: bytes, pgno: int, index: int, offsets: list[int]) -> bytes:
        at = f"page {pgno} item {index}"
        start = offsets[index]
        end = self.pagesize if index == 0 else offsets[index - 1]
        if not self.overhead <= start < end <= self.pagesize:
            raise _fail(self.where, f"{at}: offset {start} is outside the page")
        kind = page[start]
        if kind == _H_KEYDATA:
            return page[start + 1 : end]
        if kind == _H_OFFPAGE and end - start >= 12:
            ovpg, total = struct.unpack_from(self.order + "II", page, start + 4)
            return self.overflow(ovpg, total, at)
        raise _fail(self.where, f"{at}: unsupported hash item type {kind} (duplicates?)")

    def bucket_pages(self, meta: bytes) -> Iterator[int]:
        max_bucket = struct.unpack_from(self.order + "I", meta, 72)[0]
        spares = struct.unpack_from(self.order + "32I", meta, 96)
        last = len(self.data) // self.pagesize
        if max_bucket >= last:
            raise _fail(self.where, f"meta page says {max_bucket + 1} buckets in {last} pages")
        for bucket in range(max_bucket + 1):
            # BDB's BUCKET_TO_PAGE: bucket + spares[ceil(log2(bucket + 1))]
            yield bucket + spares[(bucket).bit_length() if bucket else 0]

    def pairs(self) -> Iterator[tuple[bytes, bytes]]:
        meta = self.data[: self.pagesize]
        seen: set[int] = set()
        for first in self.bucket_pages(meta):
            pgno = first
            while pgno:
                if pgno in seen:
                    raise _fail(self.where, f"page chain loops at page {pgno}")
                seen.add(pgno)
                page = self.page(pgno)
                nxt, entries, _, ptype = self.header(page)
                if ptype == _P_INVALID and not entries and not nxt:
                    break  # a bucket page allocated but never written: an empty bucket
                if ptype not in (_P_HASH, _P_HASH_UNSORTED):
                    raise _fail(self.where, f"page {pgno} of a bucket is of type {ptype}")
                if self.overhead + 2 * entries > self.pagesize or entries % 2:
                    raise _fail(self.where, f"page {pgno}: bad entry count {entries}")
                offsets = list(struct.unpack_from(f"{self.order}{entries}H", page, self.overhead))
                for i in range(0, entries, 2):
                    yield (self.item(page, pgno, i, offsets), self.item(page, pgno, i + 1, offsets))
                pgno = nxt


def read_bdb(data: bytes, where: str = "Packages") -> Iterator[tuple[int, bytes]]:
    """(record number, blob) of a BerkeleyDB hash `Packages`, in either byte order."""
    if len(data) < 512:
        raise _fail(where, "too short for a BerkeleyDB file")
    for order in ("<", ">"):
        if struct.unpack_from(order + "I", data, 12)[0] == _HASH_MAGIC:
            break
    else:
        raise _fail(where, "not a BerkeleyDB hash database (no magic 0x061561)")
    pagesize = struct.unpack_from(order + "I", data, 20)[0]
    if pagesize < 512 or pagesize > 65536 or pagesize & (pagesize - 1):
        raise _fail(where, f"meta page gives an impossible page size {pagesize}")
    if data[25] != _P_HASHMETA:
        raise _fail(where, f"meta page is of type {data[25]}, not a hash meta page")
    if data[24]:
        raise _fail(where, "the database is encrypted")
    overhead = _PAGE_HEADER_CHKSUM if data[26] & _META_CHKSUM else _PAGE_HEADER
    db = _Bdb(data, where, order, pagesize, overhead)
    for key, value in db.pairs():
        if len(key) != 4:
            raise _fail(where, f"a key of {len(key)} bytes (rpm's are 4)")
        # rpm writes the record number in the writer's byte order, which is the db's.
        hnum = struct.unpack(order + "I", key)[0]
        if hnum:
            yield hnum, value


# --- NDB ---------------------------------------------------------------------------------------

_NDB_MAGIC, _SLOT_MAGIC, _BLOB_MAGIC, _TAIL_MAGIC = b"RpmP", b"Slot", b"BlbS", b"BlbE"
_NDB_PAGE, _NDB_BLOCK = 4096, 16


def read_ndb(data: bytes, where: str = "Packages.db") -> Iterator[tuple[int, bytes]]:
    """(package index, blob) of every used slot of SUSE's NDB `Packages.db`."""
    if len(data) < 32 or data[:4] != _NDB_MAGIC:
        raise _fail(where, "not an rpm NDB database (no magic 'RpmP')")
    version, _generation, npages = struct.unpack_from("<III", data, 4)
    if version != 0:
        raise _fail(where, f"unknown NDB version {version}")
    if npages == 0 or npages * _NDB_PAGE > len(data):
        raise _fail(where, f"header says {npages} slot pages; the file is shorter")
    # The first two 16-byte slots are the file header.
    for off in range(32, npages * _NDB_PAGE, 16):
        magic, pkgidx, blkoff, blkcnt = struct.unpack_from("<4sIII", data, off)
        at = f"slot {off // 16 - 2}"
        if magic != _SLOT_MAGIC:
            raise _fail(where, f"{at}: bad slot magic {magic!r}")
        if pkgidx:
            yield pkgidx, _ndb_blob(data, where, at, pkgidx, blkoff, blkcnt)


def _ndb_blob(data: bytes, where: str, at: str, pkgidx: int, blkoff: int, blkcnt: int) -> bytes:
    start, end = blkoff * _NDB_BLOCK, (blkoff + blkcnt) * _NDB_BLOCK
    if blkcnt == 0 or end > len(data):
        raise _fail(where, f"{at}: blob at block {blkoff} (+{blkcnt}) is outside the file")
    magic, idx, _gen, length = struct.unpack_from("<4sIII", data, start)
    if magic != _BLOB_MAGIC or idx != pkgidx:
        raise _fail(where, f"{at}: no blob of package {pkgidx} at block {blkoff}")
    if 16 + length + 12 > end - start:
        raise _fail(where, f"{at}: blob of {length} bytes overruns its {blkcnt} blocks")
    if data[end - 4 : end] != _TAIL_MAGIC:
        raise _fail(where, f"{at}: blob of package {pkgidx} has no tail (truncated write?)")
    return data[start + 16 : start + 16 + length]


# --- finding and reading -----------------------------------------------------------------------


@dataclass(frozen=True)
class DbLocation:
    """Where an image keeps its rpmdb: `path` relative to the root, backend, and the dir."""

    path: str
    backend: str  # "sqlite", "bdb", "ndb"
    directory: str


def find_rpmdb(view: Reader) -> DbLocation | None:
    """The rpmdb rpm itself would open: first dir holding a db file, sqlite > ndb > bdb.

    rpm reads %_dbpath, which is /var/lib/rpm on older distros and /usr/lib/sysimage/rpm on
    newer ones (/var/lib/rpm then being a symlink to it, which a FileView follows).
    """
    for directory in DB_DIRS:
        for name, backend in DB_FILES.items():
            path = f"{directory}/{name}"
            if view.exists(path):
                return DbLocation(path, backend, directory)
    return None


def read_blobs(backend: str, data: bytes, where: str) -> list[tuple[int, bytes]]:
    """(record, blob) pairs of a db file's bytes, for any backend."""
    readers: dict[str, Callable[[bytes, str], Iterator[tuple[int, bytes]]]] = {
        "bdb": read_bdb,
        "ndb": read_ndb,
        "sqlite": _read_sqlite_bytes,
    }
    return list(readers[backend](data, where))


def _view_blobs(view: Reader, location: DbLocation) -> list[tuple[int, bytes]]:
    data = view.read_file(location.path)
    if data is None:
        raise _fail(location.path, "listed but unreadable")
    if location.backend == "sqlite":
        wal_path = location.path + "-wal"
        wal = view.read_file(wal_path) if view.exists(wal_path) else None
        return list(_read_sqlite_bytes(data, location.path, wal))
    return read_blobs(location.backend, data, location.path)


@dataclass
class InstalledRpms:
    """The installed packages of an image, and where they were read from."""

    packages: list[Package] = field(default_factory=list)
    location: DbLocation | None = None
    manifest: str | None = None  # the rpmmanifest path, when there is no rpmdb
    gpg_pubkeys: list[Package] = field(default_factory=list)

    @property
    def source(self) -> str:
        return self.location.path if self.location else (self.manifest or "")


def packages_of(blobs: list[tuple[int, bytes]], where: str) -> tuple[list[Package], list[Package]]:
    """(packages, gpg-pubkey pseudo packages) of a db's blobs."""
    packages: list[Package] = []
    keys: list[Package] = []
    for record, blob in blobs:
        pkg = Package.from_header(parse_header(blob, f"{where} record {record}"), record)
        (keys if pkg.is_gpg_pubkey else packages).append(pkg)
    return packages, keys


def read_db_file(path: Path) -> InstalledRpms:
    """A db file on disk (rpmdb.sqlite, Packages, Packages.db), by its name or its magic."""
    backend = DB_FILES.get(path.name) or _sniff(path)
    blobs = (
        list(read_sqlite(path))
        if backend == "sqlite"
        else read_blobs(backend, path.read_bytes(), str(path))
    )
    packages, keys = packages_of(blobs, str(path))
    return InstalledRpms(packages, DbLocation(str(path), backend, str(path.parent)), None, keys)


def _sniff(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(32)
    if head.startswith(b"SQLite format 3\0"):
        return "sqlite"
    if head.startswith(_NDB_MAGIC):
        return "ndb"
    if len(head) >= 16 and _HASH_MAGIC in struct.unpack_from("<I", head, 12) + struct.unpack_from(
        ">I", head, 12
    ):
        return "bdb"
    raise _fail(str(path), "neither an rpm SQLite, BerkeleyDB nor NDB database")


def read_installed(view: Reader) -> InstalledRpms | None:
    """The image's installed rpms (gpg-pubkey apart): from its rpmdb, else its rpmmanifest.

    None when the image has neither (not an rpm image). `view` is a FileView (MergedView or
    a directory) with paths relative to the root; an unpacked root: `RootDir(path)`.
    """
    location = find_rpmdb(view)
    if location is not None:
        packages, keys = packages_of(_view_blobs(view, location), location.path)
        return InstalledRpms(packages, location, None, keys)
    for path in MANIFEST_PATHS:
        data = view.read_file(path) if view.exists(path) else None
        if data is not None:
            entries = read_manifest(data, path)
            return InstalledRpms([e.package() for e in entries], None, path)
    return None


# --- rpmmanifest -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestEntry:
    """One package line of a container-manifest file."""

    name: str
    version: str
    release: str
    epoch: int | None = None
    arch: str | None = None
    installtime: int | None = None
    buildtime: int | None = None
    vendor: str | None = None
    size: int = 0
    sourcerpm: str | None = None

    def package(self) -> Package:
        return Package(
            name=self.name,
            version=self.version,
            release=self.release,
            epoch=self.epoch,
            arch=self.arch,
            sourcerpm=self.sourcerpm,
            vendor=self.vendor,
            size=self.size,
            buildtime=self.buildtime,
            installtime=self.installtime,
        )


def _none(value: str) -> str | None:
    return None if value in ("", "(none)") else value


def _number(value: str, where: str) -> int | None:
    if value in ("", "(none)"):
        return None
    if not value.isdigit():
        raise _fail(where, f"{value!r} is not a number")
    return int(value)


def manifest_epoch(field6: str, field9: str, where: str) -> int | None:
    """The epoch of a manifest-2 line from %{EPOCH} (field 6) and %{EPOCHNUM} (field 9).

    rpm writes field 6 `(none)` and field 9 `0` for a package without an epoch, and the same
    number twice otherwise. A number in field 6 is the epoch (even 0); with `(none)` there,
    a non-zero field 9 is taken as trivy takes it (trivy reads only field 9 and drops 0).
    """
    explicit = _number(field6, where)
    if explicit is not None:
        return explicit
    num = _number(field9, where)
    return num or None


def _manifest2_line(fields: list[str], where: str) -> ManifestEntry:
    name, vr, itime, btime, vendor, epoch, size, arch, epochnum, srpm = fields
    version, sep, release = vr.rpartition("-")
    if not sep or not name or not version:
        raise _fail(where, f"field 2 {vr!r} is not version-release")
    return ManifestEntry(
        name=name,
        version=version,
        release=release,
        epoch=manifest_epoch(epoch, epochnum, where),
        arch=_none(arch),
        installtime=_number(itime, where),
        buildtime=_number(btime, where),
        vendor=_none(vendor),
        size=_number(size, where) or 0,
        sourcerpm=_none(srpm),
    )


def parse_nevra(text: str) -> ManifestEntry:
    """`name-[epoch:]version-release.arch` (as `rpm -qa` prints) into its parts.

    The arch is the text after the last dot of the release part; the epoch, when present,
    is the digits before a ':' at the start of the version. ValueError if it is not a NEVRA.
    """
    rest, dot, arch = text.rpartition(".")
    head, dash, release = rest.rpartition("-")
    name, dash2, version = head.rpartition("-")
    if not (dot and dash and dash2 and name and version and release and arch):
        raise ValueError(f"not name-version-release.arch: {text!r}")
    epoch = None
    if ":" in version:
        e, _, version = version.partition(":")
        if not e.isdigit() or not version:
            raise ValueError(f"bad epoch in {text!r}")
        epoch = int(e)
    if ":" in version or ":" in release:
        raise ValueError(f"misplaced ':' in {text!r}")
    return ManifestEntry(name=name, version=version, release=release, epoch=epoch, arch=arch)


def _is_gpg_pubkey(fields: list[str]) -> bool:
    """A key's pseudo package: named gpg-pubkey, `gpg-pubkey-<keyid>-<date>` in -1 (no arch)."""
    if len(fields) > 1:
        return fields[0] == "gpg-pubkey"
    return fields[0].startswith("gpg-pubkey-") and fields[0].count("-") == 3


def read_manifest(data: bytes, path: str = MANIFEST_PATHS[0]) -> list[ManifestEntry]:
    """container-manifest-2 (10 tab-separated fields) or -1 (NEVRA lines), gpg-pubkey skipped.

    The format is told by the line: ten tab-separated fields, or one NEVRA.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(path, "not a text file") from None
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        where = f"{path} line {lineno}"
        if not line.strip():
            continue
        fields = line.split("\t")
        if _is_gpg_pubkey(fields):
            continue
        if len(fields) == 10:
            entry = _manifest2_line(fields, where)
        elif len(fields) == 1:
            try:
                entry = parse_nevra(line.strip())
            except ValueError as e:
                raise _fail(where, str(e)) from None
        else:
            raise _fail(where, f"{len(fields)} tab-separated fields (expected 10, or one NEVRA)")
        out.append(entry)
    return out
