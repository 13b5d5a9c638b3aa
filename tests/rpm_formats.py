"""Where the real rpm sample files are (../shared/formats, never copied into this repository),
and small rpms and rpmdbs made at test time with the real tools (rpmbuild, rpm, db5.3_load)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout, or two levels up from a worktree (/work/wt/NAME).
FORMATS = next(
    (p / "shared" / "formats" for p in ROOT.parents[:2] if (p / "shared" / "formats").is_dir()),
    ROOT.parent / "shared" / "formats",
)
needs_formats = pytest.mark.skipif(not FORMATS.is_dir(), reason="shared format samples not present")
RPM, RPMBUILD = shutil.which("rpm"), shutil.which("rpmbuild")
DB_LOAD, DB_DUMP = shutil.which("db5.3_load"), shutil.which("db5.3_dump")
needs_rpm = pytest.mark.skipif(RPM is None, reason="rpm not installed")
needs_rpmbuild = pytest.mark.skipif(
    RPMBUILD is None or RPM is None, reason="rpmbuild not installed"
)
needs_db_load = pytest.mark.skipif(
    DB_LOAD is None or DB_DUMP is None, reason="db5.3-util not installed"
)

NEVRA = tuple[str, int | None, str, str, str | None]


def sample_dirs(kind: str) -> list[Path]:
    return sorted(p for p in (FORMATS / kind).glob("*") if p.is_dir()) if FORMATS.is_dir() else []


def expected(path: Path) -> list[NEVRA]:
    """name, epoch, version, release, arch of an expected.json / rpm-qa.json, gpg-pubkey apart."""
    doc = json.loads(path.read_text())
    return [
        (p["name"], p["epoch"], p["version"], p["release"], p["arch"])
        for p in doc["packages"]
        if p["name"] != "gpg-pubkey"
    ]


def is_complete(path: Path) -> bool:
    return bool(json.loads(path.read_text()).get("complete", True))


SPEC = """\
Name: {name}
{epoch}Version: {version}
Release: {release}
Summary: test package {name}
License: MIT
Vendor: ocipatch tests
BuildArch: {arch}
Requires: /bin/sh
Requires: coreutils >= 8.0
Provides: {name}-virtual = 2.0-1
Obsoletes: {name}-old < 1.0
Conflicts: {name}-bad

%description
A package made by the tests.

%install
mkdir -p %{{buildroot}}/etc/{name} %{{buildroot}}/usr/bin %{{buildroot}}/usr/share/doc/{name}
mkdir -p %{{buildroot}}/usr/share/{name}
echo 'key = value' > %{{buildroot}}/etc/{name}/{name}.conf
printf '#!/bin/sh\\necho hi\\n' > %{{buildroot}}/usr/bin/{name}
ln -s {name} %{{buildroot}}/usr/bin/{name}-link
echo readme > %{{buildroot}}/usr/share/doc/{name}/README
for i in $(seq 1 {nfiles}); do echo "$i" > %{{buildroot}}/usr/share/{name}/file-$i-with-a-long-name; done

%files
%attr(0640,root,daemon) %config(noreplace) /etc/{name}/{name}.conf
%attr(0755,root,root) /usr/bin/{name}
/usr/bin/{name}-link
%doc /usr/share/doc/{name}/README
%ghost /var/log/{name}.log
/usr/share/{name}

%post
true
"""


def build_rpm(
    top: Path,
    name: str,
    version: str = "1.0",
    release: str = "1",
    epoch: int | None = None,
    nfiles: int = 2,
    arch: str = "noarch",
) -> Path:
    """An .rpm built by rpmbuild under `top` (epoch absent when None)."""
    spec = top / f"{name}.spec"
    spec.write_text(
        SPEC.format(
            name=name,
            version=version,
            release=release,
            epoch=f"Epoch: {epoch}\n" if epoch is not None else "",
            nfiles=nfiles,
            arch=arch,
        )
    )
    subprocess.run(
        [str(RPMBUILD), "-bb", "--quiet", "--define", f"_topdir {top}", str(spec)],
        check=True,
        capture_output=True,
    )
    return next((top / "RPMS").rglob(f"{name}-{version}-{release}.*.rpm"))


def install_justdb(root: Path, rpms: list[Path]) -> Path:
    """A real rpm SQLite db: `rpm --root root -i --justdb`; returns the db file."""
    dbpath = "/usr/lib/sysimage/rpm"
    base = [str(RPM), "--root", str(root), "--dbpath", dbpath, "--define", "_db_backend sqlite"]
    subprocess.run([*base, "--initdb"], check=True, capture_output=True)
    subprocess.run(
        [*base, "-i", "--justdb", "--nodeps", "--noscripts", "--nosignature", *map(str, rpms)],
        check=True,
        capture_output=True,
    )
    return root / dbpath.lstrip("/") / "rpmdb.sqlite"


def rpm_qa(dbdir: Path, backend: str) -> list[NEVRA]:
    """The real rpm's -qa over a db directory (the oracle)."""
    qf = "%{NAME}\\t%|EPOCH?{%{EPOCH}}:{}|\\t%{VERSION}\\t%{RELEASE}\\t%|ARCH?{%{ARCH}}:{}|\\n"
    out = subprocess.run(
        [str(RPM), "--dbpath", str(dbdir), "--define", f"_db_backend {backend}", "-qa", "--qf", qf],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = []
    for line in out.splitlines():
        name, epoch, version, release, arch = line.split("\t")
        if name != "gpg-pubkey":
            rows.append((name, int(epoch) if epoch else None, version, release, arch or None))
    return rows


def bdb_from_blobs(
    target: Path,
    blobs: list[tuple[int, bytes]],
    order: str = "<",
    pagesize: int = 4096,
    ffactor: int = 0,
    chksum: bool = False,
) -> Path:
    """A BerkeleyDB hash `Packages` written by the real Berkeley DB (db_load), as rpm's bdb
    backend lays it out: 4-byte record number keys in the db's byte order, header blobs."""
    lines = ["VERSION=3", "format=bytevalue", "type=hash", f"db_pagesize={pagesize}"]
    if ffactor:  # items per bucket: 1 makes a bucket (and a spares entry) per package
        lines.append(f"h_ffactor={ffactor}")
    if chksum:  # page checksums: 6 more bytes before each page's items
        lines.append("chksum=1")
    lines += ["HEADER=END"]
    for hnum, blob in blobs:
        lines += [" " + struct.pack(order + "I", hnum).hex(), " " + blob.hex()]
    lines += ["DATA=END", ""]
    lorder = "1234" if order == "<" else "4321"
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(DB_LOAD), "-c", f"db_lorder={lorder}", str(target)],
        input="\n".join(lines).encode(),
        check=True,
        capture_output=True,
    )
    return target


def bdb_dump(path: Path) -> list[tuple[bytes, bytes]]:
    """Every key/value pair of a BerkeleyDB file, as the real Berkeley DB (db_dump) reads it."""
    out = subprocess.run([str(DB_DUMP), str(path)], check=True, capture_output=True, text=True)
    body = out.stdout.split("HEADER=END\n", 1)[1].split("DATA=END", 1)[0].split()
    return [
        (bytes.fromhex(k), bytes.fromhex(v)) for k, v in zip(body[::2], body[1::2], strict=True)
    ]
