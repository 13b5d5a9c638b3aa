"""Packages fetched ahead: the planning thread's second job for the dpkg adapter."""

from __future__ import annotations

import os
import shutil
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from ocipatch import runs
from ocipatch.distro.deb.aptrun import archive_name
from ocipatch.distro.deb.debmeta import DebMetaMemo
from ocipatch.distro.deb.repos.archive import AptRepositories
from ocipatch.distro.deb.repos.resolve import InstallItem, InstallSet


class FetchAhead:
    """The planning thread's second job: download the plan's packages (verified against the
    signed indices) into apt's archive directory, where apt finds them and skips its own
    download, then read their owners and modes for the patch layer while dpkg runs."""

    WAIT = 60.0  # at most this long does apt wait for packages on their way

    def __init__(self, archives: Path | None, memo: DebMetaMemo) -> None:
        self.archives = archives  # None: the packages stay in the repository cache
        self.memo = memo
        self.ready = threading.Event()
        self.planning: Future[Any] | None = None  # the thread that calls fetch()
        self.chosen: InstallSet | None = None  # set once its packages are all in place
        self._repos: AptRepositories | None = None
        self._planned: InstallSet | None = None

    def __call__(self, repos: AptRepositories, chosen: InstallSet) -> None:
        """As the planning thread's on_plan: fetch right away."""
        self.record(repos, chosen)
        self.fetch()

    def record(self, repos: AptRepositories, chosen: InstallSet) -> None:
        """As on_plan of a planning whose key may still hit the result cache: no fetch yet."""
        self._repos, self._planned = repos, chosen

    def fetch(self) -> None:
        if self._repos is None or self._planned is None:
            self.ready.set()
            return
        try:
            items = self._repos.download(self._planned.items)
            debs = [it.path for it in items if it.path is not None]
            if self.archives is not None:
                debs = [self._place(it) for it in items if it.path is not None]
            self.chosen = self._planned
        finally:
            self._repos = None  # the parsed indices (tens of MB): not needed any more
            self.ready.set()
        self.memo.read(debs)

    def _place(self, item: InstallItem) -> Path:
        assert item.path is not None and self.archives is not None
        dest = self.archives / archive_name(item.name, item.version, item.arch)
        if not dest.is_file():
            self.archives.mkdir(parents=True, exist_ok=True)
            tmp = self.archives / "partial" / f"{runs.owned_prefix('.tmp-')}{dest.name}.ahead"
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.unlink(missing_ok=True)
            try:
                os.link(item.path, tmp)
            except OSError:  # another file system: a copy
                shutil.copyfile(item.path, tmp)
            os.replace(tmp, dest)
        return dest

    def wait(self) -> None:
        """Until the packages are in place, planning ended (or failed), or WAIT passed."""
        deadline = time.monotonic() + self.WAIT
        while not self.ready.wait(0.05) and not (self.planning and self.planning.done()):
            if time.monotonic() > deadline:
                return

    def install_set(self) -> InstallSet | None:
        """The resolved set with its packages in apt's archive directory; None if planning
        or a download failed (the patcher then lets apt resolve)."""
        self.wait()
        return self.chosen
