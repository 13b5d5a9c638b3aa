"""Distroless dpkg images: no shell, no apt, no dpkg, one stanza per package in
/var/lib/dpkg/status.d/ (and `<pkg>.md5sums` beside it), no /var/lib/dpkg/status.

A tooling image (default `debian:<major>-slim` / `ubuntu:<version>`, or --tooling-image) lends
its apt: it runs in the sandbox with the tooling image's rootfs as `/` (unpacked once per
manifest digest into the cache, and left untouched: apt's lists, downloads and state live in
bound host directories). apt sees the target only through a status file synthesized from
status.d, for the target's architecture (`APT::Architecture`), so it resolves and downloads the
updates of any architecture without emulation; the target rootfs is never mounted into the
sandbox, so nothing of the tooling can reach it. The packages are then installed by copying
their files (ocipatch.distro.deb.debinstall) and status.d is rewritten the distroless way.
Maintainer scripts cannot run (the image has no shell): the result notes say so.

Distroless images rarely hold the whole dependency closure (tzdata without debconf, libc6
without libgcc-s1): those unmet dependencies are given stub stanzas in the synthesized status,
so apt's resolver accepts the image as it is and only adds what a new version newly needs.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from debian.deb822 import Deb822, PkgRelation

from ocipatch import runs
from ocipatch.context import Context
from ocipatch.distro.base import InstalledPackage, PackageChange, Plan, PlanItem
from ocipatch.distro.deb.aptrun import (
    ARCHIVES_INSIDE,
    LISTS_INSIDE,
    SOURCES_INSIDE,
    AptConfig,
    AptRunner,
    _last_error,
    apt_env,
)
from ocipatch.distro.deb.db import (
    STATUS_D,
    control_lines,
    damaged,
    is_installed,
    package_of,
    relation_problem,
)
from ocipatch.distro.deb.debinstall import (
    DebPackage,
    Installed,
    RootInstaller,
    md5sums_paths,
    read_deb,
)
from ocipatch.distro.deb.native import AptOutcome, DpkgPatcher, verify_versions
from ocipatch.distro.deb.rules import compare_deb
from ocipatch.distro.detect import OsRelease
from ocipatch.errors import (
    ApplyError,
    IntegrityError,
    NotFoundError,
    PlatformError,
    RegistryError,
    UnsupportedError,
)
from ocipatch.fs.unpack import Owner, OwnershipMap, unpack
from ocipatch.oci.image import prefetch
from ocipatch.oci.reference import parse_reference
from ocipatch.oci.transport import open_image
from ocipatch.oci.types import Platform
from ocipatch.progress import Progress
from ocipatch.sandbox.base import RunSpec, Sandbox, mount_point

STATE_INSIDE = "/var/cache/ocipatch/state"
STUB_VERSION = "99999:0"  # above any archive version: apt never wants to "upgrade" a stub
_MD5SUMS = ".md5sums"

# OCI architecture (and variant) -> dpkg architecture, for images whose stanzas say only "all".
_DPKG_ARCH = {
    "amd64": "amd64",
    "arm64": "arm64",
    "386": "i386",
    "ppc64le": "ppc64el",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "mips64le": "mips64el",
}


# -- the tooling image ---------------------------------------------------------------------------
def default_tooling_ref(osr: OsRelease | None) -> str:
    """The image whose apt serves a distroless image of this release."""
    if osr is not None and osr.id == "debian" and (osr.major or osr.version_codename):
        tag = osr.major or osr.version_codename
        return f"docker.io/library/debian:{tag}-slim"
    if osr is not None and osr.id == "ubuntu" and osr.version_id:
        return f"docker.io/library/ubuntu:{osr.version_id}"
    what = f"{osr.id} {osr.version_id}".strip() if osr is not None else "an unknown release"
    raise UnsupportedError(
        f"no default tooling image for a distroless image of {what}: pass --tooling-image REF "
        "(an image of the same release with apt and dpkg)"
    )


def tooling_rootfs(ctx: Context, ref_text: str, given: bool, progress: Progress) -> Path:
    """The tooling image unpacked in the cache (once per manifest digest), for the host's
    platform: apt runs natively whatever the target's architecture."""
    ref = parse_reference(ref_text)
    try:
        image = open_image(ref, ctx.registry_options, ctx.cache, Platform.host())
    except (RegistryError, NotFoundError, PlatformError) as e:
        hint = (
            "check --tooling-image"
            if given
            else "pass --tooling-image REF (an image of the same release with apt and dpkg)"
        )
        # The same class (RegistryError, AuthError, NotFoundError...): the same exit code.
        raise type(e)(f"cannot pull the tooling image {ref_text}: {e}; {hint}") from None
    root = ctx.cache.work_dir("tooling")
    final = root / image.digest.split(":", 1)[1]
    if (final / ".ocipatch-complete").is_file():
        with contextlib.suppress(OSError):
            os.utime(final / ".ocipatch-complete")  # last use, for `cache prune`
        return final
    progress.step(f"Unpacking the tooling image {ref_text}")
    tmp = runs.mkdtemp(root)  # a killed run's half tree is swept by the next run
    try:
        prefetch(image.layers)
        unpack(image.layers, tmp)
        if not os.path.exists(tmp / mount_point(tmp, "/usr/bin/apt-get").lstrip("/")):
            raise UnsupportedError(
                f"the tooling image {ref_text} has no apt-get: pass --tooling-image with an "
                "image that has apt and dpkg"
            )
        # The sandbox's mount points exist beforehand, so runs never create or remove
        # anything in this shared tree.
        for inside in (ARCHIVES_INSIDE, SOURCES_INSIDE, STATE_INSIDE, LISTS_INSIDE):
            (tmp / mount_point(tmp, inside).lstrip("/")).mkdir(parents=True, exist_ok=True)
        resolv = tmp / mount_point(tmp, "/etc/resolv.conf").lstrip("/")
        if not os.path.lexists(resolv):
            resolv.parent.mkdir(parents=True, exist_ok=True)
            resolv.touch()
        (tmp / ".ocipatch-complete").write_text(ref_text + "\n")
        (tmp / runs.OWNER_FILE).unlink()  # not part of the tree apt runs in
        try:
            os.rename(tmp, final)
        except OSError:  # another run finished first: use its tree
            if not (final / ".ocipatch-complete").is_file():
                raise
    finally:
        runs.remove_tree(tmp)
    return final


# -- status.d ------------------------------------------------------------------------------------
@dataclass
class Stanza:
    file: str  # file name in status.d
    text: str  # the stanza as written in the image
    fields: Deb822

    @property
    def name(self) -> str:
        return str(self.fields.get("Package", "")).strip()

    @property
    def package(self) -> InstalledPackage | None:
        return package_of(self.fields)


def split_stanzas(text: str) -> list[str]:
    """Paragraphs of a deb822 file, each kept exactly as written (without the blank lines)."""
    out: list[str] = []
    cur: list[str] = []
    for line in text.split("\n"):  # dpkg's only line break (see dpkgdb.control_lines)
        if line.strip():
            cur.append(line + "\n")
        elif cur:
            out.append("".join(cur))
            cur = []
    if cur:
        out.append("".join(cur))
    return out


class StatusD:
    """The status.d directory of an unpacked rootfs: read, synthesized for apt, rewritten."""

    def __init__(self, rootfs: Path) -> None:
        self.rootfs = rootfs
        # Resolved as in a chroot: an image's symlink must not make us read host files.
        self.dir = rootfs / mount_point(rootfs, "/" + STATUS_D).lstrip("/")
        self.files: dict[str, list[Stanza]] = {}
        self.md5sums: dict[str, bytes] = {}  # file name -> md5sums content
        for p in sorted(self.dir.iterdir()) if self.dir.is_dir() else []:
            if not p.is_file() or p.is_symlink():
                continue
            data = p.read_bytes()
            if p.name.endswith(_MD5SUMS):
                self.md5sums[p.name[: -len(_MD5SUMS)]] = data
                continue
            text = data.decode("utf-8", "replace")
            self.files[p.name] = [
                Stanza(p.name, t, Deb822(control_lines(t))) for t in split_stanzas(text)
            ]

    def stanzas(self) -> list[Stanza]:
        return [s for f in sorted(self.files) for s in self.files[f]]

    def installed(self) -> dict[str, Stanza]:
        out: dict[str, Stanza] = {}
        for s in self.stanzas():
            if s.name and s.package is not None and is_installed(s.fields, default=True):
                out.setdefault(s.name, s)
        return out

    def packages(self) -> dict[str, InstalledPackage]:
        out = {}
        for name, s in self.installed().items():
            pkg = s.package
            if pkg is not None:
                out[name] = pkg
        return out

    def holds(self) -> set[str]:
        return {
            s.name
            for s in self.installed().values()
            if str(s.fields.get("Status", "")).split()[:1] == ["hold"]
        }

    def arch(self, platform: Platform) -> str:
        """The dpkg architecture: what the packages say, else the image's platform."""
        counts: dict[str, int] = {}
        for s in self.installed().values():
            a = str(s.fields.get("Architecture", "")).strip()
            if a and a != "all":
                counts[a] = counts.get(a, 0) + 1
        if counts:
            return max(sorted(counts), key=lambda a: counts[a])
        if platform.architecture == "arm":
            return "armhf" if platform.variant in (None, "v7", "v8") else "armel"
        return _DPKG_ARCH.get(platform.architecture, platform.architecture)

    def md5sums_of(self, stanza: Stanza) -> bytes | None:
        """A package's md5sums: `<file>.md5sums` beside a file holding only its stanza (a
        file of several stanzas has no md5sums that could be told apart)."""
        if len(self.files.get(stanza.file, [])) != 1:
            return None
        return self.md5sums.get(stanza.file)

    def uses_md5sums(self) -> bool:
        return bool(self.md5sums)

    def synthesize(self, arch: str) -> str:
        """A dpkg status file for apt: every stanza marked installed, plus stubs for the
        dependencies the image does not hold (see the module docstring)."""
        installed = self.installed()
        parts = []
        for s in installed.values():
            parts.append(_with_status(s.text, "install ok installed", replace=True))
        for name, version in sorted(missing_dependencies(installed).items()):
            parts.append(
                f"Package: {name}\nStatus: install ok installed\nPriority: optional\n"
                f"Section: ocipatch\nInstalled-Size: 0\nMaintainer: ocipatch\n"
                f"Architecture: {arch}\nMulti-Arch: allowed\nVersion: {version}\n"
                f"Description: stand-in for a dependency the distroless image leaves out\n"
            )
        return "\n".join(parts)


def _with_status(text: str, status: str, *, replace: bool) -> str:
    """The stanza with a Status line after Package (replacing any, when asked)."""
    lines = [ln + "\n" for ln in text.removesuffix("\n").split("\n")]
    out: list[str] = []
    have = any(ln.startswith("Status:") for ln in lines)
    for ln in lines:
        if ln.startswith("Status:"):
            out.append(f"Status: {status}\n" if replace else ln)
            continue
        out.append(ln if ln.endswith("\n") else ln + "\n")
        if ln.startswith("Package:") and not have:
            out.append(f"Status: {status}\n")
    return "".join(out)


def _relations(text: object, owner: str) -> list[list[dict[str, Any]]]:
    raw = str(text or "").strip()
    groups: list[list[dict[str, Any]]] = PkgRelation.parse_relations(raw) if raw else []  # type: ignore[assignment]
    for group in groups:
        for alt in group:
            problem = relation_problem(alt)
            if problem:
                raise damaged(f"package {owner!r} has {problem}")
    return groups


def _provided(installed: dict[str, Stanza]) -> dict[str, list[str | None]]:
    """name -> versions it is available at: real packages and their Provides."""
    out: dict[str, list[str | None]] = {}
    for name, s in installed.items():
        out.setdefault(name, []).append(str(s.fields.get("Version", "")).strip())
        for group in _relations(s.fields.get("Provides"), name):
            for alt in group:
                ver = alt.get("version")
                out.setdefault(alt["name"], []).append(ver[1] if ver else None)
    return out


def _satisfies(have: str | None, rel: tuple[str, str] | None) -> bool:
    if rel is None:
        return True
    if have is None:
        return False  # an unversioned Provides satisfies no versioned dependency
    op, want = rel
    c = compare_deb(have, want)
    return {
        "<<": c < 0,
        "<=": c <= 0,
        "=": c == 0,
        ">=": c >= 0,
        ">>": c > 0,
    }.get(op, False)


def missing_dependencies(installed: dict[str, Stanza]) -> dict[str, str]:
    """name -> stub version for every Depends/Pre-Depends group no installed package meets."""
    provided = _provided(installed)
    wanted: dict[str, list[tuple[str, str] | None]] = {}
    for s in installed.values():
        for field in ("Pre-Depends", "Depends"):
            for group in _relations(s.fields.get(field), s.name):
                ok = any(
                    any(_satisfies(v, alt.get("version")) for v in provided.get(alt["name"], []))
                    for alt in group
                )
                if not ok and group:
                    first = group[0]
                    wanted.setdefault(first["name"], []).append(first.get("version"))
    return {name: _stub_version(rels) for name, rels in wanted.items()}


def _stub_version(rels: list[tuple[str, str] | None]) -> str:
    cands = [STUB_VERSION]
    for rel in rels:
        if rel is not None:
            cands += [rel[1], rel[1] + "~", rel[1] + "+ocipatch"]
    for c in cands:
        try:
            if all(_satisfies(c, r) for r in rels):
                return c
        except ValueError:
            continue
    return STUB_VERSION


# -- apt in the tooling image ------------------------------------------------------------------
class ToolingAptRunner(AptRunner):
    """The tooling image's apt, pointed at the target: its architecture and a status file
    synthesized from its status.d (`state_dir/status`, bound into the sandbox)."""

    def __init__(
        self,
        tooling: Path,
        sandbox: Sandbox,
        config: AptConfig,
        state_dir: Path,
        arch: str,
        holds: set[str],
        sources_dir: Path | None = None,
    ) -> None:
        """sources_dir: deb822/.list files to use instead of the tooling image's sources
        (bound read-only; a Signed-By keyring may sit beside them, under SOURCES_INSIDE)."""
        super().__init__(tooling, sandbox, config)
        self.state_dir = state_dir
        self.arch = arch
        self._holds = holds
        if sources_dir is not None:
            self._sources_dir = sources_dir

    def _target_options(self) -> list[str]:
        opts = {
            "APT::Architecture": self.arch,
            "APT::Architectures": self.arch,
            "Dir::State::status": f"{STATE_INSIDE}/status",
            "Dir::State::extended_states": f"{STATE_INSIDE}/extended_states",
            "Dir::Log": f"{STATE_INSIDE}/log",
            # apt's binary caches in this run's state: never in the shared tooling tree, and
            # built once per run instead of once per command.
            "Dir::Cache::pkgcache": f"{STATE_INSIDE}/pkgcache.bin",
            "Dir::Cache::srcpkgcache": f"{STATE_INSIDE}/srcpkgcache.bin",
            "APT::Install-Recommends": "false",
            "Acquire::Languages": "none",
        }
        out: list[str] = []
        for k, v in opts.items():
            out += ["-o", f"{k}={v}"]
        return out

    def run(self, argv: list[str], what: str, cwd: str = "/", *, lists: Path | None = None) -> str:
        if argv and argv[0] in ("apt-get", "apt-cache", "apt-mark"):
            argv = [argv[0], *self._target_options(), *argv[1:]]
        binds: list[tuple[Path, str, bool]] = [
            (lists or self.lists, LISTS_INSIDE, False),
            (self.archives, ARCHIVES_INSIDE, False),
            (self.state_dir, STATE_INSIDE, False),
        ]
        if self._sources_dir is not None:
            binds.append((self._sources_dir, SOURCES_INSIDE, True))
        spec = RunSpec(
            self.rootfs,
            argv,
            env=apt_env(),
            binds=binds,
            network=self.config.network,
            cwd=cwd,
            timeout=self.config.timeout,
        )
        proc = self.sandbox.run(spec, self.config.log)
        if proc.returncode != 0:
            raise ApplyError(f"{what} failed (exit {proc.returncode}): {_last_error(proc.stdout)}")
        return proc.stdout

    def held(self) -> set[str]:
        return set(self._holds)

    def download(self, specs: list[str]) -> None:
        """Fetch `name:arch=version` packages into the archives directory: no resolver run
        (apt-get -s install already chose them), signatures and hashes checked as always."""
        self.run(
            ["apt-get", *self._apt_options(), "download", *specs],
            "apt-get download",
            cwd=ARCHIVES_INSIDE,
        )


_INST = re.compile(r"^Inst (\S+?)(?::\S+)? (?:\[(\S+)\] )?\((\S+) .*\[(\S+)\]\)", re.M)
_REMV = re.compile(r"^Remv (\S+)", re.M)


def parse_simulation(output: str) -> list[tuple[str, str, str]]:
    """(name, version, arch) of every package `apt-get -s install` would unpack."""
    return [(m.group(1), m.group(3), m.group(4)) for m in _INST.finditer(output)]


def deb_file_name(name: str, version: str, arch: str) -> str:
    """The file name apt saves a package under (an epoch's ':' written as %3a)."""
    return f"{name}_{version.replace(':', '%3a')}_{arch}.deb"


# -- the patcher -----------------------------------------------------------------------------------
class DistrolessPatcher(DpkgPatcher):
    """plan as for any dpkg image (apt over the synthesized status); apply by downloading
    with apt and copying the packages' files in; verify against the rewritten status.d."""

    runner: ToolingAptRunner

    def __init__(self, rootfs: Path, runner: ToolingAptRunner, ownership: OwnershipMap) -> None:
        super().__init__(rootfs, runner)
        self.ownership = ownership

    def apply(self, plan: Plan) -> AptOutcome:
        outcome = AptOutcome()
        names = [i.name for i in plan.updates]
        if not names:
            return outcome
        args = ["install", "-q", "--no-install-recommends", "--only-upgrade", *names]
        sim = self.runner.apt_get("-s", *args, what="apt-get -s install")
        removals = sorted(set(_REMV.findall(sim)))
        if removals:
            raise ApplyError(
                f"apt would remove {', '.join(removals)} to install the updates; ocipatch does "
                "not remove packages from a distroless image: patch fewer packages"
            )
        wanted = parse_simulation(sim)
        self.runner.download([f"{n}:{a}={v}" for n, v, a in wanted])
        outcome.output = sim
        debs: list[DebPackage] = []
        for name, version, arch in wanted:
            path = self.runner.archives / deb_file_name(name, version, arch)
            if not path.is_file():
                raise ApplyError(f"apt did not download {name} {version} ({arch}): see the log")
            deb = read_deb(path)
            if (deb.name, deb.version) != (name, version):
                raise IntegrityError(
                    f"{path.name} holds {deb.name} {deb.version}, not {name} {version}"
                )
            debs.append(deb)
        outcome.updated, outcome.notes = install_packages(self.rootfs, self.ownership, debs)
        outcome.packages = [d.path for d in debs]
        return outcome

    def verify(self, plan: Plan, *, ignore_errors: bool = False) -> list[PlanItem]:
        after = {n: p.version for n, p in StatusD(self.rootfs).packages().items()}
        return verify_versions(plan, after, when="after the update", ignore_errors=ignore_errors)


def install_packages(
    rootfs: Path, ownership: OwnershipMap, debs: list[DebPackage]
) -> tuple[list[PackageChange], list[str]]:
    """Copy the packages' files in and rewrite status.d; returns (updated, notes)."""
    status = StatusD(rootfs)
    before = status.installed()
    inst = RootInstaller(rootfs, ownership)
    done: dict[str, Installed] = {}
    for deb in debs:
        old = before.get(deb.name)
        conf_md5 = _recorded_conffiles(old) if old is not None else None
        done[deb.name] = inst.install(deb, conffile_md5=conf_md5)
    # Obsolete files: listed by the old version's md5sums only, and by no other package.
    listed: dict[str, set[str]] = {}
    for file_name, data in status.md5sums.items():
        for p in md5sums_paths(data):
            real = inst.real_path(p)
            if real is not None:
                listed.setdefault(real, set()).add(file_name)
    for deb in debs:
        old = before.get(deb.name)
        if old is None or status.md5sums_of(old) is None:
            continue
        protected = {r for r, owners in listed.items() if owners - {old.file}}
        inst.remove_obsolete(md5sums_paths(status.md5sums_of(old)), done[deb.name], protected)
    updated = []
    for deb in debs:
        old = before.get(deb.name)
        _write_status(inst, status, deb, old, done[deb.name])
        updated.append(
            PackageChange(deb.name, old.package.version if old and old.package else "", deb.version)
        )
    return sorted(updated), _notes(debs, before)


def _recorded_conffiles(old: Stanza) -> dict[str, str] | None:
    raw = str(old.fields.get("Conffiles", ""))
    if not raw.strip():
        return None
    out = {}
    for line in raw.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0].startswith("/"):
            out[words[0].lstrip("/")] = words[1]
    return out


def _write_status(
    inst: RootInstaller, status: StatusD, deb: DebPackage, old: Stanza | None, done: Installed
) -> None:
    text = deb.control.decode("utf-8", "replace")
    text = "".join(ln if ln.endswith("\n") else ln + "\n" for ln in text.splitlines(True))
    if old is not None and "Status" in old.fields:
        text = _with_status(text, "install ok installed", replace=True)
    if old is not None and "Conffiles" in old.fields and done.conffile_md5:
        text += "Conffiles:\n" + "".join(
            f" /{p} {m}\n" for p, m in sorted(done.conffile_md5.items())
        )
    file_name = old.file if old is not None else deb.name
    stanzas = status.files.get(file_name, [])
    if old is not None and len(stanzas) > 1:
        content = "\n".join(text if s is old else s.text for s in stanzas)
    else:
        content = text
    mtime = done.newest_mtime or int(time.time())
    owner = Owner("file", 0, 0, 0o644, mtime)
    inst.write_file(f"{STATUS_D}/{file_name}", content.encode(), owner)
    if len(stanzas) > 1:
        return  # md5sums of a several-stanza file belong to no one package: left alone
    md5_name = f"{STATUS_D}/{file_name}{_MD5SUMS}"
    had = file_name in status.md5sums if old is not None else status.uses_md5sums()
    if had and deb.md5sums is not None:
        inst.write_file(md5_name, deb.md5sums, owner)
    elif deb.md5sums is None:
        inst.remove_file(md5_name)


def _notes(debs: list[DebPackage], before: dict[str, Stanza]) -> list[str]:
    notes = []
    scripted = [f"{d.name} ({', '.join(d.scripts)})" for d in debs if d.scripts]
    if scripted:
        notes.append(
            "maintainer scripts were not run (a distroless image has no shell): "
            + "; ".join(scripted)
        )
    added = [d.name for d in debs if d.name not in before]
    if added:
        notes.append(f"added {', '.join(added)}: new dependencies of the updates")
    return notes


# -- wiring -----------------------------------------------------------------------------------------
def distroless_patcher(
    ctx: Context,
    *,
    tooling_image: str | None,
    osr: OsRelease | None,
    platform: Platform,
    rootfs: Path,
    ownership: OwnershipMap,
    sandbox: Sandbox,
    apt_config: AptConfig,
    work: Path,
    progress: Progress,
) -> DistrolessPatcher:
    """The patcher for a distroless rootfs unpacked at `rootfs` (its status.d is read there)."""
    ref = tooling_image or default_tooling_ref(osr)
    progress.step(f"Pulling the tooling image {ref}")
    tooling = tooling_rootfs(ctx, ref, tooling_image is not None, progress)
    status = StatusD(rootfs)
    arch = status.arch(platform)
    state = work / "distroless-state"
    state.mkdir(parents=True, exist_ok=True)
    (state / "status").write_text(status.synthesize(arch))
    progress.step(f"Running the tooling image's apt in {sandbox.name} for {arch}")
    runner = ToolingAptRunner(tooling, sandbox, apt_config, state, arch, status.holds())
    return DistrolessPatcher(rootfs, runner, ownership)
