"""Who owns a temporary file or directory, and removing what dead runs left behind.

A run killed with SIGKILL (the OOM killer, CI's `timeout -s KILL`) runs no cleanup: its unpacked
rootfs (~100+ MB in /dev/shm) and half-written cache files would stay forever. So every
temporary entry ocipatch makes carries its owner in its name, `<prefix><pid>.<start>.<boot>-…`:
the pid, the process's start time in clock ticks since boot (/proc/PID/stat field 22) and the
first 8 hex digits of the kernel's boot id. A reused pid has another start time, a reboot
another boot id, so a live process is never mistaken for a dead owner. Scratch directories also
hold an flock on `.owner` inside them for the process's life (a second guard that works across
pid namespaces); temporary files hold one on themselves while they are written.

`sweep()` removes an entry only when its flock is free AND its owner is dead (same boot, no
process with that pid and start time). An owner that cannot be judged (another boot id: a
reboot or another host sharing the cache) counts as dead once the entry is older than a day.
Names of the old format (no owner) count as dead after a day too. It lists a handful of
directories and reads one /proc file per owner: a few ms.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

OWNER_FILE = ".owner"
UNKNOWN_OWNER_AGE = 86400.0  # entries whose owner cannot be judged: removed after a day
# <prefix><pid>.<start ticks>.<boot id, 8 hex>-<random>
PREFIXES = (
    ".tmp-",  # files and trees beside what they become
    "patch-",  # scratch trees
    "plan-",  # planning trees in <cache>/repos
    ".run-",  # registrations in <cache>/runs
    ".ocipatch-",  # an oci-archive's layout beside the archive
    "ocipatch-gpgv-",  # $TMPDIR
    "ocipatch-proot-tmp-",  # $TMPDIR
)
_OWNED = re.compile(
    "^(?:" + "|".join(re.escape(p) for p in PREFIXES) + r")(\d+)\.(\d+)\.([0-9a-f]{8})-"
)

_held: dict[str, int] = {}  # directory -> fd of its flocked .owner


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:8]
    except OSError:
        return "00000000"


def start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), or None when there is no such process
    (or /proc does not show it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: fields are counted after its last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


_BOOT = boot_id()
_PROC = os.path.exists("/proc/self/stat")


def tag() -> str:
    """This process's owner tag (computed per call: a forked child has its own)."""
    pid = os.getpid()
    return f"{pid}.{start_ticks(pid) or 0}.{_BOOT}"


def owned_prefix(prefix: str) -> str:
    return f"{prefix}{tag()}-"


def mkstemp(dir: Path, prefix: str = ".tmp-", suffix: str = "") -> tuple[int, str]:
    """tempfile.mkstemp with the owner in the name and an flock on the file while its fd is
    open; the caller renames it into place or unlinks it."""
    fd, name = tempfile.mkstemp(prefix=owned_prefix(prefix), suffix=suffix, dir=dir)
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd, name


def mkdtemp(dir: Path, prefix: str = ".tmp-") -> Path:
    """A directory with the owner in its name and an flock held on its .owner until release()."""
    path = Path(tempfile.mkdtemp(prefix=owned_prefix(prefix), dir=dir))
    fd = os.open(path / OWNER_FILE, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"pid {os.getpid()}\nowner {tag()}\nstarted {time.time():.0f}\n".encode())
    _held[str(path)] = fd
    return path


def release(path: Path) -> None:
    fd = _held.pop(str(path), None)
    if fd is not None:
        os.close(fd)


@contextlib.contextmanager
def interrupt_deferred() -> Iterator[None]:
    """A Ctrl-C during the block takes effect after it: a cleanup cut short would leave half a
    tree behind (Python runs signal handlers in the main thread only, so only there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = signal.signal(signal.SIGINT, lambda sig, frame: got.append(sig))
    old = signal.default_int_handler if old is None else old
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if got and callable(old):
        old(signal.SIGINT, None)  # Python's default raises KeyboardInterrupt


def remove_tree(path: Path) -> None:
    """Remove an owned directory (contents first, then its lock)."""
    with interrupt_deferred():
        shutil.rmtree(path, ignore_errors=True)
        release(path)


@contextlib.contextmanager
def owned_dir(dir: Path, prefix: str) -> Iterator[Path]:
    path = mkdtemp(dir, prefix)
    try:
        yield path
    finally:
        remove_tree(path)


# --- sweeping --------------------------------------------------------------------------------


@dataclass
class Removed:
    path: Path
    size: int


def owner_alive(name: str, age: float, legacy: bool = True) -> bool:
    """Whether the entry called name (age seconds since its last change) may still be in use.
    Names without an owner (older versions) are judged by age only where legacy is True."""
    m = _OWNED.match(name)
    if m is None:
        return not legacy or age < UNKNOWN_OWNER_AGE
    pid, ticks, boot = int(m.group(1)), int(m.group(2)), m.group(3)
    if boot != _BOOT or not _PROC:  # another boot or host, or no /proc to ask: by age
        return age < UNKNOWN_OWNER_AGE
    now = start_ticks(pid)
    return now is not None and (ticks == 0 or now == ticks)


def _lock_free(path: Path, is_dir: bool) -> bool:
    target = path / OWNER_FILE if is_dir else path
    try:
        fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as e:
        return e.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def _usage(path: str) -> int:
    """Disk usage as du counts it; a file with n hard links counts 1/n for each name."""
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    return (
        st.st_blocks * 512 // max(st.st_nlink, 1) if not os.path.isdir(path) else st.st_blocks * 512
    )


def tree_size(path: Path) -> int:
    total = _usage(str(path))
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            total += sum(_usage(os.path.join(root, n)) for n in dirs + files)
    return total


def stale(path: Path, legacy: bool = True) -> bool:
    """Whether path is a temporary entry of a dead owner."""
    try:
        st = path.lstat()
    except OSError:
        return False
    is_dir = os.path.isdir(path) and not path.is_symlink()
    if owner_alive(path.name, time.time() - st.st_mtime, legacy):
        return False
    return _lock_free(path, is_dir)


def leftovers(d: Path, legacy: bool = True) -> list[Path]:
    """The temporary entries of dead owners directly inside d."""
    try:
        names = [n for n in os.listdir(d) if n.startswith(PREFIXES)]
    except OSError:
        return []
    return [d / n for n in names if stale(d / n, legacy)]


def sweep(dirs: Iterable[Path], measure: bool = False, legacy: bool = True) -> list[Removed]:
    """Remove the temporary entries of dead owners directly inside each of dirs."""
    removed: list[Removed] = []
    for d in dirs:
        for path in leftovers(d, legacy):
            size = tree_size(path) if measure else 0
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
            if not os.path.lexists(path):
                log.debug("removed %s, left by a dead run", path)
                removed.append(Removed(path, size))
    return removed


def shm_base() -> Path:
    return Path("/dev/shm") / f"ocipatch-{os.getuid()}"


def user_work_dir() -> list[Path]:
    """$OCIPATCH_WORK_DIR: the user's directory, so only entries with an owner are judged."""
    env = os.environ.get("OCIPATCH_WORK_DIR")
    return [Path(env)] if env else []


def all_leftovers(cache: Path) -> list[Path]:
    own = [shm_base(), *temp_dirs(cache)]
    theirs = [*user_work_dir(), Path(tempfile.gettempdir())]
    return [p for d in own for p in leftovers(d)] + [
        p for d in theirs for p in leftovers(d, legacy=False)
    ]


def temp_dirs(cache: Path) -> list[Path]:
    """Every directory of the cache where ocipatch makes temporary entries."""
    dirs = [cache / n for n in ("tmp", "work", "results", "tooling", "index", "repos", "runs")]
    dirs += [cache / "apt" / "debs" / "partial", cache / "repos" / "apt-repos" / "release-state"]
    for sub in ("blobs", "repos/apt-repos/blobs", "index/files"):
        with contextlib.suppress(OSError):
            dirs += [p for p in (cache / sub).iterdir() if p.is_dir()]
    return dirs


def sweep_all(cache: Path, measure: bool = False) -> list[Removed]:
    """What every run does at start: the leftovers of dead runs, in the cache and in scratch."""
    t0 = time.monotonic()
    removed = sweep([shm_base(), *temp_dirs(cache)], measure)
    removed += sweep([*user_work_dir(), Path(tempfile.gettempdir())], measure, legacy=False)
    log.debug("swept leftovers of dead runs in %.1f ms", (time.monotonic() - t0) * 1000)
    return removed


# --- runs using a cache ----------------------------------------------------------------------


def register(cache: Path) -> Path | None:
    """Record this process as a live user of cache until it exits: `runs/.run-<owner>-…/`,
    flocked. `cache prune` keeps whatever a live run may have used (docs/design.md)."""
    runs = cache / "runs"
    try:
        runs.mkdir(parents=True, exist_ok=True)
        with prune_lock(cache, exclusive=False):  # not while a prune is choosing what to remove
            return mkdtemp(runs, ".run-")
    except OSError as e:  # a read-only cache: nothing to protect, nothing to sweep
        log.debug("cannot register the run in %s: %s", runs, e)
        return None


@contextlib.contextmanager
def prune_lock(cache: Path, *, exclusive: bool) -> Iterator[None]:
    """Shared while a run registers, exclusive for the whole of a `cache prune`."""
    (cache / "runs").mkdir(parents=True, exist_ok=True)
    fd = os.open(cache / "runs" / "prune.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def live_runs(cache: Path) -> list[float]:
    """Start times (epoch seconds) of the runs that use cache now."""
    starts = []
    try:
        names = os.listdir(cache / "runs")
    except OSError:
        return []
    for name in names:
        path = cache / "runs" / name
        if not name.startswith(".run-"):
            continue
        try:
            st = path.lstat()
        except OSError:
            continue
        if owner_alive(name, time.time() - st.st_mtime) or not _lock_free(path, True):
            starts.append(st.st_mtime)
    return starts


_registered: set[tuple[int, str]] = set()


def start(cache: Path) -> None:
    """At the start of every command that uses cache: sweep dead runs' leftovers, then
    register this process (once per cache) until it exits."""
    key = (os.getpid(), str(cache.resolve()))
    if key in _registered:
        return
    _registered.add(key)
    sweep_all(cache)
    reg = register(cache)
    if reg is not None:
        atexit.register(remove_tree, reg)
