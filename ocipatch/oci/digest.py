"""Digests: parsing, computing, and a reader that refuses content not matching its digest."""

from __future__ import annotations

import hashlib
import re
from typing import BinaryIO

from ocipatch.errors import IntegrityError, UsageError

_DIGEST = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")


def is_digest(text: object) -> bool:
    """True for `sha256:<64 hex>` or `sha512:<128 hex>`: safe as a file name and a hash."""
    return isinstance(text, str) and _DIGEST.match(text) is not None


def check_digest(digest: str) -> str:
    if not _DIGEST.match(digest):
        raise UsageError(f"not a valid digest: {digest!r} (expected sha256:<64 hex digits>)")
    return digest


def hasher(digest: str) -> hashlib._Hash:
    return hashlib.new(digest.split(":", 1)[0])


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def verify_bytes(data: bytes, digest: str, size: int | None = None, what: str = "blob") -> bytes:
    """Return data if it matches digest (and size); raise IntegrityError naming the digest."""
    h = hasher(digest)
    h.update(data)
    got = f"{digest.split(':', 1)[0]}:{h.hexdigest()}"
    if size is not None and size >= 0 and len(data) != size:
        raise IntegrityError(
            f"{what} {digest} has {len(data)} bytes, expected {size}: content is corrupt or "
            "was tampered with"
        )
    if got != digest:
        raise IntegrityError(
            f"{what} {digest} does not match its digest (got {got}): content is corrupt or "
            "was tampered with"
        )
    return data


class VerifiedReader:
    """Wraps a stream; at end of stream checks digest and size and raises IntegrityError.

    Callers must read to the end (or call `finish()`), or the check never runs: that is why
    every consumer in ocipatch drains what it opens.
    """

    def __init__(self, raw: BinaryIO, digest: str, size: int | None, what: str = "blob") -> None:
        self._raw = raw
        self._digest = digest
        self._size = size
        self._what = what
        self._hash = hasher(digest)
        self._count = 0
        self._done = False

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if data:
            self._hash.update(data)
            self._count += len(data)
            if self._size is not None and self._size >= 0 and self._count > self._size:
                raise IntegrityError(
                    f"{self._what} {self._digest} is longer than its size {self._size}: content "
                    "is corrupt or was tampered with"
                )
        elif n != 0:
            self._check()
        return data

    def _check(self) -> None:
        if self._done:
            return
        self._done = True
        if self._size is not None and self._size >= 0 and self._count != self._size:
            raise IntegrityError(
                f"{self._what} {self._digest} has {self._count} bytes, expected {self._size}: "
                "content is corrupt or was tampered with"
            )
        got = f"{self._digest.split(':', 1)[0]}:{self._hash.hexdigest()}"
        if got != self._digest:
            raise IntegrityError(
                f"{self._what} {self._digest} does not match its digest (got {got}): content "
                "is corrupt or was tampered with"
            )

    def finish(self) -> None:
        """Drain the rest of the stream and run the check."""
        while self.read(1 << 20):
            pass
        self._check()

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> VerifiedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def readable(self) -> bool:
        return True
