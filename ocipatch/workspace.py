"""The tree a patch works on: where it lives, and how an image is unpacked into it and
snapshotted before the package manager runs."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from ocipatch import background, runs, space
from ocipatch.context import Context
from ocipatch.fs.changes import Exclude, Snapshot, snapshot
from ocipatch.fs.unpack import OnIndex, OwnershipMap, unpack
from ocipatch.oci.image import Image, prefetch
from ocipatch.progress import Progress

SHM = Path("/dev/shm")


def scratch_base(ctx: Context, needed: int) -> Path:
    """Where the image is unpacked: $OCIPATCH_WORK_DIR if set; else a tmpfs (/dev/shm) when it
    has room for twice the image and the image is under a quarter of the free memory (creating
    ~10k files there takes a fraction of a second, on a slow disk several); else the cache."""
    env = os.environ.get("OCIPATCH_WORK_DIR")
    if env:
        return space.writable_dir(
            Path(env),
            "OCIPATCH_WORK_DIR",
            "set OCIPATCH_WORK_DIR to a directory you can write, or unset it",
        )
    try:
        st = os.statvfs(SHM)
        free = st.f_bavail * st.f_frsize
        if os.access(SHM, os.W_OK) and free > 2 * needed and needed < _mem_available() // 4:
            base = SHM / f"ocipatch-{os.getuid()}"
            base.mkdir(mode=0o700, exist_ok=True)
            return base
    except OSError:
        pass
    return ctx.cache.work_dir("work")


def _mem_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


@contextlib.contextmanager
def work_dir(ctx: Context, needed: int = 0) -> Iterator[Path]:
    base = scratch_base(ctx, needed)
    # Owned (pid, start time, flock): a run killed before its cleanup leaves the tree for the
    # next run's sweep (ocipatch/runs.py).
    with space.room_in(space.scratch(base)):
        path = runs.mkdtemp(base, "patch-")
    try:
        yield path
    finally:
        runs.remove_tree(path)


def room_in_scratch(work: Path) -> contextlib.AbstractContextManager[None]:
    """A block that writes into the work tree: a full disk there is reported as the scratch
    directory's, with OCIPATCH_WORK_DIR as the remedy."""
    return space.room_in(space.scratch(work.parent))


@dataclass
class Unpacked:
    work: Path
    rootfs: Path
    own: OwnershipMap
    snap: Future[Snapshot]  # under way while the installer plans; done before it installs


def unpack_image(
    image: Image,
    keep: int,
    work: Path,
    progress: Progress,
    exclude: Exclude,
    on_index: OnIndex | None = None,
) -> Unpacked:
    """The image's layers into work/rootfs, with a snapshot of the original ones. Without a
    previous patch layer to replay the snapshot is taken on a thread (it only reads the tree,
    as the installer's planning does); with one, it is taken before the replay. `exclude` may
    leave out less than the diff will (fs/changes.py: the diff excludes on both sides)."""
    rootfs = work / "rootfs"
    progress.step(f"Unpacking {len(image.layers)} layers")
    prefetch(image.layers)
    with room_in_scratch(work):
        own = unpack(image.layers[:keep], rootfs, on_index=on_index)
    take = functools.partial(snapshot, rootfs, own, exclude=exclude)
    snap: Future[Snapshot]
    if keep < len(image.layers):
        snap = Future()
        snap.set_result(take())
        progress.step("Re-patch: replaying the previous patch layer")
        with room_in_scratch(work):
            unpack(image.layers[keep:], rootfs, ownership=own, on_index=on_index)
    else:
        snap = background.start(take, "snapshot")
    return Unpacked(work, rootfs, own, snap)


def size_estimate(image: Image) -> int:
    """Unpacked size before any index says it: compressed layers taken at 4x (gzip and zstd
    layers of OS trees unpack to 2.5-3x), so the choice of scratch space errs on the safe side."""
    return sum(
        layer.descriptor.size * (1 if layer.compression == "none" else 4) for layer in image.layers
    )
