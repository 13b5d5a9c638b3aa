"""proot backend: ptrace-based path translation, for hosts without user namespaces.

`proot -0 -r ROOT -b /proc -b DEV:/dev -b /dev/null ... -b TMP:/tmp ...` rewrites every path of
every known system call so that ROOT appears as `/`, and with -0 fakes uid 0 and the success of
chown and mknod. /dev is private (a few host device nodes, links, an empty shm), as bwrap's.
Weaker than bwrap (see docs/sandbox.md): no namespaces, so the host's processes and network
stay visible (`network=False` cannot be honoured), binds cannot be made read-only, and
system calls proot 5.1 does not know would bypass the translation — a seccomp filter installed
before proot starts makes those fail with ENOSYS so that programs fall back to translated ones.
Slower too: every system call stops in the tracer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ocipatch import runs
from ocipatch.errors import SandboxError
from ocipatch.sandbox.base import (
    HOST_RESOLV_CONF,
    MountPoints,
    RunSpec,
    check_spec,
    mount_point,
    oneline,
    run_process,
    tail,
)
from ocipatch.sandbox.seccomp import preexec_loader, proot_filter


class ProotSandbox:
    name = "proot"

    def __init__(self, executable: str | None = None) -> None:
        self.executable = executable or shutil.which("proot") or ""

    def available(self) -> tuple[bool, str]:
        if not self.executable:
            return False, "proot is not installed (Debian/Ubuntu: apt-get install proot)"
        true = shutil.which("true") or "/bin/true"
        try:
            loader = preexec_loader(proot_filter())
            out = subprocess.run(
                [self.executable, "-0", true],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
                preexec_fn=loader,
            )
        except (OSError, subprocess.SubprocessError, SandboxError) as e:
            return False, f"proot did not run: {e}"
        if out.returncode != 0:
            why = oneline(tail(out.stderr, 3)) or f"exit status {out.returncode}"
            return False, f"proot cannot trace processes here ({why}); ptrace may be forbidden"
        return True, ""

    def command(self, spec: RunSpec, root: Path, tmp: Path, mounts: MountPoints) -> list[str]:
        """The proot command line; notes the bind targets proot may create in the rootfs.

        `tmp` is a private directory of this run: its `tmp/` becomes /tmp and its `dev/` /dev.
        """
        if spec.argv[0].startswith("-"):
            # proot has no `--`: the command would be read as an option.
            raise SandboxError(f"proot cannot run a command named {spec.argv[0]!r}")
        cmd = [self.executable, "-0", "-r", str(root)]
        binds: list[tuple[str, str]] = [("/proc", "/proc"), *_private_dev(tmp / "dev")]
        binds.append((str(_private_dir(tmp / "tmp")), "/tmp"))
        if spec.network and HOST_RESOLV_CONF.exists():
            inside = mount_point(root, "/etc/resolv.conf")
            if not (root / inside.lstrip("/")).is_dir():
                binds.append((str(HOST_RESOLV_CONF.resolve()), inside))
        # proot has no read-only binds: the host path's own permissions apply.
        binds += [(str(Path(host).resolve()), where) for host, where, _ro in spec.binds]
        for host, where in binds:
            inside = mount_point(root, where)
            mounts.note(inside)
            cmd += ["-b", f"{host}:{inside}"]
        cmd += ["-w", spec.cwd, *spec.argv]
        return cmd

    def run(self, spec: RunSpec, log: Path | None = None) -> subprocess.CompletedProcess[str]:
        if not self.executable:
            raise SandboxError("proot is not installed (Debian/Ubuntu: apt-get install proot)")
        root = check_spec(spec)
        loader = preexec_loader(proot_filter(fake_chown=not can_chown_freely()))
        with tempfile.TemporaryDirectory(
            prefix=runs.owned_prefix("ocipatch-proot-tmp-"), ignore_cleanup_errors=True
        ) as tmp:
            mounts = MountPoints(root)
            cmd = self.command(spec, root, Path(tmp), mounts)
            pids: list[int] = []
            try:
                rc, output = run_process(
                    cmd, spec=spec, backend=self.name, log=log, preexec=loader, on_start=pids.append
                )
            except subprocess.SubprocessError as e:
                raise SandboxError(f"cannot start the proot sandbox: {e}") from e
            finally:
                mounts.cleanup()
                for pid in pids:
                    _remove_proot_leftovers(pid, spec.env)
        errors = [
            ln for ln in output.splitlines() if ln.startswith(("proot error:", "fatal error:"))
        ]
        if rc != 0 and errors:
            raise SandboxError(
                f"the proot sandbox could not start {spec.argv[0]!r}: {'; '.join(errors[:2])}"
                + (f" (log: {log})" if log else "")
            )
        return subprocess.CompletedProcess(cmd, rc, output, "")


def can_chown_freely() -> bool:
    """Root with the whole id range mapped (the initial user namespace, or a namespace made
    with newuidmap ranges): a chown to any owner really happens. Otherwise dpkg's chowns are
    faked like under bwrap, since proot -0 turns only EPERM into success, and a namespace that
    maps one id answers EINVAL for every other owner."""
    if os.geteuid() != 0:
        return False
    for name in ("uid_map", "gid_map"):
        try:
            lines = Path(f"/proc/self/{name}").read_text().splitlines()
        except OSError:
            return False
        ranges = [tuple(int(x) for x in ln.split()) for ln in lines if len(ln.split()) == 3]
        if not any(inside == 0 and count >= 65536 for inside, _, count in ranges):
            return False
    return True


# Host device nodes a package's scripts may need, as bwrap's --dev offers them. Never the
# whole host /dev: its world-writable /dev/shm and /dev/mqueue would be shared with the host
# (a write outside the rootfs), and as root every disk and terminal would be reachable.
_DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
_DEV_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
}


def _private_dir(path: Path) -> Path:
    path.mkdir(exist_ok=True)
    path.chmod(0o1777)  # like /tmp; the parent is the run's 0700 temporary directory
    return path


def _private_dev(dev: Path) -> list[tuple[str, str]]:
    """A /dev of this run: the links and an empty shm in `dev`, the device nodes bound on top."""
    dev.mkdir(exist_ok=True)
    _private_dir(dev / "shm")
    for name, target in _DEV_LINKS.items():
        if not (dev / name).is_symlink():
            (dev / name).symlink_to(target)
    binds = [(str(dev), "/dev")]
    binds += [(f"/dev/{n}", f"/dev/{n}") for n in _DEV_NODES if Path(f"/dev/{n}").exists()]
    return binds


def _remove_proot_leftovers(pid: int, env: dict[str, str]) -> None:
    """proot keeps a loader and a glue directory in its temp dir; a killed proot leaves them."""
    tmp = Path(env.get("PROOT_TMP_DIR") or env.get("TMPDIR") or "/tmp")
    for pattern in (f"proot-{pid}-*", f"prooted-{pid}-*"):
        for leftover in tmp.glob(pattern):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
