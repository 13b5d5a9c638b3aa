"""An image's apk repositories: which they are, their signed indexes, verified packages.

- Repositories come from the image's `/etc/apk/repositories` and `/etc/apk/repositories.d/*.list`
  (`@tag url` pins a repository; `#` comments). `--repo-mirror FROM=TO` rewrites a URL's
  longest matching prefix (as for apt); `file://` URLs and bare absolute paths (host paths)
  are read from disk.
- `<repo>/<arch>/APKINDEX.tar.gz` is fetched (bounded retries, ETag revalidation, a content
  cache under `<cache>/apk`) and verified against the keys in the image's `/etc/apk/keys`
  (symlinks resolved inside the image). `insecure` skips that check, loudly.
- A package is downloaded to the cache and verified before use: its size (S:) and identity
  (C:, SHA-1 of the control stream) against the verified index, its own signature when it is
  signed by a key the image trusts, its datahash and every file's SHA-1. Anything altered is
  IntegrityError (exit 7) naming the URL.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ocipatch.distro.apk import inroot
from ocipatch.distro.apk.db import INSTALLED_PATHS, read_installed, read_repositories
from ocipatch.distro.apk.index import ApkIndex, read_index
from ocipatch.distro.apk.package import (
    ApkFile,
    read_apk,
    verify_checksum,
    verify_datahash,
    verify_package_signature,
)
from ocipatch.distro.apk.resolve import Candidate
from ocipatch.distro.fetch import Fetcher, FetchError, check_scheme, rewrite
from ocipatch.errors import ImageFormatError, IntegrityError, ResolveError

__all__ = ["ApkRepositories", "RepoConfig", "Repository", "image_arch", "image_repositories"]

log = logging.getLogger(__name__)

REPOSITORIES = "etc/apk/repositories"
REPOSITORIES_D = "etc/apk/repositories.d"
KEYS_DIR = "etc/apk/keys"
ARCH_FILE = "etc/apk/arch"


class RepoConfig(Protocol):
    """What the apk path needs of the run's settings (dpkgdirect.DirectConfig has the shape)."""

    cache_dir: Path
    mirrors: list[tuple[str, str]]
    insecure: bool


@dataclass(frozen=True)
class Repository:
    url: str  # as the image names it
    fetch_url: str  # after --repo-mirror: where files come from
    tag: str = ""  # `@tag` pin; "" for an ordinary repository
    where: str = REPOSITORIES

    def index_url(self, arch: str) -> str:
        return f"{self.fetch_url.rstrip('/')}/{arch}/APKINDEX.tar.gz"


def _as_url(url: str) -> str:
    # apk takes a bare absolute path as a local repository.
    return f"file://{url}" if url.startswith("/") else url


def image_repositories(rootfs: Path, mirrors: list[tuple[str, str]]) -> list[Repository]:
    """The image's repositories in apk's order: /etc/apk/repositories, then repositories.d."""
    files = [REPOSITORIES] + [
        f"{REPOSITORIES_D}/{n}"
        for n in inroot.list_dir(rootfs, REPOSITORIES_D)
        if n.endswith(".list")
    ]
    out: list[Repository] = []
    for rel in files:
        data = inroot.read_file(rootfs, rel)
        if data is None:
            continue
        for line in read_repositories(data, rel).repositories:
            fetch = _as_url(rewrite(line.url, mirrors))
            check_scheme(fetch, f"/{rel}")
            out.append(Repository(line.url, fetch, line.tag, rel))
    return out


def image_arch(rootfs: Path) -> str:
    """The image's apk architecture: /etc/apk/arch, else the installed packages' A:."""
    data = inroot.read_file(rootfs, ARCH_FILE)
    if data is not None and data.split():
        return data.split()[0].decode("utf-8", "replace")
    for rel in INSTALLED_PATHS:
        db = inroot.read_file(rootfs, rel)
        if db is not None:
            arches = [p.arch for p in read_installed(db, rel).packages if p.arch != "noarch"]
            if arches:
                return max(set(arches), key=arches.count)
    raise ImageFormatError(
        "cannot tell the image's apk architecture: no /etc/apk/arch and no installed package "
        "names one; add /etc/apk/arch to the image"
    )


def image_keys(rootfs: Path) -> dict[str, bytes]:
    """The public keys apk trusts in this image, by file name (links resolved in the root)."""
    keys: dict[str, bytes] = {}
    for name in inroot.list_dir(rootfs, KEYS_DIR):
        data = inroot.read_file(rootfs, f"{KEYS_DIR}/{name}")
        if data is not None:
            keys[name] = data
    return keys


@dataclass
class ApkRepositories:
    """The repositories of the image at `rootfs`, fetched through `cache_dir`."""

    rootfs: Path
    cache_dir: Path
    mirrors: list[tuple[str, str]] = field(default_factory=list)
    insecure: bool = False
    arch: str = ""
    fetcher: Fetcher = field(default_factory=Fetcher)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.arch = self.arch or image_arch(self.rootfs)
        self.keys = image_keys(self.rootfs)
        self.repositories = image_repositories(self.rootfs, self.mirrors)
        self._by_checksum: dict[str, Candidate] = {}

    @property
    def cache(self) -> Path:
        return self.cache_dir / "apk"

    # -- indexes ---------------------------------------------------------------------------------
    def update(self) -> list[Candidate]:
        """Every package the repositories offer for the image's architecture, verified."""
        if not self.repositories:
            raise ResolveError(
                f"the image names no apk repository in /{REPOSITORIES}; add one, or pass "
                "--repo-mirror with a repository the image's packages come from"
            )
        if self.insecure:
            self._note("--insecure-repos: apk index signatures are NOT checked")
        out: list[Candidate] = []
        for repo in self.repositories:
            index = self.index(repo)
            for entry in index.entries:
                if entry.arch not in ("", self.arch, "noarch"):
                    continue
                url = f"{repo.fetch_url.rstrip('/')}/{self.arch}/{entry.filename}"
                cand = Candidate(entry, tag=repo.tag, repo=repo.url, url=url)
                out.append(cand)
                self._by_checksum.setdefault(entry.checksum, cand)
        return out

    def index(self, repo: Repository) -> ApkIndex:
        url = repo.index_url(self.arch)
        return read_index(self._fetch_index(url), url, self.keys, insecure=self.insecure)

    def _state_path(self, url: str) -> Path:
        return (
            self.cache / "index-state" / (hashlib.sha256(url.encode()).hexdigest()[:32] + ".json")
        )

    def _blob(self, sha256: str) -> Path:
        return self.cache / "blobs" / sha256

    def _fetch_index(self, url: str) -> bytes:
        """The index bytes: revalidated by ETag when cached, else fetched whole."""
        state = _load_json(self._state_path(url))
        cached = self._cached_blob(state.get("sha256", "")) if state.get("url") == url else None
        headers = (
            {"If-None-Match": state["etag"]} if cached is not None and state.get("etag") else {}
        )
        try:
            resp = self.fetcher.get(url, headers)
        except FetchError:
            if cached is None:
                raise
            self._note(f"{url}: unreachable, using the cached copy (verified again)")
            return cached
        if resp.status == 304 and cached is not None:
            return cached
        if resp.status != 200:
            raise ResolveError(
                f"{url} does not exist (HTTP 404): the image's repository has no index for "
                f"{self.arch}; check /{REPOSITORIES} or the --repo-mirror mapping"
            )
        sha = hashlib.sha256(resp.body).hexdigest()
        _write_atomic(self._blob(sha), resp.body)
        etag = resp.headers.get("ETag", "") if resp.headers else ""
        _write_atomic(
            self._state_path(url), json.dumps({"url": url, "etag": etag, "sha256": sha}).encode()
        )
        return resp.body

    def _cached_blob(self, sha256: str) -> bytes | None:
        if not sha256:
            return None
        try:
            data = self._blob(sha256).read_bytes()
        except OSError:
            return None
        return data if hashlib.sha256(data).hexdigest() == sha256 else None

    # -- packages --------------------------------------------------------------------------------
    def download(self, cand: Candidate) -> tuple[Path, ApkFile]:
        """The verified .apk of `cand` in the cache (fetched when not there yet)."""
        path = (
            self.cache / "packages" / f"{_checksum_hex(cand.entry.checksum)}-{cand.entry.filename}"
        )
        if path.is_file():
            try:
                return path, self.verify_package(cand, path.read_bytes())
            except IntegrityError:
                path.unlink()  # a damaged cache entry: fetched again below
        data = self._fetch_package(cand)
        apk = self.verify_package(cand, data)
        _write_atomic(path, data)
        return path, apk

    def _fetch_package(self, cand: Candidate) -> bytes:
        size = cand.entry.size
        buf = bytearray()
        with self.fetcher.stream(cand.url) as chunks:
            for chunk in chunks:
                buf += chunk
                if size and len(buf) > size:
                    raise IntegrityError(
                        f"{cand.url} is larger than the {size} bytes its signed index says: "
                        "the package was altered or the mirror is inconsistent"
                    )
        return bytes(buf)

    def verify_package(self, cand: Candidate, data: bytes) -> ApkFile:
        """Size, C:, signature (when by a trusted key), datahash, file SHA-1s; IntegrityError."""
        url, entry = cand.url, cand.entry
        if entry.size and len(data) != entry.size:
            raise IntegrityError(
                f"{url} has {len(data)} bytes, its signed index says {entry.size}: the package "
                "was altered or the download was cut short"
            )
        apk = read_apk(data, url)
        verify_checksum(apk, entry.checksum)
        if any(s.key_name in self.keys for s in apk.signatures) and not self.insecure:
            verify_package_signature(apk, self.keys)
        if not verify_datahash(apk):
            self._note(f"{url}: no datahash in .PKGINFO; data checked file by file only")
        apk.verify_file_checksums()
        if (apk.name, apk.version) != (entry.name, entry.version):
            raise IntegrityError(
                f"{url} holds {apk.name}-{apk.version}, the index says "
                f"{entry.name}-{entry.version}: the repository is inconsistent"
            )
        return apk

    def _note(self, text: str) -> None:
        if text not in self.notes:
            log.warning("%s", text)
            self.notes.append(text)


def _checksum_hex(checksum: str) -> str:
    if checksum[:2] in ("Q1", "Q2"):
        return base64.b64decode(checksum[2:]).hex()
    return checksum


def _load_json(path: Path) -> dict[str, str]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
