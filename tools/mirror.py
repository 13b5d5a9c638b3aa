"""A partial replica of an image's Debian archive, for air-gapped tests: real signed indices
copied byte for byte, plus only the pool files a patch needs, at the archive's own paths.

For every (URI, suite) of the image's apt sources, `dists/SUITE/{InRelease,Release,Release.gpg}`
and each component's `binary-ARCH/Packages.xz` (also at `by-hash/SHA256/<hash>` when the Release
says Acquire-By-Hash) are copied; the packages a patch will install are found by resolving
against that copy (ocipatch.distro.deb.repos, which also checks the copied signatures with the image's own
keyring), and their .debs are copied to `pool/...`. A source URI `http://host/debian` lands
under `ROOT/debian`, so one mirror can stand in for several URIs:

    m = build_mirror(Path("mirror"), rootfs)            # every pending update of the image
    m.mirrors("http://127.0.0.1:8080")                  # --repo-mirror FROM=TO pairs
    m.mirrors(m.file_url)                               # the same tree as a file:// mirror

    python -m tools.mirror build OUT --rootfs ROOTFS [--package NAME]...   # prints mirror args
    python -m tools.mirror serve OUT [--port N] [--log FILE]                # loopback HTTP

Downloads are cached under ~/.cache/ocipatch-tests/mirror, keyed by URL and SHA256 (files whose
hash a signed index gives) or by URL for a few hours (the Release files, which change).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.server
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from ocipatch.distro.base import Requirement
from ocipatch.distro.deb.repos.archive import AptRepositories, suite_base
from ocipatch.distro.deb.repos.index import parse_release
from ocipatch.distro.deb.repos.resolve import InstallItem, installed_from_rootfs, native_arch
from ocipatch.distro.deb.repos.signature import image_keyrings, verify_detached
from ocipatch.distro.deb.repos.sources import AptSource, read_sources
from ocipatch.errors import IntegrityError

CACHE_DIR = Path.home() / ".cache" / "ocipatch-tests" / "mirror"
RELEASE_MAX_AGE = timedelta(hours=6)
# A cached Release must stay valid this long after it is copied (apt refuses expired ones).
VALID_MARGIN = timedelta(days=1)
RELEASE_FILES = ("InRelease", "Release", "Release.gpg")


class MirrorError(RuntimeError):
    """The replica cannot be built (a download failed, the indices disagree, ...)."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_path(uri: str) -> str:
    """Where a source URI lives in the replica: its URL path (`http://h/debian` -> `debian`)."""
    return urlsplit(uri).path.strip("/")


def cleartext(inrelease: bytes) -> bytes:
    """The signed text of a clearsigned InRelease (dash-escaping undone), unchecked."""
    head, _, rest = inrelease.partition(b"\n\n")
    if not head.startswith(b"-----BEGIN PGP SIGNED MESSAGE-----"):
        raise MirrorError("InRelease is not a clearsigned message")
    body = rest.split(b"\n-----BEGIN PGP SIGNATURE-----", 1)[0] + b"\n"
    return b"".join(ln[2:] if ln.startswith(b"- ") else ln for ln in body.splitlines(True))


class Downloader:
    """HTTP(S) downloads through a cache: by URL and SHA256 when the hash is known, else by URL
    for RELEASE_MAX_AGE."""

    def __init__(self, cache_dir: Path = CACHE_DIR) -> None:
        self.cache = cache_dir
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "ocipatch-tests mirror"

    def _get(self, url: str) -> bytes:
        last = ""
        for attempt in range(3):
            if attempt:
                time.sleep(attempt)
            try:
                resp = self.session.get(url, timeout=120)
            except requests.RequestException as e:
                last = type(e).__name__
                continue
            if resp.status_code == 200:
                return resp.content
            last = f"HTTP {resp.status_code}"
            if resp.status_code == 404:
                break
        raise MirrorError(f"cannot download {url}: {last}")

    def _put(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)

    def verified(self, url: str, sha256: str, size: int) -> Path:
        """A cached file with this URL and hash (downloaded when missing, checked both ways)."""
        key = f"{_sha256(url.encode())[:16]}-{sha256}"
        path = self.cache / "files" / key
        if path.is_file() and path.stat().st_size == size:
            return path
        data = self._get(url)
        if len(data) != size or _sha256(data) != sha256:
            raise MirrorError(
                f"{url}: got {len(data)} bytes with SHA256 {_sha256(data)}, the signed index "
                f"says {size} bytes, {sha256}"
            )
        self._put(path, data)
        return path

    def release_files(self, base: str) -> dict[str, bytes]:
        """InRelease, Release and Release.gpg of one suite, from one consistent snapshot."""
        entry = self.cache / "releases" / _sha256(base.encode())[:32]
        stamp = entry / "stamp.json"
        if stamp.is_file():
            meta = json.loads(stamp.read_text())
            files = {n: (entry / n).read_bytes() for n in RELEASE_FILES if (entry / n).is_file()}
            age = datetime.now(UTC) - datetime.fromtimestamp(meta["fetched"], UTC)
            if meta.get("base") == base and len(files) == 3 and age < RELEASE_MAX_AGE:
                info = parse_release(files["Release"].decode("utf-8", "replace"), base)
                if info.valid_until is None or info.valid_until > datetime.now(UTC) + VALID_MARGIN:
                    return files
        for _ in range(3):
            files = {n: self._get(f"{base}/{n}") for n in RELEASE_FILES}
            # A mirror caught mid-sync can serve a Release of another generation.
            if cleartext(files["InRelease"]) == files["Release"]:
                break
            time.sleep(5)
        else:
            raise MirrorError(f"{base}: InRelease and Release keep disagreeing (mirror mid-sync?)")
        for name, data in files.items():
            self._put(entry / name, data)
        self._put(stamp, json.dumps({"base": base, "fetched": time.time()}).encode())
        return files


@dataclass
class PartialMirror:
    root: Path
    origins: dict[str, str]  # source URI as the image names it -> its path in the replica
    files: list[str] = field(default_factory=list)  # paths written, relative to root
    notes: list[str] = field(default_factory=list)

    @property
    def file_url(self) -> str:
        return f"file://{self.root.resolve()}"

    def mirrors(self, base: str) -> list[tuple[str, str]]:
        """--repo-mirror pairs sending every source URI of the image to `base` (an http://
        or file:// URL where this tree is served)."""
        return [
            (uri, f"{base.rstrip('/')}/{path}".rstrip("/"))
            for uri, path in sorted(self.origins.items())
        ]

    def mirror_args(self, base: str) -> list[str]:
        return [a for f, t in self.mirrors(base) for a in ("--repo-mirror", f"{f}={t}")]

    def _write(self, rel: str, data: bytes | Path) -> None:
        dest = self.root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, Path):
            shutil.copyfile(data, dest)
        else:
            dest.write_bytes(data)
        if rel not in self.files:
            self.files.append(rel)

    def _link(self, rel: str, existing: str) -> None:
        dest = self.root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)
        os.link(self.root / existing, dest)
        if rel not in self.files:
            self.files.append(rel)

    def pool_file(self, uri: str, filename: str) -> Path:
        return self.root / self.origins[uri] / filename


def _origins(sources: Sequence[AptSource]) -> dict[str, str]:
    out: dict[str, str] = {}
    for src in sources:
        for uri in src.uris:
            uri = uri.rstrip("/")
            path = tree_path(uri)
            clash = [u for u, p in out.items() if p == path and u != uri]
            if clash:
                raise MirrorError(f"{uri} and {clash[0]} would share the path /{path} in a replica")
            out[uri] = path
    return out


def _detached_ok(rootfs: Path, src: AptSource, release: bytes, sig: bytes, what: str) -> bool:
    try:
        verify_detached(release, sig, image_keyrings(rootfs, src), what)
    except IntegrityError:
        return False
    return True


def copy_indices(
    root: Path,
    sources: Sequence[AptSource],
    arch: str,
    *,
    downloader: Downloader | None = None,
    rootfs: Path | None = None,
) -> PartialMirror:
    """Copy the Release files and each component's Packages.xz of every (URI, suite).

    With `rootfs`, each Release.gpg is checked with the image's keyring: an archive can serve a
    stale one (signing an older Release) next to a current InRelease, which apt never notices
    since it reads InRelease first. Such a Release.gpg is left out (noted in `.notes`), so that
    the replica is what apt would accept without InRelease too.
    """
    dl = downloader or Downloader()
    mirror = PartialMirror(root, _origins(sources))
    for src in sources:
        if src.suites and any(s.endswith("/") for s in src.suites):
            raise MirrorError(f"{src.where}: flat repositories are not supported by this tool")
        for uri, suite in src.repos():
            uri = uri.rstrip("/")
            base = suite_base(uri, suite)
            rel_base = f"{mirror.origins[uri]}/dists/{suite}".lstrip("/")
            files = dl.release_files(base)
            if rootfs is not None and not _detached_ok(
                rootfs, src, files["Release"], files["Release.gpg"], f"{base}/Release"
            ):
                del files["Release.gpg"]
                mirror.notes.append(f"{base}/Release.gpg does not sign its Release: left out")
            for name, data in files.items():
                mirror._write(f"{rel_base}/{name}", data)
            release = parse_release(files["Release"].decode("utf-8", "replace"), base)
            for comp in src.components:
                index = f"{comp}/binary-{arch}/Packages.xz"
                entry = release.files.get(index)
                if entry is None:
                    raise MirrorError(f"{base}/Release lists no {index}")
                by_hash = f"{comp}/binary-{arch}/by-hash/SHA256/{entry.sha256}"
                url = f"{base}/{by_hash if release.acquire_by_hash else index}"
                cached = dl.verified(url, entry.sha256, entry.size)
                mirror._write(f"{rel_base}/{index}", cached)
                if release.acquire_by_hash:
                    mirror._link(f"{rel_base}/{by_hash}", f"{rel_base}/{index}")
    return mirror


def add_pool_files(
    mirror: PartialMirror,
    items: Iterable[InstallItem],
    *,
    downloader: Downloader | None = None,
) -> list[Path]:
    """Copy each item's .deb (resolved against the replica: its URL points into it) from the
    real archive into the replica's pool."""
    dl = downloader or Downloader()
    root = mirror.file_url
    out = []
    for item in items:
        rel = item.url.removeprefix(root + "/")
        owners = [
            (path, uri)
            for uri, path in mirror.origins.items()
            if not path or rel.startswith(path + "/")
        ]
        if rel == item.url or not owners:
            raise MirrorError(f"{item.name}: {item.url} is not inside the replica {root}")
        path, uri = max(owners, key=lambda o: len(o[0]))
        filename = rel[len(path) :].lstrip("/")
        cached = dl.verified(f"{uri}/{filename}", item.sha256, item.size)
        mirror._write(rel, cached)
        out.append(mirror.root / rel)
    return out


def resolve_against(
    mirror: PartialMirror,
    rootfs: Path,
    requirements: Sequence[Requirement] | None,
    *,
    work: Path,
    arch: str | None = None,
) -> list[InstallItem]:
    """What a patch would install, resolved by ocipatch.distro.deb.repos from the replica's indices (whose
    signatures are checked with the image's keyring). None: every pending update."""
    repos = AptRepositories(rootfs, work, arch=arch, mirrors=mirror.mirrors(mirror.file_url))
    if requirements is None:
        requirements = [Requirement(n, None) for n in sorted(repos.installed)]
    return list(repos.resolve(requirements, ignore_errors=True).items)


def build_mirror(
    dest: Path,
    rootfs: Path,
    requirements: Sequence[Requirement] | None = None,
    *,
    cache_dir: Path = CACHE_DIR,
) -> tuple[PartialMirror, list[InstallItem]]:
    """The replica for patching the unpacked image `rootfs` (requirements None: every pending
    update), and the packages it holds."""
    installed = installed_from_rootfs(rootfs)
    arch = native_arch(installed)
    if arch is None:
        raise MirrorError(f"cannot tell the architecture of {rootfs} from its dpkg database")
    dl = Downloader(cache_dir)
    sources = [s for s in read_sources(rootfs) if s.for_arch(arch)]
    mirror = copy_indices(dest, sources, arch, downloader=dl, rootfs=rootfs)
    with tempfile.TemporaryDirectory(prefix="mirror-resolve-") as work:
        items = resolve_against(mirror, rootfs, requirements, work=Path(work), arch=arch)
    add_pool_files(mirror, items, downloader=dl)
    mirror.files.sort()
    return mirror, items


# --- serving ----------------------------------------------------------------------------------


class MirrorServer:
    """Serve a directory on loopback (threaded); every request is recorded as
    "METHOD /path STATUS" in `.requests` and, with `log`, appended to that file."""

    def __init__(
        self, root: Path, host: str = "127.0.0.1", port: int = 0, log: Path | None = None
    ) -> None:
        self.root = root
        self.requests: list[str] = []
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(server.root), **kwargs)

            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                line = f"{self.command} {self.path} {code}"
                with server._lock:
                    server.requests.append(line)
                    if log is not None:
                        with log.open("a") as fh:
                            fh.write(line + "\n")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> MirrorServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


# --- CLI --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="copy indices and the needed pool files into OUT")
    b.add_argument("out", type=Path)
    b.add_argument("--rootfs", type=Path, required=True, help="the image, unpacked")
    b.add_argument("--package", action="append", default=[], help="NAME[=MIN_VERSION]")
    b.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    b.add_argument("--base-url", default="", help="print --repo-mirror args for this URL")
    s = sub.add_parser("serve", help="serve OUT on 127.0.0.1 until interrupted")
    s.add_argument("dir", type=Path)
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--log", type=Path, default=None, help="append one line per request")
    a = p.parse_args(argv)
    if a.cmd == "build":
        reqs = None
        if a.package:
            reqs = [Requirement(n, v or None) for n, _, v in (x.partition("=") for x in a.package)]
        try:
            mirror, items = build_mirror(a.out, a.rootfs, reqs, cache_dir=a.cache_dir)
        except MirrorError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        for it in items:
            print(f"{it.name} {it.installed or '-'} -> {it.version}", file=sys.stderr)
        for note in mirror.notes:
            print(f"note: {note}", file=sys.stderr)
        print(" ".join(mirror.mirror_args(a.base_url or mirror.file_url)))
        return 0
    server = MirrorServer(a.dir, port=a.port, log=a.log)
    print(server.url, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
