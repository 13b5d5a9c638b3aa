"""Issue #4, air-gapped: patch the real two-layer Debian 12 image inside a network namespace
that has nothing but loopback, from a local registry and a partial replica of the Debian archive
(tools/mirror.py: the archive's signed InRelease/Release and Packages.xz copied byte for byte,
plus only the .debs the patch needs), both served on loopback inside the namespace.

The image's own sources name the real archive; `--repo-mirror` redirects apt for the patch only.
apt's signature checks stay on: the image's own keyring verifies the copied InRelease. With no
route out of the namespace, any attempt to reach anything else would fail the run. ocipatch runs
as `nobody` (no subuid/subgid ranges): the namespace is made as root, the patch is rootless.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from ocipatch.distro.deb.repos.resolve import InstallItem, installed_from_rootfs
from ocipatch.fs.unpack import unpack
from ocipatch.oci.cache import BlobCache
from ocipatch.oci.reference import parse_reference
from ocipatch.oci.remote import RegistryOptions
from ocipatch.oci.transport import open_image
from tests.archive import trivy_report
from tests.plugins.aptrepo import UNPRIVILEGED_UID, scratch_dir
from tests.plugins.images import trivy_packages, umoci_unpack
from tools.mirror import PartialMirror, build_mirror

ROOT = Path(__file__).resolve().parents[1]
OCIPATCH = ROOT / ".venv" / "bin" / "ocipatch"
REGISTRY_PORT = 5000  # a fresh network namespace: every port is free
MIRROR_PORT = 8080
SOURCES = "etc/apt/sources.list.d/debian.sources"
FIRST = ("openssl", "libssl3")


class NetNS:
    """A network namespace with only loopback, held open by a `sleep` made with `unshare -n`;
    commands enter it with nsenter (and drop to `nobody` with setpriv)."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(["unshare", "--net", "--", "sleep", "infinity"])
        mine = os.readlink("/proc/self/ns/net")
        for _ in range(200):  # unshare has to run before the link changes
            try:
                if os.readlink(f"/proc/{self.holder.pid}/ns/net") != mine:
                    break
            except OSError:
                pass
            if self.holder.poll() is not None:
                raise RuntimeError("unshare --net failed: no network namespaces here")
            subprocess.run(["sleep", "0.01"], check=True)
        self.path = f"/proc/{self.holder.pid}/ns/net"
        self.run(["ip", "link", "set", "lo", "up"], check=True)

    def argv(self, argv: list[str], user: bool = False) -> list[str]:
        drop = (
            [
                "setpriv",
                f"--reuid={UNPRIVILEGED_UID}",
                f"--regid={UNPRIVILEGED_UID}",
                "--clear-groups",
            ]
            if user
            else []
        )
        return ["nsenter", f"--net={self.path}", *drop, *argv]

    def run(
        self, argv: list[str], *, user: bool = False, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        kw.setdefault("capture_output", True)
        return subprocess.run(self.argv(argv, user), text=True, timeout=600, **kw)

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


@dataclass
class Airgap:
    ns: NetNS
    work: Path  # world-writable: `nobody` writes its cache and home here
    mirror: PartialMirror
    items: list[InstallItem]  # what the replica holds for the patch
    installed: dict[str, str]
    layers: list[str]
    sources: bytes  # the image's own debian.sources
    ref: str
    mirror_log: Path

    @property
    def needed(self) -> dict[str, str]:
        return {i.name: i.version for i in self.items if i.name in self.installed}

    def report(self, name: str, names: tuple[str, ...] | None = None) -> Path:
        fixed = {n: v for n, v in self.needed.items() if names is None or n in names}
        path = self.work / f"{name}.json"
        path.write_text(json.dumps(trivy_report(self.installed, fixed)))
        path.chmod(0o644)
        return path

    def patch(self, *args: str, cache: str) -> subprocess.CompletedProcess[str]:
        """`ocipatch patch --json` as nobody inside the namespace (progress on stderr)."""
        home = self.work / "home"
        env = {
            "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(home),
            "LANG": "C.UTF-8",
        }
        argv = [
            str(OCIPATCH),
            "patch",
            "--json",
            "-i",
            self.ref,
            "--cache-dir",
            str(self.work / cache),
            *args,
        ]
        return self.ns.run(argv, user=True, env=env, cwd="/")

    def copy_of_mirror(self, name: str) -> Path:
        """A hard-linked copy of the replica (change a file by replacing it, never in place)."""
        dest = self.work / name
        shutil.copytree(self.mirror.root, dest, copy_function=os.link)
        return dest

    def tag_absent(self, tag: str) -> bool:
        r = self.ns.run(
            [
                "skopeo",
                "inspect",
                "--tls-verify=false",
                f"docker://127.0.0.1:{REGISTRY_PORT}/airgap/debian:{tag}",
            ]
        )
        return r.returncode != 0 and "manifest unknown" in r.stderr

    def pull(self, tag: str) -> Path:
        layout = self.work / f"pulled-{tag}"
        r = self.ns.run(
            [
                "skopeo",
                "copy",
                "-q",
                "--src-tls-verify=false",
                f"docker://127.0.0.1:{REGISTRY_PORT}/airgap/debian:{tag}",
                f"oci:{layout}:p",
            ]
        )
        assert r.returncode == 0, r.stderr
        return layout


def _no_subids(user: str) -> bool:
    for f in ("/etc/subuid", "/etc/subgid"):
        p = Path(f)
        if p.is_file() and any(
            ln.split(":")[0] in (user, str(UNPRIVILEGED_UID)) for ln in p.read_text().splitlines()
        ):
            return False
    return True


@pytest.fixture(scope="module")
def env(debian_two_layer_layout: Path) -> Iterator[Airgap]:
    if os.geteuid() != 0 or shutil.which("nsenter") is None:
        pytest.skip("making a network namespace needs root and util-linux's unshare/nsenter")
    assert _no_subids("nobody"), "the rootless runs must not rely on subordinate id ranges"
    work = Path(tempfile.mkdtemp(prefix="ocipatch-airgap-", dir=scratch_dir()))
    work.chmod(0o777)
    (work / "home").mkdir(mode=0o777)
    (work / "home").chmod(0o777)
    ns = NetNS()
    server: subprocess.Popen[str] | None = None
    try:
        image = open_image(
            parse_reference(f"oci:{debian_two_layer_layout}:12"),
            RegistryOptions(),
            BlobCache(work / "blobs"),
        )
        rootfs = work / "rootfs"
        unpack(image.layers, rootfs)
        installed = {n: p.version for n, p in installed_from_rootfs(rootfs).items()}
        mirror, items = build_mirror(work / "mirror", rootfs)
        assert set(FIRST) <= {i.name for i in items}, "bookworm main lags -security for openssl"
        sources = (rootfs / SOURCES).read_bytes()
        shutil.rmtree(rootfs)

        r = ns.run(
            [
                sys.executable,
                str(ROOT / "tools/registry"),
                "start",
                "--port",
                str(REGISTRY_PORT),
                "--dir",
                str(work / "registry"),
            ]
        )
        assert r.returncode == 0, r.stderr
        log = work / "mirror.log"
        server = subprocess.Popen(
            ns.argv(
                [
                    sys.executable,
                    "-m",
                    "tools.mirror",
                    "serve",
                    str(mirror.root),
                    "--port",
                    str(MIRROR_PORT),
                    "--log",
                    str(log),
                ]
            ),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        assert server.stdout.readline().strip() == f"http://127.0.0.1:{MIRROR_PORT}"
        ref = f"127.0.0.1:{REGISTRY_PORT}/airgap/debian:12"
        r = ns.run(
            [
                "skopeo",
                "copy",
                "-q",
                "--dest-tls-verify=false",
                f"oci:{debian_two_layer_layout}:12",
                f"docker://{ref}",
            ]
        )
        assert r.returncode == 0, r.stderr
        r = ns.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"])
        assert r.returncode == 0, r.stderr
        layers = json.loads(r.stdout)["Layers"]
        yield Airgap(ns, work, mirror, items, installed, layers, sources, ref, log)
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        subprocess.run(
            [sys.executable, str(ROOT / "tools/registry"), "stop", "--dir", str(work / "registry")],
            capture_output=True,
        )
        ns.close()
        shutil.rmtree(work, ignore_errors=True)


def one_line_error(r: subprocess.CompletedProcess[str], code: int) -> str:
    assert r.returncode == code, (r.returncode, r.stderr)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("ocipatch: error:")]
    assert len(errors) == 1, r.stderr
    return errors[0]


def deb_headers(debs: list[Path]) -> dict[str, tarfile.TarInfo]:
    """path -> data.tar header of every entry of the packages, read with dpkg-deb (not with
    ocipatch's own reader)."""
    out: dict[str, tarfile.TarInfo] = {}
    for deb in debs:
        data = subprocess.run(
            ["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as t:
            for m in t.getmembers():
                out[m.name.removeprefix("./").rstrip("/")] = m
    return out


@pytest.fixture(scope="module")
def http_patch(env: Airgap) -> dict[str, Any]:
    """The whole report, through the loopback HTTP replica, one `--repo-mirror` per source URI."""
    report = env.report("all")
    r = env.patch(
        "-r",
        str(report),
        "-t",
        "12-http",
        *env.mirror.mirror_args(f"http://127.0.0.1:{MIRROR_PORT}"),
        cache="cache-http",
    )
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    out["stderr"] = r.stderr
    return out


def test_patch_with_only_loopback(env: Airgap, http_patch: dict[str, Any]) -> None:
    out = http_patch
    assert out["status"] == "patched"
    assert {u["name"]: u["to"] for u in out["updated"]} == {i.name: i.version for i in env.items}
    assert len(out["vulnerabilities_fixed"]) == len(env.needed)
    assert "Running apt in bwrap" in out["stderr"]

    # The namespace had loopback and nothing else: no other interface, no route.
    links = env.ns.run(["ip", "-o", "link", "show"]).stdout.splitlines()
    assert [ln.split(":")[1].strip() for ln in links] == ["lo"]
    assert env.ns.run(["ip", "route", "show"]).stdout.strip() == ""
    # apt asked the replica only for what it holds: signed InRelease files, the indices by
    # hash, the pool files; nothing missing (no Translation files, no other architecture).
    requests = env.mirror_log.read_text().splitlines()
    # (ocipatch plans from the signed indices before apt runs, so each may be asked twice, the
    # second time answered 304 Not Modified.)
    assert requests and all(
        r.startswith("GET /debian") and r.endswith((" 200", " 304")) for r in requests
    )
    assert len({r.split()[1] for r in requests if r.split()[1].endswith("/InRelease")}) == 3
    assert len({r.split()[1] for r in requests if "/by-hash/SHA256/" in r}) == 3
    assert len({r.split()[1] for r in requests if ".deb" in r.split()[1]}) == len(env.items)

    layout = env.pull("12-http")
    info = json.loads(
        subprocess.run(
            ["skopeo", "inspect", f"oci:{layout}:p"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert info["Layers"][:-1] == env.layers and len(info["Layers"]) == len(env.layers) + 1
    seen = trivy_packages(layout, env.work / "trivy")
    for name, version in env.needed.items():
        assert seen[name] == version, name

    # The patched image keeps its own sources: the real archive, not the mirror.
    with tarfile.open(layout / "blobs/sha256" / info["Layers"][-1].split(":")[1]) as t:
        members = {m.name: m for m in t.getmembers()}
    assert not any(n.startswith("etc/apt/sources.list") for n in members)
    bundle = umoci_unpack(layout, "p", env.work / "bundle-http")
    assert (bundle / SOURCES).read_bytes() == env.sources
    for uri in env.mirror.origins:
        assert f"URIs: {uri}\n" in env.sources.decode()

    # Rootless, yet the layer carries the owners and modes the packages define.
    debs = [env.mirror.root / i.url.removeprefix(env.mirror.file_url + "/") for i in env.items]
    headers = deb_headers(debs)
    checked = 0
    for name, m in members.items():
        h = headers.get(name.rstrip("/"))
        if h is None or not (m.isfile() or m.isdir()):
            continue
        assert (m.uid, m.gid, m.mode & 0o7777) == (h.uid, h.gid, h.mode & 0o7777), name
        checked += 1
    assert checked > 100


def test_file_mirror_gives_the_same_layer(env: Airgap, http_patch: dict[str, Any]) -> None:
    """One prefix for the whole host, to a file:// tree (bound read-only into the sandbox)."""
    hosts = {f"{urlsplit(u).scheme}://{urlsplit(u).netloc}" for u in env.mirror.origins}
    assert len(hosts) == 1
    report = env.report("all-file")
    r = env.patch(
        "-r",
        str(report),
        "-t",
        "12-file",
        "--repo-mirror",
        f"{hosts.pop()}={env.mirror.file_url}",
        cache="cache-file",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["updated"] == http_patch["updated"]
    a = json.loads(
        env.ns.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{env.ref}-http"]).stdout
    )
    b = json.loads(
        env.ns.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{env.ref}-file"]).stdout
    )
    assert a["Layers"][-1] == b["Layers"][-1], "same packages, same patch layer"


def _flip_last_byte(path: Path) -> None:
    data = path.read_bytes()
    path.unlink()  # a hard link: never change the replica itself
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))


@pytest.mark.parametrize("what", ["index", "inrelease", "deb"])
def test_tampered_mirror_is_refused(env: Airgap, what: str) -> None:
    tree = env.copy_of_mirror(f"tampered-{what}")
    security = next(p for u, p in env.mirror.origins.items() if u.endswith("-security"))
    if what == "index":
        d = tree / security / "dists/bookworm-security/main/binary-amd64"
        for f in [d / "Packages.xz", *(d / "by-hash/SHA256").iterdir()]:
            _flip_last_byte(f)
    elif what == "inrelease":
        # One letter of the signed text changed (apt does not fall back to Release.gpg then).
        f = next(tree.glob("*/dists/bookworm/InRelease"))
        data = f.read_bytes()
        changed = data.replace(b"\nLabel: Debian\n", b"\nLabel: Debiam\n", 1)
        assert changed != data
        f.unlink()
        f.write_bytes(changed)
    else:
        openssl = next(i for i in env.items if i.name == "openssl")
        _flip_last_byte(tree / openssl.url.removeprefix(env.mirror.file_url + "/"))
    report = env.report(f"tamper-{what}", FIRST)
    mirrors = [
        a for f, t in env.mirror.mirrors(f"file://{tree}") for a in ("--repo-mirror", f"{f}={t}")
    ]
    r = env.patch("-r", str(report), "-t", f"tamper-{what}", *mirrors, cache=f"cache-t-{what}")
    msg = one_line_error(r, 7)
    if what == "inrelease":
        assert "signature does not verify with the image's keyring" in msg, msg
        assert "BADSIG" in msg and "bookworm InRelease" in msg, msg
    else:
        assert "Hash Sum mismatch" in msg and "does not match its signed index" in msg, msg
        assert ("openssl_" if what == "deb" else "bookworm-security") in msg, msg
    assert env.tag_absent(f"tamper-{what}"), "nothing pushed"


def test_unsigned_mirror_needs_insecure_repos(env: Airgap) -> None:
    tree = env.copy_of_mirror("unsigned")
    for f in [*tree.glob("*/dists/*/InRelease"), *tree.glob("*/dists/*/Release.gpg")]:
        f.unlink()
    mirrors = [
        a for f, t in env.mirror.mirrors(f"file://{tree}") for a in ("--repo-mirror", f"{f}={t}")
    ]
    report = env.report("unsigned", FIRST)
    r = env.patch("-r", str(report), "-t", "unsigned", *mirrors, cache="cache-unsigned")
    msg = one_line_error(r, 7)
    assert "is not signed" in msg and "--insecure-repos" in msg, msg
    assert not any("WARNING" in ln for ln in r.stderr.splitlines())
    assert env.tag_absent("unsigned")

    r = env.patch(
        "-r", str(report), "-t", "unsigned", "--insecure-repos", *mirrors, cache="cache-unsigned"
    )
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if "WARNING" in ln]
    assert len(warnings) == 1 and "--insecure-repos" in warnings[0], r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "patched"
    assert {u["name"] for u in out["updated"]} >= set(FIRST)


def test_sandbox_none_through_the_mirror(env: Airgap) -> None:
    """The pure-Python path (ocipatch.distro.deb.repos + direct unpacking) honours --repo-mirror too."""
    # (the log exists once the mirror served something: not yet when this test runs alone)
    before = len(env.mirror_log.read_text().splitlines()) if env.mirror_log.exists() else 0
    report = env.report("none", FIRST)
    r = env.patch(
        "-r",
        str(report),
        "-t",
        "12-none",
        "--sandbox",
        "none",
        *env.mirror.mirror_args(f"http://127.0.0.1:{MIRROR_PORT}"),
        cache="cache-none",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {u["name"] for u in out["updated"]} >= set(FIRST)
    assert any(n.startswith("--sandbox none: no maintainer script ran") for n in out["notes"])
    requests = env.mirror_log.read_text().splitlines()[before:]
    assert requests and all(ln.endswith((" 200", " 304")) for ln in requests), requests
    assert len({ln.split()[1] for ln in requests if ln.split()[1].endswith("/InRelease")}) == 3
