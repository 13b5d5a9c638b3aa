"""bubblewrap backend: namespaces, no privileges, and a seccomp filter that fakes chown.

Layout of the sandbox (bwrap applies the operations in this order):
    /            the rootfs, read-write (--bind)
    /proc        a new procfs of the sandbox's own pid namespace
    /dev         bwrap's minimal /dev (null, zero, full, random, urandom, tty, pts, shm)
    /tmp         a private tmpfs
    resolv.conf  the host's, read-only, at the place the rootfs's /etc/resolv.conf resolves to
    binds        as requested, in order
Namespaces: user (one uid, 0 inside), pid, ipc, uts, cgroup when possible, net when
`network=False`. --die-with-parent and --new-session (no TIOCSTI into our terminal).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path

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
from ocipatch.sandbox.seccomp import bpf_fd, chown_filter

HOSTNAME = "localhost"  # resolvable through the image's own /etc/hosts, and deterministic


@functools.cache
def _help_text(exe: str) -> str:
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=False)
    return out.stdout + out.stderr


class BwrapSandbox:
    name = "bwrap"

    def __init__(self, executable: str | None = None) -> None:
        self.executable = executable or shutil.which("bwrap") or ""

    def _supports(self, flag: str) -> bool:
        return flag in _help_text(self.executable)

    def available(self) -> tuple[bool, str]:
        if not self.executable:
            return False, "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
        true = shutil.which("true") or "/bin/true"
        cmd = [self.executable, *self._namespace_args(network=True)]
        cmd += ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        try:
            prog = chown_filter()
        except SandboxError as e:
            return False, str(e)
        fd = bpf_fd(prog)
        try:
            out = subprocess.run(
                [*cmd, "--seccomp", str(fd), "--", true],
                capture_output=True,
                text=True,
                pass_fds=(fd,),
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return False, f"bwrap did not run: {e}"
        finally:
            os.close(fd)
        if out.returncode != 0:
            why = oneline(tail(out.stderr, 3)) or f"exit status {out.returncode}"
            return False, (
                f"bwrap cannot create a user namespace here ({why}); allow unprivileged user "
                "namespaces (sysctl user.max_user_namespaces>0, "
                "kernel.unprivileged_userns_clone=1, "
                "kernel.apparmor_restrict_unprivileged_userns=0) or use --sandbox proot"
            )
        return True, ""

    def _namespace_args(self, *, network: bool) -> list[str]:
        args = ["--unshare-user", "--uid", "0", "--gid", "0"]
        args += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        if not network:
            args.append("--unshare-net")
        args += ["--hostname", HOSTNAME, "--die-with-parent", "--new-session"]
        if self._supports("--disable-userns"):
            # No nested user namespaces: less kernel surface for maintainer scripts.
            args.append("--disable-userns")
        return args

    def command(self, spec: RunSpec, root: Path, mounts: MountPoints) -> list[str]:
        """The bwrap command line (without the fds); notes the mount points it will create."""
        cmd = [self.executable, *self._namespace_args(network=spec.network)]
        cmd += ["--bind", str(root), "/"]
        for kind, where in (("--proc", "/proc"), ("--dev", "/dev"), ("--tmpfs", "/tmp")):
            inside = mount_point(root, where)
            mounts.note(inside)
            cmd += [kind, inside]
        if spec.network and HOST_RESOLV_CONF.exists():
            inside = mount_point(root, "/etc/resolv.conf")
            host_target = root / inside.lstrip("/")
            if not host_target.is_dir():
                mounts.note(inside)
                cmd += ["--ro-bind", str(HOST_RESOLV_CONF.resolve()), inside]
        for host, where, read_only in spec.binds:
            inside = mount_point(root, where)
            mounts.note(inside)
            cmd += ["--ro-bind" if read_only else "--bind", str(Path(host).resolve()), inside]
        cmd += ["--chdir", spec.cwd]
        return cmd

    def run(self, spec: RunSpec, log: Path | None = None) -> subprocess.CompletedProcess[str]:
        if not self.executable:
            raise SandboxError("bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)")
        root = check_spec(spec)
        mounts = MountPoints(root)
        cmd = self.command(spec, root, mounts)
        seccomp_fd = bpf_fd(chown_filter())
        status_r, status_w = os.pipe()
        json_status = self._supports("--json-status-fd")
        fds = [seccomp_fd]
        cmd += ["--seccomp", str(seccomp_fd)]
        if json_status:
            cmd += ["--json-status-fd", str(status_w)]
            fds.append(status_w)
        cmd += ["--", *spec.argv]
        try:
            rc, output = run_process(cmd, spec=spec, backend=self.name, log=log, pass_fds=fds)
        finally:
            os.close(seccomp_fd)
            os.close(status_w)
            status = _read_all(status_r)
            os.close(status_r)
            mounts.cleanup()
        started = _command_exited(status) if json_status else None
        if rc != 0 and (started is False or (started is None and _bwrap_failed(output))):
            lines = [ln for ln in output.splitlines() if ln.startswith("bwrap: ")]
            reason = "; ".join(lines[-3:]) or oneline(tail(output, 3)) or f"exit status {rc}"
            raise SandboxError(
                f"the bwrap sandbox could not start {spec.argv[0]!r}: {reason}"
                + (f" (log: {log})" if log else "")
            )
        return subprocess.CompletedProcess(cmd, rc, output, "")


def _read_all(fd: int) -> str:
    # Non-blocking: a leftover holder of the write end must not hang us.
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    return b"".join(chunks).decode("utf-8", errors="replace")


def _command_exited(status: str) -> bool:
    """Whether bwrap's --json-status-fd reported the command's own exit.

    bwrap writes {"child-pid": N} once the namespaces exist and {"exit-code": N} only when the
    command itself ran and ended; a setup or exec failure leaves out the second document.
    """
    decoder = json.JSONDecoder()
    pos = 0
    text = status.strip()
    while pos < len(text):
        try:
            doc, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return False
        if isinstance(doc, dict) and "exit-code" in doc:
            return True
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return False


def _bwrap_failed(output: str) -> bool:
    first = output.lstrip().splitlines()[:1]
    return bool(first) and first[0].startswith("bwrap: ")
