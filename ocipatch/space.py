"""Out of space: which directory filled up, and what to set to move that work elsewhere.

A full disk (ENOSPC) or an exhausted quota (EDQUOT) surfaces as an OSError from whichever write
hit it, most often with no file name. ocipatch writes to three kinds of place, each with its
own remedy; code that writes to one runs inside `room_in(place)`, which turns such an error
into OutOfSpaceError naming the place. The innermost place wins: a cache write made while a
patch works in its scratch tree is reported as the cache's.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ocipatch.errors import OutOfSpaceError, UsageError

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True)
class Place:
    what: str  # "the cache directory"
    path: Path
    remedy: str  # what to set, or do, to give that work more room


def scratch(path: Path) -> Place:
    return Place(
        "the scratch directory",
        path,
        "set OCIPATCH_WORK_DIR to a directory on a file system with more free space",
    )


def cache(path: Path) -> Place:
    return Place(
        "the cache directory",
        path,
        "free space there, or pass --cache-dir DIR on a file system with more room",
    )


def destination(path: Path) -> Place:
    return Place(
        "the destination directory",
        path,
        "free space there, or write the image elsewhere (-t / the destination reference)",
    )


@contextlib.contextmanager
def room_in(place: Place) -> Iterator[None]:
    """Report ENOSPC/EDQUOT raised inside the block as `place` filling up. An error naming a
    file outside `place` is left for an outer place (or the CLI) to explain."""
    try:
        yield
    except OSError as e:
        if e.errno not in NO_SPACE or not _inside(e.filename, place.path):
            raise
        raise out_of_space(e, place) from e


def out_of_space(e: OSError, place: Place | None = None) -> OutOfSpaceError:
    """The one-line error for ENOSPC/EDQUOT, with or without a known place."""
    full = "is full" if e.errno == errno.ENOSPC else "is over its disk quota"
    if place is not None:
        return place_full(place, full)
    where = f" writing {e.filename}" if e.filename else ""
    return OutOfSpaceError(
        f"the disk {full}{where}: free space there; ocipatch unpacks images in "
        "OCIPATCH_WORK_DIR (default /dev/shm or the cache) and caches blobs in --cache-dir"
    )


def place_full(place: Place, full: str = "is full", doing: str = "") -> OutOfSpaceError:
    prefix = f"{doing}: " if doing else ""
    return OutOfSpaceError(
        f"{prefix}{place.what} {place.path}{_fs_size(place.path)} {full}: {place.remedy}"
    )


def fullest(places: list[Place]) -> Place:
    """Of places a tool wrote to, the one with the least room left: where it ran out."""

    def free(place: Place) -> int:
        try:
            st = os.statvfs(_existing(place.path))
        except OSError:
            return 1 << 62
        return st.f_bavail * st.f_frsize

    return min(places, key=free)


def writable_dir(path: Path, setting: str, remedy: str) -> Path:
    """path, created if missing; UsageError naming `setting` if it cannot be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        usable = os.access(path, os.W_OK | os.X_OK)
        why = "not writable"
    except OSError as e:
        usable, why = False, e.strerror or str(e)
    if not usable:
        raise UsageError(f"{setting} {path} is not a usable directory ({why}): {remedy}")
    return path


def _inside(filename: object, root: Path) -> bool:
    if not filename:
        return True  # no name: the place whose code was writing is the best guess
    try:
        name = os.path.abspath(os.fsdecode(filename))  # type: ignore[arg-type]
    except TypeError:
        return True
    base = os.path.abspath(root)
    return name == base or name.startswith(base.rstrip("/") + "/")


def _fs_size(path: Path) -> str:
    """' (on a 2.0 MiB file system)': a small disk is often the whole story."""
    try:
        st = os.statvfs(_existing(path))
    except OSError:
        return ""
    return f" (on a {_human(st.f_blocks * st.f_frsize)} file system)"


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
