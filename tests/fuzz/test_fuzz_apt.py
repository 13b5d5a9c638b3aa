"""Fuzzing what a package repository and the image's apt configuration say: Release and
InRelease files (with their signatures: checks must fail closed), Packages indices, armored
keys, and sources.list / deb822 .sources files.

Property: a value or an OcipatchError (IntegrityError, UnsupportedError); a mutated InRelease
or Release that still verifies says exactly what was signed."""

from __future__ import annotations

import contextlib
import functools
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from ocipatch.distro.deb.repos.index import PackagesIndex, ReleaseInfo, check_dates, parse_release
from ocipatch.distro.deb.repos.signature import (
    Keyrings,
    dearmor,
    verify_clearsigned,
    verify_detached,
)
from ocipatch.distro.deb.repos.sources import (
    parse_deb822_sources,
    parse_one_line_sources,
    read_sources,
)
from ocipatch.errors import OcipatchError
from tests.fuzz.budget import counted, fuzz_settings, mutated_bytes, mutated_text
from tools.aptrepo import Signer

ROOT = Path(__file__).resolve().parents[2]
SHA = "0123456789abcdef" * 4
RELEASE = f"""\
Origin: ocipatch test
Label: ocipatch test
Suite: stable
Codename: fuzz
Date: Tue, 14 Nov 2023 22:13:20 UTC
Valid-Until: Sat, 14 Nov 2099 22:13:20 UTC
Acquire-By-Hash: yes
Architectures: amd64 arm64
Components: main
Description: a repository for the fuzzer
SHA256:
 {SHA} 1234 main/binary-amd64/Packages
 {SHA} 567 main/binary-amd64/Packages.xz
"""
PACKAGES = f"""\
Package: hello
Version: 1:2.10-3+deb12u1
Architecture: amd64
Maintainer: Someone <a@example.invalid>
Installed-Size: 280
Depends: libc6 (>= 2.34), dpkg (>= 1.15.4) | install-info
Pre-Depends: multiarch-support
Provides: hello-world (= 2.10), greeter
Breaks: hello-traditional (<< 2.2-2)
Conflicts: oldhello:any
Multi-Arch: foreign
Source: hello (2.10-3)
Filename: pool/main/h/hello/hello_2.10-3+deb12u1_amd64.deb
Size: 53156
SHA256: {SHA}
Description: example package based on GNU hello
 The GNU hello program produces a familiar, friendly greeting.

Package: libc6
Version: 2.36-9+deb12u4
Architecture: amd64
Filename: pool/main/g/glibc/libc6_2.36-9+deb12u4_amd64.deb
Size: 2757000
SHA256: {SHA}
"""
SOURCES_DEB822 = """\
Types: deb deb-src
URIs: http://archive.example.invalid/debian
Suites: bookworm bookworm-updates
Components: main contrib
Architectures: amd64
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
Check-Valid-Until: no
# a comment
Enabled: yes

Types: deb
URIs: file:/srv/repo
Suites: ./
Trusted: yes
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mDMEZ
 -----END PGP PUBLIC KEY BLOCK-----
"""
SOURCES_LIST = """\
deb http://archive.example.invalid/debian bookworm main
deb [arch=amd64,arm64 signed-by=/etc/apt/keyrings/x.gpg trusted=no] https://x.invalid/ stable main
deb-src http://archive.example.invalid/debian bookworm main # comment
deb [ check-valid-until=no ] file:/srv/repo ./
"""
INFO = ReleaseInfo(url="http://repo.invalid/dists/fuzz")
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@functools.cache
def signed() -> tuple[Keyrings, bytes, bytes]:
    """A throwaway key (kept for the session), the InRelease and Release.gpg it signed."""
    signer = Signer()
    tmp = Path(tempfile.mkdtemp(prefix="ocipatch-fuzz-gpg-"))
    (tmp / "Release").write_text(RELEASE)
    signer.clearsign(tmp / "Release", tmp / "InRelease")
    signer.detach_sign(tmp / "Release", tmp / "Release.gpg")
    keys = Keyrings((("fuzz-keyring.gpg", signer.keyring.read_bytes()),))
    out = keys, (tmp / "InRelease").read_bytes(), (tmp / "Release.gpg").read_bytes()
    shutil.rmtree(tmp)
    return out


def _lines(text: bytes) -> list[bytes]:
    # gpg canonicalizes a clearsigned text: trailing blanks and the final newline do not count.
    return [ln.rstrip(b" \t\r") for ln in text.rstrip(b"\n").split(b"\n")]


@fuzz_settings()
@given(mutated_text([RELEASE]) | st.text(max_size=60))
@example(f"SHA256: {SHA} 1 main/binary-amd64/Packages\n")  # one line: python-debian's dict
@counted("Release files")
def test_parse_release(text: str) -> None:
    check_release(text)


def check_release(text: str) -> None:
    try:
        info = parse_release(text, INFO.url)
        check_dates(info, NOW)
    except OcipatchError:
        pass


@fuzz_settings()
@given(mutated_bytes([PACKAGES.encode()]) | st.binary(max_size=60))
@example(b"Package: a\nVersion: 1\nFilename: a.deb\nSize: 1\nSHA256: 0\nDepends: b (>= 1 1)\n")
@example(b"Package: a\nVersion: !1\nFilename: a.deb\nSize: 1\nSHA256: 0\n")
@example(b"Package: a\nVersion: 1\nFilename: a.deb\nSize: 1\nSHA256: 0\nDescription: x\n a\x1cb\n")
@example(b"Package: \x80\nProvides: \xff\n")  # names that are not UTF-8
@counted("Packages indices")
def test_packages_index(data: bytes) -> None:
    check_packages(data)


def check_packages(data: bytes) -> None:
    try:
        index = PackagesIndex(data, INFO, "http://repo.invalid")
        for name in list(index.names()):
            index.get(name)
        len(index)
    except OcipatchError:
        pass


@fuzz_settings()
@given(st.data())
@counted("InRelease signatures")
def test_inrelease_fails_closed(data: st.DataObject) -> None:
    check_inrelease(data.draw(mutated_bytes([signed()[1]], max_ops=3)))


def check_inrelease(mutated: bytes) -> None:
    try:
        text = verify_clearsigned(mutated, signed()[0], "InRelease")
    except OcipatchError:
        return
    assert _lines(text) == _lines(RELEASE.encode()), "only what was signed is returned"


def test_gpgv_status_that_is_not_utf8() -> None:
    """gpgv's status lines echo bytes of a mangled signature (a UnicodeDecodeError, found by the
    long fuzzing run): refused, or accepted only as what was signed."""
    _, inrelease, signature = signed()
    head = b"-----BEGIN PGP SIGNATURE-----\n"
    check_inrelease(inrelease.replace(head, head + b"\x8a"))
    check_detached(RELEASE.encode(), signature.replace(head, head + b"\x80\n"))


@fuzz_settings()
@given(st.data())
@counted("Release + Release.gpg signatures")
def test_detached_fails_closed(data: st.DataObject) -> None:
    signature = signed()[2]
    release = data.draw(mutated_bytes([RELEASE.encode()], max_ops=2))
    check_detached(release, data.draw(st.just(signature) | mutated_bytes([signature], max_ops=2)))


def check_detached(release: bytes, sig: bytes) -> None:
    try:
        text = verify_detached(release, sig, signed()[0], "Release")
    except OcipatchError:
        return
    assert text == RELEASE.encode(), "a Release accepted is the one signed"


@fuzz_settings()
@given(st.data())
@counted("keyrings (armored, binary)")
def test_keyrings(data: st.DataObject) -> None:
    keys, inrelease, _ = signed()
    armored = (ROOT / "fixtures" / "repos" / "armored-key.asc").read_text()
    with contextlib.suppress(OcipatchError):
        dearmor(data.draw(mutated_text([armored])), "key")
    ring = data.draw(mutated_bytes([keys.rings[0][1]], max_ops=2))
    with contextlib.suppress(OcipatchError):
        verify_clearsigned(inrelease, Keyrings((("ring", ring),)), "InRelease")


SOURCES_ROOT = Path(tempfile.mkdtemp(prefix="ocipatch-fuzz-sources-"))


@fuzz_settings()
@given(
    mutated_bytes([SOURCES_LIST.encode(), SOURCES_DEB822.encode()]),
    mutated_bytes([SOURCES_DEB822.encode(), SOURCES_LIST.encode()]),
)
@counted("apt sources (one-line and deb822)")
def test_sources(one_line: bytes, deb822: bytes) -> None:
    for parse in (parse_one_line_sources, parse_deb822_sources):
        for blob in (one_line, deb822):
            with contextlib.suppress(OcipatchError):
                parse(blob.decode("utf-8", "replace"), "x")
    parts = SOURCES_ROOT / "etc/apt/sources.list.d"
    parts.mkdir(parents=True, exist_ok=True)
    (SOURCES_ROOT / "etc/apt/sources.list").write_bytes(one_line)
    (parts / "x.sources").write_bytes(deb822)
    with contextlib.suppress(OcipatchError):
        read_sources(SOURCES_ROOT)
