"""The machinery of tools/bench (issue #5): ocipatch against the rebuild a user would do.

For each case (an image, a report) and each round it measures, on this one machine, against one
local registry behind a byte-counting proxy and one package archive (this machine's apt's):

- rebuild: `buildah from`, `buildah run --isolation chroot` of `apt-get update && apt-get
  install -y --only-upgrade PKGS`, `buildah commit`, `buildah push` (a fresh storage root);
- cold:    `ocipatch patch -r REPORT` with an empty --cache-dir;
- warm:    the same again with the cache the cold run left;
- floor:   downloading just the InRelease and Packages.xz files and the .debs apt fetched.

It reports min and median times, bytes pulled from and pushed to the registry, peak RSS (the
ocipatch Python process itself, its largest child, and the sum over the process tree sampled
from /proc), and the patch layer against the rebuild's added layer. Targets are reported, never
asserted. `python -m tools.bench_lib _run OUT -- ARGS` and `_profile OUT -- ARGS` are the
in-process wrappers the benchmark runs ocipatch under.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import http.server
import itertools
import json
import lzma
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

ROOT = Path(__file__).resolve().parents[1]
PY = str(ROOT / ".venv" / "bin" / "python")
if not Path(PY).exists():
    PY = sys.executable
OUT_DOC = ROOT / "docs" / "benchmarks.md"
CASES = ("two-layer", "distroless", "large")
# Packages of the large image: a compiler toolchain, a debugger, TeX and LibreOffice's core,
# > 1 GB installed (Installed-Size of bookworm main), yet with few updates patched.
LARGE_INCLUDE = (
    "build-essential",
    "clang",
    "gdb",
    "libreoffice-core",
    "python3",
    "texlive-fonts-recommended",
    "texlive-latex-base",
)
LARGE_PREFERRED = ("openssl", "libssl3", "tzdata")  # the few updates of the large case
# What a patch layer must never carry (the same list as tests/test_patch_e2e.py checks).
BANNED_PREFIXES = (
    "var/cache/apt/",
    "var/lib/apt/lists/",
    "var/log/",
    "tmp/",
    "var/tmp/",
    "var/cache/ocipatch",
)
BANNED_SUFFIXES = ("-old", ".dpkg-old", ".dpkg-bak", ".ucf-old")
MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)
TARGETS = {"cold": 0.5, "warm": 0.25, "rss_mb": 250}
PATCH_KINDS = ("cold", "warm", "warm-apply")
KINDS = ("rebuild", *PATCH_KINDS)
RESULTS_DIR = "results"  # ocipatch's result cache under --cache-dir (ocipatch/resultcache.py)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def mb(n: float | int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


# ------------------------------------------------------------------------- counting proxy
_HOP = {"connection", "keep-alive", "proxy-connection", "upgrade", "te", "trailer"}


@dataclass(frozen=True)
class Exchange:
    method: str
    path: str
    status: int
    sent: int  # request body bytes (payload, without chunk framing)
    received: int  # response body bytes
    seconds: float  # from the request line to the end of the relayed response


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: CountingProxy

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 600
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def handle(self) -> None:
        # A TLS ClientHello (buildah with --tls-verify=false tries HTTPS first): answer as a
        # plain HTTP server does, so that the client falls back to HTTP at once.
        try:
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

    def _body(self) -> Iterator[tuple[bytes, int]]:
        """(raw bytes to forward, payload bytes in them); chunked framing is kept as is."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                line = self.rfile.readline()
                yield line, 0
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:
                        trailer = self.rfile.readline()
                        yield trailer, 0
                        if trailer in (b"\r\n", b"\n", b""):
                            return
                left = size + 2
                while left:
                    data = self.rfile.read(min(left, 1 << 20))
                    if not data:
                        return
                    payload = min(len(data), max(0, left - 2))
                    left -= len(data)
                    yield data, payload
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                data = self.rfile.read(min(left, 1 << 20))
                if not data:
                    return
                left -= len(data)
                yield data, len(data)

    def _forward(self) -> None:
        proxy = self.server.proxy
        conn = http.client.HTTPConnection(*proxy.upstream, timeout=600)
        sent = received = 0
        t0 = time.monotonic()
        try:
            conn.connect()
            assert conn.sock is not None
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in self.headers.items():
                if k.lower() not in _HOP:
                    conn.putheader(k, v)
            conn.endheaders()
            for raw, payload in self._body():
                conn.send(raw)
                sent += payload
            resp = conn.getresponse()
            self.send_response_only(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in _HOP and k.lower() not in (
                    "transfer-encoding",
                    "content-length",
                ):
                    self.send_header(k, v)
            length = resp.getheader("Content-Length")
            if self.command == "HEAD" or resp.status in (204, 304) or resp.status < 200:
                if length is not None:
                    self.send_header("Content-Length", length)
                self.end_headers()
            elif length is None:
                body = resp.read()
                received = len(body)
                self.send_header("Content-Length", str(received))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_header("Content-Length", length)
                self.end_headers()
                while chunk := resp.read(1 << 20):
                    self.wfile.write(chunk)
                    received += len(chunk)
            proxy.record(
                Exchange(
                    self.command, self.path, resp.status, sent, received, time.monotonic() - t0
                )
            )
        finally:
            conn.close()


class CountingProxy:
    """A pass-through HTTP proxy on loopback that counts request and response body bytes."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._lock = threading.Lock()
        self._log: list[Exchange] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        ).start()

    def record(self, e: Exchange) -> None:
        with self._lock:
            self._log.append(e)

    def take(self) -> list[Exchange]:
        """Everything since the last take()."""
        with self._lock:
            out, self._log = self._log, []
        return out

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Traffic:
    pulled: int = 0  # GET response bodies (blobs and manifests)
    pulled_blobs: int = 0
    pushed: int = 0  # PUT/PATCH/POST request bodies
    uploaded: list[str] = field(default_factory=list)  # digests of completed blob uploads
    mounted: int = 0
    requests: int = 0

    slow: list[str] = field(default_factory=list)  # requests that took over a second

    @classmethod
    def of(cls, log: list[Exchange]) -> Traffic:
        t = cls(requests=len(log))
        for e in log:
            if e.seconds > 1:
                t.slow.append(
                    f"{e.method} {e.path[:90]} {e.status} {e.sent + e.received} B {e.seconds:.1f} s"
                )
            if e.method == "GET" and e.status in (200, 206):
                t.pulled += e.received
                if "/blobs/sha256:" in e.path:
                    t.pulled_blobs += e.received
            if e.method in ("PUT", "PATCH", "POST"):
                t.pushed += e.sent
            if e.method == "PUT" and e.status == 201 and "/blobs/uploads/" in e.path:
                q = urllib.parse.parse_qs(urllib.parse.urlsplit(e.path).query)
                t.uploaded += q.get("digest", [])
            if e.method == "POST" and e.status == 201 and "mount=" in e.path:
                t.mounted += 1
        return t


# ------------------------------------------------------------------------- registry
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Registry:
    """tools/registry in a private directory, and a few raw calls against it (not counted)."""

    def __init__(self, work: Path) -> None:
        self.dir = work / "registry"
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        subprocess.run(
            [
                PY,
                str(ROOT / "tools" / "registry"),
                "start",
                "--port",
                str(self.port),
                "--dir",
                str(self.dir),
            ],
            check=True,
            capture_output=True,
            text=True,
        )

    def stop(self) -> None:
        subprocess.run(
            [PY, str(ROOT / "tools" / "registry"), "stop", "--dir", str(self.dir), "--purge"],
            capture_output=True,
            text=True,
        )

    def _conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)

    def manifest(self, repo: str, ref: str) -> tuple[dict[str, Any], int]:
        c = self._conn()
        c.request("GET", f"/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT})
        r = c.getresponse()
        body = r.read()
        c.close()
        if r.status != 200:
            raise RuntimeError(f"GET manifest {repo}:{ref}: HTTP {r.status}")
        return json.loads(body), len(body)

    @contextlib.contextmanager
    def blob(self, repo: str, digest: str) -> Iterator[BinaryIO]:
        c = self._conn()
        c.request("GET", f"/v2/{repo}/blobs/{digest}")
        r = c.getresponse()
        if r.status != 200:
            raise RuntimeError(f"GET blob {digest}: HTTP {r.status}")
        try:
            yield r  # type: ignore[misc]
        finally:
            c.close()

    def delete_blob(self, repo: str, digest: str) -> None:
        c = self._conn()
        c.request("DELETE", f"/v2/{repo}/blobs/{digest}")
        c.getresponse().read()
        c.close()


# ------------------------------------------------------------------------- process tree RSS
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _proc_children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE_KB
    except (OSError, IndexError, ValueError):
        return 0


class TreeSampler:
    """Samples the RSS of a process and its descendants every `interval` seconds: the peak of
    their sum, and the peak of the largest descendant."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_sum_kb = 0
        self.peak_one_kb = 0  # the largest process below pid
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            kids = _proc_children()
            todo, total = [self.pid], 0
            while todo:
                p = todo.pop()
                r = _rss_kb(p)
                total += r
                if p != self.pid:
                    self.peak_one_kb = max(self.peak_one_kb, r)
                todo += kids.get(p, [])
            self.peak_sum_kb = max(self.peak_sum_kb, total)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Proc:
    seconds: float
    returncode: int
    tree_kb: int
    largest_kb: int


def run_measured(
    argv: Sequence[str], logfile: Path, *, stdout: Path | None = None, timeout: float = 3600
) -> Proc:
    """Run argv (stdout to `stdout` or the log, stderr to the log), timing it and sampling the
    RSS of its process tree."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with (
        logfile.open("ab") as lf,
        stdout.open("wb") if stdout else contextlib.nullcontext(lf) as out,
    ):
        lf.write(f"$ {shlex.join(argv)}\n".encode())
        lf.flush()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "DOCKER_"))}
        env["PYTHONPATH"] = str(ROOT)
        t0 = time.monotonic()
        p = subprocess.Popen(
            argv, stdout=out, stderr=lf, stdin=subprocess.DEVNULL, cwd=ROOT, env=env
        )
        sampler = TreeSampler(p.pid)
        try:
            rc = p.wait(timeout=timeout)
        finally:
            sampler.stop()
        return Proc(time.monotonic() - t0, rc, sampler.peak_sum_kb, sampler.peak_one_kb)


# ------------------------------------------------------------------------- ocipatch under a wrapper
def _wrapped_main(argv: list[str]) -> int:
    from ocipatch.cli import main as cli_main

    try:
        cli_main(args=argv, prog_name="ocipatch", standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def _vm_hwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def wrapper_run(out: Path, argv: list[str]) -> int:
    """ocipatch in this process; then its own peak RSS and its RSS high-water mark at each
    progress step (which phase grows it).

    VmHWM, not getrusage: ru_maxrss survives execve (Linux keeps the pre-exec image's peak), so
    it would report the RSS of whatever process forked this one, and a child's would include
    the ocipatch process it was forked from."""
    from ocipatch.progress import Progress

    marks: list[tuple[str, int]] = []
    orig_step, orig_done = Progress.step, Progress.done

    def step(self: Progress, message: str) -> None:
        marks.append((message, _vm_hwm_kb()))
        orig_step(self, message)

    def done(self: Progress, message: str) -> None:
        marks.append((message, _vm_hwm_kb()))
        orig_done(self, message)

    Progress.step, Progress.done = step, done  # type: ignore[method-assign]
    rc = _wrapped_main(argv)
    marks.append(("exit", _vm_hwm_kb()))
    out.write_text(
        json.dumps(
            {
                "self_kb": _vm_hwm_kb(),
                "hwm": marks,
                "rc": rc,
            }
        )
    )
    return rc


def wrapper_profile(out: Path, argv: list[str]) -> int:
    """ocipatch in this process under pyinstrument; writes the flat list and the call tree."""
    from pyinstrument import Profiler
    from pyinstrument.renderers import ConsoleRenderer

    prof = Profiler(interval=0.002)
    prof.start()
    try:
        rc = _wrapped_main(argv)
    finally:
        prof.stop()
    flat = prof.output(ConsoleRenderer(unicode=False, color=False, flat=True, time="seconds"))
    tree = prof.output(
        ConsoleRenderer(unicode=False, color=False, time="seconds", short_mode=False)
    )
    out.write_text(json.dumps({"flat": flat, "tree": tree, "rc": rc}))
    return rc


_STEP = re.compile(r"^\[\s*([\d.]+)s\] (.*)$")
PHASES = (
    ("Reading", "read image"),
    ("Unpacking the tooling image", "unpack tooling image"),
    ("Unpacking", "unpack + index"),
    ("Re-patch", "replay old patch"),
    ("Pulling the tooling image", "open tooling image"),
    ("Planning from the repositories' signed indices", "plan (signed indices)"),
    ("The same patch was made before", "reuse cached layer"),
    ("Running apt", "apt (plan + install)"),
    ("Running the tooling image's apt", "apt (update + plan + install)"),
    ("Writing the patch layer", "diff + write layer"),
    ("Writing ", "push + remove work dir"),
)


def _phase_name(message: str) -> str:
    return next((n for prefix, n in PHASES if message.startswith(prefix)), message.split()[0])


def phases_of(stderr: str, wall: float) -> dict[str, float]:
    """Phase durations from ocipatch's plain progress lines; the rest of the wall time (Python
    start-up, imports, VEX, exit) is 'start-up + exit'."""
    marks: list[tuple[float, str]] = []
    for line in stderr.splitlines():
        m = _STEP.match(line.strip())
        if m:
            marks.append((float(m.group(1)), m.group(2)))
    out: dict[str, float] = {}
    for (t, msg), (t_next, _) in itertools.pairwise(marks):
        name = _phase_name(msg)
        out[name] = out.get(name, 0.0) + t_next - t
    out["start-up + exit"] = max(0.0, wall - (marks[-1][0] if marks else 0.0))
    return out


# ------------------------------------------------------------------------- layers
@dataclass
class LayerInfo:
    digest: str
    size: int  # compressed
    uncompressed: int
    entries: int
    banned_entries: int
    banned_bytes: int
    banned_examples: list[str]


def analyze_layer(stream: BinaryIO, digest: str, size: int) -> LayerInfo:
    """Walk a layer tar (any compression tarfile knows) and count what it must not carry."""
    n = nb = nbytes = 0
    examples: list[str] = []
    with tarfile.open(fileobj=stream, mode="r|*") as tf:  # type: ignore[call-overload]
        for m in tf:
            n += 1
            name = m.name.removeprefix("./")
            base = name.rsplit("/", 1)[-1]
            if base.startswith(".wh."):
                continue
            if name.startswith(BANNED_PREFIXES) or name.endswith(BANNED_SUFFIXES):
                nb += 1
                nbytes += m.size
                if len(examples) < 5:
                    examples.append(name)
    return LayerInfo(digest, size, tf.offset, n, nb, nbytes, examples)


def gzip_isize(path: Path) -> int | None:
    """Uncompressed size of a single-member gzip file (its trailer, modulo 4 GiB)."""
    with path.open("rb") as f:
        if f.read(2) != b"\x1f\x8b":
            return None
        f.seek(-4, os.SEEK_END)
        return int(struct.unpack("<I", f.read(4))[0])


# ------------------------------------------------------------------------- network floor
@dataclass
class Floor:
    seconds: float
    index_seconds: float
    deb_seconds: float
    index_bytes: int
    deb_bytes: int
    debs: int
    missing: list[str]


def _index_urls(sources_text: str, arch: str) -> list[tuple[str, str]]:
    """(InRelease URL, Packages.xz URL) per suite of a deb822 sources text."""
    from tools.debian_rootfs import parse_deb822_sources

    out = []
    for s in parse_deb822_sources(sources_text):
        for suite in s.suites:
            base = f"{s.uris[0].rstrip('/')}/dists/{suite}"
            for comp in s.components:
                out.append((f"{base}/InRelease", f"{base}/{comp}/binary-{arch}/Packages.xz"))
    return out


def _download(urls: list[str]) -> tuple[int, dict[str, bytes]]:
    """GET urls, one keep-alive session per host, hosts in parallel (as apt does); returns the
    bytes read and the bodies of the .xz indices (for the floor's own deb lookup)."""
    import requests

    by_host: dict[str, list[str]] = {}
    for u in urls:
        by_host.setdefault(urllib.parse.urlsplit(u).netloc, []).append(u)
    kept: dict[str, bytes] = {}
    lock = threading.Lock()

    def one_host(us: list[str]) -> int:
        total = 0
        with requests.Session() as s:
            for u in us:
                with s.get(u, stream=True, timeout=300) as r:
                    r.raise_for_status()
                    buf = bytearray() if u.endswith(".xz") else None
                    for chunk in r.iter_content(1 << 20):
                        total += len(chunk)
                        if buf is not None:
                            buf += chunk
                    if buf is not None:
                        with lock:
                            kept[u] = bytes(buf)
        return total

    with ThreadPoolExecutor(max(1, len(by_host))) as ex:
        return sum(ex.map(one_host, by_host.values())), kept


def network_floor(sources_text: str, arch: str, debs: list[Path]) -> Floor:
    """Time to download just what the patch needs from the archive: each suite's InRelease and
    Packages.xz, then the .debs apt fetched (found by name and version in those indices)."""
    from debian.deb822 import Packages

    pairs = _index_urls(sources_text, arch)
    t0 = time.monotonic()
    index_bytes, bodies = _download([u for pair in pairs for u in pair])
    t_index = time.monotonic() - t0
    wanted = {}
    for p in debs:
        parts = p.name.removesuffix(".deb").split("_")
        wanted[(parts[0], urllib.parse.unquote(parts[1]))] = p.name
    urls: dict[tuple[str, str], str] = {}
    for _, pkgs_url in pairs:
        base = pkgs_url.split("/dists/")[0]
        text = lzma.decompress(bodies[pkgs_url]).decode("utf-8", "replace")
        for para in Packages.iter_paragraphs(text.splitlines(keepends=True), use_apt_pkg=False):
            key = (para["Package"], para["Version"])
            if key in wanted and key not in urls:
                urls[key] = f"{base}/{para['Filename']}"
    t1 = time.monotonic()
    deb_bytes, _ = _download(sorted(urls.values()))
    t_debs = time.monotonic() - t1
    missing = sorted(wanted[k] for k in wanted if k not in urls)
    return Floor(t_index + t_debs, t_index, t_debs, index_bytes, deb_bytes, len(urls), missing)


# ------------------------------------------------------------------------- cases
@dataclass
class Case:
    name: str
    layout: Path
    tag: str
    description: str
    repo: str = ""
    packages: dict[str, str] = field(default_factory=dict)  # name -> fixed version
    installed: dict[str, str] = field(default_factory=dict)
    report: Path | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)  # source manifest's layers
    uncompressed: int = 0
    extra_args: list[str] = field(default_factory=list)
    rebuild_note: str = ""  # non-empty: no rebuild for this case, and why
    notes: list[str] = field(default_factory=list)


def build_case(name: str, work: Path) -> Case | str:
    """The case's image as an OCI layout, or a string saying why the case is skipped."""
    from tools.build_image import build_debian_image

    if name == "two-layer":
        layout = build_debian_image(
            work / "img-two-layer", "12", upper=("openssl", "ca-certificates")
        )
        return Case(
            name,
            layout,
            "12",
            "Debian 12 minbase + a layer with openssl, ca-certificates "
            "(tools/build_image, bookworm main); every pending update",
        )
    if name == "large":
        t0 = time.monotonic()
        layout = build_debian_image(work / "img-large", "12", base_include=LARGE_INCLUDE)
        log(f"large image ready in {time.monotonic() - t0:.0f} s")
        return Case(
            name,
            layout,
            "12",
            "Debian 12 minbase + " + ", ".join(LARGE_INCLUDE) + " (one layer); only a few updates",
        )
    if name == "distroless":
        try:
            import tools.build_distroless as bd  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            return "tools/build_distroless.py is not there yet"
        fn: Callable[..., Any] | None = getattr(bd, "build_distroless_image", None)
        if fn is None:
            return "tools/build_distroless.py has no build_distroless_image(out, tag)"
        layout = Path(fn(work / "img-distroless", "12"))
        return Case(
            name,
            layout,
            "12",
            "distroless-shaped Debian 12 image "
            "(tools/build_distroless, two layers): no apt, no dpkg, no shell; packages in "
            "var/lib/dpkg/status.d; the tooling image is the Debian 12 minbase image in "
            "the same registry (pulled through the proxy, so counted)",
            rebuild_note="no package manager or shell in the image: `buildah run` cannot "
            "update it; a user rebuilds it from its build recipe instead",
        )
    raise ValueError(name)


def prepare_case(
    case: Case, reg: Registry, proxy: CountingProxy, work: Path, logfile: Path
) -> None:
    """Push the layout to the registry, read what is installed, and write the report."""
    from debian.debian_support import version_compare

    from tests.archive import newest_versions, trivy_report
    from tools.build_image import build_debian_image

    case.repo = f"bench/{case.name}"
    if case.name == "distroless":
        # No outside registry here: the tooling image (whose apt does the work) is the Debian 12
        # minbase image, from the same local registry.
        tooling = build_debian_image(work / "img-tooling", "12")
        subprocess.run(
            [PY, "-m", "ocipatch", "copy", f"oci:{tooling}:12", f"{reg.host}/bench/tooling:12"],
            check=True,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        shutil.rmtree(tooling, ignore_errors=True)
        case.extra_args = ["--tooling-image", f"{proxy.host}/bench/tooling:12"]
    subprocess.run(
        [
            PY,
            "-m",
            "ocipatch",
            "copy",
            f"oci:{case.layout}:{case.tag}",
            f"{reg.host}/{case.repo}:src",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    manifest, _ = reg.manifest(case.repo, "src")
    case.layers = manifest["layers"]
    for layer in case.layers:
        blob = case.layout / "blobs" / "sha256" / layer["digest"].split(":")[1]
        case.uncompressed += gzip_isize(blob) or 0
    r = subprocess.run(
        [
            PY,
            "-m",
            "ocipatch",
            "inspect",
            "--json",
            f"{reg.host}/{case.repo}:src",
            "--cache-dir",
            str(work / "inspect-cache"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if r.returncode != 0:
        raise RuntimeError(f"ocipatch inspect failed: {r.stderr.strip()}")
    info = json.loads(r.stdout)
    case.installed = {p["name"]: p["version"] for p in info["packages"]}
    arch = (info.get("platform") or {}).get("architecture") or "amd64"
    newest = newest_versions(arch)
    needed = {
        n: newest[n]
        for n, v in case.installed.items()
        if n in newest and version_compare(newest[n], v) > 0
    }
    if case.name == "large":
        few = {n: needed[n] for n in LARGE_PREFERRED if n in needed}
        needed = few or {n: needed[n] for n in sorted(needed)[:3]}
    case.packages = dict(sorted(needed.items()))
    case.report = work / f"report-{case.name}.json"
    case.report.write_text(json.dumps(trivy_report(case.installed, case.packages, arch=arch)))
    with logfile.open("a") as lf:
        lf.write(f"case {case.name}: {len(case.packages)} packages: {case.packages}\n")


# ------------------------------------------------------------------------- runs
@dataclass
class Run:
    kind: str  # rebuild | cold | warm
    round: int
    seconds: float
    ok: bool
    error: str = ""
    phases: dict[str, float] = field(default_factory=dict)
    traffic: Traffic = field(default_factory=Traffic)
    self_kb: int = 0  # ocipatch's own Python peak RSS
    child_kb: int = 0  # its largest descendant (apt, dpkg...), sampled
    tree_kb: int = 0  # summed over the process tree (sampled)
    hwm: dict[str, int] = field(default_factory=dict)  # phase -> own RSS high-water mark after it
    updated: int = 0
    layer: LayerInfo | None = None
    config_size: int = 0
    manifest_size: int = 0


def _cleanup_outputs(case: Case, reg: Registry, traffic: Traffic) -> None:
    """Unlink what the run uploaded from the repository, so the next run uploads it again (the
    patch layer is deterministic: it would otherwise be found and skipped)."""
    source = {layer["digest"] for layer in case.layers}
    for d in set(traffic.uploaded) - source:
        reg.delete_blob(case.repo, d)


def _layer_and_sizes(reg: Registry, case: Case, tag: str, run: Run) -> None:
    manifest, msize = reg.manifest(case.repo, tag)
    run.manifest_size = msize
    run.config_size = int(manifest["config"]["size"])
    top = manifest["layers"][-1]
    with reg.blob(case.repo, top["digest"]) as stream:
        run.layer = analyze_layer(stream, top["digest"], int(top["size"]))


def run_ocipatch(
    case: Case,
    reg: Registry,
    proxy: CountingProxy,
    kind: str,
    rnd: int,
    cache: Path,
    work: Path,
    logfile: Path,
) -> Run:
    tag = f"{kind}-r{rnd}"
    out = work / f"{case.name}-{tag}.rss.json"
    stdout = work / f"{case.name}-{tag}.json"
    errlog = work / f"{case.name}-{tag}.stderr"
    argv = [
        PY,
        "-m",
        "tools.bench_lib",
        "_run",
        str(out),
        "--",
        "patch",
        "-i",
        f"{proxy.host}/{case.repo}:src",
        "-r",
        str(case.report),
        "-t",
        tag,
        "--json",
        "--cache-dir",
        str(cache),
        "--timeout",
        "60m",
        *case.extra_args,
    ]
    if kind == "warm-apply":
        shutil.rmtree(cache / RESULTS_DIR, ignore_errors=True)
    proxy.take()
    p = run_measured(argv, errlog, stdout=stdout)
    traffic = Traffic.of(proxy.take())
    run = Run(
        kind,
        rnd,
        p.seconds,
        p.returncode == 0,
        traffic=traffic,
        tree_kb=p.tree_kb,
        child_kb=p.largest_kb,
    )
    err = errlog.read_text(errors="replace")
    with logfile.open("a") as lf:
        lf.write(err + "".join(f"slow request: {x}\n" for x in traffic.slow))
    if out.exists():
        rss = json.loads(out.read_text())
        run.self_kb = rss["self_kb"]
        marks = rss.get("hwm", [])
        for (msg, _), (_, kb) in itertools.pairwise(marks):
            run.hwm[_phase_name(msg)] = kb
    run.phases = phases_of(err, p.seconds)
    if p.returncode != 0:
        run.error = (err.strip().splitlines() or ["?"])[-1][:300]
        return run
    result = json.loads(stdout.read_text())
    run.updated = len(result.get("updated", []))
    if result.get("status") != "patched":
        run.ok, run.error = False, f"status {result.get('status')}"
        return run
    _layer_and_sizes(reg, case, tag, run)
    _cleanup_outputs(case, reg, traffic)
    return run


def _buildah_driver(work: Path) -> str:
    """overlay if it works here in a private root, else vfs."""
    root = work / "buildah-probe"
    try:
        r = subprocess.run(
            [
                "buildah",
                "--root",
                str(root / "root"),
                "--runroot",
                str(root / "run"),
                "--storage-driver",
                "overlay",
                "images",
            ],
            capture_output=True,
            text=True,
        )
        return "overlay" if r.returncode == 0 else "vfs"
    finally:
        _remove_buildah_root(root)


def _remove_buildah_root(root: Path) -> None:
    # Mounts left under the private root (overlay, shm) go before the files do.
    mounts = []
    with open("/proc/self/mounts") as f:
        for line in f:
            mp = line.split()[1].replace("\\040", " ")
            if mp.startswith(str(root) + "/"):
                mounts.append(mp)
    for mp in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def run_rebuild(
    case: Case,
    reg: Registry,
    proxy: CountingProxy,
    rnd: int,
    work: Path,
    driver: str,
    logfile: Path,
) -> Run:
    broot = work / f"buildah-{case.name}-r{rnd}"
    b = [
        "buildah",
        "--root",
        str(broot / "root"),
        "--runroot",
        str(broot / "run"),
        "--storage-driver",
        driver,
    ]
    tag = f"rebuild-r{rnd}"
    pkgs = " ".join(sorted(case.packages))
    shell = (
        "export DEBIAN_FRONTEND=noninteractive; "
        f"apt-get update && apt-get install -y --only-upgrade {pkgs}"
    )
    steps = [
        (
            "from",
            [*b, "from", "--tls-verify=false", "--name", "bench", f"{proxy.host}/{case.repo}:src"],
        ),
        ("run (apt-get)", [*b, "run", "--isolation", "chroot", "bench", "--", "sh", "-c", shell]),
        ("commit", [*b, "commit", "--quiet", "bench", "bench-rebuilt"]),
        (
            "push",
            [
                *b,
                "push",
                "--tls-verify=false",
                "--quiet",
                "bench-rebuilt",
                f"docker://{proxy.host}/{case.repo}:{tag}",
            ],
        ),
    ]
    proxy.take()
    run = Run("rebuild", rnd, 0.0, True)
    try:
        for name, argv in steps:
            p = run_measured(argv, logfile)
            run.seconds += p.seconds
            run.phases[name] = p.seconds
            run.tree_kb = max(run.tree_kb, p.tree_kb)
            run.child_kb = max(run.child_kb, p.largest_kb)
            if p.returncode != 0:
                run.ok, run.error = (
                    False,
                    f"buildah {name} failed (exit {p.returncode}); see the log",
                )
                break
    finally:
        run.traffic = Traffic.of(proxy.take())
        with logfile.open("a") as lf:
            lf.write("".join(f"slow request: {x}\n" for x in run.traffic.slow))
        subprocess.run([*b, "rm", "--all"], capture_output=True)
        subprocess.run([*b, "rmi", "--all", "--force"], capture_output=True)
        _remove_buildah_root(broot)
    if run.ok:
        _layer_and_sizes(reg, case, tag, run)
        _cleanup_outputs(case, reg, run.traffic)
    return run


def run_profile(
    case: Case,
    reg: Registry,
    proxy: CountingProxy,
    cache: Path,
    work: Path,
    logfile: Path,
    kind: str,
) -> dict[str, str]:
    if kind == "warm-apply":
        shutil.rmtree(cache / RESULTS_DIR, ignore_errors=True)
    out = work / f"{case.name}-profile.json"
    argv = [
        PY,
        "-m",
        "tools.bench_lib",
        "_profile",
        str(out),
        "--",
        "patch",
        "-i",
        f"{proxy.host}/{case.repo}:src",
        "-r",
        str(case.report),
        "-t",
        "profile",
        "--json",
        "--cache-dir",
        str(cache),
        "--timeout",
        "60m",
        *case.extra_args,
    ]
    proxy.take()
    p = run_measured(argv, work / f"{case.name}-profile.stderr", stdout=work / "profile.stdout")
    _cleanup_outputs(case, reg, Traffic.of(proxy.take()))
    if p.returncode != 0 or not out.exists():
        return {"error": f"profiled run failed (exit {p.returncode})"}
    doc = json.loads(out.read_text())
    return {"flat": doc["flat"], "tree": doc["tree"], "seconds": f"{p.seconds:.1f}"}


# ------------------------------------------------------------------------- the benchmark
@dataclass
class CaseResult:
    case: Case
    runs: list[Run] = field(default_factory=list)
    floors: list[Floor] = field(default_factory=list)
    profiles: dict[str, dict[str, str]] = field(default_factory=dict)  # kind -> profile


def bench_case(
    case: Case,
    reg: Registry,
    proxy: CountingProxy,
    rounds: int,
    work: Path,
    driver: str,
    logfile: Path,
    profile: bool,
) -> CaseResult:
    from tools.build_image import image_sources

    res = CaseResult(case)
    arch = "amd64"
    last_cache: Path | None = None
    for rnd in range(1, rounds + 1):
        if not case.rebuild_note:
            log(f"{case.name} round {rnd}: rebuild (buildah)")
            r = run_rebuild(case, reg, proxy, rnd, work, driver, logfile)
            res.runs.append(r)
            log(f"  {r.seconds:.1f} s{'' if r.ok else ' FAILED: ' + r.error}")
        cache = work / f"cache-{case.name}-r{rnd}"
        for kind in PATCH_KINDS:
            if kind == "warm-apply" and not any((cache / RESULTS_DIR).glob("*")):
                continue  # no result cache (in this ocipatch, or for this case): warm applied
            log(f"{case.name} round {rnd}: ocipatch {kind}")
            r = run_ocipatch(case, reg, proxy, kind, rnd, cache, work, logfile)
            res.runs.append(r)
            log(f"  {r.seconds:.1f} s{'' if r.ok else ' FAILED: ' + r.error}")
            if kind == "cold" and r.ok:
                debs = sorted((cache / "apt" / "debs").glob("*.deb"))
                log(f"{case.name} round {rnd}: network floor ({len(debs)} .debs)")
                try:
                    res.floors.append(network_floor(image_sources().decode(), arch, debs))
                except Exception as e:  # the floor is informative; a network hiccup is noted
                    case.notes.append(f"network floor of round {rnd} failed: {e}")
        if last_cache is not None:
            shutil.rmtree(last_cache, ignore_errors=True)
        last_cache = cache
    if profile and last_cache is not None:
        for kind in ("warm", "warm-apply"):
            if kind == "warm-apply" and not any(x.kind == kind for x in res.runs):
                continue
            log(f"{case.name}: profiling one {kind} run with pyinstrument")
            res.profiles[kind] = run_profile(case, reg, proxy, last_cache, work, logfile, kind)
    if last_cache is not None:
        shutil.rmtree(last_cache, ignore_errors=True)
    return res


def machine() -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        kb = int(f.readline().split()[1])
        mem = f"{kb / 2**20:.1f} GiB"
    osr = {}
    with contextlib.suppress(OSError), open("/etc/os-release") as f:
        for line in f:
            k, _, v = line.strip().partition("=")
            osr[k] = v.strip('"')

    def out(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT).stdout.strip()
        except OSError:
            return "?"

    fs = out("findmnt", "-n", "-o", "FSTYPE", "-T", tempfile.gettempdir())
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": mem,
        "os": f"{osr.get('PRETTY_NAME', '?')}, kernel {platform.release()}",
        "disk": f"{fs or '?'} (work directory under {tempfile.gettempdir()})",
        "python": platform.python_version(),
        "buildah": out("buildah", "--version"),
        "registry": "CNCF distribution (docker-registry) on loopback, behind a counting proxy",
        "archive": "the Debian archive this machine's apt uses, over the internet",
        "ocipatch": out("git", "describe", "--always", "--dirty"),
    }


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ------------------------------------------------------------------------- report
def _stats(xs: list[float]) -> tuple[float, float] | None:
    return (min(xs), statistics.median(xs)) if xs else None


def _fmt_s(st: tuple[float, float] | None, digits: int = 1) -> str:
    return "-" if st is None else f"{st[0]:.{digits}f} / {st[1]:.{digits}f}"


def paired(r: CaseResult, kind: str) -> list[float]:
    """Each round's run of `kind` against the rebuild of the same round (run just before it, so
    under about the same load from the rest of the machine)."""
    rebuild = {x.round: x.seconds for x in r.runs if x.kind == "rebuild" and x.ok}
    if kind == "floor":
        return [f.seconds / rebuild[i + 1] for i, f in enumerate(r.floors) if rebuild.get(i + 1)]
    return [
        x.seconds / rebuild[x.round]
        for x in r.runs
        if x.kind == kind and x.ok and rebuild.get(x.round)
    ]


def _ratio(xs: list[float]) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.2f}x"
    return f"{statistics.median(xs):.2f}x ({min(xs):.2f}-{max(xs):.2f})"


def _med(xs: list[int]) -> int | None:
    return int(statistics.median(xs)) if xs else None


def _mib_kb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.0f} MiB"


def _ok(flag: bool | None) -> str:
    return "n/a" if flag is None else ("met" if flag else "**missed**")


def render(results: list[CaseResult], skipped: dict[str, str], meta: dict[str, Any]) -> str:
    L: list[str] = []
    a = L.append
    a("# Benchmarks")
    a("")
    a(
        f"Generated by `{meta['command']}` on {meta['date']} ({meta['elapsed']:.0f} s in all); "
        "regenerate it with the same command, do not edit by hand. Times are wall-clock seconds, "
        "**min / median** over the rounds. Ratios pair each run with the rebuild of its own round "
        "(run just before it, so under about the same load): median (range) over the rounds. "
        "The targets of issue #5 are reported, not asserted; they are judged on those medians."
    )
    a("")
    a("What is compared, on one machine, one local registry and one package archive:")
    a("")
    a(
        "- **rebuild**: what a user would do instead: `buildah from` (fresh private storage, "
        f"{meta['driver']} driver), `buildah run --isolation chroot` of `apt-get update && "
        "apt-get install -y --only-upgrade PKGS`, `buildah commit`, `buildah push`;"
    )
    a("- **cold**: `ocipatch patch -r REPORT` with an empty `--cache-dir`;")
    a(
        "- **warm**: the same with the cache the cold run left (layers, layer indices, apt lists "
        "and .debs, and ocipatch's result cache when it has one: the same patch again);"
    )
    a(
        "- **warm-apply** (when ocipatch has a result cache): the warm cache without the result "
        "cache, so apt runs again: what a warm run costs when the archive or the report changed;"
    )
    a(
        "- **floor**: downloading just the InRelease and Packages.xz of each suite and the .debs "
        "apt fetched, one keep-alive connection per host (apt also fetches Translation-en)."
    )
    a("")
    a(
        "Bytes pulled/pushed are HTTP bodies through a counting proxy in front of the registry "
        "(GET responses; PUT/PATCH/POST requests). Peak RSS: *ocipatch* is the Python process "
        "itself (its VmHWM), *largest child* the biggest process below it (apt, dpkg, bwrap; "
        "for the rebuild, below buildah), *tree* the sum over the whole process tree; both "
        "sampled from /proc every 0.25 s."
    )
    a("")
    a("## Machine")
    a("")
    for k, v in meta["machine"].items():
        a(f"- {k}: {v}")
    a(
        f"- load average at start / end: {meta['load_start']} / {meta['load_end']} "
        "(other work on the machine shows up here; min is the steadier figure)"
    )
    a("")
    a("## Summary")
    a("")
    kinds = [k for k in KINDS if any(x.kind == k for r in results for x in r.runs)]
    pk = [k for k in kinds if k != "rebuild"]
    a(
        "| case | layers (compressed / uncompressed) | updates | "
        + " | ".join(kinds)
        + " | "
        + " | ".join(f"{k} / rebuild" for k in pk)
        + " | floor |"
    )
    a("|" + " --- |" * (4 + len(kinds) + len(pk)))
    for r in results:
        c = r.case
        times = [_fmt_s(_stats([x.seconds for x in r.runs if x.kind == k and x.ok])) for k in kinds]
        ratios = [_ratio(paired(r, k)) for k in pk]
        fl = _stats([f.seconds for f in r.floors])
        comp = sum(int(x["size"]) for x in c.layers)
        a(
            f"| {c.name} | {len(c.layers)}: {mb(comp)} / {mb(c.uncompressed)} | {len(c.packages)} "
            f"| {' | '.join(times)} | {' | '.join(ratios)} | {_fmt_s(fl, 2)} |"
        )
    for name, why in skipped.items():
        a(f"| {name} | skipped: {why} |" + " |" * (2 + len(kinds) + len(pk)))
    a("")
    L += _scaling(results)
    for r in results:
        L += _render_case(r)
    for r in results:
        for kind, prof in r.profiles.items():
            a(f"## Profile: one {kind} run, {r.case.name} (pyinstrument)")
            a("")
            if "error" in prof:
                a(prof["error"])
                a("")
                continue
            a(
                f"Wall time under the profiler: {prof['seconds']} s. Time in a subprocess (apt "
                "in the sandbox) shows as the frame that waits for it. Top of the flat list (self "
                "time):"
            )
            a("")
            a("```")
            L += _top_flat(prof["flat"], 25)
            a("```")
            a("")
            a("Call tree (top):")
            a("")
            a("```")
            L += _top_tree(prof["tree"], 80)
            a("```")
            a("")
    return "\n".join(L).rstrip() + "\n"


def _scaling(results: list[CaseResult]) -> list[str]:
    """Does the cost follow the update or the image? The large case against two-layer."""
    by = {r.case.name: r for r in results}
    if "large" not in by or "two-layer" not in by:
        return []
    small, big = by["two-layer"], by["large"]

    def med(r: CaseResult, kind: str) -> float | None:
        xs = [x.seconds for x in r.runs if x.kind == kind and x.ok]
        return statistics.median(xs) if xs else None

    def layer(r: CaseResult) -> int | None:
        xs = [x.layer.uncompressed for x in r.runs if x.kind == "cold" and x.ok and x.layer]
        return xs[0] if xs else None

    size = big.case.uncompressed / max(1, small.case.uncompressed)
    parts = []
    for kind in KINDS:
        a, b = med(small, kind), med(big, kind)
        if a and b:
            parts.append(f"{kind} {b / a:.2f}x")
    la, lb = layer(small), layer(big)
    upd = f"{lb / la:.2f}x the patch layer's bytes" if la and lb else "?"
    return [
        "Scaling (large against two-layer, medians): the large image has "
        f"{size:.1f}x the uncompressed bytes, {upd} ({len(big.case.packages)} against "
        f"{len(small.case.packages)} packages updated); time taken: {', '.join(parts)}. Cost "
        "that follows the update, not the image, would keep these near or below 1x.",
        "",
    ]


def _top_flat(text: str, n: int) -> list[str]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    body = [ln for ln in lines if re.match(r"^\s*[\d.]+\s", ln)]
    return body[:n]


def _top_tree(text: str, n: int) -> list[str]:
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if re.match(r"^[\d.]+ ", ln)), 0)
    return [ln.rstrip() for ln in lines[start : start + n]]


def _render_case(r: CaseResult) -> list[str]:
    c = r.case
    L: list[str] = []
    a = L.append
    a(f"## Case: {c.name}")
    a("")
    a(
        f"{c.description}. Image: {len(c.layers)} layer(s), {mb(sum(int(x['size']) for x in c.layers))} "
        f"compressed, {mb(c.uncompressed)} uncompressed, {len(c.installed)} packages installed. "
        f"Report (Trivy JSON, fixed versions from the archive's indices today): "
        f"{len(c.packages)} packages: {', '.join(sorted(c.packages))}."
    )
    a("")
    if c.rebuild_note:
        a(f"No rebuild: {c.rebuild_note}.")
        a("")
    kinds = [k for k in KINDS if any(x.kind == k for x in r.runs)]
    a(
        "| run | seconds min / median | / rebuild | pulled (blobs) | pushed | uploads | ocipatch RSS | largest child | tree RSS |"
    )
    a("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for k in kinds:
        runs = [x for x in r.runs if x.kind == k and x.ok]
        st = _stats([x.seconds for x in runs])
        pulled = _med([x.traffic.pulled for x in runs])
        blobs = _med([x.traffic.pulled_blobs for x in runs])
        pushed = _med([x.traffic.pushed for x in runs])
        ups = _med([len(x.traffic.uploaded) for x in runs])
        self_kb = max((x.self_kb for x in runs), default=0) if k != "rebuild" else None
        a(
            f"| {k} | {_fmt_s(st)} | {'-' if k == 'rebuild' else _ratio(paired(r, k))} | {mb(pulled)} ({mb(blobs)}) "
            f"| {mb(pushed)} | {ups if ups is not None else '-'} | {_mib_kb(self_kb) if self_kb else '-'} "
            f"| {_mib_kb(max((x.child_kb for x in runs), default=None))} "
            f"| {_mib_kb(max((x.tree_kb for x in runs), default=None))} |"
        )
    if r.floors:
        fl = _stats([f.seconds for f in r.floors])
        f0 = r.floors[0]
        a(
            f"| floor | {_fmt_s(fl, 2)} | {_ratio(paired(r, 'floor'))} | {mb(f0.index_bytes + f0.deb_bytes)} from the archive "
            f"| - | - | - | - | - |"
        )
    a("")
    if r.floors:
        f0 = r.floors[0]
        idx = _stats([f.index_seconds for f in r.floors])
        deb = _stats([f.deb_seconds for f in r.floors])
        a(
            f"Network floor: indices {mb(f0.index_bytes)} in {_fmt_s(idx)} s, {f0.debs} .debs "
            f"{mb(f0.deb_bytes)} in {_fmt_s(deb)} s."
            + (f" Not found in the indices: {', '.join(f0.missing)}." if f0.missing else "")
        )
        a("")
    failed = [x for x in r.runs if not x.ok]
    for x in failed:
        a(f"- round {x.round} {x.kind} failed: {x.error}")
    if failed:
        a("")
    # Where the time goes, medians per phase.
    for k in kinds:
        runs = [x for x in r.runs if x.kind == k and x.ok]
        if not runs:
            continue
        names: list[str] = []
        for x in runs:
            names += [n for n in x.phases if n not in names]
        parts = [
            f"{n} {statistics.median([x.phases.get(n, 0.0) for x in runs]):.1f}" for n in names
        ]
        a(f"- {k} phases (median s): " + ", ".join(parts))
        hw = max(runs, key=lambda x: x.self_kb).hwm
        if hw:
            a(
                f"- {k}: ocipatch's own RSS high-water mark after each phase (MiB): "
                + ", ".join(f"{n} {kb / 1024:.0f}" for n, kb in hw.items())
            )
    a("")
    # Layers.
    lay: dict[str, Run] = {}
    for k in kinds:
        ok = [x for x in r.runs if x.kind == k and x.ok and x.layer is not None]
        if ok:
            lay[k] = ok[0]
    if lay:
        if "rebuild" in lay:
            a(
                "The rebuild's layer is what `buildah commit` captured of the `apt-get` run as the "
                "issue specifies it: with apt's lists and downloaded .debs (the image has no "
                "docker-clean apt configuration) and dpkg's backups; a Dockerfile that also runs "
                "`apt-get clean && rm -rf /var/lib/apt/lists/*` in the same step adds less."
            )
            a("")
        a(
            "| added layer | compressed | uncompressed | tar entries | cache/log entries (bytes) | examples |"
        )
        a("| --- | --- | --- | --- | --- | --- |")
        for k, x in lay.items():
            li = x.layer
            assert li is not None
            a(
                f"| {k} | {mb(li.size)} | {mb(li.uncompressed)} | {li.entries} | {li.banned_entries} "
                f"({mb(li.banned_bytes)}) | {', '.join(li.banned_examples) or '-'} |"
            )
        a("")
    a("Targets:")
    a("")
    patch_runs = [x for x in r.runs if x.kind in PATCH_KINDS and x.ok and x.layer]

    for label, kind, lim in (
        ("cold <= 0.5x rebuild", "cold", TARGETS["cold"]),
        ("warm <= 0.25x rebuild", "warm", TARGETS["warm"]),
    ):
        xs = paired(r, kind)
        flag = statistics.median(xs) <= lim if xs else None
        a(f"- {label}: {_ratio(xs)}: {_ok(flag)}")
    if patch_runs and "rebuild" in lay:
        pl = patch_runs[0].layer
        rl = lay["rebuild"].layer
        assert pl is not None and rl is not None
        a(
            f"- patch layer <= rebuild's added layer: {mb(pl.size)} vs {mb(rl.size)}: {_ok(pl.size <= rl.size)}"
        )
    if patch_runs:
        pl = patch_runs[0].layer
        assert pl is not None
        a(
            f"- patch layer holds no caches or logs: {pl.banned_entries} such entries: "
            f"{_ok(pl.banned_entries == 0)}"
        )
        src = {x["digest"] for x in c.layers}
        checks = []
        for x in patch_runs:
            assert x.layer is not None
            expected = x.layer.size + x.config_size + x.manifest_size
            checks.append(
                (
                    x.traffic.pushed == expected and not set(x.traffic.uploaded) & src,
                    x.traffic.pushed,
                    expected,
                    len(set(x.traffic.uploaded) & src),
                )
            )
        worst = next((ch for ch in checks if not ch[0]), checks[0])
        a(
            f"- bytes pushed = patch layer + config + manifest, no existing layer: "
            f"{worst[1]} vs {worst[2]} bytes, {worst[3]} existing layers uploaded "
            f"({sum(ch[0] for ch in checks)}/{len(checks)} runs exact): {_ok(all(ch[0] for ch in checks))}"
        )
    rss = [x.self_kb for x in r.runs if x.kind in PATCH_KINDS and x.ok]
    if rss:
        a(
            f"- ocipatch peak RSS <= 250 MB: {max(rss) / 1024:.0f} MiB: "
            f"{_ok(max(rss) * 1024 <= TARGETS['rss_mb'] * 1e6)}"
        )
    for n in c.notes:
        a(f"- note: {n}")
    a("")
    return L


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] in (["_run"], ["_profile"]):
        out = Path(args_list[1])
        rest = args_list[3:] if args_list[2:3] == ["--"] else args_list[2:]
        return (wrapper_run if args_list[0] == "_run" else wrapper_profile)(out, rest)
    p = argparse.ArgumentParser(
        prog="tools/bench",
        description="ocipatch vs a buildah rebuild (issue #5); writes docs/benchmarks.md.",
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds per case (default 3)")
    p.add_argument(
        "--cases", default=",".join(CASES), help=f"comma separated, of {', '.join(CASES)}"
    )
    p.add_argument("--quick", action="store_true", help="1 round, two-layer only")
    p.add_argument(
        "--out", type=Path, default=OUT_DOC, help="the Markdown report (default docs/benchmarks.md)"
    )
    p.add_argument("--no-profile", action="store_true", help="skip the pyinstrument run")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, outputs)")
    a = p.parse_args(args_list)
    if a.quick:
        a.rounds, a.cases = 1, "two-layer"
    cases = [x.strip() for x in a.cases.split(",") if x.strip()]
    bad = [x for x in cases if x not in CASES]
    if bad or a.rounds < 1:
        p.error(f"unknown case(s) {bad}" if bad else "--rounds must be >= 1")
    if os.geteuid() != 0:
        p.error("needs root (mmdebstrap builds the images, buildah runs the rebuild)")
    for tool in ("buildah", "mmdebstrap", "bwrap"):
        if shutil.which(tool) is None:
            p.error(f"{tool} not found: tools/setup installs it")
    profile = not a.no_profile
    if profile:
        try:
            import pyinstrument  # noqa: F401
        except ImportError:
            log("pyinstrument is not installed (.venv/bin/pip install pyinstrument): no profile")
            profile = False
    # Stopping the benchmark (SIGTERM, or SIGINT even when started in the background, where it
    # comes in ignored) still stops the registry and removes buildah's mounts and the work dir.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    meta: dict[str, Any] = {
        "command": "tools/bench " + " ".join(shlex.quote(x) for x in args_list)
        if args_list
        else "tools/bench",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "load_start": loadavg(),
    }
    work = Path(tempfile.mkdtemp(prefix="ocipatch-bench-"))
    logfile = work / "bench.log"
    log(f"work directory {work} (log: {logfile})")
    reg = Registry(work)
    proxy = CountingProxy(("127.0.0.1", reg.port))
    results: list[CaseResult] = []
    skipped: dict[str, str] = {}
    try:
        meta["driver"] = _buildah_driver(work)
        for name in cases:
            log(f"{name}: building the image (cached after the first time)")
            case = build_case(name, work)
            if isinstance(case, str):
                log(f"{name}: skipped: {case}")
                skipped[name] = case
                continue
            prepare_case(case, reg, proxy, work, logfile)
            log(
                f"{name}: {len(case.layers)} layers, {mb(case.uncompressed)} uncompressed, "
                f"{len(case.packages)} packages to update"
            )
            results.append(
                bench_case(
                    case,
                    reg,
                    proxy,
                    a.rounds,
                    work,
                    meta["driver"],
                    logfile,
                    profile and (name in ("two-layer", "large")),
                )
            )
            shutil.rmtree(case.layout, ignore_errors=True)
    finally:
        proxy.close()
        reg.stop()
        meta["elapsed"] = time.monotonic() - started
        meta["load_end"] = loadavg()
        if results or skipped:
            a.out.write_text(render(results, skipped, meta))
            (work / "results.json").write_text(
                json.dumps(
                    [
                        {
                            "case": r.case.name,
                            "runs": [asdict(x) for x in r.runs],
                            "floors": [asdict(f) for f in r.floors],
                        }
                        for r in results
                    ],
                    indent=1,
                    default=str,
                )
            )
            log(f"wrote {a.out}")
        if a.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if results or skipped:
        print(a.out.read_text())
    return 0 if all(x.ok for r in results for x in r.runs) else 1


if __name__ == "__main__":
    sys.exit(main())
