"""rpm-md repository metadata: repomd.xml and primary.xml (gz, xz, zst, bz2 or plain).

A repository's `repodata/repomd.xml` lists its metadata files with the checksum of the file as
stored (`<checksum>`) and of its decompressed content (`<open-checksum>`); both are checked
here, a mismatch is IntegrityError (exit 7) naming the URL. primary.xml is parsed streaming
(iterparse, elements cleared as they are read). A DOCTYPE is refused: repository metadata
never has one, and entity declarations are how XML bombs and external entities get in.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import re
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import zstandard

from ocipatch.distro.rpm.header import Dependency
from ocipatch.errors import IntegrityError, ResolveError

__all__ = [
    "PrimaryEntry",
    "RepoFile",
    "Repomd",
    "check_checksum",
    "decompress",
    "parse_primary",
    "parse_repomd",
]

REPO_NS = "{http://linux.duke.edu/metadata/repo}"
COMMON_NS = "{http://linux.duke.edu/metadata/common}"
RPM_NS = "{http://linux.duke.edu/metadata/rpm}"
XML_BASE = "{http://www.w3.org/XML/1998/namespace}base"

# rpmsense bits, as header.Dependency carries them.
_FLAGS = {"LT": 2, "GT": 4, "EQ": 8, "LE": 10, "GE": 12}
_HASHES = {"sha": "sha1", "sha1": "sha1", "sha224": "sha224", "sha256": "sha256",
           "sha384": "sha384", "sha512": "sha512", "md5": "md5"}  # fmt: skip
_DOCTYPE = re.compile(rb"<!(DOCTYPE|ENTITY)", re.I)
_FIRST_ELEMENT = re.compile(rb"<[A-Za-z_]")
_MAX_OPEN = 4 << 30  # decompressed metadata larger than this is refused (a bomb, not a repo)


@dataclass(frozen=True)
class RepoFile:
    """One `<data>` entry of repomd.xml."""

    type: str
    href: str
    checksum: tuple[str, str]  # (algorithm, hex) of the file as stored
    open_checksum: tuple[str, str] | None = None  # of the decompressed content
    size: int | None = None


@dataclass(frozen=True)
class Repomd:
    revision: str
    files: dict[str, RepoFile]


@dataclass(frozen=True)
class PrimaryEntry:
    """One package of primary.xml."""

    name: str
    arch: str
    epoch: int | None
    version: str
    release: str
    checksum: tuple[str, str]  # (algorithm, hex) of the .rpm file
    href: str  # location, relative to `base` (or the repository) unless absolute
    base: str = ""  # xml:base of <location>, "" when absent
    size: int = 0  # of the .rpm file
    sourcerpm: str = ""
    provides: tuple[Dependency, ...] = ()
    requires: tuple[Dependency, ...] = ()
    obsoletes: tuple[Dependency, ...] = ()
    conflicts: tuple[Dependency, ...] = ()
    files: tuple[str, ...] = field(default=())  # the files primary lists (file provides)

    @property
    def evr(self) -> str:
        e = f"{self.epoch}:" if self.epoch else ""
        return f"{e}{self.version}-{self.release}"

    @property
    def nevra(self) -> str:
        return f"{self.name}-{self.evr}.{self.arch}"

    @property
    def filename(self) -> str:
        return self.href.rsplit("/", 1)[-1]


def _refuse_doctype(data: bytes, url: str) -> None:
    first = _FIRST_ELEMENT.search(data, 0, 1 << 20)
    prolog = data[: first.start() if first else 1 << 20]
    if _DOCTYPE.search(prolog):
        raise IntegrityError(
            f"{url}: the XML declares a DOCTYPE or entities, which repository metadata never "
            "does; refusing it (the repository was altered or is not an rpm-md repository)"
        )


def _parse_fail(url: str, e: Exception) -> IntegrityError:
    return IntegrityError(
        f"{url}: not well-formed repository metadata ({e}); the file was altered or cut short, "
        "resync the mirror"
    )


def hasher(algo: str, url: str) -> hashlib._Hash:
    name = _HASHES.get(algo.lower())
    if name is None:
        raise IntegrityError(f"{url}: unknown checksum type {algo!r} in the repository metadata")
    return hashlib.new(name)


def check_checksum(data: bytes, checksum: tuple[str, str], url: str, what: str = "") -> None:
    """IntegrityError unless `data` has `checksum` (algorithm, hex)."""
    h = hasher(checksum[0], url)
    h.update(data)
    if h.hexdigest() != checksum[1].lower():
        raise IntegrityError(
            f"{url}: {what or 'checksum'} mismatch ({checksum[0]} {h.hexdigest()}, repomd.xml "
            f"says {checksum[1]}): the file was altered or the mirror is inconsistent; resync "
            "the mirror"
        )


def _checksum(el: ET.Element | None, url: str) -> tuple[str, str] | None:
    if el is None or not (el.text or "").strip():
        return None
    return (el.get("type", "sha256"), (el.text or "").strip().lower())


def parse_repomd(data: bytes, url: str) -> Repomd:
    _refuse_doctype(data, url)
    try:
        root = ET.fromstring(data)
    except (ET.ParseError, LookupError, ValueError) as e:  # LookupError: unknown encoding
        raise _parse_fail(url, e) from None
    if root.tag != f"{REPO_NS}repomd":
        raise IntegrityError(f"{url}: not an rpm-md repomd.xml (root element {root.tag})")
    files: dict[str, RepoFile] = {}
    for d in root.iter(f"{REPO_NS}data"):
        loc = d.find(f"{REPO_NS}location")
        csum = _checksum(d.find(f"{REPO_NS}checksum"), url)
        if loc is None or not loc.get("href") or csum is None:
            raise IntegrityError(f"{url}: <data type={d.get('type')!r}> lacks location/checksum")
        size = d.findtext(f"{REPO_NS}size")
        files[d.get("type", "")] = RepoFile(
            d.get("type", ""),
            loc.get("href", ""),
            csum,
            _checksum(d.find(f"{REPO_NS}open-checksum"), url),
            int(size) if size and size.strip().isdigit() else None,
        )
    return Repomd((root.findtext(f"{REPO_NS}revision") or "").strip(), files)


def decompress(data: bytes, name: str, url: str) -> bytes:
    """The content of a metadata file, by its name's suffix (else by its magic)."""
    try:
        if name.endswith(".gz") or data[:2] == b"\x1f\x8b":
            return gzip.decompress(data)
        if name.endswith(".xz") or data[:6] == b"\xfd7zXZ\x00":
            return lzma.decompress(data)
        if name.endswith(".zst") or data[:4] == b"\x28\xb5\x2f\xfd":
            out = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read(_MAX_OPEN + 1)
            if len(out) > _MAX_OPEN:
                raise ValueError("larger than 4 GiB decompressed")
            return out
        if name.endswith(".bz2") or data[:3] == b"BZh":
            return bz2.decompress(data)
    except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error, zstandard.ZstdError) as e:
        raise IntegrityError(
            f"{url}: cannot decompress ({e}): the file was altered or cut short; resync the mirror"
        ) from None
    return data


def _dep(el: ET.Element) -> Dependency:
    flags = _FLAGS.get(el.get("flags", ""), 0)
    if el.get("pre") in ("1", "true"):
        flags |= 1 << 6  # RPMSENSE_PREREQ (informational here)
    ver = el.get("ver") or ""
    if ver:
        epoch, rel = el.get("epoch"), el.get("rel")
        ver = (f"{epoch}:" if epoch and epoch != "0" else "") + ver + (f"-{rel}" if rel else "")
    return Dependency(el.get("name", ""), flags, ver)


def _deps(fmt: ET.Element | None, kind: str) -> tuple[Dependency, ...]:
    if fmt is None:
        return ()
    group = fmt.find(f"{RPM_NS}{kind}")
    return tuple(_dep(e) for e in group.iter(f"{RPM_NS}entry")) if group is not None else ()


def _epoch(text: str | None) -> int | None:
    return int(text) if text and text.strip().isdigit() else None


def _entry(pkg: ET.Element, url: str) -> PrimaryEntry:
    ver = pkg.find(f"{COMMON_NS}version")
    loc = pkg.find(f"{COMMON_NS}location")
    csum = _checksum(pkg.find(f"{COMMON_NS}checksum"), url)
    size = pkg.find(f"{COMMON_NS}size")
    name = (pkg.findtext(f"{COMMON_NS}name") or "").strip()
    if ver is None or loc is None or csum is None or not name or not loc.get("href"):
        raise IntegrityError(f"{url}: package {name or '?'} lacks version, location or checksum")
    fmt = pkg.find(f"{COMMON_NS}format")
    files = tuple((f.text or "").strip() for f in pkg.iter(f"{COMMON_NS}file"))
    return PrimaryEntry(
        name=name,
        arch=(pkg.findtext(f"{COMMON_NS}arch") or "").strip(),
        epoch=_epoch(ver.get("epoch")),
        version=ver.get("ver", ""),
        release=ver.get("rel", ""),
        checksum=csum,
        href=loc.get("href", ""),
        base=loc.get(XML_BASE) or loc.get("base") or "",
        size=int(size.get("package", "0") or 0) if size is not None else 0,
        sourcerpm=((fmt.findtext(f"{RPM_NS}sourcerpm") if fmt is not None else "") or "").strip(),
        provides=_deps(fmt, "provides"),
        requires=_deps(fmt, "requires"),
        obsoletes=_deps(fmt, "obsoletes"),
        conflicts=_deps(fmt, "conflicts"),
        files=files,
    )


def parse_primary(data: bytes, url: str) -> Iterator[PrimaryEntry]:
    """The packages of a decompressed primary.xml, streaming."""
    _refuse_doctype(data, url)
    try:
        events = ET.iterparse(io.BytesIO(data), events=("start", "end"))
        root: ET.Element | None = None
        for event, el in events:
            if root is None:
                root = el
                if el.tag != f"{COMMON_NS}metadata":
                    raise IntegrityError(f"{url}: not an rpm-md primary.xml (root {el.tag})")
            if event == "end" and el.tag == f"{COMMON_NS}package":
                if el.get("type", "rpm") == "rpm":
                    yield _entry(el, url)
                root.clear()  # keep memory flat over a large repository
    except (ET.ParseError, LookupError, ValueError) as e:  # LookupError: unknown encoding
        raise _parse_fail(url, e) from None


def not_found(url: str, what: str) -> ResolveError:
    return ResolveError(
        f"{url} does not exist (HTTP 404): {what}; check the image's repository configuration "
        "or the --repo-mirror mapping"
    )
