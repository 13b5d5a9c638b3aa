"""APKINDEX.tar.gz: signature stream(s), then a gzip'd tar of DESCRIPTION and APKINDEX.

APKINDEX uses the installed DB's package letters (records.py) without file records, one
blank-line-separated block per package. The signatures cover every byte after the signature
streams; read_index verifies them against the image's trusted keys (any one trusted key that
verifies is enough) unless `insecure=True`.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from ocipatch.distro.apk.records import Record, checksum_is_valid
from ocipatch.distro.apk.signing import (
    GzipStream,
    Signature,
    TrustedKeys,
    is_signature_stream,
    read_signatures,
    split_gzip_streams,
    verify_signatures,
)
from ocipatch.errors import IntegrityError

__all__ = ["ApkIndex", "IndexEntry", "parse_index", "read_index", "verify_index"]


@dataclass
class IndexEntry(Record):
    """One package a repository offers (letters as in records.Record)."""


@dataclass
class ApkIndex:
    source: str
    description: str
    entries: list[IndexEntry]
    signatures: list[Signature]
    signed_bytes: bytes = field(repr=False)
    # The key whose signature verified; "" when not verified (insecure, or parse_index only).
    verified_by: str = ""

    def by_name(self) -> dict[str, list[IndexEntry]]:
        out: dict[str, list[IndexEntry]] = {}
        for e in self.entries:
            out.setdefault(e.name, []).append(e)
        return out

    def __iter__(self) -> Iterator[IndexEntry]:
        return iter(self.entries)


def _entries(text: str, source: str) -> list[IndexEntry]:
    entries: list[IndexEntry] = []
    current: IndexEntry | None = None
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line:
            current = None
            continue
        if len(line) < 2 or line[1] != ":":
            raise IntegrityError(
                f"{source}: APKINDEX line {lineno} is not 'X:value' ({line[:60]!r}); "
                "the index is damaged"
            )
        if current is None:
            current = IndexEntry()
            entries.append(current)
        current.fields.append((line[0], line[2:]))
    for e in entries:
        if not e.name or not e.version or not checksum_is_valid(e.checksum):
            raise IntegrityError(
                f"{source}: an APKINDEX entry lacks P:, V: or a valid C: "
                f"({e.name or '?'}-{e.version or '?'}); the index is damaged"
            )
    return entries


def _index_tar(content: bytes, source: str) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(content), mode="r:") as tar:
            for m in tar:
                f = tar.extractfile(m) if m.isfile() else None
                members[m.name] = f.read() if f is not None else b""
    except (tarfile.TarError, EOFError) as e:
        raise IntegrityError(f"{source}: the index tar is unreadable ({e})") from None
    return members


def _envelope(data: bytes, source: str) -> tuple[list[Signature], bytes, list[GzipStream]]:
    """(signatures, the bytes they sign, the content streams)."""
    streams = split_gzip_streams(data, source)
    signatures: list[Signature] = []
    while len(streams) > 1 and is_signature_stream(streams[0]):
        signatures.extend(read_signatures(streams.pop(0)))
    if not streams:
        raise IntegrityError(f"{source}: empty file, not an APKINDEX.tar.gz")
    return signatures, data[streams[0].offset :], streams


def parse_index(data: bytes, source: str = "APKINDEX.tar.gz") -> ApkIndex:
    """Parse without verifying. Damaged content raises IntegrityError."""
    signatures, signed, streams = _envelope(data, source)
    members = _index_tar(b"".join(s.content for s in streams), source)
    if "APKINDEX" not in members:
        raise IntegrityError(f"{source}: no APKINDEX member; not an apk repository index")
    text = members["APKINDEX"].decode("utf-8", errors="replace")
    return ApkIndex(
        source=source,
        description=members.get("DESCRIPTION", b"").decode("utf-8", errors="replace").strip(),
        entries=_entries(text, source),
        signatures=signatures,
        signed_bytes=signed,
    )


def verify_index(index: ApkIndex, keys: TrustedKeys) -> Signature:
    """The signature that verifies with a trusted key; IntegrityError (exit 7) otherwise."""
    sig = verify_signatures(index.signatures, index.signed_bytes, keys, f"index {index.source}")
    index.verified_by = sig.key_name
    return sig


def read_index(data: bytes, source: str, keys: TrustedKeys, *, insecure: bool = False) -> ApkIndex:
    """Parse an APKINDEX.tar.gz and verify its signature (skipped only with insecure=True)."""
    if not insecure:
        # The signature first: a tampered index is reported as such, and never parsed.
        signatures, signed, _ = _envelope(data, source)
        sig = verify_signatures(signatures, signed, keys, f"index {source}")
    index = parse_index(data, source)
    if not insecure:
        index.verified_by = sig.key_name
    return index
