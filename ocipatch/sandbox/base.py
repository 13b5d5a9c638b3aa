"""What every sandbox backend shares: the run request, the protocol, and the process plumbing.

A backend runs one command with an unpacked rootfs as `/`, read-write, so that the image's own
package manager can update it in place. The sandbox sees only the rootfs, a fresh /proc and a
minimal /dev, a private /tmp, the host's /etc/resolv.conf (read-only) and the binds the caller
asks for. See docs/sandbox.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

from ocipatch.errors import ApplyError, SandboxError
from ocipatch.fs import rootpath
from ocipatch.logs import trace

_log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_RESOLV_CONF = Path("/etc/resolv.conf")


def default_env() -> dict[str, str]:
    """The environment of a command in the sandbox (a package manager's runner adds its own)."""
    return {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8", "HOME": "/root"}


@dataclass
class RunSpec:
    """One command to run over `rootfs`.

    `binds` are (host path, path inside, read_only). `network=True` shares the host network (a package
    manager needs the mirror); False gives the sandbox its own network namespace with only loopback.
    `timeout` (seconds) kills the whole process tree and raises `CommandTimeout`.
    """

    rootfs: Path
    argv: list[str]
    env: dict[str, str] = field(default_factory=default_env)
    binds: Sequence[tuple[Path, str, bool]] = ()
    network: bool = True
    cwd: str = "/"
    timeout: float | None = None


@runtime_checkable
class Sandbox(Protocol):
    name: str

    def available(self) -> tuple[bool, str]:
        """(works here?, reason if not), found by actually running `true`."""
        ...

    def run(self, spec: RunSpec, log: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run `spec`; stdout holds stdout+stderr merged (also written to `log`)."""
        ...


class CommandTimeout(ApplyError):
    """The command ran past its timeout; its whole process tree was killed.

    The message is one line; `output_tail` holds the last lines the command printed.
    """

    def __init__(self, message: str, *, output_tail: str = "", log: Path | None = None) -> None:
        super().__init__(message)
        self.output_tail = output_tail
        self.log = log


def tail(text: str, lines: int = 20) -> str:
    """The last `lines` lines of `text`, for one-line error messages plus context."""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def oneline(text: str) -> str:
    """Several lines joined into one, for error messages that must stay on one line."""
    return " | ".join(ln.strip() for ln in text.splitlines() if ln.strip())


def check_spec(spec: RunSpec) -> Path:
    """Validate the parts every backend relies on; return the resolved rootfs."""
    root = spec.rootfs.resolve()
    if not root.is_dir():
        raise SandboxError(f"rootfs {spec.rootfs} is not a directory; unpack the image first")
    owner = root.stat().st_uid
    if owner != os.geteuid():
        # Only the invoking user is mapped in the sandbox: a tree owned by anyone else could
        # not be written by the package manager.
        raise SandboxError(
            f"rootfs {root} belongs to uid {owner}, not to the user running the sandbox "
            f"(uid {os.geteuid()}); unpack it as this user"
        )
    if not spec.argv:
        raise SandboxError("nothing to run: the command line is empty")
    if not spec.cwd.startswith("/"):
        raise SandboxError(f"working directory {spec.cwd!r} must be an absolute path")
    for host, inside, _ro in spec.binds:
        if not os.path.lexists(host):
            raise SandboxError(f"bind source {host} does not exist")
        if not inside.startswith("/"):
            raise SandboxError(f"bind target {inside!r} must be an absolute path")
    return root


# --- paths inside the rootfs ------------------------------------------------------------------


def mount_point(root: Path, path: str, *, max_links: int = rootpath.MAX_SYMLINKS) -> str:
    """Where `path` is inside `root` (fs/rootpath.py resolve_in_root, chroot semantics), as an
    absolute in-root path whose existing components are no symlinks. This is where a mount
    point must go so that the backend does not follow a rootfs symlink out to the host."""
    try:
        real = rootpath.resolve_in_root(root, path, max_hops=max_links)
    except rootpath.SymlinkLoop:
        raise SandboxError(f"too many symlinks resolving {path} in {root}") from None
    rel = real.relative_to(root).as_posix()
    return "/" if rel == "." else "/" + rel


@dataclass
class _Created:
    path: Path  # the topmost component the backend will create
    parent: Path
    parent_names: frozenset[str]
    parent_times: tuple[int, int]


class MountPoints:
    """Remember which mount points a backend will create in the rootfs, and remove them after.

    bwrap creates an empty file or directory (and missing parents) for every mount target that
    does not exist. Left behind, an empty /etc/resolv.conf would end up in the patch layer, so
    each one is removed after the run (only if still empty), and the parent directory's times
    are restored when its list of entries is unchanged.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._created: list[_Created] = []

    def note(self, inside: str) -> None:
        parts = [p for p in inside.split("/") if p]
        cur = self.root
        for part in parts:
            nxt = cur / part
            if not os.path.lexists(nxt):
                if any(c.path == nxt for c in self._created):
                    return
                st = os.stat(cur)
                self._created.append(
                    _Created(nxt, cur, frozenset(os.listdir(cur)), (st.st_atime_ns, st.st_mtime_ns))
                )
                return
            cur = nxt

    def cleanup(self) -> None:
        for c in reversed(self._created):
            _remove_empty_tree(c.path)
            with contextlib.suppress(OSError):
                if frozenset(os.listdir(c.parent)) == c.parent_names:
                    os.utime(c.parent, ns=c.parent_times, follow_symlinks=False)
        self._created.clear()


def _remove_empty_tree(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        for child in os.listdir(path):
            _remove_empty_tree(path / child)
        with contextlib.suppress(OSError):
            os.rmdir(path)  # fails, rightly, when the command put something there
    elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
        os.unlink(path)


# --- processes --------------------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        # Field 4 (ppid) follows the command name, which may itself contain ") ".
        fields = data[data.rfind(b")") + 2 :].split()
        kids.setdefault(int(fields[1]), []).append(int(entry.name))
    return kids


def descendants(pid: int) -> set[int]:
    kids = _children_map()
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and every process below it, leaving no orphan behind.

    The root is stopped first (for proot this freezes every tracee at its next system call, so
    nothing can fork or daemonise), the tree is collected until it stops growing, then all of
    it is killed bottom-up. proot does not kill its tracees when it dies; they would run on,
    untraced, with the host's filesystem, which is why this walk exists.
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGSTOP)
    seen: set[int] = set()
    for _ in range(20):
        found = descendants(pid) - seen
        if not found:
            break
        for p in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGSTOP)
        seen |= found
    for p in seen:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def output_file(log: Path | None, header: str) -> Iterator[tuple[IO[bytes], int]]:
    """The file that receives the merged output, and where this run's output starts.

    A given `log` is appended to (one log for all the steps of a patch), after a header line;
    without one, a temporary file is used.
    """
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a+b") as fh:
            fh.write(f"### {header}\n".encode())
            fh.flush()
            yield fh, fh.tell()
    else:
        with tempfile.TemporaryFile() as fh:
            yield fh, 0


def run_process(
    cmd: list[str],
    *,
    spec: RunSpec,
    backend: str,
    log: Path | None,
    pass_fds: Sequence[int] = (),
    preexec: Callable[[], None] | None = None,
    env: dict[str, str] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> tuple[int, str]:
    """Run `cmd` with stdout+stderr merged into the log; enforce `spec.timeout`.

    Returns (exit status, output). On timeout or interruption the whole tree is killed.
    `on_start` receives the pid of the started process.
    """
    with output_file(log, f"{backend}: {' '.join(spec.argv)}") as (out, start):
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=spec.env if env is None else env,
                pass_fds=tuple(pass_fds),
                start_new_session=True,
                umask=0o022,
                preexec_fn=preexec,
            )
        except OSError as e:
            raise SandboxError(f"cannot start the {backend} sandbox: {e}") from e
        if on_start is not None:
            on_start(proc.pid)
        t0 = time.monotonic()
        try:
            rc = proc.wait(timeout=spec.timeout)
            took = time.monotonic() - t0
            trace(_log, "%s: %s: exit %d in %.2f s", backend, _short(spec.argv), rc, took)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            proc.wait()
            text = _read(out, start)
            where = f" (log: {log})" if log else ""
            last = tail(text, 1).strip()
            raise CommandTimeout(
                f"{_short(spec.argv)} did not finish within {spec.timeout:g} s in the "
                f"{backend} sandbox and was killed{where}; last output: {last!r}; "
                "raise the timeout or check that the package mirror answers",
                output_tail=tail(text),
                log=log,
            ) from None
        except BaseException:
            kill_tree(proc.pid)
            proc.wait()
            raise
        return rc, _read(out, start)


def _short(argv: Sequence[str], limit: int = 120) -> str:
    text = " ".join(argv)
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _read(fh: IO[bytes], start: int) -> str:
    fh.flush()
    fh.seek(start)
    return fh.read().decode("utf-8", errors="replace")
