"""rpm header blobs, as stored in every rpmdb backend and twice in an .rpm file.

A blob is `be32 il, be32 dl`, then `il` index entries of 16 bytes `{be32 tag, type, offset,
count}`, then `dl` bytes of data that the offsets point into. In an .rpm file each header is
preceded by the 8-byte magic `8e ad e8 01 00 00 00 00`; a db stores the blob without it. The
first entry is normally the region tag (62 in a signature header, 63 in a main header) whose
data is a 16-byte trailer; it carries no package data and is skipped. Entries a db appended
after the region (INSTALLTIME, ...) are read like the others; a later entry wins over an
earlier one of the same tag, as rpm's header merge does.

Everything is bounds-checked: a damaged blob raises ImageFormatError naming the blob (`where`)
and the entry at fault. See docs/rpm.md.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ocipatch.errors import ImageFormatError

__all__ = [
    "FILE_CONFIG",
    "FILE_DOC",
    "FILE_GHOST",
    "Dependency",
    "Header",
    "Package",
    "PackageFile",
    "RpmFile",
    "parse_header",
    "read_rpm",
    "read_rpm_file",
]

HEADER_MAGIC = b"\x8e\xad\xe8\x01\x00\x00\x00\x00"
LEAD_MAGIC = b"\xed\xab\xee\xdb"
LEAD_SIZE = 96

# Data types (rpmTagType).
NULL, CHAR, INT8, INT16, INT32, INT64, STRING, BIN, STRING_ARRAY, I18NSTRING = range(10)
_INT_FORMATS = {CHAR: "B", INT8: "B", INT16: "H", INT32: "I", INT64: "Q"}
_INT_SIZES = {CHAR: 1, INT8: 1, INT16: 2, INT32: 4, INT64: 8}

# Tags (rpmTag); signature-header tags share the numbers of the main header's range.
REGION_TAGS = frozenset({61, 62, 63})  # HEADERIMAGE, HEADERSIGNATURES, HEADERIMMUTABLE
NAME, VERSION, RELEASE, EPOCH, SUMMARY = 1000, 1001, 1002, 1003, 1004
BUILDTIME, INSTALLTIME, SIZE, VENDOR, LICENSE = 1006, 1008, 1009, 1011, 1014
ARCH, OLDFILENAMES, FILESIZES, FILEMODES, FILERDEVS = 1022, 1027, 1028, 1030, 1033
FILEMTIMES, FILEDIGESTS, FILELINKTOS, FILEFLAGS = 1034, 1035, 1036, 1037
FILEUSERNAME, FILEGROUPNAME, SOURCERPM = 1039, 1040, 1044
PROVIDENAME, REQUIREFLAGS, REQUIRENAME, REQUIREVERSION = 1047, 1048, 1049, 1050
CONFLICTFLAGS, CONFLICTNAME, CONFLICTVERSION = 1053, 1054, 1055
OBSOLETENAME, PROVIDEFLAGS, PROVIDEVERSION = 1090, 1112, 1113
OBSOLETEFLAGS, OBSOLETEVERSION = 1114, 1115
DIRINDEXES, BASENAMES, DIRNAMES = 1116, 1117, 1118
PAYLOADFORMAT, PAYLOADCOMPRESSOR, PAYLOADFLAGS = 1124, 1125, 1126
LONGFILESIZES, LONGSIZE, FILEDIGESTALGO = 5008, 5009, 5011
# The package's own digest of its header+payload (rpm -qa --qf %{SIGMD5}).
SIGMD5 = 261

# File flags (rpmfileAttrs).
FILE_CONFIG, FILE_DOC, FILE_MISSINGOK, FILE_NOREPLACE = 1, 2, 8, 16
FILE_GHOST, FILE_LICENSE, FILE_README = 64, 128, 256

# Dependency sense flags (rpmsenseFlags).
SENSE_LESS, SENSE_GREATER, SENSE_EQUAL = 2, 4, 8

# FILEDIGESTALGO values (OpenPGP hash algorithm ids); absent means MD5.
DIGEST_ALGOS = {1: "md5", 2: "sha1", 8: "sha256", 9: "sha384", 10: "sha512", 11: "sha224"}

_FIX = "the rpm header is damaged; restore the file from the image it came from"
# More than rpm itself accepts (hdrchkTags / hdrchkData): a guard against absurd counts.
_MAX_ENTRIES = 0x10000
_MAX_DATA = 256 * 1024 * 1024

Value = int | str | bytes | list[int] | list[str]


def _fail(where: str, what: str) -> ImageFormatError:
    return ImageFormatError(f"{where}: {what}; {_FIX}")


@dataclass(frozen=True)
class Entry:
    tag: int
    type: int
    offset: int
    count: int


@dataclass
class Header:
    """The entries of one header blob, decoded lazily by tag."""

    data: bytes
    entries: dict[int, Entry]
    where: str = "rpm header"
    # Bytes the blob took (8-byte magic not included), to find what follows it in a file.
    size: int = 0
    # The blob itself, as a db stores it (to copy into another db).
    blob: bytes = field(default=b"", repr=False)

    def has(self, tag: int) -> bool:
        return tag in self.entries

    def value(self, tag: int) -> Value | None:
        """The tag's value: int list, str, str list or bytes by type; None when absent."""
        entry = self.entries.get(tag)
        return None if entry is None else _decode(self.data, entry, self.where)

    def ints(self, tag: int) -> list[int]:
        v = self.value(tag)
        if v is None:
            return []
        if isinstance(v, list) and all(isinstance(x, int) for x in v):
            return [int(x) for x in v]
        raise _fail(self.where, f"tag {tag} is not a number")

    def integer(self, tag: int) -> int | None:
        values = self.ints(tag)
        return values[0] if values else None

    def strings(self, tag: int) -> list[str]:
        v = self.value(tag)
        if v is None:
            return []
        if isinstance(v, str):
            return [v]
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return [str(x) for x in v]
        raise _fail(self.where, f"tag {tag} is not a string")

    def string(self, tag: int) -> str | None:
        values = self.strings(tag)
        return values[0] if values else None

    def binary(self, tag: int) -> bytes | None:
        v = self.value(tag)
        if v is None or isinstance(v, bytes):
            return v
        raise _fail(self.where, f"tag {tag} is not binary")


def _cstring(data: bytes, start: int, where: str, tag: int) -> tuple[str, int]:
    end = data.find(b"\0", start)
    if end < 0:
        raise _fail(where, f"tag {tag}: string runs past the end of the data")
    return data[start:end].decode("utf-8", errors="surrogateescape"), end + 1


def _decode(data: bytes, e: Entry, where: str) -> Value:
    if e.type in _INT_FORMATS:
        size = _INT_SIZES[e.type]
        if e.offset + size * e.count > len(data):
            raise _fail(where, f"tag {e.tag}: {e.count} numbers run past the end of the data")
        return list(struct.unpack_from(f">{e.count}{_INT_FORMATS[e.type]}", data, e.offset))
    if e.type == BIN:
        if e.offset + e.count > len(data):
            raise _fail(where, f"tag {e.tag}: {e.count} bytes run past the end of the data")
        return data[e.offset : e.offset + e.count]
    if e.type == STRING:
        return _cstring(data, e.offset, where, e.tag)[0]
    if e.type in (STRING_ARRAY, I18NSTRING):
        out, pos = [], e.offset
        for _ in range(e.count):
            s, pos = _cstring(data, pos, where, e.tag)
            out.append(s)
        return out
    raise _fail(where, f"tag {e.tag} has unknown data type {e.type}")


def parse_header(blob: bytes, where: str = "rpm header", offset: int = 0) -> Header:
    """The header blob starting at `offset` of `blob` (no 8-byte magic: as a db stores it)."""
    if len(blob) - offset < 8:
        raise _fail(where, "shorter than a header's 8-byte preamble")
    il, dl = struct.unpack_from(">II", blob, offset)
    if il < 1 or il > _MAX_ENTRIES or dl > _MAX_DATA:
        raise _fail(where, f"implausible header sizes ({il} entries, {dl} data bytes)")
    start = offset + 8 + 16 * il
    if start + dl > len(blob):
        raise _fail(where, f"header says {il} entries and {dl} data bytes, blob is shorter")
    data = blob[start : start + dl]
    entries: dict[int, Entry] = {}
    for i in range(il):
        tag, typ, off, count = struct.unpack_from(">IIiI", blob, offset + 8 + 16 * i)
        if typ > I18NSTRING:
            raise _fail(where, f"entry {i} (tag {tag}) has unknown data type {typ}")
        if off < 0 or off > dl or (typ != NULL and count == 0):
            raise _fail(where, f"entry {i} (tag {tag}) points outside the data ({off}/{dl})")
        if i == 0 and tag in REGION_TAGS:
            continue
        entries[tag] = Entry(tag, typ, off, count)
    size = 8 + 16 * il + dl
    return Header(data, entries, where, size, blob[offset : offset + size])


# --- the package record -------------------------------------------------------------------------


@dataclass(frozen=True)
class Dependency:
    """One provides/requires/obsoletes/conflicts entry: `name [op version]`."""

    name: str
    flags: int = 0
    version: str = ""

    @property
    def op(self) -> str:
        """`<`, `<=`, `=`, `>=`, `>` or "" (no version)."""
        sense = self.flags & (SENSE_LESS | SENSE_GREATER | SENSE_EQUAL)
        return {2: "<", 10: "<=", 8: "=", 12: ">=", 4: ">"}.get(sense, "")

    def __str__(self) -> str:
        return f"{self.name} {self.op} {self.version}" if self.op and self.version else self.name


@dataclass(frozen=True)
class PackageFile:
    """One file the package records, with the attributes `rpm -V` checks."""

    path: str
    mode: int = 0
    size: int = 0
    digest: str = ""  # hex, algorithm in Package.digest_algo; "" for dirs, links, ghosts
    user: str = ""
    group: str = ""
    mtime: int = 0
    flags: int = 0
    linkto: str = ""
    rdev: int = 0

    @property
    def is_config(self) -> bool:
        return bool(self.flags & FILE_CONFIG)

    @property
    def is_ghost(self) -> bool:
        return bool(self.flags & FILE_GHOST)

    @property
    def is_doc(self) -> bool:
        return bool(self.flags & FILE_DOC)


@dataclass
class Package:
    """An installed (or packaged) rpm as its header records it.

    `epoch` is None when the header has no EPOCH tag: that is not the same as 0 (rpm prints
    `(none)`, scanners omit it), though version comparison treats both alike (version.py).
    """

    name: str
    version: str
    release: str
    epoch: int | None = None
    arch: str | None = None  # None for gpg-pubkey and other arch-less pseudo packages
    sourcerpm: str | None = None
    vendor: str | None = None
    license: str | None = None
    summary: str | None = None
    size: int = 0
    buildtime: int | None = None
    installtime: int | None = None
    digest_algo: str = "md5"
    header: Header | None = field(default=None, repr=False, compare=False)
    # Where the blob came from: a db's record number (hnum/pkgidx), or 0.
    record: int = field(default=0, compare=False)

    @property
    def is_gpg_pubkey(self) -> bool:
        """rpm's pseudo package for an imported OpenPGP key (no arch, no source rpm)."""
        return self.name == "gpg-pubkey"

    @property
    def evr(self) -> str:
        return (
            f"{self.epoch}:" if self.epoch is not None else ""
        ) + f"{self.version}-{self.release}"

    @property
    def nevra(self) -> str:
        """`name-[epoch:]version-release.arch`, as `rpm -qa` with %{EPOCH} printed."""
        return f"{self.name}-{self.evr}" + (f".{self.arch}" if self.arch else "")

    @property
    def source_name(self) -> str | None:
        """The source package's name (`curl` of `curl-7.76.0-6.cm2.src.rpm`)."""
        if not self.sourcerpm:
            return None
        base = self.sourcerpm.removesuffix(".rpm")
        base = base.rsplit(".", 1)[0]  # .src / .nosrc
        parts = base.rsplit("-", 2)
        return parts[0] if len(parts) == 3 else None

    def _hdr(self) -> Header:
        if self.header is None:
            raise ValueError(f"{self.name}: package record has no header")
        return self.header

    def files(self) -> list[PackageFile]:
        """The file list: basenames/dirnames/dirindexes joined into absolute paths."""
        return list(_files(self._hdr()))

    def provides(self) -> list[Dependency]:
        return _deps(self._hdr(), PROVIDENAME, PROVIDEFLAGS, PROVIDEVERSION)

    def requires(self) -> list[Dependency]:
        return _deps(self._hdr(), REQUIRENAME, REQUIREFLAGS, REQUIREVERSION)

    def obsoletes(self) -> list[Dependency]:
        return _deps(self._hdr(), OBSOLETENAME, OBSOLETEFLAGS, OBSOLETEVERSION)

    def conflicts(self) -> list[Dependency]:
        return _deps(self._hdr(), CONFLICTNAME, CONFLICTFLAGS, CONFLICTVERSION)

    @classmethod
    def from_header(cls, h: Header, record: int = 0) -> Package:
        name, version, release = h.string(NAME), h.string(VERSION), h.string(RELEASE)
        if name is None or version is None or release is None:
            raise _fail(h.where, "no NAME, VERSION or RELEASE: not a package header")
        algo = h.integer(FILEDIGESTALGO)
        return cls(
            name=name,
            version=version,
            release=release,
            epoch=h.integer(EPOCH),
            arch=h.string(ARCH),
            sourcerpm=h.string(SOURCERPM),
            vendor=h.string(VENDOR),
            license=h.string(LICENSE),
            summary=h.string(SUMMARY),
            size=h.integer(LONGSIZE) or h.integer(SIZE) or 0,
            buildtime=h.integer(BUILDTIME),
            installtime=h.integer(INSTALLTIME),
            digest_algo=DIGEST_ALGOS.get(algo, str(algo)) if algo is not None else "md5",
            header=h,
            record=record,
        )


def _per_file(h: Header, tag: int, n: int, default: object) -> list[object]:
    values: list[object] = list(h.strings(tag) if _is_string(h, tag) else h.ints(tag))
    if not values:
        return [default] * n
    if len(values) != n:
        raise _fail(h.where, f"tag {tag} has {len(values)} values for {n} files")
    return values


def _is_string(h: Header, tag: int) -> bool:
    e = h.entries.get(tag)
    return e is not None and e.type in (STRING, STRING_ARRAY, I18NSTRING)


def _paths(h: Header) -> list[str]:
    basenames = h.strings(BASENAMES)
    if not basenames:
        return h.strings(OLDFILENAMES)
    dirnames, indexes = h.strings(DIRNAMES), h.ints(DIRINDEXES)
    if len(indexes) != len(basenames):
        raise _fail(h.where, f"{len(basenames)} basenames but {len(indexes)} dir indexes")
    if any(i >= len(dirnames) for i in indexes):
        raise _fail(h.where, "a dir index points past the dir names")
    return [dirnames[i] + b for i, b in zip(indexes, basenames, strict=True)]


def _files(h: Header) -> Iterator[PackageFile]:
    paths = _paths(h)
    n = len(paths)
    sizes = _per_file(h, LONGFILESIZES if h.has(LONGFILESIZES) else FILESIZES, n, 0)
    columns = zip(
        paths,
        _per_file(h, FILEMODES, n, 0),
        sizes,
        _per_file(h, FILEDIGESTS, n, ""),
        _per_file(h, FILEUSERNAME, n, ""),
        _per_file(h, FILEGROUPNAME, n, ""),
        _per_file(h, FILEMTIMES, n, 0),
        _per_file(h, FILEFLAGS, n, 0),
        _per_file(h, FILELINKTOS, n, ""),
        _per_file(h, FILERDEVS, n, 0),
        strict=True,
    )
    for path, mode, size, digest, user, group, mtime, flags, linkto, rdev in columns:
        yield PackageFile(
            path=str(path),
            mode=int(str(mode)),
            size=int(str(size)),
            digest=str(digest),
            user=str(user),
            group=str(group),
            mtime=int(str(mtime)),
            flags=int(str(flags)),
            linkto=str(linkto),
            rdev=int(str(rdev)),
        )


def _deps(h: Header, name_tag: int, flags_tag: int, version_tag: int) -> list[Dependency]:
    names = h.strings(name_tag)
    flags = h.ints(flags_tag) or [0] * len(names)
    versions = h.strings(version_tag) or [""] * len(names)
    if not len(names) == len(flags) == len(versions):
        raise _fail(
            h.where, f"dependency tag {name_tag}: names, flags and versions differ in count"
        )
    return [Dependency(n, f, v) for n, f, v in zip(names, flags, versions, strict=True)]


# --- .rpm files ---------------------------------------------------------------------------------


@dataclass
class RpmFile:
    """An .rpm file: its signature header, main header and where the payload starts."""

    signature: Header
    header: Header
    payload_offset: int
    package: Package

    @property
    def payload_compressor(self) -> str:
        return self.header.string(PAYLOADCOMPRESSOR) or "gzip"


def _file_header(data: bytes, pos: int, where: str) -> Header:
    if data[pos : pos + 8] != HEADER_MAGIC:
        raise _fail(where, f"no header magic 8eade801 at byte {pos}")
    return parse_header(data, where, pos + 8)


def read_rpm(data: bytes, where: str = "rpm package") -> RpmFile:
    """Lead (96 bytes), signature header (padded to 8 bytes), main header, then the payload."""
    if len(data) < LEAD_SIZE or data[:4] != LEAD_MAGIC:
        raise _fail(where, "not an rpm package (no lead magic edabeedb)")
    sig = _file_header(data, LEAD_SIZE, f"{where} signature header")
    pos = LEAD_SIZE + 8 + sig.size
    pos += -pos % 8
    main = _file_header(data, pos, f"{where} header")
    payload = pos + 8 + main.size
    return RpmFile(sig, main, payload, Package.from_header(main))


def read_rpm_file(path: Path) -> RpmFile:
    return read_rpm(path.read_bytes(), str(path))
