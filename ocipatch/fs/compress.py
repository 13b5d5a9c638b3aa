"""Streaming (de)compression of layer blobs: gzip, zstd, or none.

Nothing here holds a whole layer in memory: readers and writers wrap a stream. Compressed output is
deterministic for a given library version: gzip headers carry no file name and mtime 0, zstd runs
single-threaded.
"""

from __future__ import annotations

import collections
import gzip
import os
import queue
import struct
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, cast

import zstandard
from isal import igzip, isal_zlib

from ocipatch.errors import UsageError

COMPRESSIONS = ("gzip", "zstd", "none")
# What a corrupt compressed stream raises on reading, beside EOFError and OSError.
DECODE_ERRORS: tuple[type[Exception], ...] = (
    zstandard.ZstdError,
    cast(type[Exception], isal_zlib.error),
)
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
        # asked to rewind, which tarfile's stream mode never does. ISA-L's inflate is the same
        # format at 2-3x zlib's speed (output of decompression is defined by the input).
        src = raw if hasattr(raw, "readinto") else _ReadInto(raw)
        return cast(BinaryIO, _ClosingBoth(igzip.GzipFile(fileobj=src, mode="rb"), raw))  # type: ignore[no-untyped-call]
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
        return cast(BinaryIO, ParallelGzipWriter(out, lvl))
    if compression == "zstd":
        lvl = DEFAULT_LEVEL["zstd"] if level is None else level
        # threads=0: the multi-threaded compressor may cut frames differently from run to run.
        cctx = zstandard.ZstdCompressor(level=lvl, threads=0, write_checksum=True)
        return cast(BinaryIO, cctx.stream_writer(out, closefd=False))
    return cast(BinaryIO, _NoClose(out))


class ParallelGzipWriter:
    """One gzip member compressed in parallel, pigz-style, with output fixed by the input.

    The input is cut at fixed offsets into blocks; each block is raw deflate primed with the
    last 32 KiB of the block before (so the ratio stays close to a single stream) and ends
    with a sync flush, the last with the final block. Blocks are compressed on worker threads
    (zlib releases the GIL) and written in order; the header has no name and mtime 0. The
    bytes depend on the input, level and BLOCK only: not on the thread count or timing.
    """

    BLOCK = 1 << 20
    WINDOW = 32 << 10
    _IN_FLIGHT = 4

    def __init__(self, out: BinaryIO, level: int, workers: int | None = None) -> None:
        self._out = out
        self._level = level
        n = workers if workers is not None else min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=max(1, n), thread_name_prefix="gzip")
        self._pending: collections.deque[Future[bytes]] = collections.deque()
        self._buf = bytearray()
        self._dict = b""
        self._crc = 0
        self._size = 0
        self._closed = False
        # magic, deflate, no flags, mtime 0, xfl 0, OS unknown (as gzip.GzipFile writes it)
        out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")

    def _deflate(self, block: bytes, zdict: bytes, last: bool) -> bytes:
        args = (self._level, zlib.DEFLATED, -zlib.MAX_WBITS, 8, zlib.Z_DEFAULT_STRATEGY)
        c = zlib.compressobj(*args, zdict) if zdict else zlib.compressobj(*args)
        return c.compress(block) + c.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)

    def _submit(self, block: bytes, last: bool) -> None:
        self._crc = zlib.crc32(block, self._crc)
        self._size += len(block)
        self._pending.append(self._pool.submit(self._deflate, block, self._dict, last))
        self._dict = (
            block[-self.WINDOW :]
            if len(block) >= self.WINDOW
            else (self._dict + block)[-self.WINDOW :]
        )
        while len(self._pending) > self._IN_FLIGHT:
            self._out.write(self._pending.popleft().result())

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise ValueError("write to a closed ParallelGzipWriter")
        self._buf += data
        while len(self._buf) > self.BLOCK:  # keep one block back: the last one finishes
            block = bytes(self._buf[: self.BLOCK])
            del self._buf[: self.BLOCK]
            self._submit(block, last=False)
        return len(data)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass  # blocks are cut at fixed offsets, never early

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._submit(bytes(self._buf), last=True)
            self._buf = bytearray()
            while self._pending:
                self._out.write(self._pending.popleft().result())
            self._out.write(struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF))
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ParallelGzipWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ClosingBoth:
    """GzipFile does not close a fileobj it was given; layers expect close() to release raw."""

    def __init__(self, inner: gzip.GzipFile | igzip.GzipFile, raw: BinaryIO) -> None:
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


class _ReadInto:
    """readinto() over a stream that only has read(): ISA-L's reader fills its own buffer."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw

    def read(self, n: int = -1) -> bytes:
        return self._raw.read(n)

    def readinto(self, b: bytearray | memoryview) -> int:
        data = self._raw.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True


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


class ReadAhead:
    """Reads a stream on a thread of its own, a bounded queue of chunks ahead of the reader.

    Download, digest checks and decompression (which release the GIL) then run beside the
    reader's work (tar parsing, writing files) instead of between its reads. Errors reach the
    reader at the point of the stream where they happened. close() stops the thread and closes
    the inner stream.
    """

    _CHUNK = 1 << 20
    _DEPTH = 8  # chunks in flight: memory stays under _CHUNK * (_DEPTH + 2)

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(self._DEPTH)
        self._stop = threading.Event()
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._thread = threading.Thread(target=self._fill, name="read-ahead", daemon=True)
        self._thread.start()

    def _put(self, item: bytes | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self) -> None:
        try:
            while not self._stop.is_set():
                chunk = self._inner.read(self._CHUNK)
                if not chunk:
                    self._put(None)
                    return
                if not self._put(chunk):
                    return
        except BaseException as e:  # handed to the reader, raised there
            self._put(e)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = [self._buf[self._pos :]]
            self._buf, self._pos = b"", 0
            while (chunk := self._next()) is not None:
                parts.append(chunk)
            return b"".join(parts)
        while self._pos >= len(self._buf):
            chunk = self._next()
            if chunk is None:
                return b""
            self._buf, self._pos = chunk, 0
        out = self._buf[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def _next(self) -> bytes | None:
        if self._eof:
            return None
        item = self._queue.get()
        if item is None:
            self._eof = True
            return None
        if isinstance(item, BaseException):
            self._eof = True
            raise item
        return item

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._inner.close()

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
