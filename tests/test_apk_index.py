"""APKINDEX.tar.gz: every real index parses and its signature verifies with the published key;
several signatures (any trusted one suffices), unsigned, re-signed and tampered indexes."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ocipatch.distro.apk.db import read_installed
from ocipatch.distro.apk.index import parse_index, read_index, verify_index
from ocipatch.distro.apk.records import checksum_is_valid
from ocipatch.distro.apk.signing import sign, split_gzip_streams
from ocipatch.distro.apk.version import is_valid_version
from ocipatch.errors import IntegrityError
from tests.apk_formats import FORMATS, needs_formats, needs_keys, sample_id, samples, trusted_keys

INDEXES = samples("apkindex", "*/APKINDEX.tar.gz")

# sample: (entries, description, signer)
EXPECTED = {
    "alpine-3.16-main": (
        4929,
        "v3.16.3-13-g4d933a1fa3",
        "alpine-devel@lists.alpinelinux.org-6165ee59.rsa.pub",
    ),
    "alpine-3.17-main-aarch64": (
        5004,
        "v3.17.3-216-g54a39ace82a",
        "alpine-devel@lists.alpinelinux.org-616ae350.rsa.pub",
    ),
    "melange-local-x86_64": (4, "", "melange.rsa.pub"),
    "wolfi-subset-3sigs": (
        16,
        "",
        "chainguard-0106f58bac88057c2ff5c2829850df492717a876ed700443550353c7ab23f5a0.rsa.pub",
    ),
}
INVALID_VERSIONS = {
    "alpine-3.16-main": ["0.99f7-r0", "6.8.0p2-r4"],
    "alpine-3.17-main-aarch64": ["0.99f7-r1"],
}
WOLFI = FORMATS / "apkindex/wolfi-subset-3sigs/APKINDEX.tar.gz"


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def _content(path: Path) -> bytes:
    """The signed part of an index: every gzip stream after the signature stream."""
    streams = split_gzip_streams(path.read_bytes(), str(path))
    return b"".join(s.raw for s in streams[1:])


@needs_formats
@pytest.mark.parametrize("path", INDEXES, ids=sample_id)
def test_real_index_parses_and_verifies(path: Path) -> None:
    entries, description, signer = EXPECTED[path.parent.name]
    keys = trusted_keys()
    index = read_index(path.read_bytes(), str(path), keys, insecure=not keys)
    if keys:
        assert index.verified_by == signer
    assert (len(index.entries), index.description) == (entries, description)
    for e in index:
        assert e.name and e.version and checksum_is_valid(e.checksum)
        assert e.size > 0 and e.arch
        assert e.depends is not None and e.provides is not None  # every D:/p: parses
    # Alpine ships a few versions apk's own rules call invalid (0.99f7, 6.8.0p2): kept as they are
    invalid = sorted({e.version for e in index if not is_valid_version(e.version)})
    assert invalid == INVALID_VERSIONS.get(path.parent.name, [])


@needs_formats
def test_index_checksums_match_installed_db() -> None:
    # The same package build has the same C: in the repository index and in an image's DB.
    index = parse_index((FORMATS / "apkindex/alpine-3.16-main/APKINDEX.tar.gz").read_bytes())
    offered = {(e.name, e.version): e for e in index}
    db = read_installed(
        (FORMATS / "apk-installed/alpine-3.16-syft-multiple-2/installed").read_bytes()
    )
    shared = [p for p in db.packages if (p.name, p.version) in offered]
    assert len(shared) >= 8
    for pkg in shared:
        entry = offered[(pkg.name, pkg.version)]
        assert entry.checksum == pkg.checksum
        assert (entry.size, entry.installed_size) == (pkg.size, pkg.installed_size)


@needs_formats
@needs_keys
@pytest.mark.parametrize("trusted", range(3))
def test_any_one_of_several_signatures_suffices(trusted: int) -> None:
    keys = trusted_keys()
    wolfi_keys = sorted(k for k in keys if k.startswith("chainguard-"))
    only = {wolfi_keys[trusted]: keys[wolfi_keys[trusted]]}
    index = read_index(WOLFI.read_bytes(), "wolfi", only)
    assert index.verified_by == wolfi_keys[trusted]
    assert len(index.signatures) == 3


@needs_formats
@needs_keys
def test_no_trusted_key_names_the_index_and_the_keys() -> None:
    alpine_only = {k: v for k, v in trusted_keys().items() if k.startswith("alpine-")}
    with pytest.raises(IntegrityError) as err:
        read_index(WOLFI.read_bytes(), "https://repo.invalid/x86_64/APKINDEX.tar.gz", alpine_only)
    msg = str(err.value)
    assert err.value.exit_code == 7
    assert "index https://repo.invalid/x86_64/APKINDEX.tar.gz" in msg
    assert msg.count("chainguard-") == 3  # the three signers
    assert "alpine-devel@lists.alpinelinux.org-6165ee59.rsa.pub" in msg  # the trusted keys
    assert "\n" not in msg


@needs_formats
@pytest.mark.parametrize("kind", ["RSA", "RSA256"])
def test_resigned_index_verifies_and_a_tampered_byte_fails(kind: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    content = _content(FORMATS / "apkindex/alpine-3.17-main-aarch64/APKINDEX.tar.gz")
    signed = sign(content, key, "local-test.rsa.pub", kind) + content
    keys = {"local-test.rsa.pub": _pem(key)}
    index = read_index(signed, "resigned", keys)
    assert index.verified_by == "local-test.rsa.pub" and len(index.entries) == 5004

    # one byte of APKINDEX changed and the tar gzip'd again (a well-formed forgery):
    # the old signature no longer verifies
    signature = signed[: len(signed) - len(content)]
    tar = zlib.decompress(content, wbits=31)
    pos = tar.index(b"\nV:") + 3
    forged_tar = tar[:pos] + bytes([tar[pos] ^ 0x01]) + tar[pos + 1 :]
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    forged = signature + packer.compress(forged_tar) + packer.flush()
    assert len(parse_index(forged, "forged").entries) == 5004  # it does parse
    with pytest.raises(IntegrityError, match=r"local-test\.rsa\.pub does not verify") as err:
        read_index(forged, "forged", keys)
    assert err.value.exit_code == 7

    # one raw byte flipped inside the compressed stream: damaged gzip or a bad signature
    pos = len(signature) + 100
    flipped = signed[:pos] + bytes([signed[pos] ^ 0x01]) + signed[pos + 1 :]
    with pytest.raises(IntegrityError):
        read_index(flipped, "flipped", keys)

    # a gzip trailer byte changed is caught before any signature is looked at
    broken = signed[:-3] + bytes([signed[-3] ^ 0xFF]) + signed[-2:]
    with pytest.raises(IntegrityError, match=r"damaged|truncated"):
        read_index(broken, "broken", keys)


@needs_formats
def test_unsigned_index_needs_insecure() -> None:
    content = _content(FORMATS / "apkindex/melange-local-x86_64/APKINDEX.tar.gz")
    with pytest.raises(IntegrityError, match=r"not signed.*--insecure-repos"):
        read_index(content, "unsigned", trusted_keys())
    index = read_index(content, "unsigned", {}, insecure=True)
    assert [e.name for e in index][:1] and index.verified_by == "" and index.signatures == []
    # insecure also accepts an index signed by nobody we trust, without claiming it verified
    signed_elsewhere = read_index(WOLFI.read_bytes(), "wolfi", {}, insecure=True)
    assert signed_elsewhere.verified_by == ""
    with pytest.raises(IntegrityError):
        verify_index(signed_elsewhere, {})


def test_damaged_index() -> None:
    with pytest.raises(IntegrityError):
        parse_index(b"", "empty")
    with pytest.raises(IntegrityError):
        parse_index(b"plain text, not gzip", "junk")
