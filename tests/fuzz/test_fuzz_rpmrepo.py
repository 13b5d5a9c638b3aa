"""Fuzzing what an rpm repository and the image's .repo files say: repomd.xml, primary.xml
(plain and compressed), yum/zypper .repo files, and downloaded .rpm bytes checked for their
digests.

Property: a value or an OcipatchError (IntegrityError, ImageFormatError, UnsupportedError)."""

from __future__ import annotations

import contextlib
import gzip
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from ocipatch.distro.rpm.repomd import decompress, parse_primary, parse_repomd
from ocipatch.distro.rpm.repos import image_repos, image_vars
from ocipatch.distro.rpm.verify import verify_rpm
from ocipatch.errors import OcipatchError
from tests.fuzz.budget import counted, fuzz_settings, mutated_bytes, mutated_text
from tests.rpm_formats import FORMATS

SHA = "0123456789abcdef" * 4
REPOMD = f"""<?xml version="1.0" encoding="UTF-8"?>
<repomd xmlns="http://linux.duke.edu/metadata/repo" xmlns:rpm="http://linux.duke.edu/metadata/rpm">
 <revision>1700000000</revision>
 <data type="primary">
  <checksum type="sha256">{SHA}</checksum>
  <open-checksum type="sha256">{SHA}</open-checksum>
  <location href="repodata/{SHA}-primary.xml.zst"/>
  <size>782</size>
 </data>
</repomd>
""".encode()
PRIMARY = f"""<?xml version="1.0" encoding="UTF-8"?>
<metadata xmlns="http://linux.duke.edu/metadata/common"
 xmlns:rpm="http://linux.duke.edu/metadata/rpm" packages="1">
<package type="rpm">
  <name>hello</name><arch>x86_64</arch>
  <version epoch="1" ver="2.10" rel="3.el9"/>
  <checksum type="sha256" pkgid="YES">{SHA}</checksum>
  <size package="2845" installed="0" archive="404"/>
  <location xml:base="http://m.invalid/" href="Packages/h/hello-2.10-3.el9.x86_64.rpm"/>
  <format>
    <rpm:sourcerpm>hello-2.10-3.el9.src.rpm</rpm:sourcerpm>
    <rpm:provides><rpm:entry name="hello" flags="EQ" epoch="1" ver="2.10" rel="3.el9"/>
    </rpm:provides>
    <rpm:requires><rpm:entry name="libc.so.6()(64bit)"/><rpm:entry name="/bin/sh" pre="1"/>
    <rpm:entry name="bash" flags="GE" epoch="0" ver="5"/></rpm:requires>
    <rpm:obsoletes><rpm:entry name="hello-old" flags="LT" ver="2"/></rpm:obsoletes>
    <file>/usr/bin/hello</file>
  </format>
</package>
</metadata>
""".encode()
REPO_FILE = """[baseos]
name=BaseOS $releasever
baseurl=http://m.invalid/$releasever/BaseOS/$basearch/os/
        http://n.invalid/${contentdir}/x/
metalink=https://mirrors.invalid/metalink?repo=baseos-$releasever&arch=$basearch
enabled=1
gpgcheck=1
repo_gpgcheck=0
gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-x
type=rpm-md
"""


def _rpm_seeds() -> list[bytes]:
    found = sorted((FORMATS / "rpm-package").rglob("*.rpm")) if FORMATS.is_dir() else []
    return [p.read_bytes() for p in found[:3] if p.stat().st_size < 1 << 20]


@fuzz_settings()
@given(mutated_bytes([REPOMD]) | st.binary(max_size=60))
@counted("repomd.xml")
def test_repomd(data: bytes) -> None:
    with contextlib.suppress(OcipatchError):
        parse_repomd(data, "repomd.xml")


@fuzz_settings()
@given(mutated_bytes([PRIMARY, gzip.compress(PRIMARY)]) | st.binary(max_size=60))
@counted("primary.xml")
def test_primary(data: bytes) -> None:
    with contextlib.suppress(OcipatchError):
        list(parse_primary(decompress(data, "primary.xml", "p"), "p"))


@fuzz_settings(0.5)
@given(mutated_text([REPO_FILE]) | st.text(max_size=60))
@counted(".repo files")
def test_repo_files(text: str) -> None:
    with tempfile.TemporaryDirectory() as t:
        root = Path(t)
        for d in ("etc/yum.repos.d", "etc/zypp/repos.d"):
            (root / d).mkdir(parents=True)
            (root / d / "x.repo").write_text(text, errors="surrogatepass")
        with contextlib.suppress(OcipatchError):
            image_repos(root, image_vars(root, "x86_64"), [("http://m.invalid", "file:///m")])


RPMS = _rpm_seeds()


@fuzz_settings(0.5)
@given(mutated_bytes(RPMS or [b"\xed\xab\xee\xdb" + bytes(200)]) | st.binary(max_size=60))
@counted(".rpm digests")
def test_rpm_digests(data: bytes) -> None:
    with contextlib.suppress(OcipatchError):
        verify_rpm(data, "p.rpm", None)
