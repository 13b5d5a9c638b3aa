"""rpm header blobs and .rpm files: the real samples (checked against the real `rpm -qp`),
packages built here by rpmbuild (epoch 0 vs none, config/doc/ghost files, owners, links),
and damaged blobs, which are ImageFormatError naming where, never another exception."""

from __future__ import annotations

import random
import struct
import subprocess
from pathlib import Path

import pytest

from ocipatch.distro.rpm.header import (
    FILE_CONFIG,
    FILE_NOREPLACE,
    Dependency,
    Package,
    parse_header,
    read_rpm,
    read_rpm_file,
)
from ocipatch.errors import ImageFormatError
from tests.rpm_formats import FORMATS, RPM, build_rpm, needs_formats, needs_rpm, needs_rpmbuild

HEADER_SAMPLE = FORMATS / "rpm-header-blob" / "claircore-package-header" / "package.header"
RPM_SAMPLES = sorted((FORMATS / "rpm-package").glob("*/*.rpm")) if FORMATS.is_dir() else []

FILE_QF = (
    "[%{FILENAMES}\\t%{FILEMODES}\\t%{FILESIZES}\\t%{FILEDIGESTS}\\t%{FILEUSERNAME}\\t"
    "%{FILEGROUPNAME}\\t%{FILEMTIMES}\\t%{FILEFLAGS}\\t%{FILELINKTOS}\\n]"
)


def rpm_qp(path: Path, qf: str) -> str:
    return subprocess.run(
        [str(RPM), "-qp", "--nosignature", "--nodigest", "--qf", qf, str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def files_as_rpm_prints(pkg: Package) -> str:
    return "".join(
        f"{f.path}\t{f.mode}\t{f.size}\t{f.digest}\t{f.user}\t{f.group}\t{f.mtime}\t"
        f"{f.flags}\t{f.linkto}\n"
        for f in pkg.files()
    )


def deps_as_rpm_prints(deps: list[Dependency]) -> str:
    return "".join(f"{d.name}\t{d.flags}\t{d.version}\n" for d in deps)


@needs_formats
def test_db_header_blob_sample() -> None:
    pkg = Package.from_header(parse_header(HEADER_SAMPLE.read_bytes(), "package.header"))
    assert (pkg.name, pkg.epoch, pkg.version, pkg.release, pkg.arch) == (
        "crypto-policies",
        None,
        "20210213",
        "1.git5c710c0.fc34",
        "noarch",
    )
    assert pkg.sourcerpm == "crypto-policies-20210213-1.git5c710c0.fc34.src.rpm"
    assert pkg.source_name == "crypto-policies"
    assert (pkg.vendor, pkg.license, pkg.digest_algo) == ("Fedora Project", "LGPLv2+", "sha256")
    assert pkg.installtime and pkg.buildtime and pkg.size > 0
    files = {f.path: f for f in pkg.files()}
    bind = files["/etc/crypto-policies/back-ends/bind.config"]
    assert bind.linkto == "/usr/share/crypto-policies/DEFAULT/bind.txt" and bind.is_config
    assert bind.is_ghost  # %ghost %config(noreplace) symlinks, switched by update-crypto-policies
    assert all(f.user == "root" and f.group == "root" for f in files.values())
    regular = [f for f in files.values() if f.mode & 0o170000 == 0o100000 and not f.is_ghost]
    assert regular and all(len(f.digest) == 64 for f in regular)
    assert Dependency("crypto-policies", 8, "20210213-1.git5c710c0.fc34") in pkg.provides()


@needs_formats
@needs_rpm
@pytest.mark.parametrize("path", RPM_SAMPLES, ids=lambda p: p.name)
def test_rpm_file_sample_equals_rpm_qp(path: Path) -> None:
    rpm = read_rpm_file(path)
    pkg = rpm.package
    nevra = rpm_qp(path, "%{NAME}|%|EPOCH?{%{EPOCH}}:{}||%{VERSION}|%{RELEASE}|%{ARCH}")
    assert (
        f"{pkg.name}|{'' if pkg.epoch is None else pkg.epoch}|{pkg.version}|{pkg.release}|{pkg.arch}"
        == nevra
    )
    assert (
        rpm_qp(path, "%{SOURCERPM}|%{SIZE}|%{BUILDTIME}")
        == f"{pkg.sourcerpm}|{pkg.size}|{pkg.buildtime}"
    )
    assert files_as_rpm_prints(pkg) == rpm_qp(path, FILE_QF)
    for kind in ("REQUIRE", "PROVIDE", "OBSOLETE", "CONFLICT"):
        qf = f"[%{{{kind}NAME}}\\t%{{{kind}FLAGS}}\\t%{{{kind}VERSION}}\\n]"
        deps = getattr(pkg, kind.lower() + "s")()
        assert deps_as_rpm_prints(deps) == rpm_qp(path, qf), kind
    assert rpm.payload_compressor in ("xz", "zstd", "gzip")
    assert rpm.payload_offset < path.stat().st_size


@needs_formats
def test_rpm_file_epoch_sample() -> None:
    archer = next(p for p in RPM_SAMPLES if p.name.startswith("Archer"))
    assert read_rpm_file(archer).package.epoch == 2


@needs_rpmbuild
def test_built_rpm_records(tmp_path: Path) -> None:
    zero = read_rpm_file(build_rpm(tmp_path, "t-zero", epoch=0)).package
    none = read_rpm_file(
        build_rpm(tmp_path, "t-none", version="1.0^git2", release="1.fc40")
    ).package
    assert zero.epoch == 0 and zero.evr == "0:1.0-1"  # epoch 0 is present...
    assert none.epoch is None and none.evr == "1.0^git2-1.fc40"  # ...and absent is not 0
    files = {f.path: f for f in zero.files()}
    conf = files["/etc/t-zero/t-zero.conf"]
    assert conf.flags & (FILE_CONFIG | FILE_NOREPLACE) == FILE_CONFIG | FILE_NOREPLACE
    assert (conf.user, conf.group, conf.mode) == ("root", "daemon", 0o100640)
    assert files["/usr/bin/t-zero"].mode == 0o100755
    assert files["/usr/bin/t-zero-link"].linkto == "t-zero"
    assert files["/usr/share/doc/t-zero/README"].is_doc
    assert files["/var/log/t-zero.log"].is_ghost
    assert files["/usr/share/t-zero/file-1-with-a-long-name"].size == 2
    assert str(Dependency("coreutils", 12, "8.0")) in [str(d) for d in zero.requires()]
    assert [str(d) for d in zero.obsoletes()] == ["t-zero-old < 1.0"]
    assert [str(d) for d in zero.conflicts()] == ["t-zero-bad"]
    assert "t-zero-virtual = 2.0-1" in [str(d) for d in zero.provides()]
    assert zero.vendor == "ocipatch tests" and zero.license == "MIT"


# --- damage ------------------------------------------------------------------------------------


def _tiny_blob() -> bytes:
    """NAME, VERSION, RELEASE and a file list, made by hand: small enough to cut everywhere."""
    entries = [
        (1000, 6, b"tiny\0"),
        (1001, 6, b"1.0\0"),
        (1002, 6, b"1\0"),
        (1117, 8, b"a\0b\0"),
        (1118, 8, b"/usr/\0"),
    ]
    index, data = b"", b""
    for tag, typ, value in entries:
        count = value.count(b"\0") if typ == 8 else 1
        index += struct.pack(">IIII", tag, typ, len(data), count)
        data += value
    index += struct.pack(">IIII", 1116, 4, len(data) + (-len(data) % 4), 2)
    data += b"\0" * (-len(data) % 4) + struct.pack(">II", 0, 0)
    return struct.pack(">II", len(entries) + 1, len(data)) + index + data


def test_hand_made_blob_reads() -> None:
    pkg = Package.from_header(parse_header(_tiny_blob()))
    assert pkg.nevra == "tiny-1.0-1" and [f.path for f in pkg.files()] == ["/usr/a", "/usr/b"]


def test_every_truncation_is_image_format_error() -> None:
    blob = _tiny_blob()
    for cut in range(len(blob)):
        with pytest.raises(ImageFormatError, match=r"blob\.bin"):
            Package.from_header(parse_header(blob[:cut], "blob.bin")).files()


def test_random_damage_is_image_format_error_or_reads() -> None:
    rng = random.Random(11)
    blobs = [_tiny_blob()]
    if HEADER_SAMPLE.exists():
        blobs.append(HEADER_SAMPLE.read_bytes())
    for blob in blobs:
        for _ in range(300):
            broken = bytearray(blob)
            for _ in range(rng.randint(1, 4)):
                broken[rng.randrange(min(len(broken), 8 + 16 * 80))] = rng.randrange(256)
            try:
                pkg = Package.from_header(parse_header(bytes(broken), "blob.bin"))
                pkg.files(), pkg.requires(), pkg.provides()
            except ImageFormatError as e:
                assert "blob.bin" in str(e)


@pytest.mark.parametrize(
    ("change", "what"),
    [
        (lambda b: b[:4] + struct.pack(">I", 10**9) + b[8:], "implausible"),
        (lambda b: struct.pack(">I", 0) + b[4:], "implausible"),
        (lambda b: b[: 8 + 4] + struct.pack(">I", 42) + b[8 + 8 :], "unknown data type"),
        (lambda b: b[: 8 + 8] + struct.pack(">I", 99999) + b[8 + 12 :], "outside the data"),
    ],
)
def test_damage_names_what(change: object, what: str) -> None:
    with pytest.raises(ImageFormatError, match=what):
        parse_header(change(_tiny_blob()), "blob.bin")  # type: ignore[operator]


def test_missing_name_is_not_a_package() -> None:
    blob = _tiny_blob().replace(struct.pack(">I", 1000), struct.pack(">I", 5000), 1)
    with pytest.raises(ImageFormatError, match="not a package header"):
        Package.from_header(parse_header(blob))


def test_bad_rpm_files() -> None:
    with pytest.raises(ImageFormatError, match="no lead magic"):
        read_rpm(b"\0" * 200, "x.rpm")
    lead = b"\xed\xab\xee\xdb" + b"\0" * 92
    with pytest.raises(ImageFormatError, match="header magic"):
        read_rpm(lead + b"\0" * 64, "x.rpm")
    sig = b"\x8e\xad\xe8\x01\0\0\0\0" + _tiny_blob()
    with pytest.raises(ImageFormatError, match=r"x\.rpm header"):
        read_rpm(lead + sig + b"\0" * (-len(sig) % 8) + b"junk", "x.rpm")


@needs_formats
def test_truncated_rpm_file_is_image_format_error() -> None:
    data = RPM_SAMPLES[0].read_bytes()
    rpm = read_rpm(data)
    for cut in (50, 100, 200, rpm.payload_offset - 100):
        with pytest.raises(ImageFormatError):
            read_rpm(data[:cut])
