"""A registry client (OCI distribution API) built on oras-py's session and auth backends.

From oras we take `oras.provider.Registry` for its requests session (cookies off) and its auth
backends: `TokenAuth` answers bearer challenges, `BasicAuth` basic ones. We do not use oras's
`do_request` (its retry decorator retries any Exception with multi-second sleeps) nor its
manifest/blob helpers (they re-serialise JSON and read blobs into memory). Instead:

* one request loop (`_request`) that retries refused, reset and timed-out connections and
  408/429/5xx answers (Retry-After honoured) with backoff and jitter for a bounded time
  (`retry.Budget`, --registry-retry-time); never on 401/403 (AuthError) or 404;
* manifests are returned as the exact bytes served, digested locally;
* blobs stream in both directions; a download that loses its connection resumes with a Range
  request (or restarts) and is digest-checked end to end by `fetch_blob`; an upload that loses
  its connection resumes from the offset the registry reports, or restarts (`upload.py`).

Scheme: HTTPS, except plain HTTP for `plain_http` and `insecure_registries`. For loopback hosts
(localhost, 127.0.0.0/8, ::1) HTTPS is tried first and the client falls back to plain HTTP when
the server does not speak TLS, as docker does for its default insecure ranges: a plain local
registry works with no flag and a local TLS registry still gets its certificate checked.
"""

from __future__ import annotations

import contextlib
import email.utils
import io
import ipaddress
import json
import logging
import os
import re
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypedDict
from urllib.parse import urlencode, urljoin, urlsplit

import oras.auth
import oras.auth.utils
import oras.provider
import requests
import requests.adapters
import urllib3.exceptions

from ocipatch import __version__
from ocipatch.errors import (
    AuthError,
    IntegrityError,
    NotFoundError,
    RegistryError,
    UsageError,
)
from ocipatch.oci import mediatypes
from ocipatch.oci.auth import Credentials, lookup_credentials, normalize_key
from ocipatch.oci.digest import VerifiedReader, check_digest, hasher, sha256_bytes, verify_bytes
from ocipatch.oci.retry import DEFAULT_RETRY_TIME, RETRY_STATUSES, Budget

log = logging.getLogger(__name__)

# (connect, read) seconds. The read timeout bounds a stall between two reads, not a whole blob.
TIMEOUT = (30.0, 300.0)
# First HTTPS attempt to a loopback registry that may speak plain HTTP only.
_PROBE_TIMEOUT = (5.0, 5.0)
MAX_MANIFEST_BYTES = 4 << 20  # as containers/image: a manifest is small JSON
_CHUNK = 1 << 20
_HUB_API_HOST = "registry-1.docker.io"
_REPO = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_UA = f"ocipatch/{__version__} (oras-py)"
_HINT_UNREACHABLE = (
    "is the registry running? for a plain-HTTP registry use --plain-http / --insecure-registry HOST"
)


@dataclass(frozen=True)
class RegistryOptions:
    plain_http: bool = False  # --plain-http: force http for every registry
    insecure_registries: tuple[str, ...] = ()  # --insecure-registry HOST[:PORT]: plain http
    ca_file: Path | None = None  # --registry-ca FILE
    username: str | None = None  # --username (+ password from --password-stdin)
    password: str | None = None
    retry_time: float = DEFAULT_RETRY_TIME  # --registry-retry-time: seconds per outage
    backoff: float = 0.5  # first backoff sleep in seconds, doubled each retry
    chunk_size: int = 0  # blob upload PATCH size; 0: the whole blob in one PATCH, as docker


class _Where(TypedDict):
    """What every error names."""

    registry: str
    repository: str
    digest: str


class _Retryable(RegistryError):
    """A transient failure: `reason` says what, `retry_after` is the server's Retry-After.

    `connection` tells a lost or refused connection from a transient HTTP status.
    """

    def __init__(
        self,
        reason: str,
        *,
        connection: bool,
        retry_after: float | None = None,
        detail: str = "",
        **kw: Any,
    ) -> None:
        super().__init__(reason, retryable=True, **kw)
        self.reason = reason
        self.connection = connection
        self.retry_after = retry_after
        self.detail = detail


class _TimeoutAdapter(requests.adapters.HTTPAdapter):
    """Applies TIMEOUT to every request on the session, oras's token requests included."""

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        return super().send(
            request,
            stream=stream,
            timeout=TIMEOUT if timeout is None else timeout,
            verify=verify,
            cert=cert,
            proxies=proxies,
        )


def split_host(registry: str) -> tuple[str, int | None]:
    """'host:5000' -> ('host', 5000); '[::1]:5000' -> ('::1', 5000)."""
    if registry.startswith("["):
        host, _, rest = registry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif registry.count(":") == 1:
        host, _, port = registry.partition(":")
    else:
        host, port = registry, ""
    return host, int(port) if port.isdigit() else None


def is_loopback(registry: str) -> bool:
    host, _ = split_host(registry)
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listed(registry: str, entries: tuple[str, ...]) -> bool:
    """--insecure-registry HOST matches every port of HOST; HOST:PORT only that port."""
    host, port = split_host(registry.lower())
    for entry in entries:
        bare = entry.lower().strip().removeprefix("http://").removeprefix("https://")
        e_host, e_port = split_host(bare.rstrip("/"))
        if e_host == host and (e_port is None or e_port == port):
            return True
    return False


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception, the ones it wraps (requests/urllib3 nest them in args), and causes."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        nested = [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
        todo.extend(n for n in nested if isinstance(n, BaseException))


def _reason(exc: BaseException) -> str:
    """A short human reason for a connection-level failure."""
    causes = list(_causes(exc))
    for e in causes:
        if isinstance(e, ssl.SSLCertVerificationError):
            return e.verify_message or str(e)
    # Most specific first: urllib3's NewConnectionError is also a ConnectTimeoutError.
    for kinds, reason in (
        (ConnectionRefusedError, "connection refused"),
        (urllib3.exceptions.NameResolutionError, "host name does not resolve"),
        (ConnectionResetError | BrokenPipeError, "connection reset"),
        (TimeoutError | urllib3.exceptions.TimeoutError, "timed out"),
    ):
        if any(isinstance(e, kinds) for e in causes):
            return reason
    text = str(exc)
    m = re.search(r"Caused by (\w+\(.*)", text)
    return (m.group(1) if m else text)[:200]


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    return None


def _error_detail(resp: requests.Response) -> str:
    """'CODE: message' from a registry's JSON error body, else the HTTP reason."""
    if resp.status_code == 400 and b"HTTP request to an HTTPS server" in resp.content[:1024]:
        return "the registry speaks HTTPS: drop --plain-http / --insecure-registry for it"
    try:
        body = resp.json() if resp.content and len(resp.content) < 65536 else None
    except ValueError:
        body = None
    parts: list[str] = []
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        for err in body["errors"][:3]:
            if isinstance(err, dict):
                code, msg = err.get("code", ""), err.get("message", "")
                parts.append(f"{code}: {msg}" if code and msg else str(code or msg))
    return ("; ".join(dict.fromkeys(p for p in parts if p)) or resp.reason or "")[:300]


class _BlobRaw(io.RawIOBase):
    """A blob body that survives dropped connections: it re-requests from the offset reached.

    With a 206 answer to `Range: bytes=N-` it continues; with a 200 it skips N bytes.
    Not digest-checked: fetch_blob (or the caller) wraps it in a VerifiedReader.
    """

    def __init__(self, client: RegistryClient, repository: str, digest: str) -> None:
        super().__init__()
        self._client = client
        self._repository = repository
        self._digest = digest
        self._offset = 0
        self._resumed_at = 0
        self.resumes = 0
        self._budget = client.budget()
        self._resp = client._blob_response(repository, digest, budget=self._budget)
        self.length: int | None = self._content_length(self._resp)

    @staticmethod
    def _content_length(resp: requests.Response) -> int | None:
        value = resp.headers.get("Content-Length", "")
        return int(value) if value.isdigit() else None

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        while True:
            try:
                data = self._resp.raw.read(len(view), decode_content=True)
            except (
                urllib3.exceptions.HTTPError,
                requests.exceptions.RequestException,
                OSError,
            ) as e:
                self._resume(e)
                continue
            n = len(data)
            view[:n] = data
            self._offset += n
            return n

    def _resume(self, exc: BaseException) -> None:
        self._resp.close()
        if self._offset > self._resumed_at:
            self._budget.progress()  # bytes arrived since the last cut: a new outage
        if not self._budget.wait():
            raise RegistryError(
                f"connection to {self._client.registry} lost while downloading blob "
                f"({_reason(exc)}; {self._budget.spent()})",
                registry=self._client.registry,
                repository=self._repository,
                digest=self._digest,
                retryable=True,
            ) from None
        self.resumes += 1
        self._resumed_at = self._offset
        log.info("resuming %s at byte %d (%s)", self._digest, self._offset, _reason(exc))
        resp = self._client._blob_response(
            self._repository, self._digest, self._offset, budget=self._budget
        )
        self._resp = resp
        if resp.status_code == 206:
            if resp.headers.get("Content-Range", "").startswith(f"bytes {self._offset}-"):
                return
            raise RegistryError(
                f"registry answered a resume at byte {self._offset} with range "
                f"{resp.headers.get('Content-Range')!r}",
                registry=self._client.registry,
                repository=self._repository,
                digest=self._digest,
                status=206,
            )
        # A 200 (no range support) restarts the body: skip what we already have.
        skip = self._offset
        while skip:
            try:
                got = resp.raw.read(min(skip, _CHUNK), decode_content=True)
            except (urllib3.exceptions.HTTPError, OSError) as e:
                return self._resume(e)
            if not got:
                return self._resume(OSError("blob ended before the resume offset"))
            skip -= len(got)

    def close(self) -> None:
        if not self.closed:
            self._resp.close()
        super().close()


class RegistryClient:
    """One registry ("host[:port]"). Methods take a repository and a tag or digest."""

    def __init__(self, registry: str, options: RegistryOptions = RegistryOptions()) -> None:
        if not registry or "/" in registry:
            raise UsageError(f"not a registry host: {registry!r} (expected host[:port])")
        self.registry = registry
        self.options = options
        self.api_host = _HUB_API_HOST if normalize_key(registry) == "docker.io" else registry
        if options.ca_file is not None and not Path(options.ca_file).is_file():
            raise UsageError(f"--registry-ca {options.ca_file}: no such file")
        self._verify: bool | str = str(options.ca_file) if options.ca_file else True
        plain = options.plain_http or _listed(registry, options.insecure_registries)
        # None: loopback, decided on the first answer (HTTPS, or HTTP if TLS is not spoken).
        self._scheme: str | None = "http" if plain else (None if is_loopback(registry) else "https")

        self._oras = oras.provider.Registry(
            hostname=self.api_host, insecure=plain, tls_verify=self._verify, auth_backend="token"
        )
        self._session: requests.Session = self._oras.session
        adapter = _TimeoutAdapter(pool_maxsize=16)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        self._session.headers["User-Agent"] = _UA
        self._token_auth: Any = self._oras.auth  # oras TokenAuth, bound to our session
        self._basic_auth: Any = oras.auth.get_auth_backend(
            "basic", self._session, plain, tls_verify=self._verify
        )
        self._creds: Credentials | None = None
        self._creds_loaded = False
        # Authorization value that last worked, per repository; basic auth is registry-wide.
        self._repo_auth: dict[str, str] = {}
        self._registry_auth: str | None = None

    # ------------------------------------------------------------------ public API

    def get_manifest(
        self, repository: str, reference: str, accept: str = mediatypes.ACCEPT_MANIFESTS
    ) -> tuple[bytes, str, str]:
        """(exact bytes, media type, digest). A digest reference is verified."""
        self._check_repo(repository)
        by_digest = self._check_ref(reference)
        what = f"{self.registry}/{repository}{'@' if by_digest else ':'}{reference}"
        budget = self.budget()
        while True:
            resp = self._request(
                "GET",
                f"/v2/{repository}/manifests/{reference}",
                repository=repository,
                digest=reference if by_digest else "",
                headers={"Accept": accept},
                stream=True,
                budget=budget,
            )
            with contextlib.closing(resp):
                if resp.status_code == 404:
                    raise NotFoundError(
                        f"manifest {what} not found (HTTP 404, {_error_detail(resp)}): check "
                        "the repository name and the tag or digest"
                    )
                self._expect(resp, (200,), "fetching manifest", repository, reference)
                try:
                    data = self._read_limited(resp, repository, reference)
                    break
                except _Retryable as e:
                    if not budget.wait():
                        raise self._gave_up(
                            e,
                            budget,
                            _Where(registry=self.registry, repository=repository, digest=""),
                        ) from None
        if by_digest:
            h = hasher(reference)
            h.update(data)
            got = f"{reference.split(':', 1)[0]}:{h.hexdigest()}"
            if got != reference:
                raise IntegrityError(
                    f"manifest {what} does not match its digest (got {got}): the registry "
                    "served corrupt or tampered content"
                )
            digest = reference
        else:
            digest = sha256_bytes(data)
        return data, self._media_type(resp, data), digest

    def blob_exists(self, repository: str, digest: str, budget: Budget | None = None) -> bool:
        self._check_repo(repository)
        check_digest(digest)
        resp = self._request(
            "HEAD",
            f"/v2/{repository}/blobs/{digest}",
            repository=repository,
            digest=digest,
            budget=budget,
        )
        resp.close()
        if resp.status_code == 404:
            return False
        self._expect(resp, (200,), "checking blob", repository, digest)
        return True

    def open_blob(self, repository: str, digest: str) -> BinaryIO:
        """A streaming body that resumes after dropped connections. NOT digest-checked."""
        return io.BufferedReader(self._open_raw(repository, digest), buffer_size=_CHUNK)

    def fetch_blob(self, repository: str, digest: str, size: int, dest: Path) -> None:
        """Download to dest atomically, verifying digest and size; on mismatch no dest file."""
        dest = Path(dest)
        raw = self._open_raw(repository, digest)
        try:
            if raw.length is not None and size >= 0 and raw.length != size:
                raise IntegrityError(
                    f"blob {digest} is announced with {raw.length} bytes, expected {size}: "
                    "content is corrupt or was tampered with"
                )
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
            try:
                with os.fdopen(fd, "wb") as out:
                    reader = VerifiedReader(io.BufferedReader(raw, _CHUNK), digest, size)
                    while chunk := reader.read(_CHUNK):
                        out.write(chunk)
                os.replace(tmp, dest)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        except IntegrityError as e:
            raise IntegrityError(f"{e} (from {self.registry}/{repository})") from None
        finally:
            raw.close()

    def push_blob(
        self,
        repository: str,
        digest: str,
        size: int,
        opener: Callable[[], BinaryIO],
        mount_from: str | None = None,
    ) -> str:
        """'exists' | 'mounted' | 'uploaded'. The body streams from opener(), which is called
        again when an upload has to resume or restart (upload.BlobUpload)."""
        self._check_repo(repository)
        check_digest(digest)
        if mount_from is not None:
            self._check_repo(mount_from)
        from ocipatch.oci.upload import BlobUpload  # it builds on this module

        budget = self.budget()
        if self.blob_exists(repository, digest, budget):
            return "exists"
        if mount_from and mount_from != repository:
            location = self._try_mount(repository, digest, mount_from, budget)
            if location is None:
                return "mounted"
        else:
            location = self._start_upload(repository, digest, budget)
        BlobUpload(self, repository, digest, size, opener, budget).run(location)
        return "uploaded"

    def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> str:
        """PUT the exact bytes under a tag or digest; returns their digest."""
        self._check_repo(repository)
        if self._check_ref(reference):
            verify_bytes(data, reference, what="manifest")
            digest = reference
        else:
            digest = sha256_bytes(data)
        resp = self._request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            repository=repository,
            digest=digest,
            headers={"Content-Type": media_type},
            body=data,
        )
        resp.close()
        self._expect(resp, (200, 201, 202), "pushing manifest", repository, digest)
        served = resp.headers.get("Docker-Content-Digest", "")
        if served.startswith("sha256:") and digest.startswith("sha256:") and served != digest:
            raise IntegrityError(
                f"registry {self.registry}/{repository} stored manifest {digest} as {served}: "
                "the bytes were altered in transit"
            )
        return digest

    def list_tags(self, repository: str) -> list[str]:
        self._check_repo(repository)
        tags: list[str] = []
        target: str | None = f"/v2/{repository}/tags/list?n=1000"
        while target:
            resp = self._request("GET", target, repository=repository)
            if resp.status_code == 404:
                raise NotFoundError(
                    f"repository {self.registry}/{repository} not found (HTTP 404, "
                    f"{_error_detail(resp)})"
                )
            self._expect(resp, (200,), "listing tags", repository, "")
            tags.extend(t for t in (resp.json().get("tags") or []) if isinstance(t, str))
            nxt = resp.links.get("next", {}).get("url")
            target = urljoin(resp.url, nxt) if nxt else None
        return tags

    # ------------------------------------------------------------------ blobs

    def _open_raw(self, repository: str, digest: str) -> _BlobRaw:
        self._check_repo(repository)
        check_digest(digest)
        return _BlobRaw(self, repository, digest)

    def _blob_response(
        self, repository: str, digest: str, offset: int = 0, budget: Budget | None = None
    ) -> requests.Response:
        # identity: a transfer encoding would make byte offsets (and resume) meaningless.
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        resp = self._request(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            repository=repository,
            digest=digest,
            headers=headers,
            stream=True,
            budget=budget,
        )
        if resp.status_code == 404:
            resp.close()
            raise NotFoundError(
                f"blob {digest} not found in {self.registry}/{repository} (HTTP 404, "
                f"{_error_detail(resp)})"
            )
        if resp.status_code not in (200, 206):
            resp.close()
            self._expect(resp, (200,), "fetching blob", repository, digest)
        return resp

    def _try_mount(
        self, repository: str, digest: str, source: str, budget: Budget | None = None
    ) -> str | None:
        """None when mounted; else the Location of the upload session the registry opened."""
        query = urlencode({"mount": digest, "from": source})
        resp = self._request(
            "POST",
            f"/v2/{repository}/blobs/uploads/?{query}",
            repository=repository,
            digest=digest,
            body=b"",
            budget=budget,
        )
        resp.close()
        if resp.status_code == 201:
            return None
        self._expect(resp, (202,), "starting blob upload", repository, digest)
        return self._location(resp, repository, digest)

    def _start_upload(self, repository: str, digest: str, budget: Budget | None = None) -> str:
        resp = self._request(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            repository=repository,
            digest=digest,
            body=b"",
            budget=budget,
        )
        resp.close()
        self._expect(resp, (202,), "starting blob upload", repository, digest)
        return self._location(resp, repository, digest)

    def _location(self, resp: requests.Response, repository: str, digest: str) -> str:
        loc = resp.headers.get("Location")
        if not loc:
            raise RegistryError(
                "registry started an upload without a Location header",
                registry=self.registry,
                repository=repository,
                digest=digest,
                status=resp.status_code,
            )
        return urljoin(resp.url, loc)

    # ------------------------------------------------------------------ requests

    def _url(self, target: str) -> str:
        if target.startswith(("http://", "https://")):
            return target
        return f"{self._scheme or 'https'}://{self.api_host}{target}"

    def _is_own(self, url: str) -> bool:
        """Whether url points at this registry (default ports folded)."""
        parts = urlsplit(url)
        default = 443 if parts.scheme == "https" else 80
        host, port = split_host(self.api_host)
        return (parts.hostname or "", parts.port or default) == (host.lower(), port or default)

    def budget(self) -> Budget:
        """The retry budget of one operation (--registry-retry-time)."""
        return Budget(self.options.retry_time, self.options.backoff)

    def _request(
        self,
        method: str,
        target: str,
        *,
        repository: str,
        digest: str = "",
        headers: dict[str, str] | None = None,
        body: bytes | Callable[[], Any] | None = None,
        stream: bool = False,
        budget: Budget | None = None,
        retry: bool = True,
    ) -> requests.Response:
        """Send with auth and retries. Returns any response but 401/403 and transient ones.

        401 gets one answer to its challenge per call; a second 401 (or a 403) is AuthError.
        Transient failures are retried within `budget` (a new one if None); with retry=False
        they raise _Retryable for the caller, whose body cannot simply be sent again.
        """
        budget = budget or self.budget()
        challenged = False
        where = _Where(registry=self.registry, repository=repository, digest=digest)
        while True:
            try:
                resp = self._send(method, target, repository, headers, body, stream, where)
            except _Retryable as e:
                if not retry:
                    raise
                if budget.wait(e.retry_after):
                    log.info("%s %s: %s; retrying", method, target, e.reason)
                    continue
                raise self._gave_up(e, budget, where) from None
            status = resp.status_code
            if status == 401:
                resp.close()
                if challenged:
                    raise AuthError(
                        f"{self.registry} refused the credentials"
                        f"{' of ' + self._creds.username if self._creds else ''}: check "
                        "--username/--password-stdin or log in again",
                        status=401,
                        **where,
                    )
                try:
                    value = self._answer_challenge(resp, repository, digest)
                except _Retryable as e:
                    if not retry:
                        raise
                    if budget.wait(e.retry_after):
                        continue  # the 401 comes again, and with it the challenge
                    raise self._gave_up(e, budget, where) from None
                self._repo_auth[repository] = value
                challenged = True
                continue
            if status == 403:
                resp.close()
                raise AuthError(
                    f"access denied ({_error_detail(resp)}): the credentials lack permission "
                    "for this repository",
                    status=403,
                    **where,
                )
            return resp

    def _send(
        self,
        method: str,
        target: str,
        repository: str,
        headers: dict[str, str] | None,
        body: bytes | Callable[[], Any] | None,
        stream: bool,
        where: _Where,
    ) -> requests.Response:
        """One request (two when a loopback registry turns out to speak plain HTTP).

        Raises _Retryable for what may pass (a lost connection, 408/429/5xx) and
        RegistryError for what will not (an unknown host, an unverifiable certificate).
        """
        while True:
            url = self._url(target)
            probing = self._scheme is None and not target.startswith(("http://", "https://"))
            hdrs = dict(headers or {})
            auth = self._repo_auth.get(repository) or self._registry_auth
            # Credentials go only to the registry itself, never to a Location on another host.
            if auth and self._is_own(url):
                hdrs["Authorization"] = auth
            data = body() if callable(body) else body
            try:
                resp = self._session.request(
                    method,
                    url,
                    headers=hdrs,
                    data=data,
                    stream=stream,
                    verify=self._verify,
                    allow_redirects=True,
                    timeout=_PROBE_TIMEOUT if probing else TIMEOUT,
                )
            except requests.exceptions.SSLError as e:
                verify_failed = any(isinstance(c, ssl.SSLCertVerificationError) for c in _causes(e))
                if probing and not verify_failed:
                    log.debug("%s does not speak TLS; using plain HTTP", self.registry)
                    self._scheme = "http"
                    continue
                if verify_failed:
                    raise RegistryError(
                        f"TLS certificate of {self.registry} could not be verified "
                        f"({_reason(e)}); pass the registry's CA certificate with "
                        "--registry-ca FILE",
                        **where,
                    ) from None
                raise _Retryable(
                    f"TLS connection failed ({_reason(e)})", connection=True, **where
                ) from None
            except (
                requests.exceptions.ConnectionError,
                requests.exceptions.Timeout,
                requests.exceptions.ChunkedEncodingError,
            ) as e:
                if any(isinstance(c, urllib3.exceptions.NameResolutionError) for c in _causes(e)):
                    raise RegistryError(
                        f"cannot resolve registry host {self.api_host}; check the image reference",
                        **where,
                    ) from None
                raise _Retryable(_reason(e), connection=True, **where) from None
            if probing:
                self._scheme = "https"
            if resp.status_code >= 400 and stream:
                # Error bodies are small: read now so the message survives resp.close().
                with contextlib.suppress(requests.exceptions.RequestException):
                    _ = resp.content
            if resp.status_code in RETRY_STATUSES:
                resp.close()
                raise _Retryable(
                    f"HTTP {resp.status_code}",
                    connection=False,
                    retry_after=_retry_after(resp),
                    detail=_error_detail(resp),
                    status=resp.status_code,
                    **where,
                )
            return resp

    def _gave_up(self, e: _Retryable, budget: Budget, where: _Where) -> RegistryError:
        """The one-line error once the retry budget is spent."""
        if e.connection:
            hint = _HINT_UNREACHABLE if "refused" in e.reason else "check the network"
            return RegistryError(
                f"cannot reach registry {self.registry} ({e.reason}; {budget.spent()}); {hint}",
                retryable=True,
                **where,
            )
        what = "is rate limiting" if e.status == 429 else "is unavailable"
        return RegistryError(
            f"registry {self.registry} {what} ({e.detail or e.reason}; {budget.spent()}); "
            "try again later",
            status=e.status,
            retryable=True,
            **where,
        )

    def _credentials(self) -> Credentials | None:
        if not self._creds_loaded:
            self._creds = lookup_credentials(
                self.registry, self.options.username, self.options.password
            )
            self._creds_loaded = True
        return self._creds

    def _answer_challenge(self, resp: requests.Response, repository: str, digest: str) -> str:
        """The Authorization value answering a 401's WWW-Authenticate challenge."""
        where = _Where(registry=self.registry, repository=repository, digest=digest)
        header = resp.headers.get("Www-Authenticate", "")
        kind = header.split(" ", 1)[0].strip().lower()
        creds = self._credentials()
        if kind == "basic":
            if creds is None:
                raise AuthError(
                    f"{self.registry} requires credentials: pass --username and "
                    "--password-stdin, or log in with podman/docker login",
                    status=401,
                    **where,
                )
            if creds.identity_token is not None:
                raise AuthError(
                    f"{self.registry} asks for basic auth but only an identity token is stored",
                    status=401,
                    **where,
                )
            self._basic_auth.set_basic_auth(creds.username, creds.password)
            headers, _ = self._basic_auth.authenticate_request(resp, {})
            self._registry_auth = str(headers["Authorization"])
            return self._registry_auth
        if kind == "bearer":
            challenge = oras.auth.utils.parse_auth_header(header)
            if not challenge.realm:
                raise AuthError(
                    f"{self.registry} sent a bearer challenge without a realm",
                    status=401,
                    **where,
                )
            try:
                token = self._bearer_token(challenge, creds)
            except requests.exceptions.RequestException as e:
                raise _Retryable(
                    f"token service {challenge.realm}: {_reason(e)}", connection=True, **where
                ) from None
            if not token:
                who = f"the credentials of {creds.username}" if creds else "anonymous access"
                raise AuthError(
                    f"the token service {challenge.realm} refused {who} for scope "
                    f"{challenge.scope or '(none)'}: check --username/--password-stdin or log in "
                    "again",
                    status=401,
                    **where,
                )
            return f"Bearer {token}"
        raise AuthError(
            f"{self.registry} answered 401 with an unsupported challenge {header[:80]!r}",
            status=401,
            **where,
        )

    def _bearer_token(self, challenge: Any, creds: Credentials | None) -> str | None:
        if creds is not None and creds.identity_token is not None:
            return self._oauth_refresh(challenge, creds.identity_token)
        backend = self._token_auth
        if creds is None:
            return backend.request_anonymous_token(challenge)  # type: ignore[no-any-return]
        backend.set_basic_auth(creds.username, creds.password)
        return backend.request_token(challenge)  # type: ignore[no-any-return]

    def _oauth_refresh(self, challenge: Any, refresh_token: str) -> str | None:
        """OAuth2 refresh-token grant, how docker trades a stored identity token."""
        form = {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "service": challenge.service or "",
            "client_id": "ocipatch",
        }
        if challenge.scope:
            form["scope"] = challenge.scope
        resp = self._session.post(challenge.realm, data=form, verify=self._verify)
        if resp.status_code != 200:
            return None
        info = resp.json()
        token = info.get("access_token") or info.get("token")
        return token if isinstance(token, str) else None

    # ------------------------------------------------------------------ helpers

    def _expect(
        self, resp: requests.Response, ok: tuple[int, ...], doing: str, repository: str, digest: str
    ) -> None:
        if resp.status_code in ok:
            return
        raise RegistryError(
            f"{doing} failed: {_error_detail(resp)}",
            registry=self.registry,
            repository=repository,
            digest=digest if digest.startswith("sha") else "",
            status=resp.status_code,
        )

    def _read_limited(self, resp: requests.Response, repository: str, ref: str) -> bytes:
        buf = bytearray()
        try:
            for chunk in resp.iter_content(65536):
                buf += chunk
                if len(buf) > MAX_MANIFEST_BYTES:
                    raise RegistryError(
                        f"manifest larger than {MAX_MANIFEST_BYTES} bytes; refusing it",
                        registry=self.registry,
                        repository=repository,
                        digest=ref if ":" in ref else "",
                    )
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as e:
            raise _Retryable(
                f"connection lost while reading manifest {ref}: {_reason(e)}",
                connection=True,
                registry=self.registry,
                repository=repository,
            ) from None
        return bytes(buf)

    @staticmethod
    def _media_type(resp: requests.Response, data: bytes) -> str:
        ctype = resp.headers.get("Content-Type", "").split(";", 1)[0].strip()
        generic = ("", "application/json", "text/plain", "application/octet-stream")
        if ctype not in generic:
            return ctype
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):  # not JSON: the caller's parse says how
            return ctype
        media = doc.get("mediaType") if isinstance(doc, dict) else None
        return media if isinstance(media, str) and media else ctype

    def _check_repo(self, repository: str) -> None:
        if not _REPO.match(repository) or len(repository) > 255:
            raise UsageError(f"not a valid repository name: {repository!r}")

    @staticmethod
    def _check_ref(reference: str) -> bool:
        """True for a digest, False for a tag; UsageError for anything else."""
        if ":" in reference:
            check_digest(reference)
            return True
        if not _TAG.match(reference):
            raise UsageError(f"not a valid tag: {reference!r}")
        return False


__all__ = [
    "RegistryClient",
    "RegistryOptions",
    "is_loopback",
    "split_host",
]
