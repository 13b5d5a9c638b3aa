"""pytest fixtures: a real registry (CNCF distribution, /usr/bin/docker-registry) and proxies.

Fixtures
- `registry` (session): plain-HTTP registry behind a pass-through `Proxy`; `.host` is the
  proxy's "127.0.0.1:PORT". How requests are counted: the proxy appends (method, path, status)
  to its record *before* it relays the response, so by the time a client call returns every
  request it made is in `.requests()`. That is exact, unlike tailing the registry's log, which
  is written after the response. `.uploads(repo)` counts completed blob uploads (PUT
  .../blobs/uploads/... answered 201), `.mounts(repo)` completed cross-repository mounts.
- `tls_registry` (session): HTTPS with a throwaway CA and server certificate, htpasswd (bcrypt)
  basic auth. `.ca_path`, `.username`, `.password`. Its `.requests()` come from the registry's
  JSON log (TLS cannot be proxied transparently), so use `.wait_requests(n)` to let the log
  catch up before counting; a request refused by auth is logged only as "error authorizing
  context" and counted as a 401.
- `token_registry` (session): plain-HTTP registry with bearer-token auth; the tokens come from
  `TokenServer`, a small Python token service signing ES256 JWTs (x5c chain to the registry's
  rootcertbundle). `.username`, `.password`, `.refresh_token` (an identity token).
- `flaky_proxy` (function): factory; `flaky_proxy("503"|"500"|"429"|"reset"|"truncate"|
  "corrupt"|"append"|"cut"|"down", failures=N)` returns a `Proxy` in front of `registry` that
  misbehaves on the first N attempts of each request (None: always), keyed by method and path
  (upload session ids folded, so a restarted upload counts as the same request), after the
  first `after` attempts have passed through. "cut" passes
  `cut_after` bytes of a request body (or, for a request without one, of the response) and
  then resets both connections, so the registry sees the partial body too. "down" resets the
  request and every open connection and closes the listening socket for `down_for` seconds
  (connections are refused), then listens again on the same port: a registry restart.
  "stall" reads the request and answers nothing for `down_for` seconds, then resets.

Helpers: `make_oci_layout` builds a tiny OCI layout by hand, `skopeo_copy`/`skopeo_raw` run
skopeo (an independent client) against these registries.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import gzip
import hashlib
import http.client
import http.server
import io
import ipaddress
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import struct
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

REGISTRY_BIN = "/usr/bin/docker-registry"
TOKEN_SERVICE = "ocipatch-test-registry"
TOKEN_ISSUER = "ocipatch-test-token-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # with query
    status: int  # as relayed to the client; 0 when the proxy reset the connection
    fault: str = ""  # the fault the proxy injected, "" when passed through
    body: int = 0  # request body bytes received from the client


def _is_upload(r: Request, repository: str | None) -> bool:
    m = re.match(r"^/v2/(.+)/blobs/uploads/[^/?]+", r.path)
    return (
        r.method == "PUT"
        and r.status == 201
        and m is not None
        and (repository is None or m.group(1) == repository)
    )


def _is_mount(r: Request, repository: str | None) -> bool:
    m = re.match(r"^/v2/(.+)/blobs/uploads/\?(.*)$", r.path)
    return (
        r.method == "POST"
        and r.status == 201
        and m is not None
        and "mount=" in m.group(2)
        and (repository is None or m.group(1) == repository)
    )


class _Counting:
    def requests(self) -> list[Request]:
        raise NotImplementedError

    def uploads(self, repository: str | None = None) -> int:
        return sum(_is_upload(r, repository) for r in self.requests())

    def mounts(self, repository: str | None = None) -> int:
        return sum(_is_mount(r, repository) for r in self.requests())

    def count(self, method: str, path_regex: str) -> int:
        return sum(
            1 for r in self.requests() if r.method == method and re.search(path_regex, r.path)
        )


# --------------------------------------------------------------------------- proxy

_HOP = {"connection", "keep-alive", "proxy-connection", "upgrade", "te", "trailer"}
_BODY_FAULTS = ("truncate", "corrupt", "append")
_STATUS_FAULTS = ("500", "503", "429")
FAULTS = ("", *_STATUS_FAULTS, "reset", "cut", "down", "stall", *_BODY_FAULTS)


class _ProxyServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: Proxy

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that drop connections (as the tests make them do) are not errors here.
        import sys

        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.proxy._opened(self.connection)

    def finish(self) -> None:
        self.server.proxy._closed(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def handle(self) -> None:
        # A TLS ClientHello: answer as a plain HTTP server would, so clients probing for TLS
        # (ocipatch on loopback, skopeo --tls-verify=false) fall back to HTTP at once.
        try:
            # Headers and body go out in separate writes: without this, Nagle plus delayed ACK
            # add 40 ms to every response.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            first = self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            return
        if first == b"\x16":
            with contextlib.suppress(OSError):
                self.connection.settimeout(0.5)
                self.connection.recv(65536)
                self.connection.sendall(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
            self.close_connection = True
            return
        super().handle()

    def do_GET(self) -> None:
        self._forward()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    # -- request body, forwarded raw (chunked framing kept as is)
    def _body(self) -> Iterator[bytes]:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                line = self.rfile.readline()
                yield line
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:
                        trailer = self.rfile.readline()
                        yield trailer
                        if trailer in (b"\r\n", b"\n", b""):
                            return
                left = size + 2
                while left:
                    data = self.rfile.read(min(left, 65536))
                    if not data:
                        return
                    left -= len(data)
                    yield data
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                data = self.rfile.read(min(left, 65536))
                if not data:
                    return
                left -= len(data)
                yield data

    def _reset(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.rfile.close()
        _reset_socket(self.connection)

    def _error(self, status: int, retry_after: int | None) -> None:
        body = json.dumps(
            {"errors": [{"code": "UNAVAILABLE", "message": f"injected {status}", "detail": None}]}
        ).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        self.end_headers()
        self.wfile.write(body)

    def _forward(self) -> None:
        proxy = self.server.proxy
        method, path = self.command, self.path
        fault = proxy._take_fault(method, path)
        if fault == "reset":
            proxy._record(Request(method, path, 0, fault))
            self._reset()
            return
        if fault == "stall":  # read the request, answer nothing for `down_for` seconds
            got = sum(len(c) for c in self._body())
            proxy._record(Request(method, path, 0, fault, got))
            time.sleep(proxy.down_for)
            self._reset()
            return
        if fault == "down":
            proxy._record(Request(method, path, 0, fault))
            self._reset()
            proxy._go_down()
            return
        if fault in _STATUS_FAULTS:
            got = sum(len(c) for c in self._body())
            proxy._record(Request(method, path, int(fault), fault, got))
            self._error(int(fault), proxy.retry_after if fault == "429" else None)
            return

        conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
        try:
            conn.connect()
            assert conn.sock is not None
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for k, v in self.headers.items():
                if k.lower() not in _HOP:
                    conn.putheader(k, v)
            conn.endheaders()
            got = 0
            cut = fault == "cut" and self._has_body()
            for chunk in self._body():
                if cut and got + len(chunk) >= proxy.cut_after:
                    conn.send(chunk[: proxy.cut_after - got])
                    proxy._record(Request(method, path, 0, fault, proxy.cut_after))
                    time.sleep(0.1)  # let the registry take the bytes before the reset
                    _reset_socket(conn.sock)
                    self._reset()
                    return
                conn.send(chunk)
                got += len(chunk)
            resp = conn.getresponse()
            proxy._record(Request(method, path, resp.status, fault if not cut else "", got))
            self._relay(resp, method, "" if cut else fault)
        finally:
            conn.close()

    def _has_body(self) -> bool:
        chunked = self.headers.get("Transfer-Encoding", "").lower() == "chunked"
        return chunked or int(self.headers.get("Content-Length") or 0) > 0

    def _relay(self, resp: http.client.HTTPResponse, method: str, fault: str) -> None:
        self.send_response_only(resp.status, resp.reason)
        length = resp.getheader("Content-Length")
        no_body = method == "HEAD" or resp.status in (204, 304) or resp.status < 200
        body_faults = (*_BODY_FAULTS, "cut")
        tamper = fault if fault in body_faults and resp.status == 200 and not no_body else ""
        for k, v in resp.getheaders():
            if k.lower() in _HOP or k.lower() in ("transfer-encoding", "content-length"):
                continue
            self.send_header(k, v)
        if no_body:
            if length is not None:
                self.send_header("Content-Length", length)
            self.end_headers()
            return
        if length is None:
            body = resp.read()
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        n = int(length)
        self.send_header("Content-Length", str(n + 1 if tamper == "append" else n))
        self.end_headers()
        sent = 0
        while True:
            chunk = resp.read(65536)
            if not chunk:
                break
            if tamper == "corrupt" and sent <= n // 2 < sent + len(chunk):
                i = n // 2 - sent
                chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
            cut_at = n // 2 if tamper == "truncate" else self.server.proxy.cut_after
            if tamper in ("truncate", "cut") and sent + len(chunk) >= cut_at:
                self.wfile.write(chunk[: cut_at - sent])
                self.wfile.flush()
                self._reset()
                return
            self.wfile.write(chunk)
            sent += len(chunk)
        if tamper == "append":
            self.wfile.write(b"\0")


class Proxy(_Counting):
    """A threaded HTTP proxy on loopback in front of `upstream`: records, and injects faults.

    `fault` applies to requests whose "METHOD path" matches `match`, for the first `failures`
    attempts of each (method, path-without-query) key; `failures=None` means every attempt.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        fault: str = "",
        failures: int | None = 1,
        match: str | None = None,
        retry_after: int = 0,
        cut_after: int = 1 << 20,
        down_for: float = 3.0,
        after: int = 0,
    ) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {FAULTS}")
        self.upstream = upstream
        self.fault = fault
        self.failures = failures
        default = r"^GET /v2/.+/blobs/sha256:" if fault in _BODY_FAULTS else r"."
        self.match = re.compile(match or default)
        self.retry_after = retry_after
        self.cut_after = cut_after
        self.down_for = down_for
        self.after = after  # attempts of each request passed through before the faults
        self.outages: list[tuple[float, float]] = []  # (went down, listening again), monotonic
        self._lock = threading.Lock()
        self._records: list[Request] = []
        self._seen: dict[tuple[str, str], int] = {}
        self._conns: set[socket.socket] = set()
        self._closing = False
        self.port = 0
        self._listen()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"

    def _listen(self) -> None:
        self._server = _ProxyServer(("127.0.0.1", self.port), _Handler)
        self._server.proxy = self
        self.port = int(self._server.server_address[1])
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def _opened(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.add(conn)

    def _closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _go_down(self) -> None:
        """Stop listening and drop every connection; listen again after `down_for` seconds."""
        server = self._server
        with self._lock:
            conns = list(self._conns)
        start = time.monotonic()
        server.shutdown()  # serve_forever runs on its own thread, not this handler's
        server.socket.close()  # connecting now is refused
        for c in conns:
            _reset_socket(c)

        def back() -> None:
            time.sleep(self.down_for)
            if not self._closing:
                self._listen()
                self.outages.append((start, time.monotonic()))

        threading.Thread(target=back, daemon=True).start()

    def _take_fault(self, method: str, path: str) -> str:
        if not self.fault or not self.match.search(f"{method} {path}"):
            return ""
        key = (method, re.sub(r"/blobs/uploads/[^/?]+", "/blobs/uploads/*", path.split("?")[0]))
        with self._lock:
            n = self._seen.get(key, 0)
            self._seen[key] = n + 1
        n -= self.after
        return self.fault if n >= 0 and (self.failures is None or n < self.failures) else ""

    def _record(self, r: Request) -> None:
        with self._lock:
            self._records.append(r)

    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._records)

    def faults(self) -> int:
        return sum(1 for r in self.requests() if r.fault)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._seen.clear()

    def sent(self, method: str, path_regex: str = ".") -> int:
        """Request body bytes the client sent for matching requests, cut ones included."""
        return sum(
            r.body for r in self.requests() if r.method == method and re.search(path_regex, r.path)
        )

    def close(self) -> None:
        self._closing = True
        self._server.shutdown()
        self._server.server_close()


def _reset_socket(sock: socket.socket | None) -> None:
    # SO_LINGER 0: close() sends RST, the way a dropped connection looks to a client.
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


# --------------------------------------------------------------------------- certificates


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def make_cert(
    subject: str,
    out_dir: Path,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    ca: bool = False,
    hosts: tuple[str, ...] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path, Path]:
    """A P-256 certificate (self-signed if no issuer); returns cert, key, cert path, key path."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[0].subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if hosts:
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    cert_path = out_dir / f"{subject}.crt"
    key_path = out_dir / f"{subject}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
    return cert, key, cert_path, key_path


# --------------------------------------------------------------------------- token server


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """Docker token service: GET with basic auth, or POST an OAuth2 refresh-token grant."""

    def __init__(self, work: Path, users: dict[str, str]) -> None:
        self.users = users
        self.refresh_tokens: dict[str, str] = {}
        cert, key, self.cert_path, _ = make_cert("token-signer", work, ca=True)
        self._key = key
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.log: list[tuple[str, str, int]] = []  # (method, user or "", status)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        server.daemon_threads = True
        self._server = server
        self.realm = f"http://127.0.0.1:{server.server_address[1]}/token"
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def issue(self, subject: str, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind and name:
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": [self._x5c]}
        claims = {
            "iss": TOKEN_ISSUER,
            "sub": subject,
            "aud": TOKEN_SERVICE,
            "exp": now + 600,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing = ".".join(
            _b64url(json.dumps(p, separators=(",", ":")).encode()) for p in (header, claims)
        )
        r, s = decode_dss_signature(self._key.sign(signing.encode(), ec.ECDSA(hashes.SHA256())))
        return signing + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, doc: dict[str, Any], user: str) -> None:
                outer.log.append((self.command, user, status))
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            @staticmethod
            def _scopes(values: list[str]) -> list[str]:
                return [s for v in values for s in v.split(" ") if s]

            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                auth = self.headers.get("Authorization", "")
                user = ""
                if auth.startswith("Basic "):
                    user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
                    if outer.users.get(user) != pw:
                        return self._answer(401, {"details": "bad credentials"}, user)
                else:
                    return self._answer(401, {"details": "anonymous access denied"}, "")
                token = outer.issue(user, self._scopes(query.get("scope", [])))
                self._answer(200, {"token": token, "access_token": token}, user)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                refresh = (form.get("refresh_token") or [""])[0]
                user = outer.refresh_tokens.get(refresh)
                if (form.get("grant_type") or [""])[0] != "refresh_token" or user is None:
                    return self._answer(401, {"error": "invalid_grant"}, "")
                token = outer.issue(user, self._scopes(form.get("scope", [])))
                self._answer(200, {"access_token": token}, user)

        return H

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --------------------------------------------------------------------------- registry process


@dataclass
class RegistryServer(_Counting):
    """One docker-registry process; `host` is where clients connect."""

    root: Path
    auth: dict[str, Any] | None = None
    tls: tuple[Path, Path] | None = None  # (cert, key)
    ca_path: Path | None = None
    username: str = ""
    password: str = ""
    refresh_token: str = ""
    port: int = 0
    host: str = ""
    url: str = ""
    direct_host: str = ""
    log_path: Path = field(default_factory=Path)
    storage: Path = field(default_factory=Path)
    proxy: Proxy | None = None
    token_server: TokenServer | None = None
    _proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RegistryServer:
        self.root.mkdir(parents=True, exist_ok=True)
        self.storage = self.root / "storage"
        self.log_path = self.root / "registry.log"
        # Any REGISTRY_* variable overrides the config (REGISTRY_AUTH_FILE is podman's!).
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        for _ in range(3):
            self.port = free_port()
            config: dict[str, Any] = {
                "version": 0.1,
                "log": {"level": "info", "formatter": "json", "accesslog": {"disabled": True}},
                "storage": {
                    "filesystem": {"rootdirectory": str(self.storage)},
                    "delete": {"enabled": True},
                    "maintenance": {"uploadpurging": {"enabled": False}},
                },
                "http": {"addr": f"127.0.0.1:{self.port}", "secret": "ocipatch-tests"},
            }
            if self.tls:
                config["http"]["tls"] = {"certificate": str(self.tls[0]), "key": str(self.tls[1])}
            if self.auth:
                config["auth"] = self.auth
            cfg = self.root / "config.yml"
            cfg.write_text(json.dumps(config, indent=1))  # JSON is YAML
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    [REGISTRY_BIN, "serve", str(cfg)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            if self._wait_ready():
                break
            self.stop()
        else:
            pytest.fail(f"docker-registry did not start:\n{self.log_path.read_text()[-3000:]}")
        self.direct_host = f"127.0.0.1:{self.port}"
        self.host = self.direct_host
        scheme = "https" if self.tls else "http"
        self.url = f"{scheme}://{self.host}"
        return self

    def _wait_ready(self) -> bool:
        assert self._proc is not None
        scheme = "https" if self.tls else "http"
        ctx = ssl.create_default_context(cafile=str(self.ca_path)) if self.ca_path else None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                urllib.request.urlopen(
                    f"{scheme}://127.0.0.1:{self.port}/v2/", timeout=2, context=ctx
                )
                return True
            except urllib.error.HTTPError:
                return True  # 401: up, and asking for credentials
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def front(self, proxy: Proxy) -> None:
        """Route clients through `proxy` (it then counts the requests)."""
        self.proxy = proxy
        self.host = proxy.host
        self.url = proxy.url

    def requests(self) -> list[Request]:
        if self.proxy is not None:
            return self.proxy.requests()
        out: list[Request] = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                msg = str(rec.get("msg", ""))
                # A request refused by the auth layer is logged only as this warning.
                status = 401 if msg.startswith("error authorizing context") else None
                if msg.startswith("response completed"):
                    status = int(rec.get("http.response.status", 0))
                if status is not None:
                    out.append(
                        Request(
                            rec.get("http.request.method", ""),
                            rec.get("http.request.uri", ""),
                            status,
                        )
                    )
        return out

    def wait_requests(self, n: int, timeout: float = 5.0) -> list[Request]:
        """The log's requests once it holds at least n (it is written after each response)."""
        deadline = time.monotonic() + timeout
        while len(reqs := self.requests()) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return reqs

    def blob_data_path(self, digest: str) -> Path:
        algo, hexd = digest.split(":", 1)
        return self.storage / "docker/registry/v2/blobs" / algo / hexd[:2] / hexd / "data"


def _registry_available() -> None:
    if not Path(REGISTRY_BIN).exists():
        pytest.skip(f"{REGISTRY_BIN} not installed (apt-get install docker-registry)")


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    _registry_available()
    server = RegistryServer(tmp_path_factory.mktemp("registry")).start()
    proxy = Proxy(("127.0.0.1", server.port))
    server.front(proxy)
    try:
        yield server
    finally:
        proxy.close()
        server.stop()


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    _registry_available()
    if shutil.which("htpasswd") is None:
        pytest.skip("htpasswd not installed (apt-get install apache2-utils)")
    work = tmp_path_factory.mktemp("tls-registry")
    ca_cert, ca_key, ca_path, _ = make_cert("test-ca", work, ca=True)
    _, _, crt, key = make_cert(
        "registry", work, issuer=(ca_cert, ca_key), hosts=("127.0.0.1", "localhost", "::1")
    )
    user, password = "ocipatch", "s3cret-" + secrets.token_hex(4)
    htpasswd = work / "htpasswd"
    htpasswd.write_bytes(
        subprocess.run(["htpasswd", "-Bbn", user, password], check=True, capture_output=True).stdout
    )
    server = RegistryServer(
        work / "srv",
        auth={"htpasswd": {"realm": "ocipatch-test", "path": str(htpasswd)}},
        tls=(crt, key),
        ca_path=ca_path,
        username=user,
        password=password,
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    _registry_available()
    work = tmp_path_factory.mktemp("token-registry")
    user, password = "tokenuser", "t0ken-" + secrets.token_hex(4)
    tokens = TokenServer(work, {user: password})
    refresh = "refresh-" + secrets.token_hex(8)
    tokens.refresh_tokens[refresh] = user
    server = RegistryServer(
        work / "srv",
        auth={
            "token": {
                "realm": tokens.realm,
                "service": TOKEN_SERVICE,
                "issuer": TOKEN_ISSUER,
                "rootcertbundle": str(tokens.cert_path),
            }
        },
        username=user,
        password=password,
        refresh_token=refresh,
    ).start()
    server.token_server = tokens
    proxy = Proxy(("127.0.0.1", server.port))
    server.front(proxy)
    try:
        yield server
    finally:
        proxy.close()
        server.stop()
        tokens.close()


@pytest.fixture
def flaky_proxy(registry: RegistryServer) -> Iterator[Callable[..., Proxy]]:
    proxies: list[Proxy] = []

    def make(
        fault: str,
        failures: int | None = 1,
        match: str | None = None,
        retry_after: int = 0,
        upstream: RegistryServer | None = None,
        cut_after: int = 1 << 20,
        down_for: float = 3.0,
        after: int = 0,
    ) -> Proxy:
        target = upstream or registry
        p = Proxy(
            ("127.0.0.1", target.port),
            fault,
            failures,
            match,
            retry_after,
            cut_after,
            down_for,
            after,
        )
        proxies.append(p)
        return p

    try:
        yield make
    finally:
        for p in proxies:
            p.close()


# --------------------------------------------------------------------------- test images


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    data: bytes


@dataclass(frozen=True)
class Layout:
    path: Path
    tag: str
    manifest: bytes
    manifest_digest: str
    config: Blob
    layer: Blob


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_oci_layout(
    path: Path, tag: str = "latest", files: dict[str, bytes] | None = None
) -> Layout:
    """A one-layer OCI image layout, byte-for-byte deterministic for the same inputs."""
    files = files if files is not None else {"hello.txt": b"hello from ocipatch tests\n"}
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o644, 0
            tar.addfile(info, io.BytesIO(content))
    diff_id = _sha(tar_buf.getvalue())
    layer = gzip.compress(tar_buf.getvalue(), mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        },
        separators=(",", ":"),
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _sha(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _sha(layer),
                    "size": len(layer),
                }
            ],
        },
        indent=2,
    ).encode()
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    for data in (layer, config, manifest):
        (blobs / _sha(data).split(":", 1)[1]).write_bytes(data)
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": _sha(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (path / "index.json").write_text(json.dumps(index))
    return Layout(
        path,
        tag,
        manifest,
        _sha(manifest),
        Blob(_sha(config), len(config), config),
        Blob(_sha(layer), len(layer), layer),
    )


def _skopeo_tls(server: RegistryServer | None, flag: str) -> list[str]:
    if server is not None and server.ca_path is not None:
        return [f"--{flag}-cert-dir={_cert_dir(server)}"]
    return [f"--{flag}-tls-verify=false"]


def _cert_dir(server: RegistryServer) -> Path:
    # skopeo wants a directory of *.crt files.
    assert server.ca_path is not None
    d = server.ca_path.parent / "skopeo-certs"
    d.mkdir(exist_ok=True)
    shutil.copy(server.ca_path, d / "ca.crt")
    return d


def _creds(server: RegistryServer | None, flag: str) -> list[str]:
    if server is not None and server.username:
        return [f"--{flag}-creds={server.username}:{server.password}"]
    return []


def skopeo_copy(
    src: str,
    dest: str,
    *extra: str,
    src_server: RegistryServer | None = None,
    dest_server: RegistryServer | None = None,
) -> None:
    """skopeo copy SRC DEST; the *_server arguments add TLS and credential flags."""
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo not installed")
    args = ["skopeo", "copy", "--quiet", *extra]
    if src.startswith("docker://"):
        args += _skopeo_tls(src_server, "src") + _creds(src_server, "src")
    if dest.startswith("docker://"):
        args += _skopeo_tls(dest_server, "dest") + _creds(dest_server, "dest")
    env = {k: v for k, v in os.environ.items() if k != "REGISTRY_AUTH_FILE"}
    proc = subprocess.run([*args, src, dest], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} {src} {dest} failed:\n{proc.stderr}")


def skopeo_raw(ref: str, server: RegistryServer | None = None) -> bytes:
    """skopeo inspect --raw: the manifest bytes exactly as the registry serves them."""
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo not installed")
    args = ["skopeo", "inspect", "--raw"]
    if server is not None and server.ca_path is not None:
        args.append(f"--cert-dir={_cert_dir(server)}")
    else:
        args.append("--tls-verify=false")
    if server is not None and server.username:
        args.append(f"--creds={server.username}:{server.password}")
    return subprocess.run([*args, ref], capture_output=True, check=True).stdout


def push_test_image(
    server: RegistryServer,
    work: Path,
    repository: str,
    tag: str = "latest",
    files: dict[str, bytes] | None = None,
    docker: bool = False,
) -> Layout:
    """Build a layout and skopeo-copy it to server/repository:tag (Docker schema2 if docker)."""
    layout = make_oci_layout(work / f"layout-{repository.replace('/', '_')}-{tag}", tag, files)
    extra = ("--format", "v2s2") if docker else ()
    skopeo_copy(
        f"oci:{layout.path}:{tag}",
        f"docker://{server.host}/{repository}:{tag}",
        *extra,
        dest_server=server,
    )
    return layout
