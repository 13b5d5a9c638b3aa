"""`--sandbox none`: the dpkg adapter's patch steps without running anything from the image.

ocipatch.distro.deb.repos resolves and downloads the packages (signed indices, verified .debs), the
payloads are unpacked by ocipatch.distro.deb.debinstall, and dpkg's database (status and info/) is
written as dpkg would write it. Maintainer scripts do not run: the output says so and names the
packages that carry them, since their effects (a regenerated cache, a new system user) are
missing from the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from debian.deb822 import Deb822

from ocipatch.distro.base import InstalledPackage, PackageChange, Plan, PlanItem, Requirement
from ocipatch.distro.deb.db import STATUS, DirView, status_stanzas
from ocipatch.distro.deb.debinstall import DebPackage, RootInstaller, read_deb
from ocipatch.distro.deb.debmeta import control_files
from ocipatch.distro.deb.native import AptOutcome, plan_of, read_status, verify_versions
from ocipatch.distro.deb.repos.archive import AptRepositories
from ocipatch.distro.deb.repos.resolve import InstallItem, InstallSet
from ocipatch.fs.unpack import Owner, OwnershipMap

INFO = "var/lib/dpkg/info"
_SCRIPTS = ("preinst", "postinst", "prerm", "postrm", "config")
_INFO_FILES = (
    "preinst",
    "postinst",
    "prerm",
    "postrm",
    "config",
    "triggers",
    "shlibs",
    "symbols",
    "templates",
)
# Fields dpkg keeps in its status file but that a package's control file does not carry.
_STATUS_ORDER = ("Package", "Status")


@dataclass
class DirectConfig:
    cache_dir: Path
    mirrors: list[tuple[str, str]]
    insecure: bool = False


class DpkgDirectPatcher:
    def __init__(
        self,
        rootfs: Path,
        ownership: OwnershipMap,
        config: DirectConfig,
        planned: Callable[[], InstallSet | None] | None = None,
    ) -> None:
        self.rootfs = rootfs
        self.ownership = ownership
        self.repos = AptRepositories(
            rootfs, config.cache_dir, mirrors=config.mirrors, insecure=config.insecure
        )
        # The set the planning thread resolved from the same indices (its packages already
        # in the repository cache): no second pass over the indices.
        self.planned = planned
        self._items: list[InstallItem] = []

    def plan(
        self,
        installed: list[InstalledPackage],
        requirements: list[Requirement] | None,
        *,
        ignore_errors: bool = False,
    ) -> Plan:
        reqs = requirements or [Requirement(p.name, None) for p in installed]
        chosen = self.planned() if self.planned is not None else None
        if chosen is None:
            self.repos.update()
            chosen = self.repos.resolve(reqs, ignore_errors=ignore_errors)
        self._items = chosen.items
        return plan_of(installed, reqs, chosen, ignore_errors=ignore_errors)

    def apply(self, plan: Plan) -> AptOutcome:
        outcome = AptOutcome()
        names = {i.name for i in plan.updates}
        items = self.repos.download([it for it in self._items if it.name in names])
        stanzas = self._status()
        installer = RootInstaller(self.rootfs, self.ownership)
        with_scripts: list[str] = []
        for it in items:
            assert it.path is not None
            pkg = read_deb(it.path)
            old = stanzas.get(pkg.name)
            old_md5 = _conffile_md5(old) if old is not None else None
            old_paths = self._list(pkg)
            done = installer.install(pkg, conffile_md5=old_md5)
            installer.remove_obsolete(old_paths, done, self._other_paths(pkg.name))
            stanzas[pkg.name] = _status_stanza(pkg, done.conffile_md5)
            self._write_info(installer, pkg, done.deb_paths)
            outcome.updated.append(
                PackageChange(pkg.name, old["Version"] if old is not None else "", pkg.version)
            )
            outcome.packages.append(it.path)
            if pkg.scripts:
                with_scripts.append(f"{pkg.name} ({', '.join(pkg.scripts)})")
        self._write_status(installer, stanzas)
        outcome.updated.sort()
        outcome.notes.append(
            "--sandbox none: no maintainer script ran"
            + (
                f"; these packages carry scripts whose effects are missing: {', '.join(with_scripts)}"
                if with_scripts
                else ""
            )
        )
        return outcome

    def verify(self, plan: Plan, *, ignore_errors: bool = False) -> list[PlanItem]:
        after = {n: p.version for n, p in read_status(self.rootfs).items()}
        return verify_versions(plan, after, when="after installing", ignore_errors=ignore_errors)

    # -- dpkg's database ------------------------------------------------------------------
    def _status(self) -> dict[str, Deb822]:
        out: dict[str, Deb822] = {}
        for st in status_stanzas(DirView(self.rootfs), installed_only=False):
            if st.get("Package"):
                out[st["Package"]] = st
        return out

    def _write_status(self, installer: RootInstaller, stanzas: dict[str, Deb822]) -> None:
        text = "\n".join(st.dump() for _, st in sorted(stanzas.items()))
        installer.write_file(STATUS, text.encode(), self._meta(STATUS, 0o644))

    def _info_base(self, pkg: DebPackage) -> str:
        """dpkg names a Multi-Arch: same package's files `name:arch.*`."""
        multi = f"{INFO}/{pkg.name}:{pkg.arch}.list"
        return multi[: -len(".list")] if (self.rootfs / multi).exists() else f"{INFO}/{pkg.name}"

    def _list(self, pkg: DebPackage) -> list[str]:
        path = self.rootfs / f"{self._info_base(pkg)}.list"
        if not path.is_file():
            return []
        return [
            ln.strip().lstrip("/")
            for ln in path.read_text(errors="replace").splitlines()
            if ln.strip() not in ("", "/.")
        ]

    def _other_paths(self, name: str) -> set[str]:
        out: set[str] = set()
        info = self.rootfs / INFO
        for lst in info.glob("*.list") if info.is_dir() else []:
            if lst.stem.split(":")[0] != name:
                out.update(
                    ln.strip().lstrip("/") for ln in lst.read_text(errors="replace").splitlines()
                )
        return out

    def _write_info(self, installer: RootInstaller, pkg: DebPackage, paths: set[str]) -> None:
        base = self._info_base(pkg)
        listing = "/.\n" + "".join(f"/{p}\n" for p in sorted(paths) if p and p != ".")
        installer.write_file(f"{base}.list", listing.encode(), self._meta(f"{base}.list", 0o644))
        if pkg.md5sums is not None:
            installer.write_file(
                f"{base}.md5sums", pkg.md5sums, self._meta(f"{base}.md5sums", 0o644)
            )
        if pkg.conffiles:
            listed = "".join(f"/{c}\n" for c in pkg.conffiles).encode()
            installer.write_file(
                f"{base}.conffiles", listed, self._meta(f"{base}.conffiles", 0o644)
            )
        # The rest of the control area, as dpkg keeps it: a later real dpkg run (removal, the
        # next upgrade) finds the scripts and the triggers of the version installed now.
        control = control_files(pkg.path)
        for name in _INFO_FILES:
            content = control.get(name)
            if content is not None:
                mode = 0o755 if name in _SCRIPTS else 0o644
                installer.write_file(f"{base}.{name}", content, Owner("file", 0, 0, mode, 0))

    def _meta(self, path: str, mode: int) -> Owner:
        old = self.ownership.get(path)
        return Owner(
            "file", old.uid if old else 0, old.gid if old else 0, old.mode if old else mode, 0
        )


def _conffile_md5(stanza: Deb822) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (stanza.get("Conffiles") or "").splitlines():
        words = line.split()
        if len(words) >= 2:
            out[words[0].lstrip("/")] = words[1]
    return out


def _status_stanza(pkg: DebPackage, conffile_md5: dict[str, str]) -> Deb822:
    control = pkg.stanza
    st = Deb822()
    st["Package"] = pkg.name
    st["Status"] = "install ok installed"
    for key, value in control.items():
        if key not in _STATUS_ORDER:
            st[key] = value
    if conffile_md5:
        st["Conffiles"] = "\n" + "\n".join(f" /{p} {m}" for p, m in sorted(conffile_md5.items()))
    return st
