"""`ocipatch cache info` and `ocipatch cache prune`: what the cache holds, and removing the least
recently used of it, safely while other runs use the same cache (docs/design.md, Caches).

An entry is what is removed as a whole: a blob, a layer's index with its captured files, a
result, a repository file, a .deb, apt's lists for one source set, a tooling tree, a log. Its
last use is its marker's mtime, which ocipatch sets on every use (ocipatch.oci.cache.touch).
Not the atime: noatime mounts never set it, relatime ones once a day, and every reader (a
backup, prune itself reading a result) sets it.

Safety: a prune holds runs/prune.lock exclusively, so no run registers meanwhile; every live
run (runs/.run-*, flocked for its life) has a start time, and nothing used after the oldest
one's start (less a grace period) is removed. Whatever a live run looks at from then on is
touched when it looks, and a run that finds an entry gone treats it as a miss. The marker is
stat'ed again just before each removal.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocipatch import runs
from ocipatch.errors import UsageError

GRACE = 120.0  # seconds before the oldest live run's start that are still kept
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str) -> int:
    """10G, 500M, 1.5g, 20000 (bytes); units are powers of 1024 (an optional iB/B is accepted)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if m is None:
        raise UsageError(f"invalid --max-size {text!r}: use bytes or a size like 500M or 10G")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


def parse_age(text: str) -> float:
    """7d, 12h, 30m, 45s, 2w."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text.lower())
    if m is None:
        raise UsageError(
            f"invalid --older-than {text!r}: use a number and s, m, h, d or w: 7d, 12h"
        )
    return float(m.group(1)) * _AGE_UNITS[m.group(2)]


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@dataclass
class Entry:
    kind: str
    paths: list[Path]  # removed together; paths[0] is the marker of its last use
    size: int
    used: float
    dangling: bool = False  # a result whose layer is gone: a miss for everyone, always removed

    @property
    def marker(self) -> Path:
        return self.paths[0]

    def to_json(self, cache: Path) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": str(self.marker.relative_to(cache)),
            "bytes": self.size,
            "last_used": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.used)),
        }


def _used(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _entry(kind: str, *paths: Path, marker: Path | None = None) -> Entry | None:
    used = _used(marker or paths[0])
    if used is None:
        return None
    return Entry(kind, list(paths), sum(runs.tree_size(p) for p in paths), used)


def _files(d: Path, pattern: str = "*") -> Iterator[Path]:
    with contextlib.suppress(OSError):
        for p in sorted(d.glob(pattern)):
            if not p.name.startswith(".") and not p.is_symlink() and p.is_file():
                yield p


def _dirs(d: Path) -> Iterator[Path]:
    with contextlib.suppress(OSError):
        for p in sorted(d.iterdir()):
            if not p.name.startswith(".") and not p.is_symlink() and p.is_dir():
                yield p


def entries(cache: Path) -> list[Entry]:
    """Everything in the cache that can be removed, one Entry per unit."""
    found: list[Entry | None] = []
    found += [_entry("blob", f) for d in _dirs(cache / "blobs") for f in _files(d)]
    for f in _files(cache / "index", "*.index.json"):
        files = cache / "index" / "files" / f.name.removesuffix(".index.json")
        found.append(_entry("layer index", f, *([files] if files.is_dir() else [])))
    found += [_entry("result", f) for f in _files(cache / "results", "*.json")]
    repo = cache / "repos" / "apt-repos"
    with contextlib.suppress(OSError):
        for root, dirs, names in os.walk(repo):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found += [_entry("repository file", Path(root) / n) for n in names if n[0] != "."]
    found += [_entry("package", f) for f in _files(cache / "apt" / "debs", "*.deb")]
    found += [_entry("apt lists", d) for d in _dirs(cache / "apt" / "apt-lists")]
    found += [_entry("apt sources", d) for d in _dirs(cache / "apt" / "apt-sources")]
    found += [_entry("log", f) for f in _files(cache / "apt" / "logs")]
    found += [
        _entry("tooling tree", d, marker=d / ".ocipatch-complete") for d in _dirs(cache / "tooling")
    ]
    return [e for e in found if e is not None]


@dataclass
class PruneReport:
    cache: Path
    removed: list[Entry] = field(default_factory=list)
    leftovers: list[runs.Removed] = field(default_factory=list)
    kept_in_use: int = 0  # entries a live run may use, kept whatever the limits say
    size_before: int = 0
    size_after: int = 0
    dry_run: bool = False

    @property
    def freed(self) -> int:
        return sum(e.size for e in self.removed) + sum(r.size for r in self.leftovers)

    def to_json(self) -> dict[str, Any]:
        return {
            "cache": str(self.cache),
            "dry_run": self.dry_run,
            "removed": [e.to_json(self.cache) for e in self.removed],
            "leftovers": [{"path": str(r.path), "bytes": r.size} for r in self.leftovers],
            "kept_in_use": self.kept_in_use,
            "bytes_freed": self.freed,
            "bytes_before": self.size_before,
            "bytes_after": self.size_after,
        }


def _choose(
    all_entries: list[Entry], max_size: int | None, older_than: float | None, horizon: float
) -> tuple[list[Entry], int]:
    """The entries to remove, least recently used first, and how many were kept as in use."""
    now = time.time()
    total = sum(e.size for e in all_entries)
    chosen: list[Entry] = []
    in_use = 0
    for e in sorted(all_entries, key=lambda e: e.used):
        too_old = older_than is not None and e.used < now - older_than
        too_big = max_size is not None and total > max_size
        if not (too_old or too_big):
            continue
        if e.used >= horizon:
            in_use += 1
            continue
        chosen.append(e)
        total -= e.size
    return chosen, in_use


def _dangling_results(cache: Path, removed: list[Entry], remaining: list[Entry]) -> list[Entry]:
    """Results whose layer blob goes too: a result must never name a blob that is gone."""
    gone = {str(p) for e in removed for p in e.paths}
    out = []
    for e in remaining:
        if e.kind != "result" or str(e.marker) in gone:
            continue
        try:
            digest = str(json.loads(e.marker.read_text())["layer_digest"])
        except (OSError, ValueError, KeyError, TypeError):
            out.append(e)  # unreadable: a miss anyway
            continue
        alg, _, hexpart = digest.partition(":")
        blob = cache / "blobs" / alg / hexpart
        if str(blob) in gone or not blob.is_file():
            out.append(e)
    for e in out:
        e.dangling = True
    return out


@contextlib.contextmanager
def _apt_idle(cache: Path) -> Iterator[bool]:
    """apt's own lock (ocipatch.distro.deb.aptrun): apt/ is only pruned while no apt runs on it."""
    lock = cache / "apt" / "apt.lock"
    if not lock.parent.is_dir():
        yield True
        return
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _remove(e: Entry, horizon: float) -> bool:
    used = _used(e.marker)
    if used is None or (used >= horizon and not e.dangling):  # gone, or used since chosen
        return False
    for p in e.paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    return True


def prune(
    cache: Path, *, max_size: int | None = None, older_than: float | None = None, dry_run: bool
) -> PruneReport:
    """Remove dead runs' leftovers, then entries older than older_than and the least recently
    used ones until the cache is under max_size; never what a live run may use."""
    report = PruneReport(cache, dry_run=dry_run)
    exists = cache.is_dir()  # if not, only the scratch base is swept
    lock = runs.prune_lock(cache, exclusive=True) if exists else contextlib.nullcontext()
    with lock:
        if dry_run:
            stale = runs.all_leftovers(cache)
            report.leftovers = [runs.Removed(p, runs.tree_size(p)) for p in stale]
        else:
            report.leftovers = runs.sweep_all(cache, measure=True)
        found = entries(cache)
        report.size_before = sum(e.size for e in found) + sum(r.size for r in report.leftovers)
        horizon = min([time.time(), *runs.live_runs(cache)]) - GRACE
        chosen, report.kept_in_use = _choose(found, max_size, older_than, horizon)
        picked = {id(e) for e in chosen}
        rest = [e for e in found if id(e) not in picked]
        chosen += _dangling_results(cache, chosen, rest)
        with _apt_idle(cache) as apt_idle:
            for e in chosen:
                if not apt_idle and e.marker.is_relative_to(cache / "apt"):
                    report.kept_in_use += 1
                elif dry_run or _remove(e, horizon):
                    report.removed.append(e)
    report.size_after = report.size_before - report.freed
    return report


def info(cache: Path) -> dict[str, Any]:
    """Sizes and counts per kind, the live runs and the leftovers of dead ones."""
    found = entries(cache) if cache.is_dir() else []
    kinds: dict[str, dict[str, int]] = {}
    for e in found:
        k = kinds.setdefault(e.kind, {"entries": 0, "bytes": 0})
        k["entries"] += 1
        k["bytes"] += e.size
    stale = runs.all_leftovers(cache)
    oldest = min((e.used for e in found), default=None)
    return {
        "cache": str(cache),
        "bytes": sum(e.size for e in found),
        "entries": len(found),
        "kinds": kinds,
        "oldest_use": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(oldest)) if oldest else None,
        "live_runs": len(runs.live_runs(cache)),
        "leftovers": {"entries": len(stale), "bytes": sum(runs.tree_size(p) for p in stale)},
    }
