"""Alpine- and Wolfi-shaped test images (OCI layouts) and their signed apk repositories.

No Alpine or Wolfi archive is reachable here, so everything is built from tools/apkrepo.py
packages in the real formats. The only real binary is /bin/busybox, taken from Debian's
busybox-static .deb (dpkg-deb -x); the libraries are placeholder files.

Kinds:
- `alpine`: Alpine 3.20 shaped; apk-tools-written installed DB at lib/apk/db/installed,
  scripts.tar, triggers, busybox with applet links and /bin/sh, /etc/apk/{keys,repositories,
  world,arch}. Repository `https://apk.invalid/alpine/v3.20/main` (map it with --repo-mirror).
- `wolfi`: Wolfi shaped, merged /usr (bin, lib, sbin are links into usr), apko-written DB at
  usr/lib/apk/db/installed (P first, `i:[]`, `k:0`, empty `U:`), key wolfi-signing.rsa.pub
  (owned by the wolfi-keys package); repository `https://apk.invalid/wolfi/os`, whose index
  is signed with SHA-256 by that key and by one no image trusts, its packages with SHA-1.
- `static`: Chainguard static shaped (os-release ID=chainguard): apko DB at lib/apk/db/installed,
  no shell, no apk; packages from the Wolfi repository.
- `static-arm64`: the same for arm64 (/etc/apk/arch aarch64, the repository's aarch64 index).
- `alpine-static`: distroless Alpine: apk-tools DB at lib/apk/db/installed, no busybox, no apk.
- `alpine-pinned`: the alpine image whose /etc/apk/repositories adds
  `@edge https://apk.invalid/alpine/edge/main` and whose world says
  `ca-certificates-bundle@edge`: that package's fix comes from edge, the rest from main (edge
  also has newer libcrypto3/libssl3, which must not be chosen).
- `alpine-multilayer`: the `alpine` layer, then a layer that adds zlib (installed DB, scripts.tar
  rewritten in that layer) and deletes /etc/motd (a whiteout).

The repository tree (both repositories, served from one root) holds version 1 of every installed
package and version 2 of some, plus a new dependency (zlib via so:libz.so.1 for libcrypto3).
Keys are derived from fixed seeds, so the same inputs give the same bytes. Results are cached
under ~/.cache/ocipatch-tests keyed by the inputs (this file, apkrepo.py, the busybox .deb).

    python -m tools.build_apk_image alpine OUT_LAYOUT[:TAG] [--report report.json]
    python -m tools.build_apk_image repo OUT_DIR        # copy of the repository tree + keys
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ocipatch.oci import mediatypes as mt
from ocipatch.oci.digest import sha256_bytes
from ocipatch.oci.layout import LayoutDestination
from ocipatch.oci.types import Descriptor
from tools.apkrepo import (
    BUILDDATE,
    ApkFile,
    ApkKey,
    ApkRepo,
    ApkSpec,
    BuiltApk,
    DbStyle,
    build_repo,
    gz,
    installed_db,
    installed_entry,
    scripts_tar,
    triggers_file,
)
from tools.debian_rootfs import CACHE_DIR

Kind = Literal[
    "alpine", "wolfi", "static", "static-arm64", "alpine-static", "alpine-multilayer",
    "alpine-pinned",
]  # fmt: skip
KINDS: tuple[Kind, ...] = (
    "alpine", "wolfi", "static", "static-arm64", "alpine-static", "alpine-multilayer",
    "alpine-pinned",
)  # fmt: skip
ARCH = "x86_64"  # apk's name; the OCI config says amd64
OCI_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
DB_PATHS: dict[Kind, str] = {
    "alpine": "lib/apk/db/installed",
    "alpine-multilayer": "lib/apk/db/installed",
    "alpine-static": "lib/apk/db/installed",
    "alpine-pinned": "lib/apk/db/installed",
    "wolfi": "usr/lib/apk/db/installed",  # apko on a usr-merged root
    "static": "lib/apk/db/installed",
    "static-arm64": "lib/apk/db/installed",
}
CREATED = "2023-11-14T22:13:20Z"  # BUILDDATE as RFC 3339
MIRROR_BASE = "https://apk.invalid"
ALPINE_REPO = "alpine/v3.20/main"
EDGE_REPO = "alpine/edge/main"  # tagged @edge in the alpine-pinned image
WOLFI_REPO = "wolfi/os"
ALPINE_KEY = "alpine-devel@ocipatch.invalid-6165ee59"
WOLFI_KEY = "wolfi-signing"
FORMAT_VERSION = "apk-v2"


class ApkImageError(RuntimeError):
    """A fixture cannot be built here (no busybox-static .deb, ...)."""


# --- busybox from Debian ------------------------------------------------------------------------


def busybox_deb() -> Path:
    """Debian's busybox-static .deb: apt's cache, else `apt-get download` into our cache."""
    found = sorted(glob.glob("/var/cache/apt/archives/busybox-static_*.deb"))
    if found:
        return Path(found[-1])
    dest = CACHE_DIR / "debs" / "busybox-static"
    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(glob.glob(str(dest / "busybox-static_*.deb")))
    if not found:
        proc = subprocess.run(["apt-get", "download", "busybox-static"], cwd=dest,
                              capture_output=True, text=True, check=False)  # fmt: skip
        found = sorted(glob.glob(str(dest / "busybox-static_*.deb")))
        if proc.returncode != 0 or not found:
            raise ApkImageError("no busybox-static .deb: apt-get install busybox-static")
    return Path(found[-1])


@dataclass
class Busybox:
    binary: bytes
    applets: list[str]  # bin/ls, usr/bin/awk, ... as --list-full prints them


def load_busybox(deb: Path) -> Busybox:
    with tempfile.TemporaryDirectory(prefix="busybox-deb-") as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True, capture_output=True)
        exe = Path(tmp) / "bin" / "busybox"
        listing = subprocess.run([str(exe), "--list-full"], check=True,
                                 capture_output=True, text=True).stdout  # fmt: skip
        return Busybox(exe.read_bytes(), sorted(set(listing.split())))


# --- package sets -------------------------------------------------------------------------------


def _lib(path: str, text: str) -> ApkFile:
    # Placeholder library contents: nothing in the image runs them.
    return ApkFile(path, f"\x7fELF placeholder: {text}\n", mode=0o755)


APK_STUB = "#!/bin/sh\necho 'apk: test fixture stub, apk-tools is not in this image' >&2\nexit 99\n"
BUSYBOX_TRIGGER = """#!/bin/sh
# Re-create the applet links when packages change /bin, /usr/bin, /sbin, /usr/sbin.
for i in "$@"; do
\tcase "$i" in
\t\t/lib/modules/*) ;;
\t\t*) do_bb_install=yes ;;
\tesac
done
[ -n "$do_bb_install" ] && /bin/busybox --install -s
echo "busybox trigger $*" >> /var/log/apk-scripts.log
exit 0
"""


def _bb_script(action: str) -> str:
    return f'#!/bin/sh\necho "busybox {action} $*" >> /var/log/apk-scripts.log\nexit 0\n'


def alpine_specs(bb: Busybox, release: int) -> list[ApkSpec]:
    """Alpine packages; release 1 is installed, release 2 the fixed versions in the repository."""
    r2 = release == 2
    musl_so = "so:libc.musl-x86_64.so.1"
    bb_ver = "1.36.1-r29" if r2 else "1.36.1-r28"
    ssl_ver = "3.3.2-r1" if r2 else "3.3.2-r0"
    ca_ver = "20241010-r0" if r2 else "20240705-r0"
    paths = "".join(f"/{a}\n" for a in bb.applets)
    common: dict[str, Any] = {"arch": ARCH, "maintainer": "Natanael Copa <ncopa@ocipatch.invalid>"}
    openssl_cnf = "# openssl.cnf\n[openssl_init]\n" + ("providers = p\n" if r2 else "")
    libcrypto_files = [
        _lib("/usr/lib/libcrypto.so.3", f"libcrypto {ssl_ver}"),
        ApkFile("/etc/ssl/openssl.cnf", openssl_cnf),
        ApkFile("/etc/ssl/private", kind="dir", mode=0o700),
        ApkFile("/etc/ssl/certs", kind="dir", mode=0o755),
    ]
    if not r2:  # dropped in release 2: the patch must delete it
        libcrypto_files.append(_lib("/usr/lib/engines-3/afalg.so", "afalg engine"))
    specs = [
        ApkSpec("busybox", bb_ver, **common, origin="busybox",
                description="Size optimized toolbox of many common UNIX utilities",
                files=[ApkFile("/bin/busybox", bb.binary, mode=0o755),
                       ApkFile("/etc/securetty", "console\ntty1\n" + ("ttyS0\n" if r2 else "")),
                       ApkFile("/etc/busybox-paths.d/busybox", paths)],
                depends=[musl_so], provides=[f"cmd:busybox={bb_ver}"],
                scripts={"post-install": _bb_script("post-install"),
                         "post-upgrade": _bb_script("post-upgrade"),
                         "trigger": BUSYBOX_TRIGGER},
                triggers=["/bin", "/usr/bin", "/sbin", "/usr/sbin", "/lib/modules/*"]),
        ApkSpec("busybox-binsh", bb_ver, **common, origin="busybox",
                description="busybox ash /bin/sh",
                files=[ApkFile("/bin/sh", kind="symlink", target="/bin/busybox")],
                depends=[f"busybox={bb_ver}"], provides=["/bin/sh", f"cmd:sh={bb_ver}"],
                provider_priority=100),
        ApkSpec("ssl_client", bb_ver, **common, origin="busybox",
                description="External ssl_client for busybox wget",
                files=[_lib("/usr/bin/ssl_client", f"ssl_client {bb_ver}")],
                depends=[musl_so, "so:libcrypto.so.3", "so:libssl.so.3"],
                provides=[f"cmd:ssl_client={bb_ver}"],
                install_if=[f"busybox={bb_ver}", "libssl3"]),
        ApkSpec("libcrypto3", ssl_ver, **common, origin="openssl",
                description="Crypto library from openssl", license="Apache-2.0",
                files=libcrypto_files,
                depends=[musl_so, *(["so:libz.so.1"] if r2 else [])],
                provides=["so:libcrypto.so.3=3"], provider_priority=100),
        ApkSpec("libssl3", ssl_ver, **common, origin="openssl",
                description="SSL shared libraries", license="Apache-2.0",
                files=[_lib("/usr/lib/libssl.so.3", f"libssl {ssl_ver}")],
                depends=[musl_so, "so:libcrypto.so.3"], provides=["so:libssl.so.3=3"],
                provider_priority=100),
        ApkSpec("ca-certificates-bundle", ca_ver, **common, origin="ca-certificates",
                description="Pre generated bundle of Mozilla certificates",
                license="MPL-2.0 AND MIT", replaces=["libcrypto1.1"],
                files=[ApkFile("/etc/ssl/certs/ca-certificates.crt", _bundle(ca_ver)),
                       ApkFile("/etc/ssl/cert.pem", kind="symlink",
                               target="certs/ca-certificates.crt")],
                provides=[f"ca-certificates-cacert={ca_ver}"]),
    ]  # fmt: skip
    if r2:
        return specs
    return [*specs, *alpine_base_specs(common)]


def alpine_base_specs(common: dict[str, Any]) -> list[ApkSpec]:
    """Packages that stay at one version (installed, also in the repository)."""
    rel = "3.20.3"
    os_release = (
        'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.20.3\n'
        'PRETTY_NAME="Alpine Linux v3.20"\nHOME_URL="https://alpinelinux.org/"\n'
    )
    return [
        ApkSpec("musl", "1.2.5-r0", **common, description="the musl c library (libc)",
                files=[_lib("/lib/ld-musl-x86_64.so.1", "musl 1.2.5"),
                       ApkFile("/lib/libc.musl-x86_64.so.1", kind="symlink",
                               target="ld-musl-x86_64.so.1")],
                provides=["so:libc.musl-x86_64.so.1=1"]),
        ApkSpec("alpine-baselayout-data", "3.6.5-r0", **common, origin="alpine-baselayout",
                description="Alpine base dir structure and init scripts",
                files=[ApkFile("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
                       ApkFile("/etc/group", "root:x:0:root\nshadow:x:42:\n"),
                       ApkFile("/etc/shadow", "root:*::0:::::\n", mode=0o640, gid=42),
                       ApkFile("/etc/hosts", "127.0.0.1\tlocalhost\n"),
                       ApkFile("/etc/shells", "/bin/sh\n/bin/ash\n"),
                       ApkFile("/etc/profile", "export PATH=/usr/sbin:/usr/bin:/sbin:/bin\n")]),
        ApkSpec("alpine-baselayout", "3.6.5-r0", **common,
                description="Alpine base dir structure and init scripts",
                files=[ApkFile("/tmp", kind="dir", mode=0o1777),
                       ApkFile("/root", kind="dir", mode=0o700),
                       ApkFile("/var/tmp", kind="dir", mode=0o1777),
                       ApkFile("/var/log", kind="dir"), ApkFile("/proc", kind="dir"),
                       ApkFile("/dev", kind="dir"), ApkFile("/home", kind="dir"),
                       ApkFile("/var/run", kind="symlink", target="/run"),
                       ApkFile("/run", kind="dir")],
                depends=["alpine-baselayout-data=3.6.5-r0", "/bin/sh"],
                scripts={"pre-install": "#!/bin/sh\nexit 0\n"}),
        ApkSpec("alpine-release", f"{rel}-r0", **common, origin="alpine-base",
                description="Alpine release data",
                files=[ApkFile("/etc/alpine-release", f"{rel}\n"),
                       ApkFile("/usr/lib/os-release", os_release),
                       ApkFile("/etc/os-release", kind="symlink", target="../usr/lib/os-release"),
                       ApkFile("/etc/issue", "Welcome to Alpine Linux 3.20\n")]),
        ApkSpec("apk-tools", "2.14.4-r1", **common,
                description="Alpine Package Keeper - package manager for alpine",
                license="GPL-2.0-only",
                files=[ApkFile("/sbin/apk", APK_STUB, mode=0o755)],
                depends=[ "so:libc.musl-x86_64.so.1", "so:libcrypto.so.3", "so:libssl.so.3"],
                provides=["cmd:apk=2.14.4-r1"]),
        ApkSpec("zlib", "1.3.1-r1", **common, description="A compression/decompression Library",
                license="Zlib", files=[_lib("/lib/libz.so.1.3.1", "zlib 1.3.1"),
                                       ApkFile("/lib/libz.so.1", kind="symlink",
                                               target="libz.so.1.3.1")],
                depends=["so:libc.musl-x86_64.so.1"], provides=["so:libz.so.1=1.3.1"]),
    ]  # fmt: skip


def edge_specs() -> list[ApkSpec]:
    """Newer versions in a second repository: chosen only for a world entry pinned `@edge`."""
    common: dict[str, Any] = {"arch": ARCH, "maintainer": "Natanael Copa <ncopa@ocipatch.invalid>"}
    musl_so, ver, ca_ver = "so:libc.musl-x86_64.so.1", "3.4.0-r0", "20250101-r0"
    return [
        ApkSpec("libcrypto3", ver, **common, origin="openssl", license="Apache-2.0",
                description="Crypto library from openssl",
                files=[_lib("/usr/lib/libcrypto.so.3", f"libcrypto {ver}"),
                       ApkFile("/etc/ssl/openssl.cnf", f"# openssl.cnf {ver}\n")],
                depends=[musl_so], provides=["so:libcrypto.so.3=3"], provider_priority=100),
        ApkSpec("libssl3", ver, **common, origin="openssl", license="Apache-2.0",
                description="SSL shared libraries",
                files=[_lib("/usr/lib/libssl.so.3", f"libssl {ver}")],
                depends=[musl_so, "so:libcrypto.so.3"], provides=["so:libssl.so.3=3"],
                provider_priority=100),
        ApkSpec("ca-certificates-bundle", ca_ver, **common, origin="ca-certificates",
                description="Pre generated bundle of Mozilla certificates",
                license="MPL-2.0 AND MIT", replaces=["libcrypto1.1"],
                files=[ApkFile("/etc/ssl/certs/ca-certificates.crt", _bundle(ca_ver)),
                       ApkFile("/etc/ssl/cert.pem", kind="symlink",
                               target="certs/ca-certificates.crt")],
                provides=[f"ca-certificates-cacert={ca_ver}"]),
    ]  # fmt: skip


def _bundle(version: str) -> str:
    return f"# ca-certificates {version}\n-----BEGIN CERTIFICATE-----\nMIIB{version}\n" \
           "-----END CERTIFICATE-----\n"  # fmt: skip


def wolfi_specs(bb: Busybox, release: int, arch: str = ARCH) -> list[ApkSpec]:
    """Wolfi packages (merged /usr); release 2 holds the fixed versions. For another
    architecture than the host's, busybox is a placeholder too (nothing runs it)."""
    r2 = release == 2
    if arch != ARCH:
        bb = Busybox(f"\x7fELF placeholder: busybox {arch}\n".encode(), bb.applets)
    ssl_ver = "3.3.2-r1" if r2 else "3.3.2-r0"
    ca_ver = "20241121-r0" if r2 else "20240315-r0"
    bb_ver = "1.36.1-r8" if r2 else "1.36.1-r7"
    tz_ver = "2024b-r0" if r2 else "2024a-r0"
    libc = ["so:ld-linux-x86-64.so.2", "so:libc.so.6"]
    common: dict[str, Any] = {"arch": arch, "maintainer": "wolfi", "url": ""}
    specs = [
        ApkSpec("libcrypto3", ssl_ver, **common, origin="openssl", license="Apache-2.0",
                description="Crypto library from openssl",
                files=[_lib("/usr/lib/libcrypto.so.3", f"libcrypto {ssl_ver}"),
                       ApkFile("/etc/ssl/openssl.cnf", f"# openssl {ssl_ver}\n")],
                depends=libc, provides=["so:libcrypto.so.3=3"]),
        ApkSpec("libssl3", ssl_ver, **common, origin="openssl", license="Apache-2.0",
                description="SSL shared libraries",
                files=[_lib("/usr/lib/libssl.so.3", f"libssl {ssl_ver}")],
                depends=[*libc, "so:libcrypto.so.3"], provides=["so:libssl.so.3=3"]),
        ApkSpec("ca-certificates-bundle", ca_ver, **common, origin="ca-certificates",
                license="MPL-2.0 AND MIT", description="",
                files=[ApkFile("/etc/ssl/certs/ca-certificates.crt", _bundle(ca_ver))],
                depends=["wolfi-baselayout"]),
        ApkSpec("busybox", bb_ver, **common, origin="busybox", license="GPL-2.0-only",
                description="swiss-army knife for embedded systems",
                files=[ApkFile("/usr/bin/busybox", bb.binary, mode=0o755),
                       ApkFile("/usr/bin/sh", kind="symlink", target="busybox"),
                       ApkFile("/etc/busybox-paths.d/busybox", f"/usr/bin/sh\n# {bb_ver}\n")],
                depends=["merged-bin", "wolfi-baselayout", *libc],
                provides=[f"cmd:busybox={bb_ver}", f"cmd:sh={bb_ver}"], provider_priority=10),
        ApkSpec("tzdata", tz_ver, **common, description="Time zone data",
                license="Public-Domain",
                files=[ApkFile("/usr/share/zoneinfo/UTC", f"TZif2 UTC {tz_ver}\n")]),
    ]  # fmt: skip
    if r2:
        return specs
    return [
        *specs,
        ApkSpec("wolfi-baselayout", "20230201-r15", **common, description="baselayout data for Wolfi",
                files=[ApkFile("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
                       ApkFile("/etc/group", "root:x:0:root\n"),
                       ApkFile("/etc/shadow", "root:*::0:::::\n", mode=0o600),
                       ApkFile("/usr/lib/os-release", WOLFI_OS_RELEASE),
                       ApkFile("/etc/os-release", kind="symlink", target="../usr/lib/os-release"),
                       ApkFile("/tmp", kind="dir", mode=0o1777)],
                provides=["merged-bin", "merged-lib", "merged-sbin", "merged-usrsbin"]),
        ApkSpec("glibc", "2.40-r3", **common, license="LGPL-2.1-or-later",
                description="the GNU C library",
                files=[_lib("/usr/lib/libc.so.6", "glibc 2.40")],
                depends=["so:ld-linux-x86-64.so.2"], provides=["so:libc.so.6=6"]),
        ApkSpec("ld-linux", "2.40-r3", **common, origin="glibc", license="LGPL-2.1-or-later",
                description="dynamic loader",
                files=[_lib("/usr/lib/ld-linux-x86-64.so.2", "ld-linux 2.40")],
                provides=["so:ld-linux-x86-64.so.2=2"]),
        ApkSpec("wolfi-keys", "1-r8", **common, description="Wolfi signing keys",
                files=[ApkFile("/etc/apk/keys/wolfi-signing.rsa.pub", b"")]),  # filled in later
        ApkSpec("apk-tools", "2.14.4-r0", **common, license="GPL-2.0-only",
                description="apk-tools", files=[ApkFile("/usr/bin/apk", APK_STUB, mode=0o755)],
                depends=[*libc, "so:libcrypto.so.3", "so:libssl.so.3"],
                provides=["cmd:apk=2.14.4-r0"]),
        ApkSpec("chainguard-baselayout", "20230214-r7", **common,
                description="baselayout data for Chainguard static",
                files=[ApkFile("/etc/passwd", "root:x:0:0:root:/root:/sbin/nologin\n"
                               "nonroot:x:65532:65532::/home/nonroot:/sbin/nologin\n"),
                       ApkFile("/etc/group", "root:x:0:\nnonroot:x:65532:\n"),
                       ApkFile("/usr/lib/os-release", CHAINGUARD_OS_RELEASE),
                       ApkFile("/etc/os-release", kind="symlink", target="../usr/lib/os-release"),
                       ApkFile("/home/nonroot", kind="dir", mode=0o755, uid=65532, gid=65532)]),
    ]  # fmt: skip


WOLFI_OS_RELEASE = (
    'ID=wolfi\nNAME="Wolfi"\nPRETTY_NAME="Wolfi"\nVERSION_ID="20230201"\n'
    'HOME_URL="https://wolfi.dev"\n'
)
CHAINGUARD_OS_RELEASE = (
    'ID=chainguard\nNAME="Chainguard"\nPRETTY_NAME="Chainguard"\nVERSION_ID="20230214"\n'
    'HOME_URL="https://chainguard.dev/"\n'
)


# --- repositories -------------------------------------------------------------------------------


@dataclass
class ApkRepos:
    """The repository tree (served from `root`) and the keys that sign it."""

    root: Path
    alpine: ApkRepo
    alpine_edge: ApkRepo
    wolfi: ApkRepo
    wolfi_arm64: ApkRepo  # the same repository's aarch64 index and packages
    keys_dir: Path  # <name>.rsa.pub and <name>.key of both keys

    def mirror_arg(self, url: str) -> str:
        """`--repo-mirror` value mapping the images' fake base URL to `url`."""
        return f"{MIRROR_BASE}={url.rstrip('/')}"


def alpine_key() -> ApkKey:
    return ApkKey.from_seed(ALPINE_KEY, "alpine")


def wolfi_key() -> ApkKey:
    return ApkKey.from_seed(WOLFI_KEY, "wolfi")


def other_key() -> ApkKey:
    """A key no image trusts (a second signer of the Wolfi index)."""
    name = "chainguard-" + hashlib.sha256(b"ocipatch-extra").hexdigest()
    return ApkKey.from_seed(name, "chainguard-extra")


def _with_key_file(specs: list[ApkSpec], key: ApkKey) -> list[ApkSpec]:
    for s in specs:
        s.files = [
            ApkFile(f.path, key.public_pem()) if f.path == f"/etc/apk/keys/{key.name}" else f
            for f in s.files
        ]
    return specs


def build_repos(root: Path, bb: Busybox) -> ApkRepos:
    """Both repositories under `root`: every release-1 package, the release-2 ones, zlib."""
    akey, wkey = alpine_key(), wolfi_key()
    alpine = build_repo(
        root, ALPINE_REPO, alpine_specs(bb, 1) + alpine_specs(bb, 2), [akey],
        arch=ARCH, algo="RSA", description="v3.20.3-0-gocipatch",
    )  # fmt: skip
    edge = build_repo(root, EDGE_REPO, edge_specs(), [akey], arch=ARCH,
                      description="v20250101-0-gocipatch")  # fmt: skip
    # Like Wolfi's index: several signatures, only one by a key the images trust; packages
    # signed with SHA-1 (as melange's hello-wolfi sample), the index with SHA-256.
    extra = other_key()
    wolfi, wolfi_arm64 = (
        build_repo(
            root, WOLFI_REPO,
            _with_key_file(wolfi_specs(bb, 1, arch), wkey) + wolfi_specs(bb, 2, arch),
            [extra, wkey], package_key=wkey, arch=arch, algo="RSA", index_algo="RSA256",
            description="",
        )
        for arch in (ARCH, "aarch64")
    )  # fmt: skip
    keys = root / "keys"
    for k in (akey, wkey, extra):
        k.write_public(keys)
        k.write_private(keys)
    return ApkRepos(root, alpine, edge, wolfi, wolfi_arm64, keys)


# --- root filesystems ---------------------------------------------------------------------------


@dataclass
class Tree:
    """A layer's entries by relative path (ApkFile doubles as a filesystem entry)."""

    entries: dict[str, ApkFile] = field(default_factory=dict)
    whiteouts: list[str] = field(default_factory=list)

    def add(self, f: ApkFile) -> None:
        self.entries[f.rel] = f

    def add_package(self, pkg: BuiltApk) -> None:
        for f in pkg.spec.files:
            self.add(f)

    def text(self, path: str, content: bytes | str, mode: int | None = None) -> None:
        self.add(ApkFile(path, content, mode=mode))

    def link(self, path: str, target: str) -> None:
        self.add(ApkFile(path, kind="symlink", target=target))


def _apk_config(
    tree: Tree, key: ApkKey, repo_line: str, world: Sequence[str], arch: str = ARCH
) -> None:
    tree.add(ApkFile(f"/etc/apk/keys/{key.name}", key.public_pem()))
    tree.text("/etc/apk/repositories", repo_line + "\n")
    tree.text("/etc/apk/world", "".join(f"{w}\n" for w in sorted(world)))
    tree.text("/etc/apk/arch", arch + "\n")


def _apk_db(tree: Tree, db_dir: str, pkgs: list[BuiltApk], style: DbStyle) -> list[BuiltApk]:
    """Write the DB files; returns the packages in DB order. apk-tools 2.14 (Alpine 3.19+)
    writes installed, scripts.tar and triggers sorted by package name; apko keeps its order."""
    if style == "apk-tools":
        pkgs = sorted(pkgs, key=lambda p: (p.name.lower(), p.name))
    tree.text(f"{db_dir}/installed", installed_db(pkgs, style))
    tree.text(f"{db_dir}/scripts.tar", scripts_tar(pkgs))
    tree.text(f"{db_dir}/triggers", triggers_file(pkgs))
    tree.text(f"{db_dir}/lock", b"", mode=0o600)
    return pkgs


ALPINE_INSTALLED = (
    "musl", "alpine-baselayout-data", "alpine-baselayout", "alpine-release", "busybox",
    "busybox-binsh", "libcrypto3", "libssl3", "ca-certificates-bundle", "ssl_client", "apk-tools",
)  # fmt: skip
ALPINE_WORLD = ("alpine-baselayout", "alpine-release", "apk-tools", "busybox", "ca-certificates-bundle", "libssl3")  # fmt: skip
WOLFI_INSTALLED = (
    "wolfi-baselayout", "ld-linux", "glibc", "ca-certificates-bundle", "wolfi-keys", "libcrypto3",
    "libssl3", "busybox", "apk-tools",
)  # fmt: skip
STATIC_INSTALLED = ("chainguard-baselayout", "ca-certificates-bundle", "tzdata")
ALPINE_STATIC_INSTALLED = (
    "musl", "alpine-baselayout-data", "alpine-release", "ca-certificates-bundle", "libcrypto3",
    "libssl3",
)  # fmt: skip


def _installed(repo: ApkRepo, names: Iterable[str]) -> list[BuiltApk]:
    """Release 1 (the oldest version in the repository) of each named package."""
    out = []
    for n in names:
        versions = [p for p in repo.packages if p.name == n]
        out.append(versions[0])  # build order: release 1 first
    return out


def alpine_tree(repos: ApkRepos, bb: Busybox) -> tuple[Tree, list[BuiltApk]]:
    pkgs = _installed(repos.alpine, ALPINE_INSTALLED)
    tree = Tree()
    for p in pkgs:
        tree.add_package(p)
    for applet in bb.applets:  # what busybox's post-install `--install -s` leaves behind
        if "/" in applet and applet not in tree.entries:  # never over a package's file
            tree.link("/" + applet, "/bin/busybox")
    tree.text("/etc/motd", "Welcome to Alpine!\n")
    tree.text("/etc/hostname", "localhost\n")
    _apk_config(tree, alpine_key(), repos.alpine.url(MIRROR_BASE), ALPINE_WORLD)
    pkgs = _apk_db(tree, "/lib/apk/db", pkgs, "apk-tools")
    tree.add(ApkFile("/var/cache/apk", kind="dir"))
    return tree, pkgs


PINNED = "ca-certificates-bundle"


def alpine_pinned_tree(repos: ApkRepos, bb: Busybox) -> tuple[Tree, list[BuiltApk]]:
    """The alpine image with a second repository tagged @edge and one world entry pinned to it."""
    tree, pkgs = alpine_tree(repos, bb)
    lines = [repos.alpine.url(MIRROR_BASE), "@edge " + repos.alpine_edge.url(MIRROR_BASE)]
    tree.text("/etc/apk/repositories", "".join(f"{ln}\n" for ln in lines))
    world = sorted(f"{w}@edge" if w == PINNED else w for w in ALPINE_WORLD)
    tree.text("/etc/apk/world", "".join(f"{w}\n" for w in world))
    return tree, pkgs


def _merged_usr(tree: Tree) -> None:
    for top, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("sbin", "usr/bin"),
                        ("lib64", "usr/lib"), ("usr/sbin", "bin")):  # fmt: skip
        tree.link(f"/{top}", target)


def wolfi_tree(repos: ApkRepos) -> tuple[Tree, list[BuiltApk]]:
    pkgs = _installed(repos.wolfi, WOLFI_INSTALLED)
    tree = Tree()
    _merged_usr(tree)
    for p in pkgs:
        tree.add_package(p)
    _apk_config(tree, wolfi_key(), repos.wolfi.url(MIRROR_BASE), ["wolfi-base", "busybox"])
    pkgs = _apk_db(tree, "/usr/lib/apk/db", pkgs, "apko")
    return tree, pkgs


def static_tree(repos: ApkRepos, arm64: bool = False) -> tuple[Tree, list[BuiltApk]]:
    repo = repos.wolfi_arm64 if arm64 else repos.wolfi
    pkgs = _installed(repo, STATIC_INSTALLED)
    tree = Tree()
    for p in pkgs:
        tree.add_package(p)
    _apk_config(tree, wolfi_key(), repo.url(MIRROR_BASE), STATIC_INSTALLED, repo.arch)
    pkgs = _apk_db(tree, "/lib/apk/db", pkgs, "apko")
    return tree, pkgs


def alpine_static_tree(repos: ApkRepos) -> tuple[Tree, list[BuiltApk]]:
    """Distroless Alpine: the DB of what is there, no busybox, no apk, no shell."""
    pkgs = _installed(repos.alpine, ALPINE_STATIC_INSTALLED)
    tree = Tree()
    for p in pkgs:
        tree.add_package(p)
    _apk_config(tree, alpine_key(), repos.alpine.url(MIRROR_BASE), ALPINE_STATIC_INSTALLED)
    pkgs = _apk_db(tree, "/lib/apk/db", pkgs, "apk-tools")
    return tree, pkgs


def multilayer_upper(repos: ApkRepos, base_pkgs: list[BuiltApk]) -> tuple[Tree, list[BuiltApk]]:
    """`apk add zlib && rm /etc/motd`: zlib's files, the rewritten DB, a whiteout."""
    zlib = _installed(repos.alpine, ["zlib"])[0]
    pkgs = [*base_pkgs, zlib]
    tree = Tree()
    tree.add_package(zlib)
    tree.text("/etc/apk/world", "".join(f"{w}\n" for w in sorted([*ALPINE_WORLD, "zlib"])))
    pkgs = _apk_db(tree, "/lib/apk/db", pkgs, "apk-tools")
    tree.whiteouts.append("etc/motd")
    return tree, pkgs


# --- layers and layouts -------------------------------------------------------------------------


def _parents(rel: str) -> list[str]:
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def layer_tar(tree: Tree) -> bytes:
    """A deterministic layer tar: sorted, parents first, fixed mtime, numeric owners."""
    entries = dict(tree.entries)
    for rel in list(entries) + tree.whiteouts:
        for parent in _parents(rel):
            entries.setdefault(parent, ApkFile(parent, kind="dir"))
    for wh in tree.whiteouts:
        parent, _, base = wh.rpartition("/")
        entries[f"{parent}/.wh.{base}".lstrip("/")] = ApkFile(f"{parent}/.wh.{base}", b"")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in sorted(entries):
            tar.addfile(*_tarinfo(entries[rel]))
    return buf.getvalue()


def _tarinfo(f: ApkFile) -> tuple[tarfile.TarInfo, io.BytesIO | None]:
    info = tarfile.TarInfo(f.rel + ("/" if f.kind == "dir" else ""))
    info.mtime, info.uid, info.gid, info.uname, info.gname = BUILDDATE, f.uid, f.gid, "", ""
    if f.kind == "dir":
        info.type, info.mode = tarfile.DIRTYPE, f.perm
        return info, None
    if f.kind == "symlink":
        info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, f.target
        return info, None
    info.mode, info.size = f.perm, len(f.data())
    return info, io.BytesIO(f.data())


@dataclass
class Layer:
    blob: bytes  # gzip
    diff_id: str

    @property
    def digest(self) -> str:
        return sha256_bytes(self.blob)


def make_layer(tree: Tree) -> Layer:
    raw = layer_tar(tree)
    return Layer(gz(raw), sha256_bytes(raw))


def write_layout(
    out: Path, layers: Sequence[Layer], history: Sequence[str], cmd: list[str], arch: str = ARCH
) -> None:
    config = {
        "created": CREATED,
        "architecture": OCI_ARCH[arch],
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            **({"Cmd": cmd} if cmd else {}),
        },
        "rootfs": {"type": "layers", "diff_ids": [lay.diff_id for lay in layers]},
        "history": [{"created": CREATED, "created_by": h} for h in history],
    }
    config_bytes = json.dumps(config, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": sha256_bytes(config_bytes),
                   "size": len(config_bytes)},
        "layers": [{"mediaType": mt.OCI_LAYER_GZIP, "digest": lay.digest, "size": len(lay.blob)}
                   for lay in layers],
    }  # fmt: skip
    manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode()
    dest = LayoutDestination(out, "latest")
    for lay in layers:
        dest.put_blob(Descriptor(mt.OCI_LAYER_GZIP, lay.digest, len(lay.blob)),
                      lambda b=lay.blob: io.BytesIO(b))  # type: ignore[misc]  # fmt: skip
    dest.put_blob(Descriptor(mt.OCI_CONFIG, sha256_bytes(config_bytes), len(config_bytes)),
                  lambda: io.BytesIO(config_bytes))  # fmt: skip
    dest.put_root(manifest_bytes, mt.OCI_MANIFEST, sha256_bytes(manifest_bytes))
    dest.close()


# --- Trivy-format report --------------------------------------------------------------------------


OS_INFO = {
    "alpine": ("alpine", "3.20.3"),
    "alpine-multilayer": ("alpine", "3.20.3"),
    "wolfi": ("wolfi", "20230201"),
    "static": ("chainguard", "20230214"),
    "static-arm64": ("chainguard", "20230214"),
    "alpine-static": ("alpine", "3.20.3"),
    "alpine-pinned": ("alpine", "3.20.3"),
}


def trivy_report(
    kind: Kind, installed: Sequence[BuiltApk], available: Sequence[BuiltApk],
    layers: Sequence[Layer], arch: str = ARCH, artifact: str = "",
) -> dict[str, Any]:  # fmt: skip
    """A Trivy JSON report (SchemaVersion 2) with a fixed vulnerability for each installed
    package that `available` has another version of (FixedVersion = the last one listed)."""
    family, os_name = OS_INFO[kind]
    artifact = artifact or f"ocipatch-test/{kind}:latest"
    vulns = []
    for n, pkg in enumerate(installed):
        newer = [p for p in available if p.name == pkg.name and p.version != pkg.version]
        if not newer:
            continue
        fixed = newer[-1].version
        distro = f"&distro={os_name}"
        vulns.append({
            "VulnerabilityID": f"CVE-2099-{1000 + n}",
            "PkgID": f"{pkg.name}@{pkg.version}",
            "PkgName": pkg.name,
            "PkgIdentifier": {
                "PURL": f"pkg:apk/{family}/{pkg.name}@{pkg.version}?arch={arch}{distro}",
            },
            "InstalledVersion": pkg.version,
            "FixedVersion": fixed,
            "Status": "fixed",
            "Layer": {"Digest": layers[0].digest, "DiffID": layers[0].diff_id},
            "SeveritySource": family,
            "DataSource": {"ID": family, "Name": f"{family} secdb (ocipatch fixture)"},
            "Title": f"{pkg.spec.origin or pkg.name}: test vulnerability fixed in {fixed}",
            "Severity": "HIGH",
        })  # fmt: skip
    return {
        "SchemaVersion": 2,
        "CreatedAt": CREATED,
        "ArtifactName": artifact,
        "ArtifactType": "container_image",
        "Metadata": {
            "OS": {"Family": family, "Name": os_name},
            "DiffIDs": [lay.diff_id for lay in layers],
        },
        "Results": [{
            "Target": f"{artifact} ({family} {os_name})",
            "Class": "os-pkgs",
            "Type": family,
            "Vulnerabilities": vulns,
        }],
    }  # fmt: skip


# --- building and caching -----------------------------------------------------------------------


@dataclass
class ApkImage:
    """A built fixture: the layout, its repository tree, report and what is installed."""

    kind: Kind
    layout: Path
    tag: str
    repo_root: Path  # serve this (or use file://); images name MIRROR_BASE/<repo>
    repo_url: str  # the image's /etc/apk/repositories line
    keys_dir: Path
    installed: dict[str, str]  # name -> version, in the order of the image's installed DB
    fixed: dict[str, str]  # name -> version the report asks for
    report: Path
    db_path: str  # the installed DB, relative to the root
    # "<name>-<version>" -> that package's installed-DB block, as apk-tools (alpine kinds) or
    # apko (the others) writes it: what a patched image's DB should hold for it
    db_entries: dict[str, str]

    def mirror_arg(self, url: str) -> str:
        """`--repo-mirror` value mapping the image's fake base URL to `url` (a served root)."""
        return f"{MIRROR_BASE}={url.rstrip('/')}"

    def file_mirror_arg(self) -> str:
        """The same, to the repository tree as a file:// URL."""
        return self.mirror_arg(self.repo_root.resolve().as_uri())


def _cache_key(deb: Path) -> str:
    here = Path(__file__).resolve().parent
    h = hashlib.sha256(FORMAT_VERSION.encode())
    for p in (here / "apkrepo.py", here / "build_apk_image.py", deb):
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def build_all(target: Path, bb: Busybox) -> None:
    """Repository tree, every layout and its report, into `target` (atomically)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-apk-", dir=target.parent) as tmp:
        work = Path(tmp) / "out"
        repos = build_repos(work / "repo", bb)
        meta: dict[str, Any] = {}
        a_tree, a_pkgs = alpine_tree(repos, bb)
        base = make_layer(a_tree)
        up_tree, up_pkgs = multilayer_upper(repos, a_pkgs)
        w_tree, w_pkgs = wolfi_tree(repos)
        s_tree, s_pkgs = static_tree(repos)
        s64_tree, s64_pkgs = static_tree(repos, arm64=True)
        as_tree, as_pkgs = alpine_static_tree(repos)
        p_tree, p_pkgs = alpine_pinned_tree(repos, bb)
        plans: list[tuple[Kind, list[Layer], list[BuiltApk], ApkRepo, list[str], list[str]]] = [
            ("alpine", [base], a_pkgs, repos.alpine, ["apk-fixture alpine"], ["/bin/sh"]),
            ("alpine-multilayer", [base, make_layer(up_tree)], up_pkgs, repos.alpine,
             ["apk-fixture alpine", "apk add zlib && rm /etc/motd"], ["/bin/sh"]),
            ("wolfi", [make_layer(w_tree)], w_pkgs, repos.wolfi, ["apko wolfi"], ["/bin/sh"]),
            ("static", [make_layer(s_tree)], s_pkgs, repos.wolfi, ["apko static"], []),
            ("static-arm64", [make_layer(s64_tree)], s64_pkgs, repos.wolfi_arm64,
             ["apko static (arm64)"], []),
            ("alpine-static", [make_layer(as_tree)], as_pkgs, repos.alpine,
             ["distroless alpine"], []),
            ("alpine-pinned", [make_layer(p_tree)], p_pkgs, repos.alpine,
             ["apk-fixture alpine, world pins ca-certificates-bundle@edge"], ["/bin/sh"]),
        ]  # fmt: skip
        for kind, layers, pkgs, repo, history, cmd in plans:
            write_layout(work / kind, layers, history, cmd, repo.arch)
            available = list(repo.packages)
            if kind == "alpine-pinned":  # what the pin makes apk choose
                available += [p for p in repos.alpine_edge.packages if p.name == PINNED]
            report = trivy_report(kind, pkgs, available, layers, repo.arch)
            (work / f"{kind}.report.json").write_text(json.dumps(report, indent=2) + "\n")
            fixed = {v["PkgName"]: v["FixedVersion"]
                     for v in report["Results"][0]["Vulnerabilities"]}  # fmt: skip
            style: DbStyle = "apko" if repo is not repos.alpine else "apk-tools"
            meta[kind] = {
                "installed": {p.name: p.version for p in pkgs},
                "fixed": fixed,
                "repo_url": repo.url(MIRROR_BASE),
                "db_style": style,
                # what the DB block of each repository package looks like once installed
                "db_entries": {
                    f"{p.name}-{p.version}": installed_entry(p, style) for p in available
                },
            }
        (work / "fixtures.json").write_text(json.dumps(meta, indent=2) + "\n")
        if target.exists() and not (target / "fixtures.json").exists():
            shutil.rmtree(target)  # a partial tree from an interrupted older build
        try:
            work.rename(target)  # atomic: readers see all of it or nothing
        except OSError:
            if not (target / "fixtures.json").exists():
                raise
            # Another process finished first; the output is deterministic, keep theirs.


def cached_fixtures() -> Path:
    """The cache directory holding every apk fixture; built on first use."""
    deb = busybox_deb()
    target = CACHE_DIR / f"apk-fixtures-{_cache_key(deb)}"
    if not (target / "fixtures.json").exists():
        build_all(target, load_busybox(deb))
    return target


def build_apk_image(out: Path, kind: Kind, tag: str = "latest") -> ApkImage:
    """Copy the cached layout of `kind` to `out` (tagged `tag`); see ApkImage."""
    from tools.build_image import copy_cached_layout

    if kind not in KINDS:
        raise ApkImageError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    cache = cached_fixtures()
    meta = json.loads((cache / "fixtures.json").read_text())[kind]
    copy_cached_layout(cache / kind, out, tag)
    return ApkImage(
        kind=kind,
        layout=out,
        tag=tag,
        repo_root=cache / "repo",
        repo_url=meta["repo_url"],
        keys_dir=cache / "repo" / "keys",
        installed=meta["installed"],
        fixed=meta["fixed"],
        report=cache / f"{kind}.report.json",
        db_path=DB_PATHS[kind],
        db_entries=meta["db_entries"],
    )


def copy_repo(dest: Path) -> Path:
    """A private copy of the repository tree (tests that tamper with files use one)."""
    src = cached_fixtures() / "repo"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build an apk test image (OCI layout) or repository.")
    p.add_argument("kind", choices=[*KINDS, "repo"])
    p.add_argument("out", help="OUT_DIR[:TAG] (for `repo`: a directory)")
    p.add_argument("--report", type=Path, default=None, help="also write the Trivy report here")
    a = p.parse_args(argv)
    if a.kind == "repo":
        print(copy_repo(Path(a.out)))
        return 0
    out, _, tag = a.out.partition(":")
    img = build_apk_image(Path(out), a.kind, tag or "latest")
    if a.report:
        shutil.copyfile(img.report, a.report)
    print(json.dumps({"layout": str(img.layout), "repo_root": str(img.repo_root),
                      "repo_url": img.repo_url, "installed": img.installed,
                      "fixed": img.fixed}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
