"""An image's rpm repositories (dnf/yum and zypper), their verified metadata and packages.

- Configuration is read inside the image root: `/etc/yum.repos.d/*.repo` (with the `[main]`
  of /etc/dnf/dnf.conf or /etc/yum.conf for the gpgcheck defaults) and zypper's
  `/etc/zypp/repos.d/*.repo`. `$releasever` (as dnf: the rpmdb's
  system-release(releasever), else os-release VERSION_ID), `$basearch`/`$arch`
  (the image's platform) and the variables of /etc/dnf/vars and /etc/yum/vars are expanded.
  metalink= and mirrorlist= need the network's mirror service: named as unsupported offline.
- `--repo-mirror FROM=TO` rewrites a URL's longest matching prefix; `file://` is read from
  the host. Of several baseurls the first reachable is used.
- `repodata/repomd.xml` is fetched (and, with repo_gpgcheck, `repomd.xml.asc` checked with the
  repository's gpgkey files by gpgv), then `primary` with its stored and open checksums checked
  (repomd.py). Downloads are cached by checksum under `<cache>/rpm`.
- Packages are checked against the repository's checksum and size, then (gpgcheck) their
  digests and OpenPGP signatures against the image's keys (verify.py).
"""

from __future__ import annotations

import configparser
import fnmatch
import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ocipatch.distro.apk import inroot
from ocipatch.distro.deb.repos.signature import Keyrings, _keyring_bytes, verify_detached
from ocipatch.distro.fetch import Fetcher, FetchError, check_scheme, rewrite
from ocipatch.distro.rpm.db import InstalledRpms, RootDir, read_installed
from ocipatch.distro.rpm.header import RpmFile
from ocipatch.distro.rpm.repomd import (
    PrimaryEntry,
    Repomd,
    check_checksum,
    decompress,
    parse_primary,
    parse_repomd,
)
from ocipatch.distro.rpm.verify import keys_of_pubkeys, verify_rpm
from ocipatch.errors import ImageFormatError, IntegrityError, ResolveError, UnsupportedError

__all__ = [
    "RepoDef",
    "RpmCandidate",
    "RpmRepositories",
    "basearch_of",
    "image_repos",
    "image_vars",
    "runs_on",
    "substitute",
]

log = logging.getLogger(__name__)

YUM_REPOS = ("etc/yum.repos.d", "etc/distro.repos.d")
ZYPP_REPOS = "etc/zypp/repos.d"
MAIN_CONFS = ("etc/dnf/dnf.conf", "etc/yum.conf", "etc/yum/yum.conf")
VAR_DIRS = ("etc/yum/vars", "etc/dnf/vars")  # later wins, as dnf reads them
# uname machine -> dnf basearch
_BASEARCH = {
    "x86_64": "x86_64", "amd64": "x86_64", "i386": "i386", "i486": "i386", "i586": "i386",
    "i686": "i386", "386": "i386", "aarch64": "aarch64", "arm64": "aarch64", "armv7hl": "armhfp",
    "armv7l": "armhfp", "arm": "armhfp", "ppc64le": "ppc64le", "s390x": "s390x",
    "riscv64": "riscv64", "loongarch64": "loongarch64",
}  # fmt: skip
# The package arches an image of a base arch runs (rpm's arch compatibility, reduced).
_COMPAT = {
    "x86_64": {"x86_64", "amd64", "ia32e", "i686", "i586", "i486", "i386", "athlon", "geode"},
    "i386": {"i686", "i586", "i486", "i386", "athlon", "geode"},
    "aarch64": {"aarch64"},
    "armhfp": {"armv7hl", "armv7hnl", "armv6hl"},
    "ppc64le": {"ppc64le"},
    "s390x": {"s390x"},
}
_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_TRUE = ("1", "yes", "true", "on", "enabled")


@dataclass(frozen=True)
class RepoDef:
    """One enabled or disabled repository section."""

    id: str
    name: str
    baseurls: tuple[str, ...]  # as the image names them, variables expanded
    fetch_urls: tuple[str, ...]  # after --repo-mirror
    enabled: bool = True
    gpgcheck: bool = False
    repo_gpgcheck: bool = False
    gpgkeys: tuple[str, ...] = ()
    where: str = ""  # the file the section is in
    unsupported: str = ""  # why it cannot be read offline (metalink/mirrorlist only)
    zypper: bool = False  # from /etc/zypp/repos.d: zypper trusts the rpmdb's keys for repomd
    skip_if_unavailable: bool = False  # an unreachable repository is left out (noted)
    priority: int = 99  # dnf and zypper: a lower number wins over any version elsewhere
    excludes: tuple[str, ...] = ()  # exclude=/excludepkgs= globs, [main]'s included
    includes: tuple[str, ...] = ()  # includepkgs=: only these (empty: all)

    def offers(self, entry: PrimaryEntry) -> bool:
        """dnf's exclude= / includepkgs=: globs over the name (or name-version, NEVRA)."""
        forms = (entry.name, f"{entry.name}-{entry.version}", entry.nevra,
                 f"{entry.name}.{entry.arch}")  # fmt: skip

        def hit(globs: tuple[str, ...]) -> bool:
            return any(fnmatch.fnmatchcase(f, g) for g in globs for f in forms)

        return not hit(self.excludes) and (not self.includes or hit(self.includes))


@dataclass(frozen=True)
class RpmCandidate:
    """One package a repository offers."""

    entry: PrimaryEntry
    repo: str  # repository id
    url: str  # where the .rpm is fetched from
    priority: int = 99  # the repository's priority= (lower wins)

    @property
    def name(self) -> str:
        return self.entry.name


def substitute(text: str, variables: dict[str, str]) -> str:
    """`$var` and `${var}` expanded as dnf does (unknown ones left as they are)."""
    return _VAR.sub(lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), text)


def basearch_of(arch: str) -> str:
    return _BASEARCH.get(arch, arch)


def runs_on(pkg_arch: str, image_arch: str) -> bool:
    """Whether a package of `pkg_arch` installs on an image of `image_arch` (src never)."""
    if pkg_arch == "noarch":
        return True
    base = basearch_of(image_arch)
    return pkg_arch in _COMPAT.get(base, set()) | {image_arch, base}


def _os_release(root: Path) -> dict[str, str]:
    for rel in ("etc/os-release", "usr/lib/os-release"):
        data = inroot.read_file(root, rel)
        if data is not None:
            out = {}
            for line in data.decode("utf-8", "replace").splitlines():
                k, eq, v = line.partition("=")
                if eq:
                    out[k.strip()] = v.strip().strip("\"'")
            return out
    return {}


_MAJOR_ONLY = frozenset({"rhel", "centos", "rocky", "almalinux", "ol", "fedora", "amzn",
                         "eurolinux", "navy", "circle", "cloudlinux"})  # fmt: skip


def _release_from_db(installed: InstalledRpms | None) -> str:
    """As dnf's detect_releasever: the version of the `system-release(releasever)` provide,
    else the version of the package providing system-release (or redhat-release)."""
    if installed is None:
        return ""
    found = ""
    for p in installed.packages:
        if p.header is None:
            continue
        for d in p.provides():
            if d.name == "system-release(releasever)" and d.version:
                return d.version
            if d.name in ("system-release", "redhat-release") and not found:
                found = p.version
    return found


def _release_from_os(root: Path) -> str:
    """os-release VERSION_ID: major only where the distribution's repositories use it so
    (RHEL and its rebuilds, Fedora, Amazon Linux); whole elsewhere (Azure Linux 3.0,
    openSUSE Leap 15.5)."""
    osr = _os_release(root)
    version = osr.get("VERSION_ID", "")
    ids = {osr.get("ID", "")} | set(osr.get("ID_LIKE", "").split())
    return version.split(".")[0] if ids & _MAJOR_ONLY else version


def image_vars(root: Path, arch: str, installed: InstalledRpms | None = None) -> dict[str, str]:
    """dnf's substitution variables for the image: releasever, basearch, arch, then the files
    of /etc/yum/vars and /etc/dnf/vars (which override)."""
    out = {"basearch": basearch_of(arch), "arch": arch}
    release = _release_from_db(installed) or _release_from_os(root)
    if release:
        out["releasever"] = release
        out["releasever_major"] = release.split(".")[0]
        out["releasever_minor"] = release.split(".")[1] if "." in release else ""
    for d in VAR_DIRS:
        for name in inroot.list_dir(root, d):
            data = inroot.read_file(root, f"{d}/{name}")
            lines = data.decode("utf-8", "replace").strip().splitlines() if data else []
            if lines and re.fullmatch(r"\w+", name):
                out[name] = lines[0].strip()
    return out


def _ini(data: bytes, where: str) -> configparser.RawConfigParser:
    cp = configparser.RawConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    try:
        cp.read_string(data.decode("utf-8", "replace"), where)
    except configparser.Error as e:
        raise ImageFormatError(
            f"{where}: not a valid .repo file ({str(e).splitlines()[0]}); fix the file in the image"
        ) from None
    return cp


def _bool(value: str | None, default: bool) -> bool:
    if value is None or not value.strip():
        return default
    return value.strip().lower() in _TRUE


def _int(value: str | None, default: int) -> int:
    try:
        return int((value or "").strip())
    except ValueError:
        return default


def _urls(value: str | None) -> list[str]:
    return [u for u in re.split(r"[\s,]+", value or "") if u]


def _main_defaults(root: Path) -> dict[str, str]:
    for rel in MAIN_CONFS:
        data = inroot.read_file(root, rel)
        if data is not None:
            cp = _ini(data, f"/{rel}")
            return dict(cp.items("main")) if cp.has_section("main") else {}
    return {}


def _repo_files(root: Path) -> list[tuple[str, bool]]:
    """(relative path, is zypper) of every .repo file, in dnf's / zypper's order."""
    out = []
    for d in YUM_REPOS:
        out += [(f"{d}/{n}", False) for n in inroot.list_dir(root, d) if n.endswith(".repo")]
    out += [(f"{ZYPP_REPOS}/{n}", True) for n in inroot.list_dir(root, ZYPP_REPOS)
            if n.endswith(".repo")]  # fmt: skip
    return out


def _section(
    cp: configparser.RawConfigParser,
    sec: str,
    where: str,
    zypper: bool,
    main: dict[str, str],
    variables: dict[str, str],
    mirrors: list[tuple[str, str]],
) -> RepoDef:
    def get(key: str) -> str | None:
        v = cp.get(sec, key, fallback=None)
        return substitute(v, variables) if v is not None else None

    enabled = _bool(get("enabled"), True)
    baseurls = tuple(_urls(get("baseurl")))
    fetch = tuple(rewrite(u, mirrors) for u in baseurls)
    for u in fetch if enabled else ():  # a disabled repository may name any transport
        check_scheme(u, f"{where} [{sec}]")
    unsupported = ""
    if not baseurls:
        kind = "metalink" if get("metalink") else "mirrorlist" if get("mirrorlist") else ""
        unsupported = (
            f"{where} [{sec}] names only a {kind}, which needs the distribution's mirror "
            "service; give the repository a baseurl= or pass --repo-mirror with a mirror URL"
            if kind
            else f"{where} [{sec}] has no baseurl"
        )
        if kind and mirrors:  # --repo-mirror FROM=TO where FROM is the repository id
            hit = [to for frm, to in mirrors if frm == sec]
            if hit:
                fetch, unsupported = (hit[0],), ""
                check_scheme(hit[0], f"--repo-mirror {sec}=")
    if zypper:
        rtype = (get("type") or "rpm-md").strip().lower()
        if rtype not in ("rpm-md", "yum", "rpm-md+susetags"):
            unsupported = f"{where} [{sec}] is a {rtype} repository; only rpm-md is supported"
        gpgcheck = _bool(get("gpgcheck"), True)
        pkg_check = _bool(get("pkg_gpgcheck"), gpgcheck)
        repo_check = _bool(get("repo_gpgcheck"), gpgcheck)
        gpg, repo_gpg = pkg_check, repo_check
    else:
        gpg = _bool(get("gpgcheck"), _bool(main.get("gpgcheck"), False))
        repo_gpg = _bool(get("repo_gpgcheck"), _bool(main.get("repo_gpgcheck"), False))
    return RepoDef(
        id=sec,
        name=get("name") or sec,
        baseurls=baseurls,
        fetch_urls=fetch,
        enabled=enabled,
        gpgcheck=gpg,
        repo_gpgcheck=repo_gpg,
        gpgkeys=tuple(_urls(get("gpgkey"))),
        where=where,
        unsupported=unsupported,
        zypper=zypper,
        priority=_int(get("priority"), 99),
        excludes=tuple(
            _urls(main.get("exclude"))
            + _urls(main.get("excludepkgs"))
            + _urls(get("exclude"))
            + _urls(get("excludepkgs"))
        ),
        includes=tuple(_urls(get("includepkgs"))),
        skip_if_unavailable=_bool(
            get("skip_if_unavailable"), _bool(main.get("skip_if_unavailable"), False)
        ),
    )


def image_repos(
    root: Path, variables: dict[str, str], mirrors: list[tuple[str, str]] | None = None
) -> list[RepoDef]:
    """Every repository section of the image's .repo files (enabled or not), in order."""
    main = _main_defaults(root)
    out: list[RepoDef] = []
    for rel, zypper in _repo_files(root):
        data = inroot.read_file(root, rel)
        if data is None:
            continue
        cp = _ini(data, f"/{rel}")
        for sec in cp.sections():
            if sec != "main":
                out.append(_section(cp, sec, f"/{rel}", zypper, main, variables, mirrors or []))
    return out


def _join(base: str, href: str) -> str:
    if "://" in href:
        return href
    return f"{base.rstrip('/')}/{href.lstrip('/')}"


@dataclass
class RpmRepositories:
    """The enabled repositories of the image at `rootfs`, fetched through `cache_dir`."""

    rootfs: Path
    cache_dir: Path
    arch: str  # the image platform's architecture (uname -m or OCI: amd64, arm64, ...)
    mirrors: list[tuple[str, str]] = field(default_factory=list)
    insecure: bool = False
    installed: InstalledRpms | None = None
    fetcher: Fetcher = field(default_factory=Fetcher)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.installed is None:
            self.installed = read_installed(RootDir(self.rootfs))
        self.variables = image_vars(self.rootfs, self.arch, self.installed)
        self.all_repos = image_repos(self.rootfs, self.variables, self.mirrors)
        self.repos = [r for r in self.all_repos if r.enabled]

    @property
    def cache(self) -> Path:
        return self.cache_dir / "rpm"

    # -- keys ------------------------------------------------------------------------------------
    def repo_keys(self, repo: RepoDef) -> list[tuple[str, bytes]]:
        """The repository's gpgkey= files, read inside the image."""
        rings = []
        for url in repo.gpgkeys:
            if not url.startswith("file://"):
                self._note(f"{repo.where} [{repo.id}]: gpgkey {url} is not a file in the image; "
                           "not fetched (the rpmdb's imported keys are used)")  # fmt: skip
                continue
            path = url[len("file://") :]
            data = inroot.read_file(self.rootfs, path.lstrip("/"))
            if data is None:
                raise IntegrityError(
                    f"{repo.where} [{repo.id}]: gpgkey {url} is not in the image; install the "
                    "package that ships it, or fix the gpgkey= line"
                )
            rings.append((path, _keyring_bytes(data, path)))
        return rings

    def keyrings(self, repo: RepoDef, *, with_rpmdb: bool) -> Keyrings:
        rings = self.repo_keys(repo)
        if with_rpmdb and self.installed is not None:
            rings += keys_of_pubkeys(self.installed.gpg_pubkeys)
        if not rings:
            raise IntegrityError(
                f"{repo.where} [{repo.id}]: gpgcheck is on but the image has no key to check "
                "with (no gpgkey= file and no gpg-pubkey in the rpmdb); add the key, or pass "
                "--insecure-repos to skip signature checks"
            )
        return Keyrings(tuple(rings))

    # -- metadata --------------------------------------------------------------------------------
    def update(self) -> list[RpmCandidate]:
        """Every package the enabled repositories offer, verified."""
        if not self.repos:
            raise ResolveError(
                "the image has no enabled rpm repository (/etc/yum.repos.d, /etc/zypp/repos.d); "
                "add one, or pass --repo-mirror with a repository the image's packages come from"
            )
        if self.insecure:
            self._note("--insecure-repos: rpm repository and package signatures are NOT checked")
        out: list[RpmCandidate] = []
        for repo in self.repos:
            try:
                if repo.unsupported:
                    raise UnsupportedError(repo.unsupported)
                base, repomd = self.repomd(repo)
            except (UnsupportedError, FetchError) as e:
                if not repo.skip_if_unavailable:
                    raise
                self._note(f"{repo.where} [{repo.id}] skipped (skip_if_unavailable=1): {e}")
                continue
            for entry in self.primary(repo, base, repomd):
                # not src, not another platform's, not excluded by the configuration
                if runs_on(entry.arch, self.arch) and repo.offers(entry):
                    url = self._package_url(base, entry)
                    out.append(RpmCandidate(entry, repo.id, url, repo.priority))
        return out

    def _package_url(self, base: str, entry: PrimaryEntry) -> str:
        """Relative hrefs under the (already mirrored) baseurl; an xml:base or absolute href
        names another server, which --repo-mirror rewrites too."""
        if not entry.base and "://" not in entry.href:
            return _join(base, entry.href)
        url = rewrite(_join(entry.base or base, entry.href), self.mirrors)
        check_scheme(url, f"primary.xml of {base}")
        return url

    def repomd(self, repo: RepoDef) -> tuple[str, Repomd]:
        """(the baseurl that answered, its verified repomd). When no baseurl answers, the
        copy cached by an earlier run is used (verified again), as for apk and apt."""
        last: Exception = ResolveError(f"{repo.where} [{repo.id}] has no baseurl")
        for base in repo.fetch_urls:
            url = _join(base, "repodata/repomd.xml")
            try:
                resp = self.fetcher.get(url)
                sig = self.fetcher.get(url + ".asc") if repo.repo_gpgcheck else None
            except FetchError as e:
                last = e
                continue
            if resp.status != 200:
                last = ResolveError(
                    f"{url} does not exist (HTTP 404): not an rpm-md repository; check "
                    f"{repo.where} [{repo.id}] or the --repo-mirror mapping"
                )
                continue
            asc = sig.body if sig is not None and sig.status == 200 else None
            md = self._checked_repomd(repo, resp.body, asc, url)
            _write_atomic(self._repomd_cache(url), resp.body)
            if asc is not None:
                _write_atomic(self._repomd_cache(url + ".asc"), asc)
            return base, md
        if isinstance(last, FetchError):
            for base in repo.fetch_urls:
                url = _join(base, "repodata/repomd.xml")
                cached = _read(self._repomd_cache(url))
                if cached is not None:
                    self._note(f"{url}: unreachable, using the cached copy (verified again)")
                    asc = _read(self._repomd_cache(url + ".asc"))
                    return base, self._checked_repomd(repo, cached, asc, url)
        raise last

    def _repomd_cache(self, url: str) -> Path:
        return self.cache / "repomd" / hashlib.sha256(url.encode()).hexdigest()[:32]

    def _checked_repomd(self, repo: RepoDef, data: bytes, asc: bytes | None, url: str) -> Repomd:
        if repo.repo_gpgcheck and not self.insecure:
            if asc is None:
                raise IntegrityError(
                    f"{url}.asc is missing and {repo.where} [{repo.id}] has repo_gpgcheck=1: "
                    "the repository metadata is not signed; sign it, or set repo_gpgcheck=0"
                )
            # dnf checks repomd with the repository's gpgkey= keys; zypper (and a repository
            # naming none) with the keys imported into the rpmdb.
            with_rpmdb = repo.zypper or not repo.gpgkeys
            verify_detached(data, asc, self.keyrings(repo, with_rpmdb=with_rpmdb), url)
        return parse_repomd(data, url)

    def primary(self, repo: RepoDef, base: str, repomd: Repomd) -> list[PrimaryEntry]:
        info = repomd.files.get("primary")
        if info is None:
            raise UnsupportedError(
                f"{_join(base, 'repodata/repomd.xml')} lists no primary.xml (only "
                f"{', '.join(sorted(repomd.files)) or 'nothing'}); regenerate it with createrepo_c"
            )
        url = _join(base, info.href)
        raw = self._cached_or_fetch(url, info.checksum)
        data = decompress(raw, info.href, url)
        if info.open_checksum is not None:
            check_checksum(data, info.open_checksum, url, "open-checksum (decompressed)")
        return list(parse_primary(data, url))

    def _blob(self, checksum: tuple[str, str]) -> Path:
        return self.cache / "blobs" / f"{checksum[0]}-{checksum[1]}"

    def _cached_or_fetch(self, url: str, checksum: tuple[str, str]) -> bytes:
        path = self._blob(checksum)
        try:
            data = path.read_bytes()
            check_checksum(data, checksum, url)
            return data
        except (OSError, IntegrityError):
            pass
        resp = self.fetcher.get(url)
        if resp.status != 200:
            raise ResolveError(
                f"{url} does not exist (HTTP 404): the repository's repomd.xml names it; "
                "resync the mirror or check the --repo-mirror mapping"
            )
        check_checksum(resp.body, checksum, url)
        _write_atomic(path, resp.body)
        return resp.body

    # -- packages --------------------------------------------------------------------------------
    def download(self, cand: RpmCandidate) -> tuple[Path, RpmFile]:
        """The verified .rpm of `cand` in the cache (fetched when not there yet)."""
        path = self.cache / "packages" / f"{cand.entry.checksum[1]}-{cand.entry.filename}"
        if path.is_file():
            try:
                return path, self.verify_package(cand, path.read_bytes())
            except IntegrityError:
                path.unlink()  # a damaged cache entry: fetched again below
        data = self._fetch_package(cand)
        rpm = self.verify_package(cand, data)
        _write_atomic(path, data)
        return path, rpm

    def _fetch_package(self, cand: RpmCandidate) -> bytes:
        size, buf = cand.entry.size, bytearray()
        with self.fetcher.stream(cand.url) as chunks:
            for chunk in chunks:
                buf += chunk
                if size and len(buf) > size:
                    raise IntegrityError(
                        f"{cand.url} is larger than the {size} bytes its repository says: the "
                        "package was altered or the mirror is inconsistent"
                    )
        return bytes(buf)

    def verify_package(self, cand: RpmCandidate, data: bytes) -> RpmFile:
        """Size, checksum, digests, signature (gpgcheck), identity; IntegrityError."""
        url, e = cand.url, cand.entry
        if e.size and len(data) != e.size:
            raise IntegrityError(
                f"{url} has {len(data)} bytes, its repository says {e.size}: the package was "
                "altered or the download was cut short"
            )
        check_checksum(data, e.checksum, url, "package checksum")
        repo = next(r for r in self.repos if r.id == cand.repo)
        check = repo.gpgcheck and not self.insecure
        keys = self.keyrings(repo, with_rpmdb=True) if check else None
        rpm = verify_rpm(data, url, keys)
        p = rpm.package
        if (p.name, p.version, p.release, p.arch) != (e.name, e.version, e.release, e.arch):
            raise IntegrityError(
                f"{url} holds {p.nevra}, the repository says {e.nevra}: the repository is "
                "inconsistent"
            )
        return rpm

    def _note(self, text: str) -> None:
        if text not in self.notes:
            log.warning("%s", text)
            self.notes.append(text)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
