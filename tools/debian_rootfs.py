"""Build (once) and cache a Debian minbase rootfs tarball with mmdebstrap.

The archive is read from this machine's apt configuration (deb822 files in
/etc/apt/sources.list.d/*.sources), never hard-coded. By default only the base suite (e.g.
`bookworm` main) is used, so the rootfs is "old" and the packages in it have pending updates in
the -updates/-security suites; `updates=True` adds those suites too.

Needs root (mmdebstrap --mode=root; CI runs as root). --mode=unshare also works for a user with
/etc/subuid and /etc/subgid ranges. The tarball is reproducible for the same options and mirror
content (SOURCE_DATE_EPOCH is fixed, the host's resolv.conf/hostname are left out) and holds no
device nodes (like a container image), so it can also be unpacked by an unprivileged user.

    python tools/debian_rootfs.py [--suite bookworm] [--updates] [--include pkg,pkg] -> prints path
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

SOURCES_DIR = Path("/etc/apt/sources.list.d")
DEFAULT_SUITE = "bookworm"
DEFAULT_EPOCH = 1700000000  # 2023-11-14: any fixed value makes the tarball reproducible
CACHE_DIR = Path.home() / ".cache" / "ocipatch-tests"


class RootfsBuildError(RuntimeError):
    """The rootfs cannot be built here (no apt source for the suite, mmdebstrap failed...)."""


@dataclass(frozen=True)
class AptSource:
    """One deb822 stanza of an apt sources file."""

    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str = ""

    def to_deb822(self, suites: Sequence[str] | None = None) -> str:
        lines = [
            f"Types: {' '.join(self.types)}",
            f"URIs: {' '.join(self.uris)}",
            f"Suites: {' '.join(suites if suites is not None else self.suites)}",
            f"Components: {' '.join(self.components)}",
        ]
        if self.signed_by:
            lines.append(f"Signed-By: {self.signed_by}")
        return "\n".join(lines) + "\n"


def parse_deb822_sources(text: str) -> list[AptSource]:
    """Parse deb822 sources text; comments are skipped, `Enabled: no` stanzas dropped."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if current:
                stanzas.append(current)
            current, last = {}, ""
            continue
        if raw[0] in " \t" and last:
            current[last] += "\n" + raw.strip()
            continue
        key, _, value = raw.partition(":")
        last = key.strip().lower()
        current[last] = value.strip()
    out: list[AptSource] = []
    for s in stanzas:
        if s.get("enabled", "yes").lower() == "no" or "uris" not in s:
            continue
        out.append(
            AptSource(
                types=tuple(s.get("types", "deb").split()),
                uris=tuple(s["uris"].split()),
                suites=tuple(s.get("suites", "").split()),
                components=tuple(s.get("components", "").split()),
                signed_by=s.get("signed-by", ""),
            )
        )
    return out


def read_host_sources(sources_dir: Path = SOURCES_DIR) -> list[AptSource]:
    """All enabled stanzas of `sources_dir/*.sources`, in file-name order."""
    out: list[AptSource] = []
    for f in sorted(sources_dir.glob("*.sources")):
        out.extend(parse_deb822_sources(f.read_text()))
    return out


def archive_sources(
    suite: str = DEFAULT_SUITE,
    *,
    updates: bool = False,
    components: Sequence[str] = ("main",),
    sources_dir: Path = SOURCES_DIR,
) -> str:
    """deb822 text for `suite` (and with `updates`, SUITE-updates and SUITE-security).

    Each wanted suite is taken from the first host stanza that lists it, with that stanza's URIs
    and Signed-By, restricted to `components`.
    """
    wanted = [suite, f"{suite}-updates", f"{suite}-security"] if updates else [suite]
    stanzas: list[str] = []
    missing: list[str] = []
    hosts = [s for s in read_host_sources(sources_dir) if "deb" in s.types]
    for want in wanted:
        src = next((s for s in hosts if want in s.suites), None)
        if src is None:
            missing.append(want)
            continue
        comps = [c for c in components if c in src.components] or list(src.components)
        stanzas.append(
            AptSource(("deb",), src.uris, (want,), tuple(comps), src.signed_by).to_deb822()
        )
    if suite in missing:
        raise RootfsBuildError(
            f"no apt source for suite {suite!r} in {sources_dir}/*.sources; "
            "add one or pass another --suite"
        )
    return "\n".join(stanzas)


def _cache_key(payload: dict[str, object]) -> str:
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _mmdebstrap_version() -> str:
    out = subprocess.run(["mmdebstrap", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Concurrent test processes wait for one build instead of racing.
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_rootfs_tarball(
    suite: str = DEFAULT_SUITE,
    *,
    updates: bool = False,
    include: Sequence[str] = (),
    variant: str = "minbase",
    arch: str | None = None,
    components: Sequence[str] = ("main",),
    mode: str = "auto",
    cache_dir: Path | None = None,
    source_date_epoch: int = DEFAULT_EPOCH,
    force: bool = False,
    sources_dir: Path = SOURCES_DIR,
) -> Path:
    """Return the path of a cached rootfs .tar, building it with mmdebstrap when missing.

    The cache file name carries a hash of every input (sources text, options, mmdebstrap
    version), so a change of any of them builds a new tarball.
    """
    if shutil.which("mmdebstrap") is None:
        raise RootfsBuildError("mmdebstrap is not installed: apt-get install mmdebstrap")
    arch = (
        arch
        or subprocess.run(
            ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    sources = archive_sources(
        suite, updates=updates, components=components, sources_dir=sources_dir
    )
    includes = sorted(set(include))
    key = _cache_key(
        {
            "suite": suite,
            "sources": sources,
            "variant": variant,
            "arch": arch,
            "include": includes,
            "epoch": source_date_epoch,
            "mmdebstrap": _mmdebstrap_version(),
        }
    )
    cache = cache_dir or CACHE_DIR
    name = f"debian-{suite}{'-updates' if updates else ''}-{variant}-{arch}-{key}.tar"
    target = cache / name
    with _locked(cache / f".{name}.lock"):
        if target.exists() and not force:
            return target
        with tempfile.TemporaryDirectory(prefix="debian-rootfs-", dir=cache) as tmp:
            src_file = Path(tmp) / "archive.sources"
            src_file.write_text(sources)
            raw = Path(tmp) / "raw.tar"
            cmd = [
                "mmdebstrap",
                f"--variant={variant}",
                f"--mode={mode}",
                f"--architectures={arch}",
                "--format=tar",
                # Like a container image: no host resolver/hostname baked in.
                '--customize-hook=rm -f "$1"/etc/resolv.conf "$1"/etc/hostname',
            ]
            if includes:
                cmd.append(f"--include={','.join(includes)}")
            cmd += [suite, str(raw), str(src_file)]
            env = {**os.environ, "SOURCE_DATE_EPOCH": str(source_date_epoch)}
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = "\n".join(proc.stderr.splitlines()[-20:])
                raise RootfsBuildError(f"mmdebstrap failed (exit {proc.returncode}):\n{tail}")
            # Drop device nodes so that an unprivileged user can unpack the tarball.
            part = cache / f".{name}.part"
            with raw.open("rb") as fin, part.open("wb") as fout:
                subprocess.run(
                    ["mmtarfilter", "--path-exclude=/dev/*"], stdin=fin, stdout=fout, check=True
                )
            part.replace(target)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--suite", default=DEFAULT_SUITE)
    p.add_argument("--updates", action="store_true", help="add SUITE-updates and SUITE-security")
    p.add_argument("--include", default="", help="extra packages, comma separated")
    p.add_argument("--variant", default="minbase")
    p.add_argument("--arch", default=None)
    p.add_argument("--components", default="main", help="comma separated")
    p.add_argument("--mode", default="auto", help="mmdebstrap mode: auto, root, unshare")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--epoch", type=int, default=DEFAULT_EPOCH, help="SOURCE_DATE_EPOCH")
    p.add_argument("--force", action="store_true", help="rebuild even when cached")
    p.add_argument("--print-sources", action="store_true", help="print the deb822 text and exit")
    a = p.parse_args(argv)
    comps = [c for c in a.components.split(",") if c]
    if a.print_sources:
        print(archive_sources(a.suite, updates=a.updates, components=comps), end="")
        return 0
    try:
        path = build_rootfs_tarball(
            a.suite,
            updates=a.updates,
            include=[i for i in a.include.split(",") if i],
            variant=a.variant,
            arch=a.arch,
            components=comps,
            mode=a.mode,
            cache_dir=a.cache_dir,
            source_date_epoch=a.epoch,
            force=a.force,
        )
    except RootfsBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
