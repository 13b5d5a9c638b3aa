"""Fuzzing what an image says about its OS: /etc/os-release, dpkg's status file and distroless
status.d stanzas, through every reader (the merged-view reader, the resolver's rootfs reader and
the distroless StatusD). Property: a value or an OcipatchError, never a crash."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from ocipatch.distro.deb.db import STATUS, STATUS_D, read_packages
from ocipatch.distro.deb.repos.resolve import installed_from_rootfs
from ocipatch.distro.deb.tooling import StatusD
from ocipatch.distro.detect import OsRelease, parse_os_release, read_os_release
from ocipatch.errors import OcipatchError
from ocipatch.oci.types import Platform
from tests.fuzz.budget import counted, fuzz_settings, mutated_bytes, mutated_text

OS_RELEASE = [
    'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n'
    'VERSION="12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\n'
    'HOME_URL="https://www.debian.org/"\n',
    'NAME="Ubuntu"\nVERSION="22.04.4 LTS (Jammy Jellyfish)"\nID=ubuntu\nID_LIKE=debian\n'
    "VERSION_ID='22.04'\nVERSION_CODENAME=jammy\n",
    "NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=3.20.1\nPRETTY_NAME='Alpine Linux v3.20'\n",
    'PRETTY_NAME="Distroless"\nNAME="Debian GNU/Linux"\nID="debian"\nVERSION_ID="12"\n'
    'VERSION="Debian GNU/Linux 12 (bookworm)"\n# comment\n\nID_LIKE="rhel fedora"\n',
    'ID="opensuse-leap"\nVERSION_ID="15.5"\nX=$(rm -rf /)\nY="unterminated\n',
]

STATUS_SEED = """\
Package: libc6
Status: install ok installed
Priority: optional
Section: libs
Installed-Size: 12988
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: amd64
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u4
Replaces: libc6-amd64
Depends: libgcc-s1
Recommends: libidn2-0 (>= 2.0.5~)
Breaks: aide (<< 0.17.3-4+b3), busybox (<< 1.30.1-6), fakechroot (<< 2.19-3.5)
Description: GNU C Library: Shared libraries
 Contains the standard libraries that are used by nearly all programs on
 the system.

Package: libssl3
Status: hold ok installed
Architecture: amd64
Multi-Arch: same
Source: openssl (3.0.11-1~deb12u2)
Version: 3.0.11-1~deb12u2
Depends: libc6 (>= 2.34)
Pre-Depends: dpkg (>= 1:1.21)
Provides: libssl (= 3.0.11), ssl-lib
Conflicts: libssl1.1 [i386] | oldssl:any (<< 1)
Description: Secure Sockets Layer toolkit - shared libraries

Package: base-files
Status: deinstall ok config-files
Architecture: amd64
Version: 1:12.4+deb12u5

Package: tzdata
Status: install ok installed
Architecture: all
Version: 2024a-0+deb12u1
Depends: debconf (>= 0.5) | debconf-2.0
"""

STATUS_D_SEED = """\
Package: base-files
Version: 12.4+deb12u5
Architecture: amd64
Depends: awk
Provides: base
Maintainer: Santiago Vila <sanvila@debian.org>
Description: Debian base system miscellaneous files
"""

TREE = Path(tempfile.mkdtemp(prefix="ocipatch-fuzz-dpkg-"))


class DictView:
    """A FileView over a dict of files (what MergedView gives the adapters)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def exists(self, path: str) -> bool:
        return path in self.files or any(p.startswith(path + "/") for p in self.files)

    def read_file(self, path: str) -> bytes | None:
        return self.files.get(path)

    def listdir(self, path: str) -> list[str]:
        return sorted(
            {p[len(path) + 1 :].split("/")[0] for p in self.files if p.startswith(path + "/")}
        )

    def read_files(self, paths: list[str]) -> dict[str, bytes]:
        return {p: self.files[p] for p in paths if p in self.files}


@fuzz_settings()
@given(mutated_text(OS_RELEASE) | st.text(max_size=80))
@counted("os-release (text)")
def test_parse_os_release(text: str) -> None:
    assert isinstance(parse_os_release(text), OsRelease)


@fuzz_settings()
@given(mutated_bytes([t.encode() for t in OS_RELEASE]) | st.binary(max_size=80))
@counted("os-release (bytes)")
def test_read_os_release(data: bytes) -> None:
    found = read_os_release(DictView({"etc/os-release": data}))
    assert isinstance(found, OsRelease)


def _write_tree(status: bytes | None, stanzas: list[bytes]) -> Path:
    shutil.rmtree(TREE, ignore_errors=True)
    d = TREE / STATUS_D
    d.mkdir(parents=True)
    if status is not None:
        (TREE / STATUS).write_bytes(status)
    for i, blob in enumerate(stanzas):
        (d / f"pkg{i}").write_bytes(blob)
        (d / f"pkg{i}.md5sums").write_bytes(b"d41d8cd98f00b204e9800998ecf8427e  usr/bin/x\n")
    return TREE


dpkg_bytes = mutated_bytes([STATUS_SEED.encode(), STATUS_D_SEED.encode()]) | st.binary(max_size=64)


@fuzz_settings()
@given(st.none() | dpkg_bytes, st.lists(dpkg_bytes, max_size=3))
# A \v in a Description: str.splitlines() broke the line there (python-debian: ValueError).
@example(None, [b"Package: a\nVersion: 1\nDescription: x\n a\x0bb\n c\rd\n"])
# Versions python-debian cannot order, installed or in a relation (compare_deb: ValueError).
@example(None, [b"Package: a\nVersion: !1\n"])
@example(None, [b"Package: a\nVersion: 1\nProvides: c (= 1 1)\n"])
@example(b"Package: a\nStatus: install ok installed\nVersion: 1\nDepends: b (>= !2)\n", [])
# A relation python-debian cannot parse comes back as raw text in place of a name.
@example(None, [b"Package: a\nVersion: 1\nDepends: c (>= 1 1)\n"])
@counted("dpkg status and status.d")
def test_dpkg_database(status: bytes | None, stanzas: list[bytes]) -> None:
    check_dpkg(status, stanzas)


def check_dpkg(status: bytes | None, stanzas: list[bytes]) -> None:
    files = {f"{STATUS_D}/pkg{i}": b for i, b in enumerate(stanzas)}
    if status is not None:
        files[STATUS] = status
    try:
        read_packages(DictView(files))
        root = _write_tree(status, stanzas)
        installed_from_rootfs(root)
        sd = StatusD(root)
        sd.packages()
        sd.holds()
        sd.synthesize(sd.arch(Platform("linux", "arm", "v7")))
        for s in sd.stanzas():
            sd.md5sums_of(s)
    except OcipatchError:
        pass
