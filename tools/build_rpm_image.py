"""RPM-family test images (OCI layouts) and their signed repositories.

No RPM-distro archive is reachable here, so the packages are built with Debian's rpmbuild
(tools/rpmrepo.py), signed with a throwaway OpenPGP key, and the rpmdb is written by Debian's
real rpm: `rpm --root ROOT --initdb`, `rpm --root ROOT --import KEY`, then
`rpm --root ROOT -i --justdb --nodeps --noscripts` of the release-1 packages; the files come
from the packages' payloads (`rpm2archive`). The only real binary is /usr/bin/busybox, Debian's
busybox-static; libraries are placeholders. A real dnf, microdnf or zypper inside an image is not
possible (their Python/C stacks would need an RPM distro archive): where an image "has" one,
/usr/bin/dnf (or zypper) is a stub that exits 99, owned by a package of that name.

Kinds:
- `rocky`: Rocky Linux 9.3 (ID=rocky), rpmdb.sqlite at /var/lib/rpm, busybox /bin/sh, dnf stub,
  /etc/yum.repos.d/rocky.repo (gpgcheck=1, repo_gpgcheck=1, gpgkey file:///etc/pki/rpm-gpg/...).
- `fedora`: Fedora 40, rpmdb.sqlite at /usr/lib/sysimage/rpm, /var/lib/rpm a symlink to it.
- `ubi-micro`: RHEL 9.4 (ID=rhel) ubi-micro shaped: rpmdb only, no shell, no package manager.
- `azurelinux`: Azure Linux 3.0 distroless shaped: no rpmdb, only
  /var/lib/rpmmanifest/container-manifest-1 and -2 (the format of `rpm -qa --qf ...`).
- `sles`: SLES 15 SP6 shaped (ID=sles), rpmdb.sqlite at /usr/lib/sysimage/rpm (Debian's rpm
  cannot write SUSE's NDB `Packages.db`), /etc/zypp/repos.d/SLE_BCI.repo, zypper stub.
- `rocky-multilayer`: the `rocky` layer, then one with zlib's files, the rewritten
  rpmdb.sqlite and a whiteout of /etc/hostname (`dnf install zlib && rm /etc/hostname`).
- `centos7`: CentOS 7 shaped, BerkeleyDB rpmdb in /var/lib/rpm: `Packages` (hash) and the index
  btrees (Name, Basenames, Providename, ...). Debian's rpm has only the read-only bdb backend,
  so the SQLite db's tables are written with db5.3_load (see sqlite_to_bdb).

Each kind has its own repository (`https://rpm.invalid/<path>`, see REPO_PATHS; tests map it
with `--repo-mirror https://rpm.invalid=http://127.0.0.1:PORT` or to file://) holding release 1
of every package and release 2 of some: openssl-libs (epoch 1) with a new dependency on
libz.so.1()(64bit) that only zlib provides, libcurl obsoleting libcurl-minimal, libxml2 with an
epoch bump (none -> 1), ca-certificates and tzdata (noarch). Everything is signed by one key
(RPM-GPG-KEY-test), repomd.xml too (repomd.xml.asc). Results are cached under
~/.cache/ocipatch-tests keyed by the inputs (this file, rpmrepo.py, the busybox .deb).

    python -m tools.build_rpm_image rocky OUT_LAYOUT[:TAG] [--report report.json]
    python -m tools.build_rpm_image repo OUT_DIR        # copy of the repository tree + key
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ocipatch.oci.digest import sha256_bytes
from tools.apkrepo import gz
from tools.build_apk_image import Layer, busybox_deb, load_busybox, write_layout
from tools.debian_rootfs import CACHE_DIR
from tools.rpmrepo import (
    BUILDTIME,
    BuiltRpm,
    Compress,
    GpgKey,
    Payload,
    RpmFile,
    RpmRepo,
    RpmSpec,
    build_repo,
)

Kind = Literal[
    "rocky", "fedora", "ubi-micro", "azurelinux", "sles", "centos7", "rocky-multilayer"
]  # fmt: skip
KINDS: tuple[Kind, ...] = (
    "rocky", "fedora", "ubi-micro", "azurelinux", "sles", "centos7", "rocky-multilayer"
)  # fmt: skip
# Kinds made of another kind's layer plus an upper one (same distro and repository).
DERIVED: dict[Kind, Kind] = {"rocky-multilayer": "rocky"}
MIRROR_BASE = "https://rpm.invalid"
KEY_NAME = "RPM-GPG-KEY-test"
FORMAT_VERSION = "rpm-fixtures-1"
STUB = "#!/bin/sh\necho '{0}: test fixture stub, {0} is not in this image' >&2\nexit 99\n"
# Ids the fixtures' /etc/passwd and /etc/group give the names packages use.
UIDS = {"root": 0, "bin": 1, "daemon": 2, "nobody": 65534}
GIDS = {"root": 0, "bin": 1, "daemon": 2, "tty": 5, "nobody": 65534}


class RpmImageError(RuntimeError):
    """A fixture cannot be built here (a tool or the busybox-static .deb is missing)."""


@dataclass(frozen=True)
class Distro:
    """What differs between the kinds."""

    kind: Kind
    os_id: str
    version_id: str
    name: str
    dist: str  # release suffix: el9, fc40, azl3, ...
    repo_path: str  # under MIRROR_BASE, `$basearch` left for the .repo file
    release_pkg: str
    dbpath: str  # "" for the rpmmanifest-only kind
    family: str  # trivy's Metadata.OS.Family / Results[].Type
    shell: bool
    pkg_manager: str  # "" = none; else the stub command (dnf, zypper, yum)
    repo_style: Literal["yum", "zypp", ""]
    vendor: str
    compress: Compress = "gz"
    payload: Payload = "zstd"
    key_dir: str = "/etc/pki/rpm-gpg"
    purl_namespace: str = ""  # trivy's: the family, but "suse" for SLES
    os_name: str = ""  # trivy's Metadata.OS.Name when not VERSION_ID (CentOS: centos-release)
    extra_release_files: tuple[tuple[str, str], ...] = ()


DISTROS: dict[Kind, Distro] = {
    d.kind: d
    for d in (
        Distro("rocky", "rocky", "9.3", "Rocky Linux", "el9", "rocky/9/BaseOS/$basearch/os",
               "rocky-release", "/var/lib/rpm", "rocky", True, "dnf", "yum",
               "Rocky Enterprise Software Foundation", "xz", "xz",
               extra_release_files=(("/etc/rocky-release", "Rocky Linux release 9.3 (Blue Onyx)\n"),
                                    ("/etc/redhat-release", "Rocky Linux release 9.3 (Blue Onyx)\n"))),
        Distro("fedora", "fedora", "40", "Fedora Linux", "fc40",
               "fedora/releases/40/Everything/$basearch/os", "fedora-release",
               "/usr/lib/sysimage/rpm", "fedora", True, "dnf", "yum", "Fedora Project",
               "zstd", "zstd",
               extra_release_files=(("/etc/fedora-release", "Fedora release 40 (Forty)\n"),)),
        Distro("ubi-micro", "rhel", "9.4", "Red Hat Enterprise Linux", "el9",
               "ubi9/9/$basearch/baseos/os", "redhat-release", "/var/lib/rpm", "redhat",
               False, "", "yum", "Red Hat, Inc.", "gz", "xz",
               extra_release_files=(("/etc/redhat-release",
                                     "Red Hat Enterprise Linux release 9.4 (Plow)\n"),)),
        Distro("azurelinux", "azurelinux", "3.0", "Microsoft Azure Linux", "azl3",
               "azurelinux/3.0/prod/base/$basearch", "azurelinux-release", "", "azurelinux",
               False, "", "", "Microsoft Corporation", "gz", "gz",
               extra_release_files=(("/etc/azurelinux-release",
                                     "Microsoft Azure Linux 3.0\n"),)),
        Distro("sles", "sles", "15.6", "SLES", "150600.1.1",
               "suse/SLE_BCI/SLE-15-SP6/$basearch/product", "sles-release",
               "/usr/lib/sysimage/rpm", "sles", True, "zypper", "zypp",
               "SUSE LLC <https://www.suse.com/>", "xz", "xz",
               key_dir="/usr/lib/rpm/gnupg/keys", purl_namespace="suse",
               extra_release_files=(("/etc/SUSE-brand", "SLE\nVERSION = 15\n"),)),
        Distro("centos7", "centos", "7", "CentOS Linux", "el7",
               "centos/7/os/$basearch", "centos-release", "/var/lib/rpm", "centos", True,
               "yum", "yum", "CentOS", "gz", "xz", os_name="7.9.2009",
               extra_release_files=(("/etc/centos-release", "CentOS Linux release 7.9.2009 (Core)\n"),
                                    ("/etc/redhat-release", "CentOS Linux release 7.9.2009 (Core)\n"))),
    )
}  # fmt: skip
DISTROS.update({k: DISTROS[base] for k, base in DERIVED.items()})
ARCH = "x86_64"


# --- package sets -------------------------------------------------------------------------------


def _lib(path: str, text: str) -> RpmFile:
    # Placeholder library contents: nothing in the image runs them.
    return RpmFile(path, f"\x7fELF placeholder: {text}\n", mode=0o755)


def _bundle(version: str) -> str:
    return f"# ca-certificates {version}\n-----BEGIN CERTIFICATE-----\nMIIB{version}\n" \
           "-----END CERTIFICATE-----\n"  # fmt: skip


def os_release(d: Distro) -> str:
    return (
        f'NAME="{d.name}"\nVERSION="{d.version_id}"\nID="{d.os_id}"\n'
        f'VERSION_ID="{d.version_id}"\nPRETTY_NAME="{d.name} {d.version_id}"\n'
        'HOME_URL="https://ocipatch.invalid/"\n'
    )


def repo_file(d: Distro, key_path: str) -> tuple[str, str]:
    """(path, text) of the image's repository definition, or ("", "") for none."""
    base = f"{MIRROR_BASE}/{d.repo_path}/"
    body = (f"name={d.name} {d.version_id} - test\nbaseurl={base}\nenabled=1\n"
            f"gpgcheck=1\nrepo_gpgcheck=1\ngpgkey=file://{key_path}\n")  # fmt: skip
    if d.repo_style == "yum":
        section = {"rocky": "baseos", "fedora": "fedora", "ubi-micro": "ubi-9-baseos-rpms",
                   "centos7": "base"}[d.kind]  # fmt: skip
        return f"/etc/yum.repos.d/{d.kind}.repo", f"[{section}]\n{body}"
    if d.repo_style == "zypp":
        return "/etc/zypp/repos.d/SLE_BCI.repo", (
            f"[SLE_BCI]\nname=SLE BCI\nenabled=1\nautorefresh=0\nbaseurl={base}\n"
            f"type=rpm-md\ngpgcheck=1\nrepo_gpgcheck=1\npkg_gpgcheck=1\ngpgkey=file://{key_path}\n"
        )  # fmt: skip
    return "", ""


def _ver(d: Distro, rel: str) -> str:
    return f"{rel}.{d.dist}"


def specs(d: Distro, key_text: str, busybox: bytes, release: int) -> list[RpmSpec]:
    """The packages of `d`: release 1 (installed, also in the repository) or release 2 (the
    fixed versions, only in the repository)."""
    r2 = release == 2
    common: dict[str, Any] = {"vendor": d.vendor, "arch": ARCH}
    noarch = {**common, "arch": "noarch"}
    libc = "libc.so.6()(64bit)"
    ssl_rel = _ver(d, "25") if r2 else _ver(d, "24")
    ssl_files = [
        _lib("/usr/lib64/libcrypto.so.3", f"libcrypto {ssl_rel}"),
        _lib("/usr/lib64/libssl.so.3", f"libssl {ssl_rel}"),
        RpmFile("/etc/pki/tls/openssl.cnf", "# openssl.cnf\n" + ("[p]\n" if r2 else ""),
                config="noreplace"),
    ]  # fmt: skip
    if not r2:  # dropped in release 2: a patch must delete it
        ssl_files.append(_lib("/usr/lib64/engines-3/afalg.so", "afalg"))
    ca_ver = "2024.2.69_v8.0.303" if r2 else "2023.2.60_v7.0.306"
    tz_ver = "2024b" if r2 else "2024a"
    curl_rel = _ver(d, "30") if r2 else _ver(d, "29")
    out = [
        RpmSpec("openssl-libs", "3.0.7", ssl_rel, epoch=1, **common, source="openssl",
                files=ssl_files, requires=[libc, *(["libz.so.1()(64bit)"] if r2 else [])],
                provides=["libcrypto.so.3()(64bit)", "libssl.so.3()(64bit)",
                          "libcrypto.so.3(OPENSSL_3.0.0)(64bit)"],
                scripts={"post": "-p /sbin/ldconfig", "postun": "-p /sbin/ldconfig"}),
        RpmSpec("ca-certificates", ca_ver, _ver(d, "1.0"), **noarch,
                files=[RpmFile("/etc/pki/tls/certs/ca-bundle.crt", _bundle(ca_ver),
                               config="noreplace")],
                requires=["/bin/sh"] if d.shell else [],
                scripts={"post": "echo ca-certificates post >> /var/log/rpm-scripts.log"}
                if d.shell else {}),
        RpmSpec("tzdata", tz_ver, _ver(d, "1"), **noarch,
                files=[RpmFile("/usr/share/zoneinfo/UTC", f"TZif2 UTC {tz_ver}\n")]),
        RpmSpec("libxml2", "2.9.13", _ver(d, "6" if r2 else "5"), epoch=1 if r2 else None,
                **common, files=[_lib("/usr/lib64/libxml2.so.2", "libxml2")],
                requires=[libc], provides=["libxml2.so.2()(64bit)"]),
    ]  # fmt: skip
    if r2:
        out.append(RpmSpec("libcurl", "7.76.1", curl_rel, **common, source="curl",
                           files=[_lib("/usr/lib64/libcurl.so.4", f"libcurl {curl_rel}")],
                           requires=[libc, "libcrypto.so.3()(64bit)"],
                           provides=["libcurl.so.4()(64bit)", f"libcurl-minimal = {curl_rel}"],
                           obsoletes=[f"libcurl-minimal < {curl_rel}"]))  # fmt: skip
        return out
    out.append(RpmSpec("libcurl-minimal", "7.76.1", curl_rel, **common, source="curl",
                       files=[_lib("/usr/lib64/libcurl.so.4", f"libcurl-minimal {curl_rel}")],
                       requires=[libc, "libcrypto.so.3()(64bit)"],
                       provides=["libcurl.so.4()(64bit)"]))  # fmt: skip
    return out + base_specs(d, key_text, busybox)


def base_specs(d: Distro, key_text: str, busybox: bytes) -> list[RpmSpec]:
    """Packages at one version (installed, also in the repository)."""
    common: dict[str, Any] = {"vendor": d.vendor, "arch": ARCH}
    noarch = {**common, "arch": "noarch"}
    key_path = f"{d.key_dir}/{KEY_NAME}"
    repo_path, repo_text = repo_file(d, key_path)
    release_files = [
        RpmFile("/usr/lib/os-release", os_release(d)),
        RpmFile("/etc/os-release", kind="symlink", target="../usr/lib/os-release"),
        RpmFile(key_path, key_text),
        *[RpmFile(p, t, config="noreplace") for p, t in d.extra_release_files],
    ]
    if repo_path:
        release_files.append(RpmFile(repo_path, repo_text, config="noreplace"))
    fs_files = [
        RpmFile("/bin", kind="symlink", target="usr/bin"),
        RpmFile("/sbin", kind="symlink", target="usr/sbin"),
        RpmFile("/lib64", kind="symlink", target="usr/lib64"),
        *[RpmFile(p, kind="dir") for p in ("/etc", "/usr", "/usr/bin", "/usr/sbin", "/usr/lib64",
                                          "/usr/share", "/var", "/var/log", "/root", "/home")],
        RpmFile("/tmp", kind="dir", mode=0o1777),
        RpmFile("/var/tmp", kind="dir", mode=0o1777),
    ]  # fmt: skip
    out = [
        RpmSpec(d.release_pkg, d.version_id, _ver(d, "1"), **noarch,
                files=release_files, provides=["system-release", f"system-release({d.version_id})"]),
        RpmSpec("filesystem", "3.16", _ver(d, "2"), **common, files=fs_files),
        RpmSpec("setup", "2.13.7", _ver(d, "10"), **noarch,
                files=[RpmFile("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"
                               "bin:x:1:1:bin:/bin:/sbin/nologin\n"
                               "daemon:x:2:2:daemon:/sbin:/sbin/nologin\n"
                               "nobody:x:65534:65534:Kernel Overflow User:/:/sbin/nologin\n",
                               config="noreplace"),
                       RpmFile("/etc/group", "root:x:0:\nbin:x:1:\ndaemon:x:2:\ntty:x:5:\n"
                               "nobody:x:65534:\n", config="noreplace"),
                       RpmFile("/etc/shadow", "root:*::0:::::\n", mode=0o000, config="noreplace"),
                       RpmFile("/etc/hosts", "127.0.0.1 localhost\n", config="noreplace")]),
        RpmSpec("glibc", "2.34", _ver(d, "100"), **common,
                files=[_lib("/usr/lib64/libc.so.6", "glibc 2.34"),
                       _lib("/usr/lib64/ld-linux-x86-64.so.2", "ld.so"),
                       RpmFile("/etc/ld.so.conf", "include ld.so.conf.d/*.conf\n",
                               config="noreplace"),
                       _lib("/usr/sbin/ldconfig", "ldconfig")],
                requires=["filesystem"],
                provides=["libc.so.6()(64bit)", "libc.so.6(GLIBC_2.34)(64bit)",
                          "ld-linux-x86-64.so.2()(64bit)", "/sbin/ldconfig"]),
        RpmSpec("zlib", "1.2.11", _ver(d, "40"), **common,
                files=[_lib("/usr/lib64/libz.so.1.2.11", "zlib"),
                       RpmFile("/usr/lib64/libz.so.1", kind="symlink", target="libz.so.1.2.11")],
                requires=["libc.so.6()(64bit)"], provides=["libz.so.1()(64bit)"]),
    ]  # fmt: skip
    if d.shell:
        out.append(RpmSpec("busybox", "1.36.1", _ver(d, "1"), **common,
                           files=[RpmFile("/usr/bin/busybox", busybox, mode=0o755),
                                  RpmFile("/usr/bin/sh", kind="symlink", target="busybox")],
                           provides=["/bin/sh", "bash"]))  # fmt: skip
    if d.pkg_manager:
        pm = d.pkg_manager
        out.append(RpmSpec(pm, "4.14.0" if pm != "zypper" else "1.14.68", _ver(d, "9"), **noarch,
                           files=[RpmFile(f"/usr/bin/{pm}", STUB.format(pm), mode=0o755)],
                           requires=["/bin/sh"]))  # fmt: skip
    return out


NOT_INSTALLED = ("zlib",)  # release 1 in the repository only (a new dependency's provider)


# --- repositories -------------------------------------------------------------------------------


@dataclass
class RpmRepos:
    root: Path  # serve this; each kind's repository is root/<repo path>
    key: GpgKey
    repos: dict[Kind, RpmRepo] = field(default_factory=dict)
    installed: dict[Kind, list[BuiltRpm]] = field(default_factory=dict)  # release 1


def repo_dir(d: Distro) -> str:
    return d.repo_path.replace("$basearch", ARCH)


def build_repos(root: Path, busybox: bytes, work: Path) -> RpmRepos:
    key = GpgKey.generate(work / "gnupg", KEY_NAME)
    key_text = key.public_armored().decode()
    out = RpmRepos(root, key)
    for kind, d in DISTROS.items():
        if kind in DERIVED:
            continue
        r1 = specs(d, key_text, busybox, 1)
        repo = build_repo(root / repo_dir(d), r1 + specs(d, key_text, busybox, 2), key,
                          compress=d.compress, payload=d.payload)  # fmt: skip
        out.repos[kind] = repo
        out.installed[kind] = [p for p in repo.packages[: len(r1)]
                               if p.name not in NOT_INSTALLED]  # fmt: skip
    key.write_public(root / "keys")
    key.keyring(root / "keys" / f"{KEY_NAME}.gpg")
    return out


# --- root filesystems ---------------------------------------------------------------------------


@dataclass
class Entry:
    info: tarfile.TarInfo
    data: bytes = b""


def payload_entries(pkg: BuiltRpm) -> list[Entry]:
    """The package's files from its payload (rpm2archive), owners mapped to ids by name."""
    proc = subprocess.run(["rpm2archive", "-"], stdin=pkg.path.open("rb"), capture_output=True,
                          check=True)  # fmt: skip
    out = []
    with tarfile.open(fileobj=io.BytesIO(proc.stdout), mode="r:gz") as tar:
        for m in tar:
            m.name = m.name.lstrip("./")
            m.uid, m.gid = UIDS[m.uname], GIDS[m.gname]
            m.uname = m.gname = ""
            m.mtime = BUILDTIME
            data = (tar.extractfile(m) or io.BytesIO()).read() if m.isfile() else b""
            out.append(Entry(m, data))
    return out


def _file(path: str, data: bytes, mode: int = 0o644) -> Entry:
    info = tarfile.TarInfo(path.strip("/"))
    info.size, info.mode, info.mtime = len(data), mode, BUILDTIME
    return Entry(info, data)


def _dir(path: str, mode: int = 0o755) -> Entry:
    info = tarfile.TarInfo(path.strip("/"))
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, BUILDTIME
    return Entry(info)


def _symlink(path: str, target: str) -> Entry:
    info = tarfile.TarInfo(path.strip("/"))
    info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, target, 0o777, BUILDTIME
    return Entry(info)


def rpm_env() -> dict[str, str]:
    """Install times from SOURCE_DATE_EPOCH (rpm 4.18 honours it), C locale, UTC."""
    return {**os.environ, "SOURCE_DATE_EPOCH": str(BUILDTIME), "TZ": "UTC", "LC_ALL": "C"}


def make_rpmdb(work: Path, dbpath: str, key_file: Path, pkgs: Sequence[BuiltRpm]) -> Path:
    """A real rpm SQLite db of `pkgs` (plus the gpg-pubkey) under work/root; returns the root."""
    root = work / "root"
    base = ["rpm", "--root", str(root), "--dbpath", dbpath, "--define", "_db_backend sqlite"]
    env = rpm_env()
    for args in (["--initdb"], ["--import", str(key_file)]):
        proc = subprocess.run([*base, *args], capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise RpmImageError(f"rpm {args[0]} failed: {proc.stderr.strip()}")
    install_justdb(root, dbpath, pkgs)
    return root


def install_justdb(root: Path, dbpath: str, pkgs: Sequence[BuiltRpm]) -> Path:
    """`rpm --root R -i --justdb --nodeps --noscripts`; returns the db file with its WAL folded
    in (rpm leaves it in WAL mode, as on real systems)."""
    cmd = ["rpm", "--root", str(root), "--dbpath", dbpath, "--define", "_db_backend sqlite",
           "-i", "--justdb", "--nodeps", "--noscripts", *[str(p.path) for p in pkgs]]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=rpm_env(), check=False)
    if proc.returncode != 0:
        raise RpmImageError(f"rpm -i --justdb failed: {proc.stderr.strip()}")
    db = root / dbpath.lstrip("/") / "rpmdb.sqlite"
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return db


def _db_load(target: Path, kind: str, pairs: Sequence[tuple[bytes, bytes]]) -> None:
    lines = ["VERSION=3", "format=bytevalue", f"type={kind}", "db_pagesize=4096", "HEADER=END"]
    for key, value in pairs:
        lines += [" " + key.hex(), " " + value.hex()]
    lines += ["DATA=END", ""]
    target.unlink(missing_ok=True)
    subprocess.run(["db5.3_load", "-c", "db_lorder=1234", str(target)],
                   input="\n".join(lines).encode(), check=True, capture_output=True)  # fmt: skip


def sqlite_to_bdb(sqlite_db: Path, target_dir: Path) -> list[Path]:
    """A BerkeleyDB rpmdb directory from a SQLite one, as rpm's bdb backend lays it out:
    `Packages` (hash: 4-byte record numbers in host order -> header blobs) and one btree per
    index table (Name, Basenames, Providename, ...: key -> (hnum, idx) pairs, host order).
    Written by db5.3_load; the real rpm's bdb_ro backend reads it (-qa, -q NAME, -qf, -V)."""
    if shutil.which("db5.3_load") is None:
        raise RpmImageError("db5.3_load missing: apt-get install db5.3-util")
    target_dir.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(f"file:{sqlite_db}?immutable=1", uri=True)
    rows = con.execute("SELECT hnum, blob FROM Packages ORDER BY hnum").fetchall()
    _db_load(target_dir / "Packages", "hash",
             [(int(h).to_bytes(4, "little"), bytes(b)) for h, b in rows])  # fmt: skip
    written = [target_dir / "Packages"]
    tables = [r[0] for r in con.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
        " AND name != 'Packages' ORDER BY name")]  # fmt: skip
    for table in tables:
        items: dict[bytes, bytes] = {}
        for key, hnum, idx in con.execute(
            f"SELECT key, hnum, idx FROM '{table}' ORDER BY hnum, idx"
        ):
            k = key.encode() if isinstance(key, str) else bytes(key)
            items[k] = items.get(k, b"") + struct.pack("<II", hnum, idx)
        _db_load(target_dir / table, "btree", sorted(items.items()))
        written.append(target_dir / table)
    con.close()
    return written


MANIFEST_QF = (
    "%{NAME}\\t%{VERSION}-%{RELEASE}\\t%{INSTALLTIME}\\t%{BUILDTIME}\\t%{VENDOR}\\t%{EPOCH}"
    "\\t%{SIZE}\\t%{ARCH}\\t%{EPOCHNUM}\\t%{SOURCERPM}\\n"
)


def rpm_manifests(root: Path, dbpath: str) -> tuple[str, str]:
    """container-manifest-1 (`rpm -qa` NEVRA lines) and -2 (Azure Linux's 10 tab-separated
    fields), written by the real rpm's query over the db, gpg-pubkey left out as
    the distroless images' manifests have it."""
    base = ["rpm", "--root", str(root), "--dbpath", dbpath, "-qa"]
    one = subprocess.run(base, capture_output=True, text=True, check=True).stdout
    two = subprocess.run([*base, "--qf", MANIFEST_QF], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    return _without_pubkeys(one), _without_pubkeys(two)


def _without_pubkeys(text: str) -> str:
    return "".join(ln + "\n" for ln in text.splitlines() if not ln.startswith("gpg-pubkey"))


def root_entries(
    d: Distro, pkgs: list[BuiltRpm], key: GpgKey, work: Path
) -> tuple[list[Entry], str]:
    """The layer's entries (payload files, the rpmdb or rpmmanifest) and the db file's path."""
    entries: dict[str, Entry] = {}
    for p in pkgs:
        for e in payload_entries(p):
            entries[e.info.name] = e
    work.mkdir(parents=True, exist_ok=True)
    key_file = work / KEY_NAME
    key_file.write_bytes(key.public_armored())
    dbpath = d.dbpath or "/var/lib/rpm"
    root = make_rpmdb(work, dbpath, key_file, pkgs)
    db_rel = dbpath.strip("/")
    sqlite_db = root / db_rel / "rpmdb.sqlite"
    if d.kind == "azurelinux":
        one, two = rpm_manifests(root, dbpath)
        entries["var/lib/rpmmanifest/container-manifest-1"] = _file(
            "/var/lib/rpmmanifest/container-manifest-1", one.encode()
        )
        entries["var/lib/rpmmanifest/container-manifest-2"] = _file(
            "/var/lib/rpmmanifest/container-manifest-2", two.encode()
        )
        db_file = "var/lib/rpmmanifest/container-manifest-2"
    elif d.kind == "centos7":
        for f in sqlite_to_bdb(sqlite_db, work / "bdb"):
            entries[f"{db_rel}/{f.name}"] = _file(f"/{db_rel}/{f.name}", f.read_bytes())
        db_file = f"{db_rel}/Packages"
    else:
        entries[f"{db_rel}/rpmdb.sqlite"] = _file(f"/{db_rel}/rpmdb.sqlite", sqlite_db.read_bytes())
        db_file = f"{db_rel}/rpmdb.sqlite"
    if d.dbpath == "/usr/lib/sysimage/rpm":  # Fedora 36+ and SLE 15: the old path is a link
        entries["var/lib/rpm"] = _symlink("/var/lib/rpm", "../../usr/lib/sysimage/rpm")
    if d.kind in ("rocky", "fedora", "sles", "centos7", "ubi-micro") and d.dbpath:
        entries.setdefault(db_rel, _dir("/" + db_rel))
    entries["etc/hostname"] = _file("/etc/hostname", b"localhost\n")
    return list(entries.values()), db_file


def upper_entries(d: Distro, added: Sequence[BuiltRpm], work: Path) -> list[Entry]:
    """A second layer as `dnf install <added> && rm /etc/hostname` leaves it: the added
    packages' files, the whole rewritten rpmdb.sqlite (rpm continues the lower layer's db) and
    a whiteout."""
    entries = [e for p in added for e in payload_entries(p)]
    db = install_justdb(work / "root", d.dbpath, added)
    entries.append(_file(f"{d.dbpath}/rpmdb.sqlite", db.read_bytes()))
    entries.append(_file("/etc/.wh.hostname", b""))
    return entries


MULTILAYER_ADDS = ("zlib",)
MULTILAYER_STEP = "dnf install -y zlib && rm /etc/hostname"


def layer_of(entries: Sequence[Entry]) -> Layer:
    raw = layer_tar(entries)
    return Layer(gz(raw), sha256_bytes(raw))


def _parents(rel: str) -> list[str]:
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def layer_tar(entries: Sequence[Entry]) -> bytes:
    """A deterministic layer tar: sorted, parents first, fixed mtime, numeric owners."""
    by = {e.info.name: e for e in entries}
    for name in list(by):
        for parent in _parents(name):
            if parent not in by:
                by[parent] = _dir(parent)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(by):
            e = by[name]
            if e.info.isdir() and not e.info.name.endswith("/"):
                e.info.name += "/"
            tar.addfile(e.info, io.BytesIO(e.data) if e.info.isfile() else None)
    return buf.getvalue()


# --- Trivy-format report --------------------------------------------------------------------------


def _purl_version(spec: RpmSpec, d: Distro) -> str:
    q = f"?arch={spec.arch}&distro={d.family}-{d.os_name or d.version_id}"
    if spec.epoch:
        q += f"&epoch={spec.epoch}"
    ns = d.purl_namespace or d.family
    return f"pkg:rpm/{ns}/{spec.name}@{spec.version}-{spec.release}{q}"


def trivy_version(spec: RpmSpec) -> str:
    """As trivy writes InstalledVersion/FixedVersion: `epoch:` only when non-zero."""
    return (f"{spec.epoch}:" if spec.epoch else "") + f"{spec.version}-{spec.release}"


def fixes(installed: Sequence[BuiltRpm], available: Sequence[BuiltRpm]) -> dict[str, RpmSpec]:
    """name -> the repository's fixing package for each installed one: a newer build of the
    same name, or one that obsoletes it (libcurl obsoletes libcurl-minimal)."""
    out: dict[str, RpmSpec] = {}
    for pkg in installed:
        same = [p for p in available if p.name == pkg.name and p.evr != pkg.evr]
        if same:
            out[pkg.name] = same[-1].spec
            continue
        for p in available:
            if any(o.split()[0] == pkg.name for o in p.spec.obsoletes):
                out[pkg.name] = p.spec
    return out


def trivy_report(d: Distro, installed: Sequence[BuiltRpm], available: Sequence[BuiltRpm],
                 layer: Layer, kind: str = "", artifact: str = "") -> dict[str, Any]:  # fmt: skip
    """A Trivy JSON report (SchemaVersion 2): one fixed vulnerability per package with a fix."""
    artifact = artifact or f"ocipatch-test/{kind or d.kind}:latest"
    vulns = []
    for n, (name, fix) in enumerate(fixes(installed, available).items()):
        pkg = next(p.spec for p in installed if p.name == name)
        fixed = trivy_version(fix)
        if fix.name != name:  # obsoleted: trivy names the fix by the installed package's EVR
            fixed = f"{fix.version}-{fix.release}"
        vulns.append({
            "VulnerabilityID": f"CVE-2099-{2000 + n}",
            "PkgID": f"{pkg.name}@{pkg.version}-{pkg.release}.{pkg.arch}",
            "PkgName": pkg.name,
            "PkgIdentifier": {"PURL": _purl_version(pkg, d)},
            "InstalledVersion": trivy_version(pkg),
            "FixedVersion": fixed,
            "Status": "fixed",
            "Layer": {"Digest": layer.digest, "DiffID": layer.diff_id},
            "SeveritySource": d.family,
            "DataSource": {"ID": d.family, "Name": f"{d.name} (ocipatch fixture)"},
            "Title": f"{pkg.source or pkg.name}: test vulnerability fixed in {fixed}",
            "Severity": "HIGH",
        })  # fmt: skip
    return {
        "SchemaVersion": 2,
        "CreatedAt": "2023-11-14T22:13:20Z",
        "ArtifactName": artifact,
        "ArtifactType": "container_image",
        "Metadata": {"OS": {"Family": d.family, "Name": d.os_name or d.version_id},
                     "DiffIDs": [layer.diff_id]},
        "Results": [{"Target": f"{artifact} ({d.family} {d.os_name or d.version_id})", "Class": "os-pkgs",
                     "Type": d.family, "Vulnerabilities": vulns}],
    }  # fmt: skip


# --- building and caching -----------------------------------------------------------------------


@dataclass
class RpmImage:
    """A built fixture: the layout, its repository, report and what is installed."""

    kind: Kind
    layout: Path
    tag: str
    repo_root: Path  # serve this (or file://); images name MIRROR_BASE/<repo_path>
    repo_url: str  # the image's baseurl (with $basearch expanded)
    repo_dir: Path  # this kind's repository directory (repodata/, Packages/)
    key_file: Path  # armored public key (RPM-GPG-KEY-test)
    keyring: Path  # the same as a binary keyring (gpgv --keyring)
    installed: dict[str, str]  # name -> [epoch:]version-release
    fixed: dict[str, str]  # name -> the report's FixedVersion
    report: Path
    db_path: str  # the rpmdb file (or container-manifest-2), relative to the root
    family: str

    def mirror_arg(self, url: str) -> str:
        return f"{MIRROR_BASE}={url.rstrip('/')}"

    def file_mirror_arg(self) -> str:
        return self.mirror_arg(self.repo_root.resolve().as_uri())


def _cache_key(deb: Path) -> str:
    here = Path(__file__).resolve().parent
    h = hashlib.sha256(FORMAT_VERSION.encode())
    for p in (here / "rpmrepo.py", here / "build_rpm_image.py", deb):
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def _check_tools() -> None:
    for tool in ("rpm", "rpmbuild", "rpmsign", "rpm2archive", "createrepo_c", "gpg", "zstd"):
        if shutil.which(tool) is None:
            raise RpmImageError(f"{tool} missing: apt-get install rpm createrepo-c gnupg zstd")


def build_all(target: Path, busybox: bytes) -> None:
    """Repository tree, every layout and its report, into `target` (atomically)."""
    _check_tools()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-rpm-", dir=target.parent) as tmp:
        work = Path(tmp) / "out"
        repos = build_repos(work / "repo", busybox, Path(tmp))
        meta: dict[str, Any] = {}
        layers: dict[Kind, list[Layer]] = {}
        for kind, d in DISTROS.items():
            repo = repos.repos[DERIVED.get(kind, kind)]
            pkgs = list(repos.installed[DERIVED.get(kind, kind)])
            if kind in DERIVED:
                added = [p for p in repo.packages if p.name in MULTILAYER_ADDS]
                upper = layer_of(upper_entries(d, added, Path(tmp) / DERIVED[kind]))
                layers[kind] = [*layers[DERIVED[kind]], upper]
                pkgs += added
                history = [f"rpm-fixture {DERIVED[kind]}", MULTILAYER_STEP]
                db_file = f"{d.dbpath.strip('/')}/rpmdb.sqlite"
            else:
                entries, db_file = root_entries(d, pkgs, repos.key, Path(tmp) / kind)
                layers[kind] = [layer_of(entries)]
                history = [f"rpm-fixture {kind}"]
            cmd = ["/bin/sh"] if d.shell else []
            write_layout(work / kind, layers[kind], history, cmd, ARCH)
            report = trivy_report(d, pkgs, repo.packages, layers[kind][0], kind)
            (work / f"{kind}.report.json").write_text(json.dumps(report, indent=2) + "\n")
            meta[kind] = {
                "installed": {p.name: trivy_version(p.spec) for p in pkgs},
                "fixed": {v["PkgName"]: v["FixedVersion"]
                          for v in report["Results"][0]["Vulnerabilities"]},
                "repo_dir": repo_dir(d),
                "db_path": db_file,
            }  # fmt: skip
        (work / "fixtures.json").write_text(json.dumps(meta, indent=2) + "\n")
        shutil.rmtree(work / "repo" / "gnupg", ignore_errors=True)
        if target.exists() and not (target / "fixtures.json").exists():
            shutil.rmtree(target)  # a partial tree from an interrupted older build
        try:
            work.rename(target)  # atomic: readers see all of it or nothing
        except OSError:
            if not (target / "fixtures.json").exists():
                raise
            # Another process finished first; keep theirs (its key signs all of it).


def cached_fixtures() -> Path:
    """The cache directory holding every rpm fixture; built on first use."""
    try:
        deb = busybox_deb()
    except RuntimeError as e:
        raise RpmImageError(str(e)) from e
    target = CACHE_DIR / f"rpm-fixtures-{_cache_key(deb)}"
    if not (target / "fixtures.json").exists():
        build_all(target, load_busybox(deb).binary)
    return target


def build_rpm_image(out: Path, kind: Kind, tag: str = "latest") -> RpmImage:
    """Copy the cached layout of `kind` to `out` (tagged `tag`); see RpmImage."""
    from tools.build_image import copy_cached_layout

    if kind not in KINDS:
        raise RpmImageError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    cache = cached_fixtures()
    meta = json.loads((cache / "fixtures.json").read_text())[kind]
    copy_cached_layout(cache / kind, out, tag)
    return RpmImage(
        kind=kind,
        layout=out,
        tag=tag,
        repo_root=cache / "repo",
        repo_url=f"{MIRROR_BASE}/{meta['repo_dir']}/",
        repo_dir=cache / "repo" / meta["repo_dir"],
        key_file=cache / "repo" / "keys" / KEY_NAME,
        keyring=cache / "repo" / "keys" / f"{KEY_NAME}.gpg",
        installed=meta["installed"],
        fixed=meta["fixed"],
        report=cache / f"{kind}.report.json",
        db_path=meta["db_path"],
        family=DISTROS[kind].family,
    )


def copy_repo(dest: Path) -> Path:
    """A private copy of the repository tree (tests that tamper with files use one)."""
    src = cached_fixtures() / "repo"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, symlinks=True)
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build an rpm test image (OCI layout) or repository.")
    p.add_argument("kind", choices=[*KINDS, "repo"])
    p.add_argument("out", help="OUT_DIR[:TAG] (for `repo`: a directory)")
    p.add_argument("--report", type=Path, default=None, help="also write the Trivy report here")
    a = p.parse_args(argv)
    if a.kind == "repo":
        print(copy_repo(Path(a.out)))
        return 0
    out, _, tag = a.out.partition(":")
    img = build_rpm_image(Path(out), a.kind, tag or "latest")
    if a.report:
        shutil.copyfile(img.report, a.report)
    print(json.dumps({"layout": str(img.layout), "repo_root": str(img.repo_root),
                      "repo_url": img.repo_url, "installed": img.installed,
                      "fixed": img.fixed}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
