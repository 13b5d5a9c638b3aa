"""Issue #4, sandboxes end to end: `ocipatch patch --sandbox bwrap|proot|auto|none`, run as
`nobody` (no subuid/subgid ranges), each backend forced.

bwrap, proot and auto patch the hermetic test image (tests/hermetic.py: Debian 12 minbase plus
tiny ocp-* packages from a signed loopback repository) where the repository's ocp-hostile 2.0
has a postinst that tries to reach the host: write to world-writable host directories (by
absolute path, by climbing with `..`, through /proc/PID/root), read a secret in the invoking
user's home, see a host socket. It records what it saw in a file of the rootfs, which the patch
layer then carries. `auto` also runs where user namespaces cannot be made (ocipatch inside
`bwrap --disable-userns`) and must fall back to proot, saying so. `none` patches the real
two-layer Debian image without running anything from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import hermetic as h
from tests.archive import pending_updates, trivy_report
from tests.mtimes import check_layer_times, expected_layer_time, top_symlinks
from tests.plugins.aptrepo import UNPRIVILEGED_UID, scratch_dir
from tests.plugins.images import skopeo, trivy_packages
from tests.test_airgap import deb_headers
from tools.aptrepo import DebFile, DebSpec, RepoServer, Signer, build_deb, build_repo

ROOT = Path(__file__).resolve().parents[1]
OCIPATCH = ROOT / ".venv" / "bin" / "ocipatch"
HOSTILE = "ocp-hostile"
SEEN = "usr/share/ocp-hostile/seen"  # written by the hostile postinst, inside the rootfs
UNSHARED = ("wrote", "appended", "climbed", "proc-root", "secret visible", "socket visible")


@dataclass
class Env:
    ref: str
    repo: str
    work: Path
    canaries: list[Path]  # world-writable host directories the postinst tries to write to
    secret: Path  # in the home of the user running ocipatch
    installed: dict[str, str]

    def report(self, name: str, fixed: dict[str, str]) -> Path:
        path = self.work / f"{name}.json"
        path.write_text(json.dumps(trivy_report(self.installed, fixed)))
        path.chmod(0o644)
        return path


def hostile_postinst(canaries: list[Path], secret: Path, sock: Path) -> str:
    tries = "".join(
        f"""
d={d}
echo pwned > "$d/escaped" 2>/dev/null && echo "wrote $d"
echo pwned >> "$d/sentinel" 2>/dev/null && echo "appended $d"
(cd / && echo pwned > "../../../../..$d/escaped-climb") 2>/dev/null && echo "climbed $d"
for p in /proc/[0-9]*; do
  echo pwned > "$p/root$d/escaped-proc" 2>/dev/null && echo "proc-root $p $d"
done"""
        for d in canaries
    )
    return f"""#!/bin/sh
# A maintainer script trying to reach the host; it records what it saw inside the rootfs.
mkdir -p /usr/share/ocp-hostile
{{
{tries}
[ -e {secret} ] && echo "secret visible"
[ -S {sock} ] && echo "socket visible"
echo "uid $(id -u)"
echo "os $(. /etc/os-release && echo "$ID $VERSION_ID")"
echo "home [$(ls -A /root | tr '\\n' ' ')]"
echo "tmp [$(ls -A /tmp | tr '\\n' ' ')]"
test -r /proc/self/status && echo "proc ok"
echo x > /dev/null && echo "dev/null ok"
test -r /etc/resolv.conf && echo "resolv $(md5sum < /etc/resolv.conf | cut -d' ' -f1)"
}} > /{SEEN} 2>&1
exit 0
"""


def _hostile(version: str, postinst: str | None = None) -> DebSpec:
    return DebSpec(
        HOSTILE,
        version,
        files=[DebFile(f"/usr/share/doc/{HOSTILE}/version", f"{version}\n")],
        scripts={"postinst": postinst} if postinst else {},
    )


def _public_dir(prefix: str, parent: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    d.chmod(0o777)  # world-writable: only the sandbox, not permissions, may keep a script out
    (d / "sentinel").write_text("untouched\n")
    (d / "sentinel").chmod(0o666)
    return d


@pytest.fixture(scope="module")
def env(debian_layout: Path, registry: Any, apt_signer: Signer) -> Iterator[Env]:
    work = Path(tempfile.mkdtemp(prefix="ocipatch-backends-", dir=scratch_dir()))
    work.chmod(0o777)
    home = work / "home"
    home.mkdir(mode=0o777)
    home.chmod(0o777)
    secret = home / "secret"
    secret.write_text("host secret\n")
    secret.chmod(0o644)
    # /tmp is private in every backend, /dev/shm (where scratch_dir usually is) was the host's
    # under proot before it got a private /dev, /var/tmp is a plain host directory.
    canaries = [_public_dir("ocipatch-canary-", d) for d in ("/var/tmp", "/tmp", str(work))]
    sock_dir = _public_dir("ocipatch-sock-", "/tmp")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_dir / "sock"))
    listener.listen()
    server: RepoServer | None = None
    try:
        postinst = hostile_postinst(canaries, secret, sock_dir / "sock")
        v1 = [build_deb(s, work / "v1") for s in [*h.image_specs(), _hostile("1.0")]]
        v2 = [build_deb(s, work / "v2") for s in [*h.repo_specs(), _hostile("2.0", postinst)]]
        repo = build_repo(work / "repo", v2, signer=apt_signer)
        server = RepoServer(repo.root).start()
        (work / "build").mkdir()
        layout = h.build_test_image(
            debian_layout,
            "12",
            work / "layout",
            "1",
            debs=v1,
            repo=repo,
            url=server.url,
            work=work / "build",
        )
        shutil.rmtree(work / "build")
        repository = f"{registry.host}/backends/ocp"
        skopeo(
            "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:1", f"docker://{repository}:1"
        )
        installed = {s.name: s.version for s in [*h.image_specs(), _hostile("1.0")]}
        yield Env(f"{repository}:1", repository, work, canaries, secret, installed)
    finally:
        if server is not None:
            server.stop()
        listener.close()
        for d in [*canaries, sock_dir, work]:
            shutil.rmtree(d, ignore_errors=True)


def run_ocipatch(
    env: Env, *args: str, cache: str, wrap: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """`ocipatch patch --json` as nobody, HOME in the work directory, progress on stderr."""
    cmd = [
        "setpriv",
        f"--reuid={UNPRIVILEGED_UID}",
        f"--regid={UNPRIVILEGED_UID}",
        "--clear-groups",
        *wrap,
        str(OCIPATCH),
        "patch",
        "--json",
        "--cache-dir",
        str(env.work / cache),
        *args,
    ]
    environ = {
        "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": str(env.work / "home"),
        "LANG": "C.UTF-8",
    }
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=environ, cwd="/")


def patch_layer(ref: str, work: Path, name: str) -> tuple[dict[str, tarfile.TarInfo], Path]:
    layout = work / f"pulled-{name}"
    skopeo("copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:p")
    layers = json.loads(skopeo("inspect", f"oci:{layout}:p"))["Layers"]
    tar = layout / "blobs/sha256" / layers[-1].split(":")[1]
    with tarfile.open(tar) as t:
        return {m.name: m for m in t.getmembers()}, tar


def check_contained(env: Env, tar: Path) -> list[str]:
    """The hostile postinst ran, saw only the rootfs, and reached nothing of the host."""
    with tarfile.open(tar) as t:
        f = t.extractfile(SEEN)
        assert f is not None, "the postinst ran and its note is in the patch layer"
        seen = f.read().decode().splitlines()
    assert not [ln for ln in seen if ln.startswith(UNSHARED)], seen
    for d in env.canaries:
        assert sorted(p.name for p in d.iterdir()) == ["sentinel"], d
        assert (d / "sentinel").read_text() == "untouched\n", d
    assert "uid 0" in seen and "os debian 12" in seen, seen
    assert "proc ok" in seen and "dev/null ok" in seen, seen
    home = next(ln for ln in seen if ln.startswith("home ["))
    assert "secret" not in home and ".bashrc" in home, home  # the image's /root
    tmp = next(ln for ln in seen if ln.startswith("tmp ["))
    assert not any(d.name in tmp for d in env.canaries), tmp  # a private /tmp
    resolv = Path("/etc/resolv.conf")
    if resolv.is_file():
        assert f"resolv {hashlib.md5(resolv.read_bytes()).hexdigest()}" in seen, seen
    return seen


def check_patched(env: Env, r: subprocess.CompletedProcess[str], tag: str) -> None:
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "patched"
    assert {u["name"]: u["to"] for u in out["updated"]} == {"ocp-lib": "2.0", HOSTILE: "2.0"}
    members, tar = patch_layer(f"{env.repo}:{tag}", env.work, tag)
    tool = members[h.TOOL.lstrip("/")]
    assert (tool.uid, tool.gid, tool.mode) == (0, h.SHADOW_GID, 0o2755), "the package's owner"
    check_contained(env, tar)


@pytest.mark.parametrize("backend", ["bwrap", "proot"])
def test_forced_backend(env: Env, backend: str) -> None:
    report = env.report(backend, {"ocp-lib": "2.0", HOSTILE: "2.0"})
    r = run_ocipatch(
        env,
        "-i",
        env.ref,
        "-r",
        str(report),
        "-t",
        backend,
        "--sandbox",
        backend,
        cache=f"cache-{backend}",
    )
    assert f"Running apt in {backend}" in r.stderr, r.stderr
    check_patched(env, r, backend)


def test_auto_without_user_namespaces_picks_proot(env: Env) -> None:
    """ocipatch itself runs in a user namespace that may create no further one (bwrap
    --disable-userns), as in many unprivileged containers: auto must use proot."""
    bwrap = shutil.which("bwrap")
    assert bwrap is not None
    wrap = [bwrap, "--unshare-user", "--disable-userns", "--dev-bind", "/", "/", "--"]
    probe = run_ocipatch(env, "--help", cache="unused", wrap=wrap)
    assert probe.returncode == 0, probe.stderr
    nested = subprocess.run(
        [
            "setpriv",
            f"--reuid={UNPRIVILEGED_UID}",
            f"--regid={UNPRIVILEGED_UID}",
            "--clear-groups",
            *wrap,
            bwrap,
            "--unshare-user",
            "--dev-bind",
            "/",
            "/",
            "true",
        ],
        capture_output=True,
        text=True,
    )
    assert nested.returncode != 0, "no user namespace can be made in there"

    report = env.report("auto", {"ocp-lib": "2.0", HOSTILE: "2.0"})
    r = run_ocipatch(
        env,
        "-i",
        env.ref,
        "-r",
        str(report),
        "-t",
        "auto",
        "--sandbox",
        "auto",
        cache="cache-auto",
        wrap=wrap,
    )
    assert "Running apt in proot" in r.stderr, r.stderr
    assert "sandbox bwrap:" in r.stderr, "auto says why it passed bwrap over"
    check_patched(env, r, "auto")


def test_sandbox_none(debian_two_layer_layout: Path, registry: Any, env: Env) -> None:
    """The real two-layer Debian image, nothing of it run: distro/deb/repos resolves and verifies,
    the payloads are unpacked directly; trivy sees the fixed versions, the notes say that no
    maintainer script ran, the layer carries the packages' owners and modes."""
    ref = f"{registry.host}/backends/debian:12"
    skopeo(
        "copy",
        "-q",
        "--dest-tls-verify=false",
        f"oci:{debian_two_layer_layout}:12",
        f"docker://{ref}",
    )
    r = subprocess.run(
        [str(OCIPATCH), "inspect", "--json", ref, "--cache-dir", str(env.work / "cache-inspect")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    installed = {p["name"]: p["version"] for p in json.loads(r.stdout)["packages"]}
    needed = pending_updates(installed)
    assert {"openssl", "libssl3"} <= set(needed)
    report = env.work / "none.json"
    report.write_text(json.dumps(trivy_report(installed, needed)))
    report.chmod(0o644)
    r = run_ocipatch(
        env, "-i", ref, "-r", str(report), "-t", "12-none", "--sandbox", "none", cache="cache-none"
    )
    assert r.returncode == 0, r.stderr
    assert "no maintainer script will run" in r.stderr, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "patched"
    assert {u["name"]: u["to"] for u in out["updated"]} == needed
    assert any(n.startswith("--sandbox none: no maintainer script ran") for n in out["notes"])

    layout = env.work / "pulled-none"
    skopeo("copy", "-q", "--src-tls-verify=false", f"docker://{ref}-none", f"oci:{layout}:p")
    seen = trivy_packages(layout, env.work / "trivy")
    for name, version in needed.items():
        assert seen[name] == version, name
    layers = json.loads(skopeo("inspect", f"oci:{layout}:p"))["Layers"]
    with tarfile.open(layout / "blobs/sha256" / layers[-1].split(":")[1]) as t:
        members = {m.name: m for m in t.getmembers()}
    debs = [
        p
        for p in (env.work / "cache-none").rglob("*")
        if p.is_file() and p.open("rb").read(8) == b"!<arch>\n"
    ]
    headers = deb_headers(debs)
    checked = 0
    for name, m in members.items():
        hd = headers.get(name.rstrip("/"))
        if hd is not None and (m.isfile() or m.isdir()):
            assert (m.uid, m.gid, m.mode & 0o7777) == (hd.uid, hd.gid, hd.mode & 0o7777), name
            checked += 1
    assert checked > 100
    assert os.stat(env.work / "cache-none").st_uid == UNPRIVILEGED_UID  # really rootless
    # Times: the packages' own (from their .debs), the layer time for the rest.
    blobs = layout / "blobs/sha256"
    config = json.loads(skopeo("inspect", "--config", f"oci:{layout}:p"))
    dated = check_layer_times(
        blobs / layers[-1].split(":")[1],
        debs,
        expected_layer_time(debs, config.get("created")),
        top_symlinks(*(blobs / d.split(":")[1] for d in layers[:-1])),
    )
    assert len(dated) > 100
