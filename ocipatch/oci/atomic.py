"""Writing a file so that a reader, a failure or a killed process sees the old bytes or the new
ones, never a part: a temporary file beside the target, synced, given the target's mode, and
renamed onto it only when complete."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ocipatch import runs

NEW_FILE_MODE = 0o644


def umask() -> int:
    """The process umask, read without setting it (os.umask sets it, racing other threads)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def target_of(path: Path) -> Path:
    """Through a symlink: the link stays and the file it names is replaced."""
    return Path(os.path.realpath(path))


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Write path's new content; it keeps the old file's mode and, where allowed, its owner
    (a new file: 0644 & ~umask, the caller's owner)."""
    target = target_of(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        old: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        old = None
    mode = stat.S_IMODE(old.st_mode) if old is not None else NEW_FILE_MODE & ~umask()
    fd, tmp = runs.mkstemp(target.parent)  # owned: a killed run's is swept by the next
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                with contextlib.suppress(PermissionError):
                    os.fchown(f.fileno(), old.st_uid, old.st_gid)
            os.fchmod(f.fileno(), mode)  # after fchown, which may clear set-id bits
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: Path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)
