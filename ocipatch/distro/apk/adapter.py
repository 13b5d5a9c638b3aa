"""The apk adapter (Alpine, Wolfi/Chainguard, apk-less images): everything the orchestrator
asks of an apk image, in pure Python (no apk-tools binary anywhere).

Two install paths: NATIVE and DIRECT share ocipatch's own installer (install.py): it writes
the verified packages' files and the installed DB itself; NATIVE also runs the packages'
scripts and triggers with the image's own /bin/sh in the sandbox, DIRECT (--sandbox none, or
an image without a shell) names them instead. So an apk image patches on any architecture and
without apk in the image. No planner: the repositories' indexes are fetched by the installer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from ocipatch.context import Context
from ocipatch.distro.apk.db import INSTALLED_PATHS, read_installed
from ocipatch.distro.apk.install import SHELL, ApkPatcher, excluded, file_meta
from ocipatch.distro.apk.version import compare_versions
from ocipatch.distro.base import (
    Dated,
    Flavour,
    InstalledPackage,
    InstallEnv,
    KeyInputs,
    Patcher,
    Planner,
    Replay,
    always_excluded,
)
from ocipatch.distro.detect import FileView, OsRelease
from ocipatch.fs.changes import Change
from ocipatch.fs.merged import MergedView
from ocipatch.sandbox.base import Sandbox
from ocipatch.vex import apk_purl

_APK_NEW = ".apk-new"  # the image changed a config file: apk keeps it, the new one beside it


@dataclasses.dataclass
class _RepoConfig:
    cache_dir: Path
    mirrors: list[tuple[str, str]]
    insecure: bool


class Apk:
    name: ClassVar[str] = "apk"
    ecosystem: ClassVar[str] = "apk"
    supported: ClassVar[bool] = True
    state_paths: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self._has_shell = True

    @classmethod
    def detect(cls, view: FileView) -> bool:
        return any(view.exists(p) for p in INSTALLED_PATHS)

    def read_db(self, view: FileView) -> list[InstalledPackage]:
        for path in INSTALLED_PATHS:
            data = view.read_file(path)
            if data is not None:
                db = read_installed(data, path)
                return [InstalledPackage(p.name, p.version, p.arch, p.origin) for p in db.packages]
        return []

    def compare(self, a: str, b: str) -> int:
        return compare_versions(a, b)

    def planner(self, ctx: Context, view: MergedView, inputs: KeyInputs) -> Planner | None:
        return None

    def flavour(self, view: FileView, sandbox: Sandbox | None) -> Flavour:
        # Scripts need the image's shell; without one (or without a sandbox) nothing runs.
        self._has_shell = view.exists(SHELL) or view.exists("usr/" + SHELL)
        return Flavour.NATIVE if sandbox is not None and self._has_shell else Flavour.DIRECT

    def installer(self, env: InstallEnv, flavour: Flavour) -> Patcher:
        config = _RepoConfig(env.ctx.cache.work_dir("apk"), list(env.mirrors), env.insecure)
        if flavour is Flavour.NATIVE:
            assert env.sandbox is not None
            env.progress.step(
                f"Installing with ocipatch's apk installer; scripts in {env.sandbox.name}"
            )
            return ApkPatcher(env.rootfs, env.ownership, config, env.sandbox)
        why = "--sandbox none" if env.sandbox is None else "the image has no /bin/sh"
        env.progress.step(f"Installing directly ({why}): no package script will run")
        return ApkPatcher(env.rootfs, env.ownership, config, None)

    def excluded(self, path: str) -> bool:
        return always_excluded(path) or excluded(path)

    def file_meta(
        self, changes: list[Change], rootfs: Path, packages: Sequence[Path], replay: Replay | None
    ) -> Dated:
        from ocipatch.distro.apk import inroot

        users, groups = inroot.users_and_groups(rootfs)
        meta = file_meta(packages, users, groups)
        out: list[Change] = []
        newest = 0
        for c in changes:
            m = meta.get(c.path)
            if m is not None and c.type in ("file", "dir", "symlink"):
                uid, gid, mode, mtime = m
                keep_mode = c.mode if c.type == "symlink" else mode
                c = dataclasses.replace(
                    c, uid=uid, gid=gid, mode=keep_mode, mtime=None if c.type == "dir" else mtime
                )
                if c.type != "dir":
                    newest = max(newest, mtime)
            out.append(c)
        return Dated(out, newest)

    def notes(self, changes: Sequence[Change]) -> list[str]:
        return [
            f"kept the image's /{c.path[: -len(_APK_NEW)]}; the package's new version is /{c.path}"
            for c in changes
            if c.path.endswith(_APK_NEW) and c.type == "file"
        ]

    def purl(self, osr: OsRelease | None, name: str, version: str, arch: str) -> str:
        distro_id, distro_version = (osr.id, osr.version_id) if osr else ("alpine", None)
        return apk_purl(distro_id, name, version, _apk_arch(arch), distro_version)


def _apk_arch(oci_arch: str) -> str:
    return {
        "amd64": "x86_64",
        "arm64": "aarch64",
        "386": "x86",
        "ppc64le": "ppc64le",
        "s390x": "s390x",
        "riscv64": "riscv64",
    }.get(oci_arch, oci_arch)
