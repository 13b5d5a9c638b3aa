""".apk v2 packages: every real sample parses and verifies (checksum, datahash, per-file SHA-1,
signature where the key is known); re-signed and tampered copies prove the verify paths."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ocipatch.distro.apk.db import (
    read_installed,
    read_scripts_tar,
    replace_scripts,
    serialize_installed,
    serialize_scripts_tar,
)
from ocipatch.distro.apk.index import parse_index
from ocipatch.distro.apk.package import (
    installed_package,
    read_apk,
    script_entries,
    verify_checksum,
    verify_datahash,
    verify_package_signature,
)
from ocipatch.distro.apk.records import q1
from ocipatch.distro.apk.signing import load_keys, sign, split_gzip_streams
from ocipatch.errors import IntegrityError, UnsupportedError
from tests.apk_formats import FORMATS, needs_formats, sample_id, samples, trusted_keys

PACKAGES = samples("apk-package", "*/*.apk")

# name: (version, arch, data members with a SHA-1, scripts, has datahash, signing key or None)
EXPECTED = {
    "alpine-baselayout": (
        "3.2.0-r23",
        "aarch64",
        14,  # 11 files and 3 symlinks
        ["pre-install", "pre-upgrade", "post-upgrade", "post-install"],
        True,
        "alpine-devel@lists.alpinelinux.org-616ae350.rsa.pub",
    ),
    "pretend-baselayout": ("1.0.0-r0", "x86_64", 2, [], True, "melange.rsa.pub"),
    # signed by another melange.rsa.pub whose public half is not published: not verifiable here
    "hello-wolfi": ("2.12.1-r0", "x86_64", 47, [], True, None),
}


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def _streams(path: Path) -> tuple[bytes, bytes]:
    """(control, data) compressed streams of a sample."""
    streams = split_gzip_streams(path.read_bytes(), str(path))
    return streams[-2].raw, streams[-1].raw


@needs_formats
@pytest.mark.parametrize("path", PACKAGES, ids=sample_id)
def test_real_package_parses_and_verifies(path: Path) -> None:
    apk = read_apk(path.read_bytes(), str(path))
    version, arch, files, scripts, has_datahash, signer = EXPECTED[apk.name]
    assert (apk.version, apk.arch) == (version, arch)
    assert apk.size == path.stat().st_size
    assert list(apk.scripts) == scripts
    assert apk.checksum == q1(_streams(path)[0])
    assert verify_datahash(apk) is has_datahash
    assert apk.verify_file_checksums() == files
    entries = list(apk.data_entries())
    assert all(not e.path.startswith("/") for e in entries)
    assert sum(1 for e in entries if e.sha1) == files
    if not trusted_keys():
        return  # no public keys of the samples here: the signature paths run on re-signed copies
    if signer is None:
        # the test keys hold another melange.rsa.pub: same name, other key
        with pytest.raises(IntegrityError, match=r"melange\.rsa\.pub does not verify"):
            verify_package_signature(apk, trusted_keys())
        with pytest.raises(IntegrityError, match="none of which is a trusted key"):
            verify_package_signature(apk, {})
    else:
        assert verify_package_signature(apk, trusted_keys()).key_name == signer


@needs_formats
def test_checksum_matches_its_index() -> None:
    # The melange-built package and the index of its repository were made together.
    path = FORMATS / "apk-package/melange-local-x86_64/pretend-baselayout-1.0.0-r0.apk"
    apk = read_apk(path.read_bytes(), str(path))
    index = parse_index((FORMATS / "apkindex/melange-local-x86_64/APKINDEX.tar.gz").read_bytes())
    entry = index.by_name()["pretend-baselayout"][0]
    verify_checksum(apk, entry.checksum)
    assert apk.size == entry.size
    # what the package says of itself is what the index says of it
    ours = dict(apk.index_fields())
    assert {k: v for k, v in entry.fields if k in ours} == {
        k: v for k, v in ours.items() if entry.has(k)
    }
    assert len([k for k, _ in entry.fields if k in ours]) >= 10
    with pytest.raises(IntegrityError, match="does not match the index"):
        verify_checksum(apk, q1(b"something else"))


@needs_formats
def test_index_fields_in_apk_tools_order() -> None:
    path = FORMATS / "apk-package/alpine-3.16-aarch64/alpine-baselayout-3.2.0-r23.apk"
    apk = read_apk(path.read_bytes())
    fields = apk.index_fields()
    assert [k for k, _ in fields] == list("CPVASITULomtcDp")
    assert dict(fields)["D"] == "alpine-baselayout-data=3.2.0-r23 /bin/sh so:libc.musl-aarch64.so.1"
    assert dict(fields)["S"] == str(path.stat().st_size)


@needs_formats
@pytest.mark.parametrize("kind", ["RSA", "RSA256"])
def test_resigned_package_verifies_and_tampering_fails(kind: str, key: rsa.RSAPrivateKey) -> None:
    path = FORMATS / "apk-package/wolfi-melange/hello-wolfi-2.12.1-r0.apk"
    control, data = _streams(path)
    signed = sign(control, key, "throwaway.rsa.pub", kind) + control + data
    keys = {"throwaway.rsa.pub": _pem(key)}
    apk = read_apk(signed, "hello.apk")
    assert verify_package_signature(apk, keys).kind == kind
    assert verify_datahash(apk)

    # one byte of the data stream changed: the datahash (or gzip's CRC) catches it
    pos = len(signed) - len(data) // 2
    bad = signed[:pos] + bytes([signed[pos] ^ 0x01]) + signed[pos + 1 :]
    with pytest.raises(IntegrityError) as err:
        verify_datahash(read_apk(bad, "hello.apk"))
    assert err.value.exit_code == 7 and "hello.apk" in str(err.value)

    # a signature made over other bytes does not vouch for this control stream
    forged = sign(zlib.compress(b"other", 9), key, "throwaway.rsa.pub", kind) + control + data
    with pytest.raises(IntegrityError, match="does not verify"):
        verify_package_signature(read_apk(forged, "hello.apk"), keys)

    # signed by a key with the right name but another public half
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(IntegrityError, match=r"throwaway\.rsa\.pub"):
        verify_package_signature(apk, {"throwaway.rsa.pub": _pem(other_key)})


@needs_formats
def test_unsigned_package() -> None:
    control, data = _streams(FORMATS / "apk-package/wolfi-melange/hello-wolfi-2.12.1-r0.apk")
    apk = read_apk(control + data, "unsigned.apk")
    assert apk.signatures == [] and apk.name == "hello-wolfi"
    with pytest.raises(IntegrityError, match="not signed"):
        verify_package_signature(apk, trusted_keys())


@needs_formats
def test_damaged_packages() -> None:
    data = (
        FORMATS / "apk-package/melange-local-x86_64/pretend-baselayout-1.0.0-r0.apk"
    ).read_bytes()
    with pytest.raises(IntegrityError, match="truncated"):
        read_apk(data[: len(data) - 10], "cut.apk")
    with pytest.raises(IntegrityError, match="expected control and data"):
        read_apk(data[:647], "head.apk")  # only the signature stream
    with pytest.raises(IntegrityError):
        read_apk(b"not a package at all", "junk.apk")
    with pytest.raises(UnsupportedError, match="apk v3"):
        read_apk(b"ADB.pckg" + b"\0" * 64, "v3.apk")


def test_load_keys_skips_symlinks(tmp_path: Path) -> None:
    (tmp_path / "real.rsa.pub").write_bytes(b"PEM")
    (tmp_path / "link.rsa.pub").symlink_to("/etc/hostname")
    assert load_keys(tmp_path) == {"real.rsa.pub": b"PEM"}
    assert load_keys(tmp_path / "missing") == {}


@needs_formats
@pytest.mark.parametrize(
    "db_sample", ["alpine-3.16-aarch64-apko-root", "alpine-3.16-syft-multiple-2"]
)
def test_installed_entry_is_what_apk_wrote(db_sample: str) -> None:
    # alpine-baselayout 3.2.0-r23 (aarch64) against the DB entry of 3.2.0-r22, written by apko
    # (aarch64) and by apk-tools (x86_64): only the build's own values may differ.
    path = FORMATS / "apk-package/alpine-3.16-aarch64/alpine-baselayout-3.2.0-r23.apk"
    apk = read_apk(path.read_bytes())
    ours = installed_package(apk)
    db = read_installed((FORMATS / "apk-installed" / db_sample / "installed").read_bytes())
    theirs = db.get("alpine-baselayout")
    assert theirs is not None and theirs.version == "3.2.0-r22"
    build_specific = set("CVSAItcDp")
    assert [k for k, _ in ours.fields] == [k for k, _ in theirs.fields]
    assert [kv for kv in ours.fields if kv[0] not in build_specific] == [
        kv for kv in theirs.fields if kv[0] not in build_specific
    ]
    assert ours.checksum == apk.checksum and ours.size == path.stat().st_size
    # the file records: same dirs, files, owners and modes in the same order
    ours_files = [line for line in ours.block_lines() if line[0] in "FRMa"]
    theirs_files = [line for line in theirs.block_lines() if line[0] in "FRMa"]
    assert ours_files == theirs_files
    changed = [p for p, f in ours.files() if f.checksum != dict(theirs.files())[p].checksum]
    # the aarch64 build is byte-identical to the one before it but for its version; the
    # x86_64 DB differs in one arch-specific file
    assert len(changed) == (0 if "aarch64" in db_sample else 1)
    # and the whole entry reads back the same after a write
    db.packages[db.packages.index(theirs)] = ours
    assert read_installed(serialize_installed(db)).get("alpine-baselayout") == ours


def test_installed_entry_details() -> None:
    """Owners by name, .keep_ files, hard links and unsafe names, from a hand-made package."""

    def member(
        name: str, kind: bytes, data: bytes = b"", **kw: object
    ) -> tuple[tarfile.TarInfo, bytes]:
        info = tarfile.TarInfo(name)
        info.type, info.size, info.mode = (
            kind,
            len(data),
            0o755 if kind == tarfile.DIRTYPE else 0o644,
        )
        for k, v in kw.items():
            setattr(info, k, v)
        if kind == tarfile.REGTYPE:
            info.pax_headers = {"APK-TOOLS.checksum.SHA1": hashlib.sha1(data).hexdigest()}
        return info, data

    members = [
        member("usr", tarfile.DIRTYPE),
        member(
            "usr/share/app", tarfile.DIRTYPE, uname="app", gname="app", uid=5, gid=5, mode=0o750
        ),
        member(
            "usr/share/app/data",
            tarfile.REGTYPE,
            b"payload",
            uname="app",
            gname="app",
            uid=5,
            gid=5,
        ),
        member("usr/share/app/hard", tarfile.LNKTYPE, linkname="usr/share/app/data"),
        member("usr/share/app/.keep_app", tarfile.REGTYPE),
        member("usr/bin/tool", tarfile.SYMTYPE, linkname="../share/app/data", mode=0o777),
        member(".hidden-top", tarfile.REGTYPE, b"x"),
        member("usr/../etc/evil", tarfile.REGTYPE, b"x"),
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
    data_stream = zlib.compress(buf.getvalue(), 9, wbits=31)
    ctl = io.BytesIO()
    with tarfile.open(fileobj=ctl, mode="w") as tar:
        text = b"# Generated by hand\npkgname = app\npkgver = 1.0-r0\narch = noarch\nsize = 7\n"
        text += b"depend = a\ndepend = b>=2\nnot a pair\nreplaces = old-app\ndatahash = 00\n"
        info = tarfile.TarInfo(".PKGINFO")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    control = zlib.compress(ctl.getvalue(), 9, wbits=31)
    apk = read_apk(control + data_stream, "app.apk")
    pkg = installed_package(apk, users={"app": 100}, groups={"app": 101})
    assert dict(pkg.fields)["D"] == "a b>=2" and dict(pkg.fields)["r"] == "old-app"
    assert [d.path for d in pkg.dirs] == ["usr", "usr/share/app", "usr/bin"]
    assert pkg.dirs[1].acl == "100:101:750"
    files = dict(pkg.files())
    assert set(files) == {"usr/share/app/data", "usr/share/app/hard", "usr/bin/tool"}
    assert files["usr/share/app/data"].acl == "100:101:644"
    assert (
        files["usr/share/app/hard"].checksum
        == files["usr/share/app/data"].checksum
        == q1(b"payload")
    )
    assert files["usr/bin/tool"].acl == "0:0:777"
    with pytest.raises(IntegrityError, match="datahash"):
        verify_datahash(apk)


@needs_formats
def test_upgraded_scripts_replace_the_old_ones_in_scripts_tar() -> None:
    # The apko root has alpine-baselayout 3.2.0-r22's scripts; upgrade them to r23's.
    path = FORMATS / "apk-package/alpine-3.16-aarch64/alpine-baselayout-3.2.0-r23.apk"
    apk = read_apk(path.read_bytes())
    new = script_entries(apk)
    assert [e.action for e in new] == ["pre-install", "post-install", "pre-upgrade", "post-upgrade"]
    assert {e.mtime for e in new} == {int(apk.info("builddate"))}
    old = read_scripts_tar(
        (FORMATS / "apk-scripts-tar/alpine-3.16-aarch64-apko-root/scripts.tar").read_bytes()
    )
    updated = replace_scripts(old, "alpine-baselayout", new)
    assert [(e.name, e.version) for e in updated] == [("busybox", "1.35.0-r17")] * 3 + [
        ("alpine-baselayout", "3.2.0-r23")
    ] * 4
    out = read_scripts_tar(serialize_scripts_tar(updated))
    assert [e.member_name for e in out][
        3
    ] == f"alpine-baselayout-3.2.0-r23.{apk.checksum}.pre-install"
    assert out[3].data == apk.scripts["pre-install"]
    assert replace_scripts(old, "busybox", []) == old[3:]
    assert replace_scripts(old, "new-pkg", new) == old + new
