"""Running the image's own apt over its unpacked rootfs, in a sandbox.

apt's indices and the downloaded .debs live in host directories of the cache, bound into the
sandbox, so they are shared between runs (a warm cache re-downloads nothing), and they never
land in the rootfs, so never in the patch layer. apt's signature checks stay on: every package
is checked against the repository's signed index.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ocipatch import space
from ocipatch.distro.fetch import rewrite
from ocipatch.errors import ApplyError, IntegrityError, ResolveError, UsageError
from ocipatch.oci.cache import touch
from ocipatch.sandbox.base import DEFAULT_PATH, RunSpec, Sandbox, tail

LISTS_INSIDE = "/var/lib/apt/lists"
ARCHIVES_INSIDE = "/var/cache/ocipatch/archives"
SOURCES_INSIDE = "/var/cache/ocipatch/sources.list.d"
# file:// mirrors are bound read-only here (the i-th --repo-mirror at .../i): a fixed place in a
# tree the patch layer excludes, never a host path that could shadow part of the image.
FILE_MIRRORS_INSIDE = "/var/cache/ocipatch/mirrors"


# apt drops privileges to the `_apt` user for downloads; a sandbox maps a single uid, so that
# switch fails (setgroups: EPERM, setresuid: EINVAL). Pass these to every apt-get call.
APT_NO_PRIVILEGE_DROP: tuple[str, ...] = ("-o", "APT::Sandbox::User=root")


def apt_env() -> dict[str, str]:
    """The environment apt and dpkg run with in the sandbox: no debconf prompt."""
    return {
        "PATH": DEFAULT_PATH,
        "LANG": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
        "HOME": "/root",
    }


@dataclass
class AptConfig:
    cache_dir: Path  # host directory for apt lists and .debs, shared by runs
    timeout: float | None = None
    network: bool = True
    mirrors: list[tuple[str, str]] = field(default_factory=list)  # URL prefix rewrites
    insecure: bool = False  # --insecure-repos: apt's signature checks off (loud)
    log: Path | None = None


@dataclass(frozen=True)
class Candidate:
    name: str
    installed: str | None
    candidate: str | None


class AptRunner:
    def __init__(self, rootfs: Path, sandbox: Sandbox, config: AptConfig) -> None:
        self.rootfs = rootfs
        self.sandbox = sandbox
        self.config = config
        key = hashlib.sha256(self._sources_text().encode()).hexdigest()[:16]
        self.lists = config.cache_dir / "apt-lists" / key
        self.archives = config.cache_dir / "debs"
        for d in (self.lists / "partial", self.archives / "partial"):
            d.mkdir(parents=True, exist_ok=True)
        touch(self.lists)  # used now: `cache prune` keeps a live run's lists
        self._sources_dir: Path | None = None
        self._file_mirrors = _file_mirror_binds(config.mirrors)
        if config.mirrors:
            self._sources_dir = config.cache_dir / "apt-sources" / key
            self._write_mirrored_sources(self._sources_dir)
            touch(self._sources_dir)

    # -- sources ----------------------------------------------------------------------------
    def _source_files(self) -> list[Path]:
        files = []
        main = self.rootfs / "etc/apt/sources.list"
        if main.is_file():
            files.append(main)
        parts = self.rootfs / "etc/apt/sources.list.d"
        if parts.is_dir():
            files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
        return files

    def _sources_text(self) -> str:
        text = "".join(f"{p.name}\n{p.read_text(errors='replace')}" for p in self._source_files())
        return text + repr(self.config.mirrors)

    def _inside_mirrors(self) -> list[tuple[str, str]]:
        """The mirror rewrites as apt in the sandbox sees them: a file:// mirror becomes
        `copy:` at its bind point (copy, unlike file, puts the .debs into the archives
        directory, where the patch layer reads the packages' owners and modes from)."""
        out = []
        for i, (src, dst) in enumerate(self.config.mirrors):
            if i in self._file_mirrors:
                dst = f"copy:{self._file_mirrors[i][1]}"
            out.append((src, dst))
        return out

    def _rewrite(self, text: str) -> str:
        """Rewrite the repository URIs of a sources file (deb822 `URIs:` fields and one-line
        `deb [opts] URI ...` entries) with the same prefix rules as ocipatch.distro.deb.repos."""
        mirrors = self._inside_mirrors()
        out = []
        for line in text.splitlines(keepends=True):
            stripped = line.lstrip()
            if stripped.lower().startswith("uris:"):
                key, _, value = line.partition(":")
                uris = " ".join(rewrite(u, mirrors) for u in value.split())
                line = f"{key}: {uris}\n"
            elif stripped.startswith(("deb ", "deb-src ")):
                m = re.match(r"^(\s*deb(?:-src)?\s+(?:\[[^\]]*\]\s+)?)(\S+)(.*)$", line, re.S)
                if m:
                    line = m.group(1) + rewrite(m.group(2), mirrors) + m.group(3)
            out.append(line)
        return "".join(out)

    def _write_mirrored_sources(self, dest: Path) -> None:
        """A copy of the image's sources with mirror prefixes rewritten: the patched image keeps
        its own sources, apt reads these."""
        dest.mkdir(parents=True, exist_ok=True)
        for old in dest.iterdir():
            old.unlink()
        for p in self._source_files():
            name = "sources.list.list" if p.name == "sources.list" else p.name
            (dest / name).write_text(self._rewrite(p.read_text(errors="replace")))

    # -- running ----------------------------------------------------------------------------
    def _apt_options(self) -> list[str]:
        opts = [
            *APT_NO_PRIVILEGE_DROP,
            "-o",
            f"Dir::Cache::Archives={ARCHIVES_INSIDE}/",
            "-o",
            "APT::Keep-Downloaded-Packages=true",
            "-o",
            "Acquire::Retries=3",
            "-o",
            "Dpkg::Use-Pty=0",
            # Package descriptions play no part in a patch, and partial mirrors (debmirror's
            # default, aptly) carry no Translation files: a 404 there would fail the update.
            "-o",
            "Acquire::Languages=none",
            # The rootfs is a throwaway copy: dpkg's fsync per file buys nothing here.
            "-o",
            "Dpkg::Options::=--force-unsafe-io",
            # Immediate configuration only limits the damage of a failed dpkg call to a live
            # system; a failed patch throws its rootfs away. Off, apt makes one dpkg call
            # instead of several, and each trigger (ldconfig, ca-certificates) runs once.
            "-o",
            "APT::Immediate-Configure=false",
            "-o",
            "Dpkg::Options::=--force-confold",
            "-o",
            "Dpkg::Options::=--force-confdef",
        ]
        if self._sources_dir is not None:
            opts += [
                "-o",
                "Dir::Etc::SourceList=/dev/null",
                "-o",
                f"Dir::Etc::SourceParts={SOURCES_INSIDE}/",
            ]
        if self.config.insecure:
            opts += [
                "-o",
                "Acquire::AllowInsecureRepositories=true",
                "-o",
                "APT::Get::AllowUnauthenticated=true",
            ]
        return opts

    def run(self, argv: list[str], what: str, *, lists: Path | None = None) -> str:
        binds: list[tuple[Path, str, bool]] = [
            (lists or self.lists, LISTS_INSIDE, False),
            (self.archives, ARCHIVES_INSIDE, False),
        ]
        if self._sources_dir is not None:
            binds.append((self._sources_dir, SOURCES_INSIDE, True))
        binds += [(host, inside, True) for _, (host, inside) in sorted(self._file_mirrors.items())]
        env = apt_env()
        spec = RunSpec(
            self.rootfs,
            argv,
            env=env,
            binds=binds,
            network=self.config.network,
            timeout=self.config.timeout,
        )
        proc = self.sandbox.run(spec, self.config.log)
        if proc.returncode != 0:
            reason = _last_error(proc.stdout)
            kept = self._keep_log()
            if _SIGNATURE.search(proc.stdout):
                # apt's "W: GPG error: ... BADSIG KEY" says why; its E: line only "not signed".
                why = [ln.strip() for ln in proc.stdout.splitlines() if "GPG error" in ln]
                raise IntegrityError(
                    f"{what}: the repository's signature does not verify with the image's "
                    f"keyring ({' | '.join([*why[-2:], reason])}); the mirror must serve the "
                    "archive's signed InRelease or Release.gpg unchanged (--insecure-repos "
                    f"turns this check off){kept}"
                )
            if _INTEGRITY.search(proc.stdout):
                raise IntegrityError(
                    f"{what}: the repository served a file that does not match its signed index "
                    f"({reason}); the mirror is corrupt or tampered with: fix or resync it{kept}"
                )
            if _NO_SPACE.search(proc.stdout):
                raise space.place_full(
                    space.fullest(
                        [
                            space.scratch(self.rootfs.parent.parent),
                            space.cache(self.config.cache_dir),
                        ]
                    ),
                    doing=f"{what} ran out of space",
                )
            raise ApplyError(f"{what} failed (exit {proc.returncode}): {reason}{kept}")
        return proc.stdout

    def _keep_log(self) -> str:
        """Copy the run's log where it outlives the work directory; the clause naming it."""
        log = self.config.log
        if log is None or not log.is_file():
            return ""
        dest = (
            self.config.cache_dir
            / "logs"
            / f"apt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
        )
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, dest)
        return f" (full log: {dest})"

    def apt_get(self, *args: str, what: str, lists: Path | None = None) -> str:
        # apt locks lists/ and archives/ itself and fails at once when another apt holds them;
        # two ocipatch runs sharing a cache wait for each other here instead.
        with _flock(self.config.cache_dir / "apt.lock"):
            return self.run(["apt-get", *self._apt_options(), *args], what, lists=lists)

    # -- steps ------------------------------------------------------------------------------
    def update(self) -> None:
        try:
            self.apt_get("update", what="apt-get update")
        except ApplyError as e:
            raise ResolveError(
                f"{e}: check that the image's package repositories are reachable, or point them at "
                "a mirror with --repo-mirror FROM=TO"
            ) from None

    def held(self) -> set[str]:
        out = self.run(["apt-mark", "showhold"], "apt-mark showhold")
        return {
            line.strip().split(":")[0]
            for line in out.splitlines()
            if line.strip() and " " not in line.strip()
        }

    def candidates(self, names: list[str]) -> dict[str, Candidate]:
        if not names:
            return {}
        out = self.run(
            ["apt-cache", *APT_NO_PRIVILEGE_DROP, *self._source_opts(), "policy", *names],
            "apt-cache policy",
        )
        return parse_policy(out)

    def _source_opts(self) -> list[str]:
        if self._sources_dir is None:
            return []
        return [
            "-o",
            "Dir::Etc::SourceList=/dev/null",
            "-o",
            f"Dir::Etc::SourceParts={SOURCES_INSIDE}/",
        ]

    def upgradable(self) -> list[str]:
        out = self.apt_get("-s", "-q", "upgrade", "--with-new-pkgs", what="apt-get -s upgrade")
        return sorted({m.group(1) for m in re.finditer(r"^Inst (\S+) \[", out, re.M)})

    def install(self, names: list[str]) -> str:
        return self.apt_get(
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "--only-upgrade",
            *names,
            what="apt-get install",
        )

    def install_files(self, debs: list[Path], empty_lists: Path) -> str:
        """apt-get install of package files already in the archive directory (verified against
        the signed indices by ocipatch.distro.deb.repos), over empty lists: apt orders the unpacks and
        configures and dpkg runs the maintainer scripts, but nothing is looked up in, or
        fetched from, a repository, so no `apt-get update` is needed."""
        (empty_lists / "partial").mkdir(parents=True, exist_ok=True)
        inside = [f"{ARCHIVES_INSIDE}/{d.name}" for d in debs]
        return self.apt_get(
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            *inside,
            what="apt-get install",
            lists=empty_lists,
        )

    def downloaded_debs(self) -> list[Path]:
        return sorted(self.archives.glob("*.deb"))


def archive_name(name: str, version: str, arch: str) -> str:
    """The file name apt gives a downloaded package in its archive directory (deb_key's
    inverse): NAME_VERSION_ARCH.deb, the epoch's ':' quoted as %3a."""
    return f"{name}_{version.replace(':', '%3a')}_{arch}.deb"


def _file_mirror_binds(mirrors: list[tuple[str, str]]) -> dict[int, tuple[Path, str]]:
    """index of a file:// --repo-mirror -> (its host directory, where it is bound inside)."""
    out: dict[int, tuple[Path, str]] = {}
    for i, (src, dst) in enumerate(mirrors):
        if not dst.startswith("file:"):
            continue
        host = Path(unquote(urlsplit(dst).path))
        if not host.is_absolute() or not host.is_dir():
            raise UsageError(
                f"--repo-mirror {src}={dst}: {host} is not a directory; give the mirror's "
                "absolute path as file:///PATH"
            )
        out[i] = (host, f"{FILE_MIRRORS_INSIDE}/{i}")
    return out


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# apt's words for content that failed verification against the signed index (_INTEGRITY), or
# an index whose signature failed (_SIGNATURE): never transient, never something to retry.
_INTEGRITY = re.compile(r"Hash Sum mismatch|File has unexpected size")
_NO_SPACE = re.compile(r"No space left on device|Disk quota exceeded")
_SIGNATURE = re.compile(r"BADSIG|NO_PUBKEY|is not signed|signatures were invalid|EXPKEYSIG")

_POLICY_HEAD = re.compile(r"^(\S+):$")


def parse_policy(text: str) -> dict[str, Candidate]:
    """`apt-cache policy` output -> name: (installed, candidate); '(none)' becomes None."""
    out: dict[str, Candidate] = {}
    name: str | None = None
    installed: str | None = None
    for line in text.splitlines():
        m = _POLICY_HEAD.match(line)
        if m:
            name, installed = m.group(1).split(":")[0], None
            continue
        s = line.strip()
        if name and s.startswith("Installed:"):
            v = s.split(":", 1)[1].strip()
            installed = None if v == "(none)" else v
        elif name and s.startswith("Candidate:"):
            v = s.split(":", 1)[1].strip()
            out[name] = Candidate(name, installed, None if v == "(none)" else v)
    return out


def _last_error(output: str) -> str:
    """The lines that say why: apt's E: lines and dpkg's errors, else the last lines."""
    raw = [ln.rstrip() for ln in output.splitlines() if ln.strip()]
    lines = [ln.strip() for ln in raw]
    errs = []
    for i, ln in enumerate(lines):
        if ln.startswith(("E:", "dpkg: error", "dpkg: dependency problems")):
            # dpkg gives the reason on the next, indented line ("installed P package
            # post-installation script subprocess returned error exit status 1").
            if ln.startswith("dpkg:") and i + 1 < len(raw) and raw[i + 1].startswith(" "):
                ln = f"{ln} {lines[i + 1]}"
            errs.append(ln)
    picked = errs[-3:] if errs else lines[-3:]
    return " | ".join(picked) or tail(output, 3).replace("\n", " | ")


def shell_join(argv: list[str]) -> str:
    return shlex.join(argv)
