"""A content-addressed cache of patch results, so a patch already made is not made again.

The key is everything the patch layer depends on: the base layers (and a previous patch layer),
the exact set of package versions the repositories' signed indices select today (planned in
pure Python by ocipatch.distro.deb.repos, from the image's own apt sources and keyrings, read through the
merged layers without unpacking), the report's requirements, the apply mode, the layer time's
other inputs (SOURCE_DATE_EPOCH, the image's `created`) and ocipatch's version and writer
format. The same key means the same inputs, so the stored layer is what a new run would write;
a new package version in the archive changes the plan, so the key. Entries are a layer blob in
the blob cache plus a small JSON file, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocipatch import __version__, runs
from ocipatch.distro.base import Requirement
from ocipatch.distro.deb.repos.archive import AptRepositories
from ocipatch.distro.deb.repos.resolve import InstallSet
from ocipatch.errors import OcipatchError
from ocipatch.fs.layerwriter import WRITER_FORMAT
from ocipatch.fs.merged import Entry, MergedView
from ocipatch.oci.cache import BlobCache, touch

# Called with the plan once it is resolved (e.g. to fetch its packages ahead of the patcher).
OnPlan = Callable[[AptRepositories, InstallSet], None]

log = logging.getLogger(__name__)

# What apt's configuration and dpkg's database need, read through the merged layers: trees
# (walked) and single files. Reading costs what these hold, not what the image holds.
_APT_TREES = ("etc/apt", "usr/share/keyrings")
_APT_FILES = ("var/lib/dpkg/status", "var/lib/dpkg/arch", "etc/os-release", "usr/lib/os-release")


def _collect(view: MergedView, path: str, out: list[Entry]) -> None:
    e = view.entry(path)
    if e is None:
        return
    out.append(e)
    if e.type == "dir":
        for name in view.listdir(path):
            _collect(view, f"{path}/{name}", out)


def extract_apt_state(view: MergedView, dest: Path) -> None:
    """Write the image's apt sources, keyrings and dpkg status under dest (a few KB)."""
    entries: list[Entry] = []
    for tree in _APT_TREES:
        _collect(view, tree, entries)
    entries += [e for e in (view.entry(p) for p in _APT_FILES) if e is not None]
    files = [e.path for e in entries if e.type in ("file", "hardlink")]
    data = view.read_files(files)
    for e in entries:
        target = dest / e.path
        if e.type == "dir":
            target.mkdir(parents=True, exist_ok=True)
        elif e.type == "symlink":
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.is_symlink():
                os.symlink(e.linkname, target)
        elif e.path in data:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data[e.path])


def plan_key(
    view: MergedView,
    layer_digests: list[str],
    requirements: list[Requirement] | None,
    *,
    mode: str,
    compression: str,
    ignore_errors: bool,
    mirrors: list[tuple[str, str]],
    cache_dir: Path,
    times: dict[str, int | None] | None = None,
    on_plan: OnPlan | None = None,
) -> str | None:
    """The result key, or None when the plan cannot be computed here (then nothing is cached).
    on_plan runs after the key is known; its errors are logged, never raised."""
    t0 = time.monotonic()
    with runs.owned_dir(cache_dir, "plan-") as root:
        try:
            extract_apt_state(view, root)
            repos = AptRepositories(root, cache_dir, mirrors=mirrors)
            repos.update()
            reqs = requirements or [Requirement(n, None) for n in sorted(repos.installed)]
            chosen = repos.resolve(reqs, ignore_errors=ignore_errors)
        except (OcipatchError, OSError, ValueError) as e:
            log.debug("no result key: %s", e)
            return None
    log.debug("result key planned in %.2f s", time.monotonic() - t0)
    if on_plan is not None:
        try:
            on_plan(repos, chosen)
        except Exception as e:  # an optimisation: the patcher fetches what is missing itself
            log.debug("after planning: %s", e)
    doc = {
        "ocipatch": __version__,
        "layers": layer_digests,
        "requirements": [[r.name, r.minimum, list(r.vulnerabilities)] for r in reqs],
        "install": sorted([i.name, i.version, i.arch] for i in chosen.items),
        "skipped": sorted(list(s) for s in chosen.skipped),
        "mode": mode,
        "compression": compression,
        "writer": WRITER_FORMAT,
        "times": times or {},  # the layer time's inputs besides the packages (layertime.py)
        "ignore_errors": ignore_errors,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass
class CachedResult:
    layer_digest: str
    layer_size: int
    diff_id: str
    meta: dict[str, Any]


class ResultCache:
    def __init__(self, root: Path, blobs: BlobCache) -> None:
        self.root = root
        self.blobs = blobs

    def empty(self) -> bool:
        return not self.root.is_dir() or next(self.root.glob("*.json"), None) is None

    def get(self, key: str) -> CachedResult | None:
        path = self.root / f"{key}.json"
        try:
            doc = json.loads(path.read_text())
            hit = CachedResult(
                doc["layer_digest"], int(doc["layer_size"]), doc["diff_id"], doc["meta"]
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        # A hit whose layer was pruned is a miss: the patch is made again.
        if not self.blobs.has(hit.layer_digest) or not touch(path):
            return None
        return hit

    def put(self, key: str, hit: CachedResult) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        doc = {
            "layer_digest": hit.layer_digest,
            "layer_size": hit.layer_size,
            "diff_id": hit.diff_id,
            "meta": hit.meta,
        }
        fd, tmp = runs.mkstemp(self.root)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, self.root / f"{key}.json")
