"""The content-addressed blob cache under --cache-dir.

Blobs land under `blobs/<alg>/<hex>` only after their digest and size were checked, through a
temporary file and an atomic rename: two ocipatch processes sharing the cache can race to fetch
the same blob and both end with the same verified file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from ocipatch import runs, space
from ocipatch.oci.digest import VerifiedReader

CHUNK = 1 << 20


def touch(path: Path) -> bool:
    """Mark a cache entry used now (its mtime: what `cache prune` evicts by, since atime is
    not updated on noatime mounts and only daily with relatime); False when it is gone. A
    read-only cache or another user's file cannot be marked, and is still there."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    except OSError:
        return os.path.exists(path)
    return True


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ocipatch"


class BlobCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        alg, _, hexpart = digest.partition(":")
        return self.root / "blobs" / alg / hexpart

    def has(self, digest: str) -> bool:
        """Present (and marked used: a live run's entries are kept by `cache prune`)."""
        path = self.path(digest)
        return path.is_file() and touch(path)

    def fetch(
        self, digest: str, size: int | None, opener: Callable[[], BinaryIO], what: str = "blob"
    ) -> Path:
        """Return the cached file for digest, streaming it from opener() when missing."""
        dest = self.path(digest)
        if dest.is_file() and touch(dest):
            return dest
        with self.writer(dest) as tmp, opener() as raw:
            reader = VerifiedReader(raw, digest, size, what)
            while chunk := reader.read(CHUNK):
                tmp.write(chunk)
            reader.finish()
        return dest

    @contextlib.contextmanager
    def writer(self, dest: Path) -> Iterator[BinaryIO]:
        """A temporary file beside dest, renamed onto it only if the block succeeds."""
        with self.room():
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = runs.mkstemp(dest.parent)
            try:
                with os.fdopen(fd, "wb") as tmp:
                    yield tmp
                os.replace(tmp_name, dest)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp_name)
                raise

    def put_file(self, digest: str, src: Path) -> Path:
        """Move an already-verified file (one we wrote ourselves) into the cache."""
        dest = self.path(digest)
        with self.room():
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                try:
                    os.replace(src, dest)
                except OSError:
                    shutil.copyfile(src, dest)
        return dest

    def room(self) -> contextlib.AbstractContextManager[None]:
        """A block that writes into the cache: a full disk there is reported as the cache's."""
        return space.room_in(space.cache(self.root))

    def work_dir(self, name: str) -> Path:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        return d
