"""An .rpm's integrity and OpenPGP signature, checked against the image's keys with gpgv.

What rpm signs (lib/rpmvs.c): the header-only signatures (RSAHEADER 268, DSAHEADER 267) and
the SHA256/SHA1 header digests (273/269) cover the main header as stored, from its 8-byte
magic; the legacy signatures (PGP 1002, GPG 1005, PGP5 1006) and MD5 (1004) cover the main
header and the payload. The payload digest (5092, in the main header) covers the compressed
payload. Every one present is checked; a signature is required unless the repository has
gpgcheck=0 or the run is `insecure`.
"""

from __future__ import annotations

import base64
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ocipatch import runs
from ocipatch.distro.deb.repos.signature import Keyrings, _check, _gpgv, dearmor
from ocipatch.distro.rpm.header import DIGEST_ALGOS, HEADER_MAGIC, LEAD_SIZE, Package, read_rpm
from ocipatch.distro.rpm.header import RpmFile as RpmFile
from ocipatch.errors import IntegrityError

__all__ = ["SignedParts", "keys_of_pubkeys", "signed_parts", "verify_rpm"]

SIG_DSA_HEADER, SIG_RSA_HEADER, SIG_SHA1, SIG_SHA256 = 267, 268, 269, 273
SIG_PGP, SIG_MD5, SIG_GPG, SIG_PGP5 = 1002, 1004, 1005, 1006
PAYLOAD_DIGEST, PAYLOAD_DIGEST_ALGO = 5092, 5093
DESCRIPTION, PUBKEYS = 1005, 266
_APT_HINT = "update the image's archive keyring or fix Signed-By"
_RPM_HINT = (
    "the key must be in the image: a gpgkey= file of the repository or an rpmdb gpg-pubkey "
    "(rpm --import)"
)


@dataclass(frozen=True)
class SignedParts:
    rpm: RpmFile
    header: bytes  # the main header from its magic: what header-only signatures cover
    header_and_payload: bytes  # what legacy signatures cover
    payload: bytes


def signed_parts(data: bytes, url: str) -> SignedParts:
    rpm = read_rpm(data, url)
    start = rpm.payload_offset - 8 - rpm.header.size
    if start < LEAD_SIZE or data[start : start + 8] != HEADER_MAGIC:
        raise IntegrityError(f"{url}: the main header is not where the signature header ends")
    return SignedParts(
        rpm, data[start : rpm.payload_offset], data[start:], data[rpm.payload_offset :]
    )


def keys_of_pubkeys(pubkeys: list[Package]) -> list[tuple[str, bytes]]:
    """Keyrings from the rpmdb's gpg-pubkey pseudo packages (the armored key is their
    description; PUBKEYS, when there, holds it as base64)."""
    rings: list[tuple[str, bytes]] = []
    for p in pubkeys:
        what = f"rpmdb {p.name}-{p.version}-{p.release}"
        h = p.header
        texts = [h.string(DESCRIPTION) or ""] if h is not None else []
        if h is not None and h.has(PUBKEYS):
            texts += h.strings(PUBKEYS)
        for text in texts:
            if "BEGIN PGP PUBLIC KEY BLOCK" in text:
                rings.append((what, dearmor(text, what)))
                break
            try:
                rings.append((what, base64.b64decode(text, validate=True)))
                break
            except ValueError:
                continue
    return rings


def _digest(data: bytes, algo: str) -> str:
    return hashlib.new(algo, data).hexdigest()


def _check_digests(parts: SignedParts, url: str) -> list[str]:
    """The digests present, checked; the names of those checked."""
    sig, main, checked = parts.rpm.signature, parts.rpm.header, []
    for tag, algo in ((SIG_SHA256, "sha256"), (SIG_SHA1, "sha1")):
        want = sig.string(tag)
        if want and _digest(parts.header, algo) != want.lower():
            raise IntegrityError(
                f"{url}: header {algo} digest mismatch: the package header was altered; "
                "resync the mirror"
            )
        if want:
            checked.append(f"header {algo}")
    md5 = sig.binary(SIG_MD5)
    if md5 and hashlib.md5(parts.header_and_payload).digest() != md5:
        raise IntegrityError(f"{url}: MD5 digest mismatch: the package was altered")
    digests = main.strings(PAYLOAD_DIGEST) if main.has(PAYLOAD_DIGEST) else []
    if digests:
        algo = DIGEST_ALGOS.get(main.integer(PAYLOAD_DIGEST_ALGO) or 8, "sha256")
        if _digest(parts.payload, algo) != digests[0].lower():
            raise IntegrityError(
                f"{url}: payload {algo} digest mismatch: the package's files were altered; "
                "resync the mirror"
            )
        checked.append(f"payload {algo}")
    return checked


def _signatures(parts: SignedParts) -> list[tuple[str, bytes, bytes]]:
    """(what, signature packet, signed bytes) of each OpenPGP signature the package holds."""
    sig, out = parts.rpm.signature, []
    for tag in (SIG_RSA_HEADER, SIG_DSA_HEADER):
        blob = sig.binary(tag)
        if blob:
            out.append(("header signature", blob, parts.header))
    for tag in (SIG_PGP, SIG_GPG, SIG_PGP5):
        blob = sig.binary(tag)
        if blob:
            out.append(("header+payload signature", blob, parts.header_and_payload))
    return out


def verify_rpm(
    data: bytes, url: str, keyrings: Keyrings | None, *, require_signature: bool = True
) -> RpmFile:
    """The parsed package after its digests (and, with keyrings, signatures) check out.

    `keyrings` None: signatures are not checked (gpgcheck=0 or --insecure-repos)."""
    parts = signed_parts(data, url)
    _check_digests(parts, url)
    if keyrings is None:
        return parts.rpm
    sigs = _signatures(parts)
    if not sigs:
        if require_signature:
            raise IntegrityError(
                f"{url}: the package is not signed, and its repository has gpgcheck=1; use a "
                "signed repository, or pass --insecure-repos to accept unsigned packages"
            )
        return parts.rpm
    with tempfile.TemporaryDirectory(prefix=runs.owned_prefix("ocipatch-rpmsig-")) as t:
        tmp = Path(t)
        for i, (what, packet, signed) in enumerate(sigs):
            (tmp / f"sig{i}").write_bytes(packet)
            (tmp / f"data{i}").write_bytes(signed)
            sub = tmp / f"run{i}"
            sub.mkdir()
            status = _gpgv(
                [str(tmp / f"sig{i}"), str(tmp / f"data{i}")], keyrings, sub, f"{url} ({what})"
            )
            try:
                _check(status, keyrings, f"{url} ({what})")
            except IntegrityError as e:
                raise IntegrityError(str(e).replace(_APT_HINT, _RPM_HINT)) from None
    return parts.rpm
