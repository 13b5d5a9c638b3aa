"""An image's apt repositories, read in pure Python: sources -> signed indices -> plan -> .debs.

    repos = AptRepositories(rootfs, cache_dir, arch="amd64", mirrors=[(FROM, TO)])
    repos.update()                                  # InRelease + Packages, verified
    plan = repos.resolve([Requirement("openssl", None)])
    debs = repos.download(plan.items)               # verified .debs in the cache

No apt runs: `--sandbox none`, dry runs and air-gapped mirrors use this. Trust is apt's: the
Release is accepted only with a good signature from the image's keyring (gpgv) and within its
dates; each Packages file must match the SHA256 and size the Release lists; each .deb the
SHA256 and size its Packages stanza lists. A warm cache costs one conditional request per suite.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ocipatch.distro.base import Requirement
from ocipatch.distro.deb.debmeta import control_files
from ocipatch.distro.deb.repos.index import (
    IndexFile,
    PackagesIndex,
    ReleaseInfo,
    check_dates,
    parse_release,
)
from ocipatch.distro.deb.repos.resolve import (
    Installed,
    InstallItem,
    InstallSet,
    Universe,
    installed_from_rootfs,
    native_arch,
    resolve,
)
from ocipatch.distro.deb.repos.signature import (
    Keyrings,
    image_keyrings,
    verify_clearsigned,
    verify_detached,
)
from ocipatch.distro.deb.repos.sources import AptSource, read_sources
from ocipatch.distro.fetch import Fetcher, FetchError, RepoCache, check_scheme, rewrite
from ocipatch.errors import IntegrityError, ResolveError

MAINTAINER_SCRIPTS = ("preinst", "postinst", "prerm", "postrm", "config")
DOWNLOAD_WORKERS = 4
# Compressions tried for Packages, in this order (apt prefers xz too).
_COMPRESSIONS: tuple[tuple[str, Callable[[bytes], bytes]], ...] = (
    (".xz", lzma.decompress),
    (".gz", gzip.decompress),
    (".bz2", bz2.decompress),
    ("", lambda b: b),
)


@dataclass
class Suite:
    """One verified (URI, suite) of a source, with its Packages indices."""

    source: AptSource
    uri: str  # as the image names it
    fetch_uri: str  # after mirror rewriting: where files come from
    suite: str
    release: ReleaseInfo
    indices: list[PackagesIndex] = field(default_factory=list)

    @property
    def flat(self) -> bool:
        return self.suite.endswith("/")


def suite_base(uri: str, suite: str) -> str:
    """Where InRelease lives: URI/dists/SUITE, or URI/DIR for a flat repository (`DIR/`)."""
    root = uri.rstrip("/")
    if suite.endswith("/"):
        sub = suite.strip("/").removeprefix("./").strip("/")
        return f"{root}/{sub}" if sub not in ("", ".") else root
    return f"{root}/dists/{suite}"


def _cleartext(data: bytes) -> bytes:
    """The text of a clearsigned message, unchecked (only for trusted=yes sources)."""
    head, sep, rest = data.partition(b"\n\n")
    if not head.lstrip().startswith(b"-----BEGIN PGP SIGNED MESSAGE-----") or not sep:
        return data
    body = rest.split(b"\n-----BEGIN PGP SIGNATURE-----", 1)[0] + b"\n"
    return b"".join(ln[2:] if ln.startswith(b"- ") else ln for ln in body.splitlines(keepends=True))


def maintainer_scripts(deb: Path) -> tuple[str, ...]:
    """The maintainer scripts in a .deb's control archive, sorted."""
    found = set(control_files(deb))
    return tuple(s for s in MAINTAINER_SCRIPTS if s in found)


class AptRepositories:
    def __init__(
        self,
        rootfs: Path,
        cache_dir: Path,
        *,
        arch: str | None = None,
        mirrors: Sequence[tuple[str, str]] = (),
        installed: Mapping[str, Installed] | None = None,
        insecure: bool = False,
        fetcher: Fetcher | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.rootfs = rootfs
        self.cache = RepoCache(cache_dir / "apt-repos")
        self.mirrors = list(mirrors)
        self.installed = dict(installed) if installed is not None else installed_from_rootfs(rootfs)
        found_arch = arch or native_arch(self.installed)
        if found_arch is None:
            raise ResolveError(
                f"cannot tell the image's architecture from {rootfs}/var/lib/dpkg: pass it"
            )
        self.arch = found_arch
        self.insecure = insecure
        self.fetcher = fetcher or Fetcher()
        self._now = now or (lambda: datetime.now(UTC))
        self.sources = [s for s in read_sources(rootfs) if s.for_arch(self.arch)]
        self.suites: list[Suite] = []
        self.notes: list[str] = []
        self._universe: Universe | None = None

    # -- indices ----------------------------------------------------------------------------
    def update(self) -> Universe:
        """Fetch and verify every suite's Release and Packages (from the cache when current)."""
        if not self.sources:
            raise ResolveError(
                f"the image has no enabled apt sources for {self.arch} in "
                "/etc/apt/sources.list or /etc/apt/sources.list.d/"
            )
        self.suites, self.notes = [], []
        for src in self.sources:
            for uri, suite in src.repos():
                fetch_uri = rewrite(uri, self.mirrors)
                check_scheme(fetch_uri, src.where)
                release = self._release(src, suite_base(fetch_uri, suite))
                s = Suite(src, uri, fetch_uri, suite, release)
                s.indices = self._indices(s)
                self.suites.append(s)
        self._universe = Universe([i for s in self.suites for i in s.indices], self.arch)
        return self._universe

    @property
    def universe(self) -> Universe:
        return self._universe if self._universe is not None else self.update()

    def _keyrings(self, src: AptSource) -> Keyrings | None:
        if src.trusted or self.insecure:
            return None
        return image_keyrings(self.rootfs, src)

    def _release(self, src: AptSource, base: str) -> ReleaseInfo:
        keys = self._keyrings(src)
        url = f"{base}/InRelease"
        state = self.cache.load_state(url)
        cached = self.cache.read(state["sha256"]) if state else None
        headers = {}
        if state and cached is not None:
            if state.get("etag"):
                headers["If-None-Match"] = state["etag"]
            if state.get("last_modified"):
                headers["If-Modified-Since"] = state["last_modified"]
        resp = self.fetcher.get(url, headers)
        if resp.status == 404:
            return self._detached_release(src, base, keys)
        fresh = resp.status == 200
        data = resp.body if fresh else cached
        if data is None:
            raise FetchError(f"{url}: HTTP {resp.status} to an unconditional request", url=url)
        info = self._accept(data, url, keys, src)
        seen = datetime.fromisoformat(state["date"]) if state and state.get("date") else None
        if fresh and cached is not None and info.date and seen and info.date < seen:
            # Older than the Release accepted before: a lagging mirror, or a replay. Keep ours.
            old = self._accept(cached, url, keys, src)
            check_dates(old, self._now(), check_valid_until=src.check_valid_until)
            self.notes.append(f"{url} is older than the copy accepted before; kept that one")
            return old
        check_dates(info, self._now(), check_valid_until=src.check_valid_until)
        if fresh:
            sha = hashlib.sha256(data).hexdigest()
            self.cache.put(data, sha)
            self.cache.save_state(
                url,
                {
                    "sha256": sha,
                    "etag": resp.headers.get("ETag", ""),
                    "last_modified": resp.headers.get("Last-Modified", ""),
                    "date": info.date.isoformat() if info.date else "",
                },
            )
        return info

    def _accept(self, data: bytes, url: str, keys: Keyrings | None, src: AptSource) -> ReleaseInfo:
        if keys is None:
            text = _cleartext(data)
            why = f"{src.where}: trusted=yes" if src.trusted else "--insecure-repos"
            self.notes.append(f"{url}: signature not checked ({why})")
        else:
            text = verify_clearsigned(data, keys, f"InRelease {url}")
        return parse_release(text.decode("utf-8", "replace"), url)

    def _detached_release(self, src: AptSource, base: str, keys: Keyrings | None) -> ReleaseInfo:
        url = f"{base}/Release"
        resp = self.fetcher.get(url)
        if resp.status != 200:
            raise FetchError(
                f"no InRelease or Release at {base} ({src.where}): the suite does not exist "
                "there; check the URI and suite, or the mirror",
                url=url,
                status=404,
            )
        data = resp.body
        if keys is not None:
            sig = self.fetcher.get(f"{url}.gpg")
            if sig.status != 200:
                raise IntegrityError(
                    f"{url} is not signed (no InRelease, no Release.gpg): apt refuses it too; "
                    "sign the repository or mark the source trusted=yes"
                )
            data = verify_detached(data, sig.body, keys, f"Release {url}")
        info = parse_release(data.decode("utf-8", "replace"), url)
        check_dates(info, self._now(), check_valid_until=src.check_valid_until)
        return info

    def _indices(self, s: Suite) -> list[PackagesIndex]:
        out = []
        dirs = [""] if s.flat else [f"{c}/binary-{self.arch}/" for c in s.source.components]
        base = suite_base(s.fetch_uri, s.suite)
        for d in dirs:
            offered = [(d + "Packages" + ext, fn) for ext, fn in _COMPRESSIONS]
            offered = [(p, fn) for p, fn in offered if p in s.release.files]
            if not offered:
                self.notes.append(f"{base}: the Release lists no {d}Packages; skipped")
                continue
            plain = s.release.files.get(d + "Packages")
            # The decompressed index, kept from an earlier run (decompressing bookworm main
            # takes a second; reading and re-hashing it a tenth of that).
            text = self.cache.read(plain.sha256, plain.size) if plain is not None else None
            if text is not None:
                out.append(PackagesIndex(text, s.release, s.fetch_uri))
                continue
            for path, decompress in offered:
                entry = s.release.files[path]
                data = self._index_file(s.release, base, entry)
                if data is None:
                    continue  # listed but not served (Debian lists uncompressed files it omits)
                text = self._decompress(data, decompress, f"{base}/{path}")
                if plain is not None and path != plain.path:
                    got = hashlib.sha256(text).hexdigest()
                    if got != plain.sha256 or len(text) != plain.size:
                        raise IntegrityError(
                            f"{base}/{path} decompresses to data not matching the Release's "
                            f"SHA256 for {plain.path}: the index is corrupt"
                        )
                    self.cache.put(text, got)
                out.append(PackagesIndex(text, s.release, s.fetch_uri))
                break
            else:
                raise FetchError(
                    f"none of {', '.join(p for p, _ in offered)} could be fetched from {base}: "
                    "the mirror is incomplete",
                    url=f"{base}/{offered[0][0]}",
                    status=404,
                )
        return out

    def _index_file(self, release: ReleaseInfo, base: str, entry: IndexFile) -> bytes | None:
        cached = self.cache.read(entry.sha256, entry.size)
        if cached is not None:
            return cached
        urls = [f"{base}/{entry.path}"]
        if release.acquire_by_hash:
            folder = entry.path.rpartition("/")[0]
            prefix = f"{base}/{folder}/" if folder else f"{base}/"
            urls.insert(0, f"{prefix}by-hash/SHA256/{entry.sha256}")
        for url in urls:
            resp = self.fetcher.get(url)
            if resp.status == 404:
                continue
            data = resp.body
            got = hashlib.sha256(data).hexdigest()
            if len(data) != entry.size or got != entry.sha256:
                raise IntegrityError(
                    f"{url} does not match its signed Release (size {len(data)}, SHA256 {got}; "
                    f"expected {entry.size}, {entry.sha256}): the index was altered or the "
                    "mirror is mid-sync; retry later or resync the mirror"
                )
            self.cache.put(data, got)
            return data
        return None

    @staticmethod
    def _decompress(data: bytes, fn: Callable[[bytes], bytes], what: str) -> bytes:
        try:
            return fn(data)
        except (lzma.LZMAError, OSError, EOFError, zlib.error, ValueError) as e:
            raise IntegrityError(f"{what}: cannot decompress: {e}") from None

    # -- planning and fetching --------------------------------------------------------------
    def resolve(
        self, requirements: Sequence[Requirement], *, ignore_errors: bool = False
    ) -> InstallSet:
        return resolve(self.universe, self.installed, requirements, ignore_errors=ignore_errors)

    def download(
        self, items: Sequence[InstallItem], *, workers: int = DOWNLOAD_WORKERS
    ) -> list[InstallItem]:
        """Fetch each item's .deb into the cache (in parallel), verified against the signed
        index; fills in `path` and `maintainer_scripts`. Returns the items, in order."""

        def one(item: InstallItem) -> None:
            what = f"package {item.name} {item.version}"
            item.path = self.cache.download(self.fetcher, item.url, item.sha256, item.size, what)
            item.maintainer_scripts = maintainer_scripts(item.path)

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [pool.submit(one, it) for it in items]
            errors = [f.exception() for f in futures]
        for e in errors:
            if e is not None:
                raise e
        return list(items)

    def describe(self) -> list[dict[str, Any]]:
        """The suites read, for --dry-run output and logs."""
        return [
            {
                "uri": s.uri,
                "fetched_from": s.fetch_uri,
                "suite": s.suite,
                "origin": s.release.origin,
                "date": s.release.date.isoformat() if s.release.date else None,
                "valid_until": s.release.valid_until.isoformat() if s.release.valid_until else None,
                "priority": s.release.priority,
                "packages": sum(len(i) for i in s.indices),
            }
            for s in self.suites
        ]
