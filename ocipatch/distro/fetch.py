"""Fetching repository files (http, https, file) into a content-addressed cache.

Everything kept is verified first: blobs land under `blobs/sha256/<hex>` through a temporary
file and an atomic rename (`BlobCache.writer`), so two processes sharing the cache both end
with the same verified file. The only mutable files are the small per-URL states holding an
InRelease's ETag / Last-Modified and the digest of its verified copy, each replaced atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import requests

from ocipatch.errors import IntegrityError, ResolveError, UnsupportedError
from ocipatch.oci.cache import BlobCache, touch

USER_AGENT = "ocipatch (apt index reader)"
CHUNK = 1 << 20
RETRIES = 3
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class FetchError(ResolveError):
    """A repository file could not be fetched (network error, HTTP error after retries)."""

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


@dataclass
class Response:
    status: int  # 200, 304 or 404 (other failures raise FetchError)
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


def _file_path(url: str) -> Path:
    return Path(unquote(urlsplit(url).path))


class Fetcher:
    """A small HTTP(S) and file:// client with bounded retries; one requests session per
    thread (sessions are not documented as thread-safe)."""

    def __init__(self, *, timeout: float = 60.0, retries: int = RETRIES) -> None:
        self.timeout = timeout
        self.retries = max(1, retries)
        self._local = threading.local()

    def _session(self) -> requests.Session:
        s: requests.Session | None = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.headers["User-Agent"] = USER_AGENT
            self._local.session = s
        return s

    def _fail(self, url: str, detail: str, status: int | None = None) -> FetchError:
        return FetchError(
            f"cannot fetch {url}: {detail}; check that the image's package repositories are "
            "reachable, or point them at a mirror with --repo-mirror FROM=TO",
            url=url,
            status=status,
        )

    @contextlib.contextmanager
    def _open(
        self, url: str, headers: Mapping[str, str] | None = None
    ) -> Iterator[requests.Response]:
        last = ""
        for attempt in range(self.retries):
            if attempt:
                time.sleep(0.5 * 2 ** (attempt - 1))
            try:
                resp = self._session().get(
                    url, headers=dict(headers or {}), timeout=self.timeout, stream=True
                )
            except (requests.ConnectionError, requests.Timeout) as e:
                last = type(e).__name__
                continue
            if resp.status_code in _RETRY_STATUS:
                last = f"HTTP {resp.status_code}"
                resp.close()
                continue
            try:
                yield resp
            finally:
                resp.close()
            return
        raise self._fail(url, f"{last} after {self.retries} attempts")

    def get(self, url: str, headers: Mapping[str, str] | None = None) -> Response:
        """A small file, whole. 404/410 come back as status 404; 304 as 304."""
        if url.startswith("file:"):
            path = _file_path(url)
            try:
                return Response(200, path.read_bytes())
            except FileNotFoundError:
                return Response(404)
            except OSError as e:
                raise self._fail(url, e.strerror or str(e)) from None
        try:
            with self._open(url, headers) as resp:
                if resp.status_code in (404, 410):
                    return Response(404)
                if resp.status_code == 304:
                    return Response(304, b"", dict(resp.headers))
                if resp.status_code != 200:
                    raise self._fail(url, f"HTTP {resp.status_code}", resp.status_code)
                return Response(200, resp.content, dict(resp.headers))
        except (requests.RequestException, OSError) as e:
            raise self._fail(url, type(e).__name__) from None

    @contextlib.contextmanager
    def stream(self, url: str) -> Iterator[Iterator[bytes]]:
        """A large file in chunks; a missing file is an error."""
        if url.startswith("file:"):
            path = _file_path(url)
            try:
                fh = path.open("rb")
            except OSError as e:
                raise self._fail(url, e.strerror or str(e)) from None
            with fh:
                yield iter(lambda: fh.read(CHUNK), b"")
            return
        with self._open(url) as resp:
            if resp.status_code != 200:
                raise self._fail(url, f"HTTP {resp.status_code}", resp.status_code)
            yield resp.iter_content(CHUNK)


class RepoCache:
    """Verified repository files by SHA256, and the InRelease validator states."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = BlobCache(root)

    def path(self, sha256: str) -> Path:
        return self.blobs.path(f"sha256:{sha256}")

    def read(self, sha256: str, size: int | None = None) -> bytes | None:
        """The cached bytes, re-hashed (a corrupted cache file is dropped, not trusted)."""
        p = self.path(sha256)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).hexdigest() != sha256 or (size is not None and len(data) != size):
            p.unlink(missing_ok=True)
            return None
        touch(p)
        return data

    def put(self, data: bytes, sha256: str) -> Path:
        """Store bytes the caller has verified (their SHA256 is checked once more here)."""
        if hashlib.sha256(data).hexdigest() != sha256:
            raise IntegrityError(f"internal: refusing to cache data not matching sha256:{sha256}")
        dest = self.path(sha256)
        if not dest.is_file():
            with self.blobs.writer(dest) as fh:
                fh.write(data)
        return dest

    def has(self, sha256: str, size: int) -> bool:
        p = self.path(sha256)
        return p.is_file() and p.stat().st_size == size and touch(p)

    def download(self, fetcher: Fetcher, url: str, sha256: str, size: int, what: str) -> Path:
        """Stream `url` into the cache, checking size and SHA256 on the way; on a mismatch the
        partial file is deleted and IntegrityError names `what` and the URL."""
        dest = self.path(sha256)
        if self.has(sha256, size):
            return dest
        h = hashlib.sha256()
        count = 0
        with self.blobs.writer(dest) as fh, fetcher.stream(url) as chunks:
            for chunk in chunks:
                count += len(chunk)
                if count > size:
                    raise IntegrityError(
                        f"{what} from {url} is larger than the {size} bytes its signed index "
                        "says: the file was altered or the mirror is inconsistent"
                    )
                h.update(chunk)
                fh.write(chunk)
            if count != size:
                raise IntegrityError(
                    f"{what} from {url} has {count} bytes, its signed index says {size}: the "
                    "file was altered or the download was cut short"
                )
            if h.hexdigest() != sha256:
                raise IntegrityError(
                    f"{what} from {url} does not match the SHA256 of its signed index (got "
                    f"{h.hexdigest()}, expected {sha256}): the file was altered; do not use "
                    "this mirror until it is fixed"
                )
        return dest

    # -- InRelease validators ---------------------------------------------------------------
    def _state_path(self, url: str) -> Path:
        return (
            self.root / "release-state" / (hashlib.sha256(url.encode()).hexdigest()[:32] + ".json")
        )

    def load_state(self, url: str) -> dict[str, Any] | None:
        try:
            doc = json.loads(self._state_path(url).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return doc if isinstance(doc, dict) and doc.get("url") == url else None

    def save_state(self, url: str, state: Mapping[str, Any]) -> None:
        p = self._state_path(url)
        with self.blobs.writer(p) as fh:
            fh.write(json.dumps({"url": url, **state}, sort_keys=True).encode())


# --- repository URLs (every ecosystem's) ------------------------------------------------

_SUPPORTED_SCHEMES = ("http://", "https://", "file:")


def rewrite(url: str, mirrors: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> str:
    """Replace the longest matching mirror prefix of `url`.

    A prefix matches at a path boundary only (`http://a/debian` rewrites `http://a/debian/x`
    but not `http://a/debian-security`); trailing slashes do not matter.
    """
    best: tuple[str, str] | None = None
    for src, dst in mirrors:
        s = src.rstrip("/")
        if (url.rstrip("/") == s or url.startswith(s + "/")) and (
            best is None or len(s) > len(best[0])
        ):
            best = (s, dst.rstrip("/"))
    if best is None:
        return url
    return best[1] + url[len(best[0]) :]


def check_scheme(url: str, where: str) -> None:
    if not url.startswith(_SUPPORTED_SCHEMES):
        raise UnsupportedError(
            f"{where}: repository {url} uses a transport ocipatch cannot read without apt "
            "(only http, https and file); point it at a mirror with --repo-mirror FROM=TO"
        )
