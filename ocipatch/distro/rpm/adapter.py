"""The rpm adapter (RHEL, Rocky, Alma, CentOS, Fedora, Amazon Linux, Azure Linux, SUSE):
everything the orchestrator asks of an rpm image, in pure Python (no librpm, no dnf).

One installer (install.py): ocipatch resolves against the image's verified repositories,
writes the packages' payloads through the in-root writer and the installed headers into the
SQLite rpmdb (or the lines of an rpmmanifest). With a sandbox and a /bin/sh in the image the
flavour is NATIVE: the same installer, and the scriptlets run with the image's interpreters in
the sandbox; otherwise DIRECT, and they are named as not run. Not built: running the image's
own dnf / microdnf / tdnf / zypper in the sandbox, and a tooling image's `dnf --installroot`
(TOOLING): no RPM-distro archive is reachable here to make or test a real dnf with. BerkeleyDB
and NDB rpmdbs are read but not written (UnsupportedError, exit 9).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
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
    always_excluded,
)
from ocipatch.distro.detect import FileView, OsRelease
from ocipatch.distro.rpm.db import DB_DIRS, DB_FILES, MANIFEST_PATHS, read_installed
from ocipatch.distro.rpm.install import RepoConfig, RpmPatcher, excluded, file_meta
from ocipatch.distro.rpm.version import compare_evr
from ocipatch.fs.changes import Change
from ocipatch.fs.merged import MergedView
from ocipatch.sandbox.base import Sandbox
from ocipatch.vex import rpm_purl

SHELL = "bin/sh"
_SUFFIXES = (".rpmnew", ".rpmsave")
_ARCH = {"amd64": "x86_64", "arm64": "aarch64", "386": "i686", "ppc64le": "ppc64le",
         "s390x": "s390x", "riscv64": "riscv64", "arm": "armv7hl"}  # fmt: skip


class Rpm:
    name: ClassVar[str] = "rpm"
    ecosystem: ClassVar[str] = "rpm"
    supported: ClassVar[bool] = True
    state_paths: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def detect(cls, view: FileView) -> bool:
        paths = [f"{d}/{f}" for d in DB_DIRS for f in DB_FILES] + list(MANIFEST_PATHS)
        return any(view.exists(p) for p in paths)

    def read_db(self, view: FileView) -> list[InstalledPackage]:
        db = read_installed(view)
        if db is None:
            return []
        return [
            InstalledPackage(p.name, p.evr, p.arch or "", p.source_name or p.name)
            for p in db.packages
        ]

    def compare(self, a: str, b: str) -> int:
        return compare_evr(a, b)

    def planner(self, ctx: Context, view: MergedView, inputs: KeyInputs) -> Planner | None:
        return None

    def flavour(self, view: FileView, sandbox: Sandbox | None) -> Flavour:
        # No in-image dnf runs (see the module doc): ocipatch's own installer either way;
        # NATIVE means it runs the scriptlets with the image's /bin/sh in the sandbox.
        has_shell = view.exists(SHELL) or view.exists("usr/" + SHELL)
        return Flavour.NATIVE if sandbox is not None and has_shell else Flavour.DIRECT

    def installer(self, env: InstallEnv, flavour: Flavour) -> Patcher:
        arch = _ARCH.get(env.platform.architecture, env.platform.architecture)
        config = RepoConfig(env.ctx.cache.work_dir("rpm"), list(env.mirrors), env.insecure, arch)
        if flavour is Flavour.NATIVE and env.sandbox is not None:
            env.progress.step(
                f"Installing with ocipatch's rpm installer; scriptlets in {env.sandbox.name}"
            )
            return RpmPatcher(env.rootfs, env.ownership, config, "", env.sandbox)
        why = "--sandbox none" if env.sandbox is None else "the image has no /bin/sh"
        env.progress.step(f"Installing directly ({why}): no rpm scriptlet will run")
        return RpmPatcher(env.rootfs, env.ownership, config, why)

    def excluded(self, path: str) -> bool:
        return always_excluded(path) or excluded(path)

    def file_meta(
        self, changes: list[Change], rootfs: Path, packages: Sequence[Path], replay: Replay | None
    ) -> Dated:
        from ocipatch.distro.apk import inroot

        users, groups = inroot.users_and_groups(rootfs)
        meta = file_meta(list(packages), users, groups)
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
            elif c.mtime is not None:
                newest = max(newest, c.mtime)
            out.append(c)
        return Dated(out, newest)

    def notes(self, changes: Sequence[Change]) -> list[str]:
        out = []
        for c in changes:
            for suffix in _SUFFIXES:
                if c.path.endswith(suffix) and c.type == "file":
                    base = c.path[: -len(suffix)]
                    out.append(
                        f"kept the image's /{base}; the package's new version is /{c.path}"
                        if suffix == ".rpmnew"
                        else f"/{base} replaced; the image's changed copy is saved as /{c.path}"
                    )
        return out

    def purl(self, osr: OsRelease | None, name: str, version: str, arch: str) -> str:
        distro_id, distro_version = (osr.id, osr.version_id) if osr else ("redhat", None)
        return rpm_purl(distro_id, name, version, _ARCH.get(arch, arch) or None, distro_version)
