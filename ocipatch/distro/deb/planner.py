"""The result-cache planner of Debian images: resolve the report (or every upgradable package)
against the image's own apt sources and keyrings in pure Python (ocipatch.distro.deb.repos),
read through the merged layers without unpacking; the chosen versions are the key's plan, and
its packages are fetched ahead into apt's archive directory while the tree is unpacked."""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from ocipatch import runs
from ocipatch.distro.base import KeyInputs, Requirement
from ocipatch.distro.deb.db import STATUS
from ocipatch.distro.deb.fetchahead import FetchAhead
from ocipatch.distro.deb.repos.archive import AptRepositories
from ocipatch.errors import OcipatchError
from ocipatch.fs.merged import Entry, MergedView
from ocipatch.resultcache import result_key

log = logging.getLogger(__name__)

# What apt's configuration and dpkg's database need, read through the merged layers: trees
# (walked) and single files. Reading costs what these hold, not what the image holds.
STATE_PATHS = ("etc/apt", "usr/share/keyrings", STATUS, "var/lib/dpkg/arch", "etc/os-release",
               "usr/lib/os-release")  # fmt: skip


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
    for path in STATE_PATHS:  # a directory is walked
        _collect(view, path, entries)
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


class AptPlanner:
    """Planner (ocipatch.distro.base) over an image's apt state."""

    def __init__(
        self, view: MergedView, inputs: KeyInputs, cache_dir: Path, ahead: FetchAhead
    ) -> None:
        self.view = view
        self.inputs = inputs
        self.cache_dir = cache_dir  # the repository cache
        self.ahead = ahead

    def key(self, *, fetch: bool) -> str | None:
        i = self.inputs
        t0 = time.monotonic()
        with runs.owned_dir(self.cache_dir, "plan-") as root:
            try:
                extract_apt_state(self.view, root)
                repos = AptRepositories(root, self.cache_dir, mirrors=i.mirrors)
                repos.update()
                reqs = i.requirements or [Requirement(n, None) for n in sorted(repos.installed)]
                chosen = repos.resolve(reqs, ignore_errors=i.ignore_errors)
            except (OcipatchError, OSError, ValueError) as e:
                log.debug("no result key: %s", e)
                return None
        log.debug("result key planned in %.2f s", time.monotonic() - t0)
        try:
            self.ahead.record(repos, chosen)
            if fetch:
                self.ahead.fetch()
        except Exception as e:  # an optimisation: the installer fetches what is missing itself
            log.debug("after planning: %s", e)
        plan = {
            "requirements": [[r.name, r.minimum, list(r.vulnerabilities)] for r in reqs],
            "install": sorted([it.name, it.version, it.arch] for it in chosen.items),
            "skipped": sorted(list(s) for s in chosen.skipped),
            "mode": "apt" if i.sandboxed else "none",
        }
        return result_key(i, plan)

    def fetch(self) -> None:
        self.ahead.fetch()

    def started(self, planning: Future[Any]) -> None:
        self.ahead.planning = planning

    def wait(self) -> None:
        self.ahead.wait()
