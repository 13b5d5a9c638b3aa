"""The Debian adapter (dpkg + apt): everything the orchestrator asks of a Debian-family image.

Three install paths, one per Flavour: NATIVE runs the image's own apt and dpkg in a sandbox
(native.py over aptrun.py); TOOLING installs into a distroless rootfs (status.d, no apt) with
a tooling image's apt (tooling.py); DIRECT (--sandbox none) writes the .debs' files itself,
running no maintainer script (direct.py). Planning for the result cache (planner.py) and the
packages' owners and times for the layer (debmeta.py) share one memo of the .debs read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

from ocipatch.context import Context
from ocipatch.distro.base import (
    Dated,
    Flavour,
    InstalledPackage,
    InstallEnv,
    KeyInputs,
    Patcher,
    Planner,
    Replay,
)
from ocipatch.distro.deb import debmeta
from ocipatch.distro.deb.aptrun import AptConfig, AptRunner
from ocipatch.distro.deb.db import STATUS, STATUS_D, read_packages
from ocipatch.distro.deb.debmeta import DebMetaMemo
from ocipatch.distro.deb.direct import DirectConfig, DpkgDirectPatcher
from ocipatch.distro.deb.fetchahead import FetchAhead
from ocipatch.distro.deb.native import DpkgPatcher, exclude
from ocipatch.distro.deb.planner import STATE_PATHS, AptPlanner
from ocipatch.distro.deb.repos.resolve import InstallSet
from ocipatch.distro.deb.rules import compare_deb
from ocipatch.distro.detect import FileView, OsRelease
from ocipatch.errors import UsageError
from ocipatch.fs.changes import Change
from ocipatch.fs.merged import MergedView
from ocipatch.sandbox.base import Sandbox
from ocipatch.vex import deb_purl

_DPKG_DIST = ".dpkg-dist"  # dpkg kept the image's changed conffile; the package's is beside it


class Dpkg:
    name: ClassVar[str] = "dpkg"
    ecosystem: ClassVar[str] = "deb"
    supported: ClassVar[bool] = True
    state_paths: ClassVar[tuple[str, ...]] = STATE_PATHS

    def __init__(self) -> None:
        self._memo = DebMetaMemo()  # .debs read once: by the fetch ahead and for the layer
        self._ahead: FetchAhead | None = None

    @classmethod
    def detect(cls, view: FileView) -> bool:
        return view.exists(STATUS) or view.exists(STATUS_D)

    @classmethod
    def is_distroless(cls, view: FileView) -> bool:
        """status.d and no status file: no dpkg to run, a tooling image's apt does the work."""
        return view.exists(STATUS_D) and not view.exists(STATUS)

    def read_db(self, view: FileView) -> list[InstalledPackage]:
        return read_packages(view)

    def compare(self, a: str, b: str) -> int:
        return compare_deb(a, b)

    def planner(self, ctx: Context, view: MergedView, inputs: KeyInputs) -> Planner | None:
        if self.is_distroless(view):  # the tooling image's apt plans, not the image's
            return None
        archives = ctx.cache.work_dir("apt") / "debs" if inputs.sandboxed else None
        self._ahead = FetchAhead(archives, self._memo)
        return AptPlanner(view, inputs, ctx.cache.work_dir("repos"), self._ahead)

    def flavour(self, view: FileView, sandbox: Sandbox | None) -> Flavour:
        if self.is_distroless(view):
            if sandbox is None:
                raise UsageError(
                    "a distroless image is patched by its tooling image's apt, which needs a "
                    "sandbox: use --sandbox auto, bwrap or proot"
                )
            return Flavour.TOOLING
        return Flavour.DIRECT if sandbox is None else Flavour.NATIVE

    def installer(self, env: InstallEnv, flavour: Flavour) -> Patcher:
        if flavour is Flavour.TOOLING:
            return self._tooling(env)
        if flavour is Flavour.DIRECT:
            env.progress.step("Installing directly (--sandbox none): no maintainer script will run")
            repos = DirectConfig(env.ctx.cache.work_dir("repos"), env.mirrors, env.insecure)
            return DpkgDirectPatcher(env.rootfs, env.ownership, repos, planned=self._planned())
        assert env.sandbox is not None
        env.progress.step(f"Running apt in {env.sandbox.name}")
        return DpkgPatcher(
            env.rootfs,
            AptRunner(env.rootfs, env.sandbox, self._apt_config(env)),
            planned=self._planned(),
            empty_lists=env.work / "no-lists",
        )

    def _tooling(self, env: InstallEnv) -> Patcher:
        from ocipatch.distro.deb.tooling import distroless_patcher

        assert env.sandbox is not None
        env.snapshot.result()  # the tooling image's apt works on the tree from the start
        return distroless_patcher(
            env.ctx,
            tooling_image=env.tooling_image,
            osr=env.osr,
            platform=env.platform,
            rootfs=env.rootfs,
            ownership=env.ownership,
            sandbox=env.sandbox,
            apt_config=self._apt_config(env),
            work=env.work,
            progress=env.progress,
        )

    def _apt_config(self, env: InstallEnv) -> AptConfig:
        return AptConfig(
            cache_dir=env.ctx.cache.work_dir("apt"),
            timeout=env.timeout,
            mirrors=env.mirrors,
            insecure=env.insecure,
            log=env.work / "apt.log",
        )

    def _planned(self) -> Callable[[], InstallSet | None] | None:
        return self._ahead.install_set if self._ahead is not None else None

    def excluded(self, path: str) -> bool:
        return exclude(path)

    def file_meta(
        self, changes: list[Change], rootfs: Path, packages: Sequence[Path], replay: Replay | None
    ) -> Dated:
        debs = list(packages)
        replayed: dict[str, debmeta.FileMeta] = {}
        if replay is not None:
            # The previous patch layer's package files keep the times it gave them.
            replayed = debmeta.replayed_meta(
                replay.view, replay.keep, debmeta.packaged_paths(rootfs)
            )
        dated = debmeta.with_package_metadata(changes, rootfs, debs, self._memo, replayed=replayed)
        return Dated(dated, debmeta.newest_time(dated, debs, self._memo))

    def notes(self, changes: Sequence[Change]) -> list[str]:
        return [
            f"kept the image's /{c.path[: -len(_DPKG_DIST)]}; the package's new version is /{c.path}"
            for c in changes
            if c.path.endswith(_DPKG_DIST) and c.type == "file"
        ]

    def purl(self, osr: OsRelease | None, name: str, version: str, arch: str) -> str:
        distro_id, distro_version = (osr.id, osr.version_id) if osr else ("debian", None)
        return deb_purl(distro_id, name, version, arch, distro_version)
