"""pytest fixtures: aptrepo (signed local apt repositories) and Debian minbase rootfs trees.

- `apt_signer` (session): one throwaway gpg key for the whole run.
- `apt_repo_factory`: `make([DebSpec | Path, ...], **build_repo_options) -> ServedRepo`, built
  under tmp_path and served on 127.0.0.1 until the test ends.
- `debian_rootfs_tar` (session): the cached bookworm minbase tarball (tools/debian_rootfs.py);
  skips when it cannot be built here (not root, no mmdebstrap, no archive).
- `debian_rootfs`: `make(owner=UID) -> Path`, the tarball unpacked into a fresh world-traversable
  directory under /tmp and chowned to `owner` (default: the current user), like the extractor
  leaves it: every file owned by the invoking user.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import ocipatch.errors as errors
from ocipatch.sandbox import base
from ocipatch.sandbox.select import select_sandbox
from tools.aptrepo import AptRepo, DebSpec, RepoServer, Signer, build_deb, build_repo
from tools.debian_rootfs import RootfsBuildError, build_rootfs_tarball


@dataclass
class ServedRepo:
    repo: AptRepo
    server: RepoServer

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def suite(self) -> str:
        return self.repo.suite

    @property
    def keyring(self) -> Path:
        return self.repo.keyring

    @property
    def root(self) -> Path:
        return self.repo.root

    def write_sources(self, rootfs: Path, name: str = "ocipatch-test") -> Path:
        """deb822 .sources with Signed-By, and the keyring, written into `rootfs`."""
        return self.repo.write_sources(rootfs, self.url, name)

    def apt_options(self, name: str = "ocipatch-test") -> list[str]:
        return AptRepo.apt_options(name)

    def tamper(self, path: str, change: bytes | Callable[[bytes], bytes]) -> None:
        self.server.tamper(path, change)


@pytest.fixture(scope="session")
def apt_signer() -> Iterator[Signer]:
    with Signer() as signer:
        yield signer


@pytest.fixture
def apt_repo_factory(
    tmp_path_factory: pytest.TempPathFactory, apt_signer: Signer
) -> Iterator[Callable[..., ServedRepo]]:
    servers: list[RepoServer] = []

    def make(packages: Sequence[DebSpec | Path], **options: Any) -> ServedRepo:
        base = tmp_path_factory.mktemp("aptrepo")
        debs = [p if isinstance(p, Path) else build_deb(p, base / "debs") for p in packages]
        repo = build_repo(base / "repo", debs, signer=apt_signer, **options)
        server = RepoServer(repo.root).start()
        servers.append(server)
        return ServedRepo(repo, server)

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def debian_rootfs_tar() -> Path:
    if os.geteuid() != 0:
        pytest.skip("building the Debian rootfs needs root (mmdebstrap --mode=root)")
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed")
    try:
        return build_rootfs_tarball()
    except RootfsBuildError as e:
        pytest.skip(f"cannot build the Debian minbase rootfs: {e}")


def scratch_dir() -> str:
    """Where to unpack rootfs trees: $OCIPATCH_TEST_SCRATCH, else /dev/shm when it has room
    (a tmpfs unpacks the 180 MB minbase in 0.3 s instead of several on a slow disk), else /tmp.
    Not tmp_path: an unprivileged test user must be able to reach it."""
    env = os.environ.get("OCIPATCH_TEST_SCRATCH")
    if env:
        return env
    try:
        st = os.statvfs("/dev/shm")
        if os.access("/dev/shm", os.W_OK) and st.f_bavail * st.f_frsize > 4 << 30:
            return "/dev/shm"
    except OSError:
        pass
    return "/tmp"


@pytest.fixture
def debian_rootfs(debian_rootfs_tar: Path) -> Iterator[Callable[..., Path]]:
    made: list[Path] = []

    def make(owner: int | None = None, group: int | None = None) -> Path:
        parent = Path(tempfile.mkdtemp(prefix="ocipatch-rootfs-", dir=scratch_dir()))
        parent.chmod(0o755)
        made.append(parent)
        root = parent / "rootfs"
        root.mkdir()
        subprocess.run(
            ["tar", "-C", str(root), "--numeric-owner", "-xf", str(debian_rootfs_tar)],
            check=True,
        )
        uid = os.geteuid() if owner is None else owner
        gid = (os.getegid() if owner is None else owner) if group is None else group
        subprocess.run(["chown", "-hR", f"{uid}:{gid}", str(root)], check=True)
        return root

    yield make
    for parent in made:
        shutil.rmtree(parent, ignore_errors=True)


# --- running a sandbox as another (unprivileged) user -----------------------------------------

UNPRIVILEGED_UID = 65534  # nobody: present on every Debian system, owns nothing

_DRIVER = r"""
import json, sys
from pathlib import Path
from ocipatch.errors import OcipatchError
from ocipatch.sandbox.base import RunSpec
from ocipatch.sandbox.select import select_sandbox
req = json.loads(sys.argv[1])
spec = RunSpec(Path(req["rootfs"]), req["argv"], env=req["env"], network=req["network"],
               binds=[(Path(h), i, ro) for h, i, ro in req["binds"]], cwd=req["cwd"],
               timeout=req["timeout"])
try:
    cp = select_sandbox(req["backend"]).run(spec, Path(req["log"]) if req["log"] else None)
    out = {"rc": cp.returncode, "output": cp.stdout}
except OcipatchError as e:
    out = {"error": type(e).__name__, "message": str(e)}
print(json.dumps(out))
"""


def run_in_sandbox(
    backend: str,
    spec: base.RunSpec,
    *,
    user: int | None = None,
    log: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `spec` (a RunSpec) with `backend`, in this process or as uid `user` via setpriv.

    As another user, the driver runs this venv's python (world-readable here; a venv under a
    0700 home would have to be copied somewhere readable) and sandbox errors are raised again
    here with their original class.
    """
    if user is None:
        return select_sandbox(backend).run(spec, log)
    req = {
        "backend": backend,
        "rootfs": str(spec.rootfs),
        "argv": spec.argv,
        "env": spec.env,
        "network": spec.network,
        "binds": [(str(h), i, ro) for h, i, ro in spec.binds],
        "cwd": spec.cwd,
        "timeout": spec.timeout,
        "log": str(log) if log else None,
    }
    proc = subprocess.run(
        ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups",
         "env", "-i", "PATH=/usr/bin:/bin", "HOME=/tmp",
         sys.executable, "-c", _DRIVER, json.dumps(req)],
        capture_output=True, text=True, cwd="/", check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"sandbox driver failed as uid {user}: {proc.stderr}")
    out = json.loads(proc.stdout)
    if "error" in out:
        cls = getattr(base, out["error"], None) or getattr(errors, out["error"])
        raise cls(out["message"])
    return subprocess.CompletedProcess(spec.argv, out["rc"], out["output"], "")
