"""Write Changes as a deterministic layer: tar, compressed, hashed on the fly.

The same changes give the same bytes, so the same digest:
- entries sorted component by component (parents before children, whiteouts before their
  siblings), see ocipatch.fs.whiteout.sort_key;
- PAX format always (Python's tarfile adds a PAX header only when a field does not fit ustar:
  long or non-ASCII names, big ids, xattrs), no global header, no atime/ctime records;
- headers carry the recorded uid/gid/mode of each change, never the disk's owner; uname and
  gname are empty (numeric ids only, as runtimes use);
- one time rule, with `clamp_mtime` the layer time (a patch's comes from ocipatch.fs.layertime):
  an entry with a time of its own keeps it, clamped to the layer time if newer; an entry with
  none (Change.mtime None), whiteouts and opaque markers get the layer time. A patch gives its
  own time only to a package's file or symlink (its data.tar date): what maintainer scripts and
  dpkg wrote and the directories all get the layer time, never the run's clock;
- whiteouts are empty regular files, mode 0, owner 0:0;
- a hardlink comes after its target even if its name sorts first, and its header repeats the
  target's mode, owner and mtime (as GNU tar and Docker write them);
- gzip without file name and with mtime 0, zstd single-threaded (ocipatch.fs.compress).

Nothing is held in memory beyond one read buffer: content streams from its source through tar,
the diff_id hash (sha256 of the tar), the compressor and the digest hash (sha256 of the blob)
into `out`.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, cast

from ocipatch.fs.changes import Change, sort_changes
from ocipatch.fs.compress import compressor

# Bumped whenever the same changes would be written as other bytes (2: parallel gzip blocks;
# 3: package files keep their data.tar mtimes, the rest get the layer time instead of
# 2000-01-01), so a result cached by an older writer is not taken for what this one writes.
WRITER_FORMAT = 3
PACKAGE_DATED_SINCE = 3  # the first format whose package files carry their .debs' times

_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


@dataclass(frozen=True)
class LayerInfo:
    digest: str  # sha256 of the blob as written (compressed)
    diff_id: str  # sha256 of the uncompressed tar
    size: int  # bytes written to out
    compression: str = "gzip"


class _HashingWriter:
    """Counts and hashes what passes through to inner."""

    def __init__(self, inner: BinaryIO) -> None:
        self.inner = inner
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        self.inner.write(data)
        return len(data)

    def flush(self) -> None:
        flush = getattr(self.inner, "flush", None)
        if flush is not None:
            flush()

    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def write_layer(
    changes: Iterable[Change],
    out: BinaryIO,
    compression: str = "gzip",
    *,
    clamp_mtime: int,
    level: int | None = None,
) -> LayerInfo:
    """Write changes as one layer blob to out; return its digest, diff_id and size.

    clamp_mtime is the layer time: the mtime of entries without one, the upper bound of the
    rest. out is left open. A change whose tar name repeats another's raises ValueError.
    """
    clamp = max(0, clamp_mtime)
    ordered = sort_changes(list(changes))
    seen: set[str] = set()
    for c in ordered:
        if c.tar_name in seen:
            raise ValueError(f"two changes for {c.tar_name!r}: keep one")
        seen.add(c.tar_name)

    blob = _HashingWriter(out)
    comp = compressor(compression, cast(BinaryIO, blob), level)
    tar_stream = _HashingWriter(comp)
    tf = tarfile.open(
        fileobj=cast(BinaryIO, tar_stream),
        mode="w|",
        format=tarfile.PAX_FORMAT,
        encoding="utf-8",
    )
    by_path = {c.path: c for c in ordered if c.type not in ("delete", "opaque")}
    for c in _links_after_targets(ordered):
        if c.type == "hardlink" and c.linkname in by_path:
            # Hardlink headers carry their inode's metadata, as GNU tar and Docker write them.
            t = by_path[c.linkname]
            c = replace(c, mode=t.mode, uid=t.uid, gid=t.gid, mtime=t.mtime, xattrs={})
        _add(tf, c, clamp)
    tf.close()  # end-of-archive blocks
    comp.close()  # end of the gzip member / zstd frame; out stays open
    return LayerInfo(blob.digest(), tar_stream.digest(), blob.size, compression)


def _links_after_targets(ordered: list[Change]) -> list[Change]:
    """Sorted order, except that a hardlink waits until its target (if in this layer) is out:
    extractors resolve a hardlink against what they have already written."""
    present = {c.path for c in ordered if c.type not in ("delete", "opaque")}
    out: list[Change] = []
    emitted: set[str] = set()
    waiting: dict[str, list[Change]] = {}
    for c in ordered:
        if c.type == "hardlink" and c.linkname in present and c.linkname not in emitted:
            waiting.setdefault(c.linkname, []).append(c)
            continue
        queue = [c]
        while queue:
            cur = queue.pop(0)
            out.append(cur)
            emitted.add(cur.path)
            queue.extend(waiting.pop(cur.path, []))
    # Links whose target never came (a cycle of hardlinks): keep them, in order.
    out.extend(c for links in waiting.values() for c in links)
    return out


def _header(c: Change, clamp: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(c.tar_name)
    ti.uname = ""
    ti.gname = ""
    if c.type in ("delete", "opaque"):
        ti.type = tarfile.REGTYPE
        ti.mode = 0
        ti.uid = ti.gid = 0
        ti.mtime = clamp
        return ti
    ti.type = _TYPES[c.type]
    ti.mode = c.mode & 0o7777
    ti.uid = c.uid
    ti.gid = c.gid
    ti.mtime = clamp if c.mtime is None else max(0, min(int(c.mtime), clamp))
    if c.type in ("symlink", "hardlink"):
        ti.linkname = c.linkname
    if c.type in ("char", "block"):
        ti.devmajor = c.devmajor
        ti.devminor = c.devminor
    if c.xattrs:
        # tarfile writes str values; surrogateescape round-trips binary values (e.g.
        # security.capability) and makes tarfile mark the header hdrcharset=BINARY.
        ti.pax_headers = {
            "SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape")
            for k, v in sorted(c.xattrs.items())
        }
    return ti


def _add(tf: tarfile.TarFile, c: Change, clamp: int) -> None:
    ti = _header(c, clamp)
    if c.type != "file":
        tf.addfile(ti)
        return
    src = c.source
    if src is None or isinstance(src, bytes):
        data = src or b""
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
        return
    fd = os.open(Path(src), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        ti.size = os.fstat(f.fileno()).st_size
        tf.addfile(ti, f)
