"""Streaming (de)compression of layer blobs: gzip, zstd, or none.

Nothing here holds a whole layer in memory: readers and writers wrap a stream. Compressed output is
deterministic for a given library version: gzip headers carry no file name and mtime 0, zstd runs
single-threaded.
"""

from __future__ import annotations

import gzip
from typing import BinaryIO, cast

import zstandard

from ocipatch.errors import UsageError

COMPRESSIONS = ("gzip", "zstd", "none")
DEFAULT_LEVEL = {"gzip": 6, "zstd": 3}


def _check(compression: str) -> None:
    if compression not in COMPRESSIONS:
        raise UsageError(
            f"unknown compression {compression!r}: use one of {', '.join(COMPRESSIONS)}"
        )


def open_decompressed(raw: BinaryIO, compression: str) -> BinaryIO:
    """A readable stream of the decompressed content of raw; closing it closes raw.

    raw need not be seekable. gzip streams of several members (pigz, concatenated files) and zstd
    streams of several frames are read to the end, not just their first member or frame.
    """
    _check(compression)
    if compression == "gzip":
        # GzipFile reads members one after another and skips zero padding; it only seeks when
        # asked to rewind, which tarfile's stream mode never does.
        return cast(BinaryIO, _ClosingBoth(gzip.GzipFile(fileobj=raw, mode="rb"), raw))
    if compression == "zstd":
        reader = zstandard.ZstdDecompressor().stream_reader(
            raw, read_across_frames=True, closefd=True
        )
        return cast(BinaryIO, reader)
    return raw


def compressor(compression: str, out: BinaryIO, level: int | None = None) -> BinaryIO:
    """A writable stream compressing into out. close() ends the stream but leaves out open."""
    _check(compression)
    if compression == "gzip":
        lvl = DEFAULT_LEVEL["gzip"] if level is None else level
        # filename="" and mtime=0: the gzip header would otherwise carry out.name and the time.
        return cast(
            BinaryIO,
            gzip.GzipFile(filename="", mode="wb", compresslevel=lvl, fileobj=out, mtime=0),
        )
    if compression == "zstd":
        lvl = DEFAULT_LEVEL["zstd"] if level is None else level
        # threads=0: the multi-threaded compressor may cut frames differently from run to run.
        cctx = zstandard.ZstdCompressor(level=lvl, threads=0, write_checksum=True)
        return cast(BinaryIO, cctx.stream_writer(out, closefd=False))
    return cast(BinaryIO, _NoClose(out))


class _ClosingBoth:
    """GzipFile does not close a fileobj it was given; layers expect close() to release raw."""

    def __init__(self, inner: gzip.GzipFile, raw: BinaryIO) -> None:
        self._inner = inner
        self._raw = raw

    def read(self, n: int = -1) -> bytes:
        return self._inner.read(n)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._raw.close()

    def __enter__(self) -> _ClosingBoth:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _NoClose:
    """Passes writes through to out; close() only flushes, so the caller keeps out."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out

    def write(self, data: bytes) -> int:
        return self._out.write(data)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        self._out.flush()

    def __enter__(self) -> _NoClose:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
