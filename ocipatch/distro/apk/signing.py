"""The gzip streams and RSA signatures shared by .apk v2 packages and APKINDEX.tar.gz.

Both files are concatenated gzip streams. The leading stream(s) hold a tar (without its end
blocks) of `.SIGN.RSA.<keyname>` / `.SIGN.RSA256.<keyname>` members: an RSA PKCS#1 v1.5
signature, with SHA-1 resp. SHA-256, over the bytes of the compressed streams that follow
(for a package only its control stream, for an index everything after the signatures).
`<keyname>` is the file name of the public key under /etc/apk/keys (apk-tools src/apk_sign).
Verification needs one signature that verifies with a trusted key of that name.
"""

from __future__ import annotations

import io
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ocipatch.errors import IntegrityError

__all__ = [
    "GzipStream",
    "Signature",
    "TrustedKeys",
    "load_keys",
    "read_signatures",
    "sign",
    "split_gzip_streams",
    "verify_signatures",
]

SIGN_PREFIX = ".SIGN."
# Signature kinds apk-tools knows, and the digest each signs with.
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "RSA": hashes.SHA1,
    "RSA256": hashes.SHA256,
    "RSA512": hashes.SHA512,
}

# key file name (as under /etc/apk/keys) -> PEM bytes of the public key
TrustedKeys = Mapping[str, bytes]


@dataclass(frozen=True)
class GzipStream:
    """One gzip member of the file: where it is (compressed bytes) and what it holds."""

    offset: int
    raw: bytes
    content: bytes


@dataclass(frozen=True)
class Signature:
    """One `.SIGN.<kind>.<keyname>` member."""

    kind: str  # RSA (SHA-1), RSA256, RSA512, or one apk-tools may add later (DSA was one)
    key_name: str
    value: bytes

    @property
    def member_name(self) -> str:
        return f"{SIGN_PREFIX}{self.kind}.{self.key_name}"


def split_gzip_streams(data: bytes, what: str) -> list[GzipStream]:
    """Cut `data` into its gzip members; a damaged or truncated one raises IntegrityError."""
    streams: list[GzipStream] = []
    offset = 0
    while offset < len(data):
        d = zlib.decompressobj(wbits=31)
        try:
            content = d.decompress(data[offset:]) + d.flush()
        except zlib.error as e:
            raise IntegrityError(
                f"{what}: gzip stream {len(streams) + 1} is damaged ({e}); download it again"
            ) from None
        if not d.eof:
            raise IntegrityError(
                f"{what}: gzip stream {len(streams) + 1} is truncated; download it again"
            )
        end = len(data) - len(d.unused_data)
        streams.append(GzipStream(offset=offset, raw=data[offset:end], content=content))
        offset = end
    return streams


def _tar_members(content: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    # apk cuts the end blocks off the signature and control tars; tarfile stops at EOF anyway.
    out = []
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:") as tar:
        for member in tar:
            f = tar.extractfile(member) if member.isfile() else None
            out.append((member, f.read() if f is not None else b""))
    return out


def is_signature_stream(stream: GzipStream) -> bool:
    """True when every member of the stream's tar is a `.SIGN.*` file."""
    try:
        members = _tar_members(stream.content)
    except (tarfile.TarError, EOFError):
        return False
    return bool(members) and all(m.name.startswith(SIGN_PREFIX) for m, _ in members)


def read_signatures(stream: GzipStream) -> list[Signature]:
    sigs = []
    for member, value in _tar_members(stream.content):
        kind, _, key_name = member.name[len(SIGN_PREFIX) :].partition(".")
        sigs.append(Signature(kind=kind, key_name=key_name, value=value))
    return sigs


def load_keys(directory: Path) -> dict[str, bytes]:
    """The public keys in a host directory (e.g. an unpacked <root>/etc/apk/keys), by file name.

    Symlinks are skipped, as they would resolve against the host, not the image: a caller
    reading an image resolves them inside its root and passes the bytes in a dict instead.
    """
    if directory.is_symlink() or not directory.is_dir():
        return {}
    return {
        p.name: p.read_bytes()
        for p in sorted(directory.iterdir())
        if p.is_file() and not p.is_symlink()
    }


def _public_key(pem: bytes) -> rsa.RSAPublicKey | None:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        return None  # apk skips key files it cannot read; so does this
    return key if isinstance(key, rsa.RSAPublicKey) else None


def signature_valid(sig: Signature, signed: bytes, pem: bytes) -> bool:
    """Whether `sig` is a valid signature of `signed` by the public key `pem`."""
    algorithm = _HASHES.get(sig.kind)
    key = _public_key(pem)
    if algorithm is None or key is None:
        return False
    try:
        key.verify(sig.value, signed, padding.PKCS1v15(), algorithm())
    except InvalidSignature:
        return False
    return True


def verify_signatures(
    sigs: list[Signature], signed: bytes, keys: TrustedKeys, what: str
) -> Signature:
    """The first signature that verifies with a trusted key; else IntegrityError (exit 7).

    The error names the file, the keys it is signed with and the keys that are trusted.
    """
    if not sigs:
        raise IntegrityError(
            f"{what} is not signed; use --insecure-repos only for a repository you trust"
        )
    for sig in sigs:
        pem = keys.get(sig.key_name)
        if pem is not None and signature_valid(sig, signed, pem):
            return sig
    signers = ", ".join(s.key_name for s in sigs)
    known = [s.key_name for s in sigs if s.key_name in keys]
    if known:
        reason = f"the signature by {', '.join(known)} does not verify (tampered?)"
    else:
        reason = f"signed by {signers}, none of which is a trusted key"
    trusted = ", ".join(sorted(keys)) or "none"
    raise IntegrityError(
        f"{what}: {reason}; trusted keys: {trusted}. Add the signer's public key to "
        "/etc/apk/keys in the image, or check the repository"
    )


def sign(
    signed: bytes, private_key: rsa.RSAPrivateKey, key_name: str, kind: str = "RSA256"
) -> bytes:
    """A gzip signature stream for `signed`, as abuild-sign makes it (used by tools and tests)."""
    value = private_key.sign(signed, padding.PKCS1v15(), _HASHES[kind]())
    info = tarfile.TarInfo(f"{SIGN_PREFIX}{kind}.{key_name}")
    info.size = len(value)
    info.mode = 0o644
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(value))
    body = buf.getvalue()
    body = body[: 512 + len(value) + (-len(value) % 512)]  # drop the end blocks, as abuild does
    return _gzip(body)


def _gzip(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()
