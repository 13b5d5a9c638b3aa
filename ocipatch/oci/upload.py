"""One blob upload that survives lost connections and registry restarts.

Small blobs go in one PUT. Larger ones are streamed with PATCH (in `chunk_size` pieces, or whole
as docker does) and closed with an empty PUT ?digest=, because only a PATCH leaves bytes in the
upload session that a later request can build on. After a transient failure the upload:

1. HEADs the blob: the last PUT may have gone through before the connection broke;
2. asks the session how far it got (GET on the upload URL -> `Range: 0-N`) and continues with
   a PATCH from byte N+1;
3. or, when the session is gone or unusable (CNCF distribution invalidates a session that
   received part of a request), starts a new session and sends the blob again.

Every wait counts against the operation's retry budget; bytes accepted start a fresh one.
The source is reopened through `opener` (and read up to the offset) whenever the position of
the open stream is not where the registry wants to continue.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable
from typing import BinaryIO
from urllib.parse import urlencode, urljoin

import requests

from ocipatch.errors import IntegrityError, RegistryError
from ocipatch.oci.remote import RegistryClient, _error_detail, _Retryable, _Where
from ocipatch.oci.retry import Budget

log = logging.getLogger(__name__)

SMALL = 1 << 20  # up to this size a blob goes in one PUT: little to resume
_READ = 1 << 20
_RANGE = re.compile(r"^(?:bytes=)?0-(-?\d+)$")


class _SessionLost(Exception):
    """The upload session cannot be continued: start a new one."""


class _Body:
    """`length` bytes of the stream, with a known length so requests sends Content-Length."""

    def __init__(self, upload: BlobUpload, length: int) -> None:
        self._upload = upload
        self._left = length
        self._length = length

    def __len__(self) -> int:
        return self._length

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        data = self._upload.read(self._left if n is None or n < 0 else min(n, self._left))
        self._left -= len(data)
        return data


class BlobUpload:
    """Pushes `size` bytes from `opener` into an upload session; see the module docstring."""

    def __init__(
        self,
        client: RegistryClient,
        repository: str,
        digest: str,
        size: int,
        opener: Callable[[], BinaryIO],
        budget: Budget,
    ) -> None:
        self.client = client
        self.repository = repository
        self.digest = digest
        self.size = max(size, 0)
        self.opener = opener
        self.budget = budget
        self.where = _Where(registry=client.registry, repository=repository, digest=digest)
        self.location = ""
        self.offset = 0
        self._stream: BinaryIO | None = None
        self._pos = 0  # bytes read from the open stream
        self.sent = 0  # body bytes handed to requests, resent ones included
        self.resumes = 0
        self.restarts = 0

    # ------------------------------------------------------------------ the steps

    def run(self, location: str) -> None:
        """Upload through the session at `location`; returns once the registry has the blob."""
        self.location, self.offset = location, 0  # where the session is, as far as we know
        try:
            while True:
                try:
                    self._send()
                    self._log_cost()
                    return
                except (_Retryable, _SessionLost) as e:
                    reason = e.reason if isinstance(e, _Retryable) else str(e)
                    retry_after = e.retry_after if isinstance(e, _Retryable) else None
                    if not self.budget.wait(retry_after):
                        if isinstance(e, _Retryable):
                            raise self.client._gave_up(e, self.budget, self.where) from None
                        raise self._failed(reason) from None
                    log.info("upload of %s interrupted (%s)", self.digest, reason)
                    if self._landed():
                        self._log_cost()
                        return
                    self._continue(lost=isinstance(e, _SessionLost))
        finally:
            self._close()

    def _send(self) -> None:
        if self.size <= SMALL:
            # One PUT: on failure nothing is kept, so continuing means a new session.
            self._put(self.location, with_body=True)
            return
        chunk = self.client.options.chunk_size or self.size
        while self.offset < self.size:
            end = min(self.size, self.offset + chunk)
            self.location, reached = self._patch(self.location, self.offset, end)
            if reached > self.offset:
                self.budget.progress()
            self.offset = reached
        self._put(self.location, with_body=False)

    def _log_cost(self) -> None:
        if self.resumes or self.restarts:
            log.info(
                "uploaded %s: %d body bytes sent for %d (%d resumes, %d restarts)",
                self.digest,
                self.sent,
                self.size,
                self.resumes,
                self.restarts,
            )

    def _landed(self) -> bool:
        """Whether the blob is complete in the registry (a final PUT that went through)."""
        return self.client.blob_exists(self.repository, self.digest, self.budget)

    def _continue(self, lost: bool) -> None:
        """Set location and offset to continue from: the session's own, or a new session's."""
        status = None if lost or self.size <= SMALL else self._status(self.location)
        if status is not None:
            self.location, reached = status
            if reached > self.offset:
                self.budget.progress()
            self.offset = reached
            self.resumes += 1
            log.info("resuming upload of %s at byte %d", self.digest, reached)
            return
        self.restarts += 1
        log.info("restarting upload of %s in a new session", self.digest)
        self.location = self.client._start_upload(self.repository, self.digest, self.budget)
        self.offset = 0

    # ------------------------------------------------------------------ requests

    def _status(self, location: str) -> tuple[str, int] | None:
        """The session's Location and the bytes it holds; None when it cannot continue."""
        resp = self.client._request(
            "GET",
            location,
            repository=self.repository,
            digest=self.digest,
            budget=self.budget,
        )
        resp.close()
        reached = _range_end(resp) if resp.status_code in (202, 204) else None
        if reached is None or reached > self.size:
            log.info(
                "upload session of %s cannot continue (HTTP %d %s)",
                self.digest,
                resp.status_code,
                _error_detail(resp),
            )
            return None
        loc = resp.headers.get("Location")
        return (urljoin(resp.url, loc) if loc else location), reached

    def _patch(self, location: str, start: int, end: int) -> tuple[str, int]:
        """PATCH bytes [start, end); returns the next Location and the bytes now held."""
        resp = self.client._request(
            "PATCH",
            location,
            repository=self.repository,
            digest=self.digest,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(end - start),
                "Content-Range": f"{start}-{end - 1}",
            },
            body=lambda: self._body(start, end - start),
            retry=False,
        )
        resp.close()
        _check_session(resp)
        self.client._expect(resp, (202,), "uploading blob", self.repository, self.digest)
        reached = _range_end(resp)
        if reached is None:
            reached = end
        if not start < reached <= end:
            raise _SessionLost(f"the session holds {reached} bytes after a PATCH to {end}")
        return self.client._location(resp, self.repository, self.digest), reached

    def _put(self, location: str, with_body: bool) -> None:
        sep = "&" if "?" in location else "?"
        query = urlencode({"digest": self.digest})
        length = self.size if with_body else 0
        resp = self.client._request(
            "PUT",
            f"{location}{sep}{query}",
            repository=self.repository,
            digest=self.digest,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)},
            body=(lambda: self._body(0, length)) if length else b"",
            retry=False,
        )
        resp.close()
        if resp.status_code == 400 and "DIGEST_INVALID" in _error_detail(resp):
            raise IntegrityError(
                f"registry {self.client.registry}/{self.repository} rejected blob "
                f"{self.digest}: the uploaded content does not match its digest or size"
            )
        _check_session(resp)
        self.client._expect(resp, (201, 204), "uploading blob", self.repository, self.digest)

    def _failed(self, reason: str) -> RegistryError:
        return RegistryError(
            f"uploading blob to {self.client.registry} failed ({reason}; {self.budget.spent()})",
            retryable=True,
            **self.where,
        )

    # ------------------------------------------------------------------ the source stream

    def _body(self, start: int, length: int) -> _Body | bytes:
        if length <= 0:
            return b""
        self._seek(start)
        return _Body(self, length)

    def read(self, n: int) -> bytes:
        assert self._stream is not None
        data = self._stream.read(n)
        self._pos += len(data)
        self.sent += len(data)
        return data

    def _seek(self, offset: int) -> None:
        """Position the source at offset: reopen it if it is past that, then read up to it
        (a registry stream cannot seek; reading keeps its digest check whole)."""
        if self._stream is not None and self._pos == offset:
            return
        if self._stream is None or self._pos > offset:
            self._close()
            self._stream = self.opener()
            self._pos = 0
        while self._pos < offset:
            data = self._stream.read(min(_READ, offset - self._pos))
            if not data:
                raise IntegrityError(f"blob {self.digest} ended before byte {offset}")
            self._pos += len(data)

    def _close(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(OSError):
                self._stream.close()
            self._stream = None


def _check_session(resp: requests.Response) -> None:
    """_SessionLost for an unknown session (404) or one that holds other bytes than we
    think (416, BLOB_UPLOAD_INVALID): the upload goes on in a new session."""
    detail = _error_detail(resp)
    if resp.status_code in (404, 416) or "BLOB_UPLOAD_INVALID" in detail:
        raise _SessionLost(f"HTTP {resp.status_code} {detail}")


def _range_end(resp: requests.Response) -> int | None:
    """Bytes held by an upload session from its `Range: 0-N` header, None if absent.

    "0-0" is read as empty (distribution sends it for 0 bytes and for 1): if the session does
    hold a byte, the PATCH from 0 gets a 416 and the upload restarts in a new session.
    """
    m = _RANGE.match(resp.headers.get("Range", "").strip())
    if m is None:
        return None
    end = int(m.group(1))
    return end + 1 if end > 0 else 0
