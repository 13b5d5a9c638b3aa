"""The apk adapter's patch steps over an unpacked rootfs, in pure Python (no apk binary).

plan: the image's repositories (repos.py) and apk's resolution (resolve.py). apply, per
package, dependencies first, as apk-tools does an upgrade:
1. download and verify the .apk (repos.py);
2. pre-upgrade (pre-install for a new package) with the image's /bin/sh in the sandbox;
3. write the data stream's files through the in-root writer (writer.py); a protected config
   file (/etc, apk's protected_paths) the image changed is kept and the new one written as
   `<file>.apk-new`; a file another package owns is taken over only when identical or when
   the new package `r:` replaces that package, else ApplyError (apk refuses too);
4. remove what the old version listed and the new one does not ship (modified protected
   files are kept), and its directories that are left empty and unowned;
5. the installed DB entry from `installed_package()`, scripts.tar members, the triggers line;
6. post-upgrade (post-install);
then the triggers of installed packages whose globs match a changed directory. Without a
sandbox or a shell in the image, scripts and triggers do not run and ApplyOutcome.notes names
them.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ocipatch.distro.apk import inroot
from ocipatch.distro.apk.db import (
    INSTALLED_PATHS,
    InstalledDb,
    Package,
    ScriptEntry,
    TriggerEntry,
    read_installed,
    read_scripts_tar,
    read_triggers,
    read_world,
    replace_scripts,
    serialize_installed,
    serialize_scripts_tar,
    serialize_triggers,
)
from ocipatch.distro.apk.package import (
    ApkFile,
    installed_package,
    read_apk,
    recorded_member,
    script_entries,
)
from ocipatch.distro.apk.records import q1
from ocipatch.distro.apk.repos import ApkRepositories, RepoConfig
from ocipatch.distro.apk.resolve import Candidate, resolve, satisfies
from ocipatch.distro.apk.version import compare_versions
from ocipatch.distro.apk.writer import RootWriter, member_path
from ocipatch.distro.base import (
    Action,
    ApplyOutcome,
    InstalledPackage,
    PackageChange,
    Plan,
    PlanItem,
    Requirement,
)
from ocipatch.errors import ApplyError, ImageFormatError, VerifyError
from ocipatch.fs.unpack import Owner, OwnershipMap
from ocipatch.sandbox.base import RunSpec, Sandbox, oneline, tail

__all__ = [
    "EXCLUDED",
    "ApkPatcher",
    "db_dir",
    "excluded",
    "file_meta",
    "installed_packages",
    "read_db",
]

log = logging.getLogger(__name__)

# apk's own caches and locks: not part of a patch layer.
EXCLUDED = (
    "var/cache/apk",
    "etc/apk/cache",
    "lib/apk/db/lock",
    "usr/lib/apk/db/lock",
    "lib/apk/exec",
    "usr/lib/apk/exec",
)
# apk-tools' built-in protected paths (used when /etc/apk/protected_paths.d has none):
# `+` protected, `@` only symlinks protected, `-`/`!` not protected; longest prefix wins.
DEFAULT_PROTECTED = ("+etc", "@etc/init.d", "!etc/apk")
PROTECTED_D = "etc/apk/protected_paths.d"
SHELL = "bin/sh"
SCRIPT_MOUNT = "/.ocipatch-apk-scripts"
SCRIPT_TIMEOUT = 600.0


def excluded(path: str) -> bool:
    """Whether path (relative or absolute) is apk's cache or lock, left out of a layer."""
    p = path.strip("/")
    return any(p == e or p.startswith(e + "/") for e in EXCLUDED)


def file_meta(
    apks: Sequence[Path],
    users: dict[str, int] | None = None,
    groups: dict[str, int] | None = None,
) -> dict[str, tuple[int, int, int, int]]:
    """path -> (uid, gid, mode, mtime) of every member of the packages' data tars, as apk
    installs them (owner names resolved through `users`/`groups` first); later packages win."""
    users, groups = users or {}, groups or {}
    out: dict[str, tuple[int, int, int, int]] = {}
    for path in apks:
        apk = read_apk(path.read_bytes(), str(path))
        for e in apk.data_entries():
            name = member_path(apk.name, e.path)
            if name and recorded_member(name):
                uid, gid = users.get(e.uname, e.uid), groups.get(e.gname, e.gid)
                out[name] = (uid, gid, e.mode & 0o7777, e.mtime)
    return out


def db_dir(rootfs: Path) -> str:
    """The real directory (relative) of the image's installed DB; ImageFormatError if none."""
    for rel in INSTALLED_PATHS:
        real = inroot.real_path(rootfs, rel)
        if real and os.path.isfile(rootfs / real) and not os.path.islink(rootfs / real):
            return os.path.dirname(real)
    raise ImageFormatError(
        "the image has no apk installed DB (/lib/apk/db/installed or /usr/lib/apk/db/installed)"
    )


def read_db(rootfs: Path) -> InstalledDb:
    d = db_dir(rootfs)
    return read_installed((rootfs / d / "installed").read_bytes(), f"{d}/installed")


def installed_packages(rootfs: Path) -> list[InstalledPackage]:
    """The installed DB as the orchestrator's records (source: the package's origin)."""
    return [InstalledPackage(p.name, p.version, p.arch, p.origin) for p in read_db(rootfs).packages]


@dataclass
class _Changes:
    dirs: set[str] = field(default_factory=set)  # "/usr/bin" style, for trigger globs
    written: set[str] = field(default_factory=set)  # real paths written in this run
    apk_new: list[str] = field(default_factory=list)

    def touch(self, real: str) -> None:
        self.dirs.add("/" + os.path.dirname(real))


class ApkPatcher:
    """plan -> apply -> verify for an apk image unpacked at `rootfs` (see the module doc).

    `ownership` is the unpack's map (kept current); `config` has cache_dir, mirrors, insecure
    (dpkgdirect.DirectConfig fits); `sandbox` runs scripts (None: they are named, not run).
    """

    def __init__(
        self,
        rootfs: Path,
        ownership: OwnershipMap,
        config: RepoConfig,
        sandbox: Sandbox | None = None,
    ) -> None:
        self.rootfs = rootfs
        self.ownership = ownership
        self.sandbox = sandbox
        self.repos = ApkRepositories(
            rootfs, config.cache_dir, mirrors=list(config.mirrors), insecure=config.insecure
        )
        self.chosen: dict[str, Candidate] = {}
        self.notes: list[str] = []

    # -- plan ------------------------------------------------------------------------------------
    def plan(
        self,
        installed: list[InstalledPackage],
        requirements: list[Requirement] | None,
        *,
        ignore_errors: bool = False,
    ) -> Plan:
        db = read_db(self.rootfs)
        world_data = inroot.read_file(self.rootfs, "etc/apk/world") or b""
        world = read_world(world_data)
        candidates = self.repos.update()
        res = resolve(db.packages, world, candidates, requirements, ignore_errors=ignore_errors)
        self.chosen = res.chosen
        self.notes = res.notes
        return res.plan

    # -- apply -----------------------------------------------------------------------------------
    def apply(self, plan: Plan) -> ApplyOutcome:
        outcome = ApplyOutcome()
        state = _DbState.load(self.rootfs)
        users, groups = inroot.users_and_groups(self.rootfs)
        writer = RootWriter(self.rootfs, self.ownership)
        runner = _ScriptRunner(self.rootfs, self.sandbox)
        changes = _Changes()
        names = {i.name for i in plan.updates}
        order = _install_order([c for n, c in self.chosen.items() if n in names])
        # Every package is fetched and verified before the first file is written.
        fetched = [self.repos.download(cand) for cand in order]
        for path, apk in fetched:
            old = state.db.get(apk.name)
            args = [apk.version, old.version] if old is not None else [apk.version]
            runner.run(apk.name, "pre-upgrade" if old else "pre-install", apk.scripts, args)
            new = installed_package(apk, users, groups)
            if old is not None and old.has("s"):
                new.set("s", old.get("s"))
            _Installer(writer, state, changes, self._protected()).install(apk, old, new)
            state.db.put(new)
            state.set_scripts(apk)
            state.set_triggers(old, apk)
            runner.run(apk.name, "post-upgrade" if old else "post-install", apk.scripts, args)
            outcome.updated.append(PackageChange(apk.name, old.version if old else "", apk.version))
            outcome.packages.append(path)
        state.save(writer)
        runner.triggers(state, changes.dirs)
        outcome.updated.sort()
        outcome.notes = (
            self.repos.notes
            + self.notes
            + [
                f"/{p}: changed in the image; the package's version is /{p}.apk-new"
                for p in changes.apk_new
            ]
            + runner.notes()
        )
        outcome.output = "\n".join(runner.output)
        return outcome

    def _protected(self) -> list[str]:
        rules: list[str] = []
        for name in inroot.list_dir(self.rootfs, PROTECTED_D):
            if name.endswith(".list"):
                data = inroot.read_file(self.rootfs, f"{PROTECTED_D}/{name}") or b""
                rules += data.decode("utf-8", "replace").split()
        return rules or list(DEFAULT_PROTECTED)

    # -- verify ----------------------------------------------------------------------------------
    def verify(self, plan: Plan, *, ignore_errors: bool = False) -> list[PlanItem]:
        after = {p.name: p.version for p in read_db(self.rootfs).packages}
        failed: list[PlanItem] = []
        for item in plan.updates:
            got = after.get(item.name)
            ok = got is not None and (
                not item.installed or compare_versions(got, item.installed) > 0
            )
            if ok and got is not None and item.required is not None:
                ok = compare_versions(got, item.required) >= 0
            if not ok:
                item.action, item.reason = (
                    Action.SKIP,
                    f"still at {got or 'nothing'} after installing",
                )
                failed.append(item)
        if failed and not ignore_errors:
            raise VerifyError(
                "after installing, "
                + "; ".join(
                    f"{i.name} is not at {i.required or 'a newer version'} ({i.reason})"
                    for i in failed
                )
            )
        return failed


def _install_order(cands: list[Candidate]) -> list[Candidate]:
    """Dependencies before what depends on them (apk's order); otherwise by name."""
    by_name = {c.name: c for c in cands}
    done: list[Candidate] = []
    seen: set[str] = set()

    def visit(c: Candidate) -> None:
        if c.name in seen:
            return
        seen.add(c.name)
        for dep in c.entry.depends:
            for other in sorted(by_name.values(), key=lambda o: o.name):
                if not dep.conflict and satisfies(other.entry, dep):
                    visit(other)
        done.append(c)

    for c in sorted(cands, key=lambda c: c.name):
        visit(c)
    return done


# -- the DB files ---------------------------------------------------------------------------------


@dataclass
class _DbState:
    rootfs: Path
    dir: str
    db: InstalledDb
    scripts: list[ScriptEntry] | None
    triggers: list[TriggerEntry] | None

    @classmethod
    def load(cls, rootfs: Path) -> _DbState:
        d = db_dir(rootfs)
        db = read_db(rootfs)
        sdata = inroot.read_file(rootfs, f"{d}/scripts.tar")
        tdata = inroot.read_file(rootfs, f"{d}/triggers")
        scripts = read_scripts_tar(sdata, f"{d}/scripts.tar") if sdata is not None else None
        triggers = read_triggers(tdata, f"{d}/triggers") if tdata is not None else None
        return cls(rootfs, d, db, scripts, triggers)

    def set_scripts(self, apk: ApkFile) -> None:
        new = script_entries(apk)
        if self.scripts is None and not new:
            return
        self.scripts = replace_scripts(self.scripts or [], apk.name, new)

    def set_triggers(self, old: Package | None, apk: ApkFile) -> None:
        entries = self.triggers or []
        at = next(
            (i for i, e in enumerate(entries) if old is not None and e.checksum == old.checksum),
            len(entries),
        )
        kept = [e for e in entries if old is None or e.checksum != old.checksum]
        globs = apk.triggers if "trigger" in apk.scripts else []
        new = [TriggerEntry(apk.checksum, globs)] if globs else []
        if self.triggers is None and not new:
            return
        self.triggers = kept[:at] + new + kept[at:]

    def save(self, writer: RootWriter) -> None:
        self._write(writer, "installed", serialize_installed(self.db))
        if self.scripts is not None:
            self._write(writer, "scripts.tar", serialize_scripts_tar(self.scripts))
        if self.triggers is not None:
            self._write(writer, "triggers", serialize_triggers(self.triggers))

    def _write(self, writer: RootWriter, name: str, data: bytes) -> None:
        rel = f"{self.dir}/{name}"
        old = writer.ownership.get(rel)
        if old is not None and writer.read(rel) == data:
            return  # unchanged: keep the file (and the layer) as it is
        mtime = old.mtime if old is not None else 0
        owner = Owner("file", old.uid if old else 0, old.gid if old else 0,
                      old.mode if old else 0o644, mtime)  # fmt: skip
        writer.write_file(rel, data, owner)


# -- one package's files --------------------------------------------------------------------------


def _protection(rules: Sequence[str], path: str) -> str:
    """'+' (protected), '@' (symlinks only) or '-' for path: the longest matching rule."""
    best, mode = -1, "-"
    for rule in rules:
        kind, prefix = rule[0], rule[1:].strip("/")
        if kind not in "+-!@~":
            kind, prefix = "+", rule.strip("/")
        if (path == prefix or path.startswith(prefix + "/")) and len(prefix) > best:
            best, mode = len(prefix), {"!": "-", "~": "-"}.get(kind, kind)
    return mode


class _Installer:
    def __init__(
        self, writer: RootWriter, state: _DbState, changes: _Changes, protected: list[str]
    ) -> None:
        self.w = writer
        self.state = state
        self.changes = changes
        self.protected = protected

    def install(self, apk: ApkFile, old: Package | None, new: Package) -> None:
        old_sums = {p: f.checksum for p, f in old.files()} if old is not None else {}
        owners = self.state.db.owners()
        acl = {p: f.owner_mode for p, f in new.files()}
        dir_acl = {d.path: d.owner_mode for d in new.dirs}
        shipped: set[str] = set()
        with apk.open_data() as tar:
            for m in tar:
                name = member_path(apk.name, m.name)
                if not name or not recorded_member(name):
                    continue
                shipped.add(name)
                if m.isdir():
                    uid, gid, mode = dir_acl.get(name, (0, 0, 0o755))
                    real, made = self.w.mkdir(name, Owner("dir", uid, gid, mode, int(m.mtime)))
                    if made:
                        self.changes.touch(real)
                    continue
                self._check_owner(apk, new, name, owners)
                uid, gid, mode = acl.get(name, (0, 0, m.mode & 0o7777))
                mtime = int(m.mtime)
                if m.issym():
                    owner = Owner("symlink", uid, gid, 0o777, mtime, linkname=m.linkname)
                    self._put(name, owner, None, old_sums.get(name))
                elif m.islnk():
                    real = self.w.hardlink(name, member_path(apk.name, m.linkname), apk.name)
                    self._done(real)
                elif m.isfile():
                    src = tar.extractfile(m)
                    data = src.read() if src is not None else b""
                    self._put(name, Owner("file", uid, gid, mode, mtime), data, old_sums.get(name))
                else:
                    raise ApplyError(
                        f"{apk.name} holds {m.name!r}, a device or fifo, which ocipatch does not "
                        "install; update the image with apk itself"
                    )
        if old is not None:
            self._remove_obsolete(old, shipped)

    def _check_owner(
        self,
        apk: ApkFile,
        new: Package,
        name: str,
        owners: dict[str, Package],
    ) -> None:
        """apk's rule for a file another package owns: identical, or replaced, or refused."""
        other = owners.get(name)
        if other is None or other.name == apk.name:
            return
        mine = next((f.checksum for p, f in new.files() if p == name), None)
        theirs = next((f.checksum for p, f in other.files() if p == name), None)
        if (mine is not None and mine == theirs) or any(satisfies(other, r) for r in new.replaces):
            _drop_file(other, name)
            return
        raise ApplyError(
            f"{apk.name} {apk.version} would overwrite /{name}, which {other.name} "
            f"{other.version} owns (apk refuses this too); update the image with apk itself"
        )

    def _put(self, name: str, owner: Owner, data: bytes | None, old_sum: str | None) -> None:
        real = self.w.place(name)
        if self._keep_changed(name, real, owner, data, old_sum):
            name, real = name + ".apk-new", real + ".apk-new"
            self.changes.apk_new.append(real[: -len(".apk-new")])
        self._done(
            self.w.symlink(name, owner) if data is None else self.w.write_file(name, data, owner)
        )

    def _done(self, real: str) -> None:
        self.changes.written.add(real)
        self.changes.touch(real)

    def _keep_changed(
        self, name: str, real: str, owner: Owner, data: bytes | None, old_sum: str | None
    ) -> bool:
        """A protected file the image changed: kept; the package's goes to `.apk-new`."""
        mode = _protection(self.protected, name)
        if mode == "-" or (mode == "@" and data is not None):
            return False
        current = _disk_sum(self.w, real)
        if current is None:
            return False
        new_sum = q1(data if data is not None else owner.linkname.encode())
        return current not in (new_sum, old_sum)

    def _remove_obsolete(self, old: Package, shipped: set[str]) -> None:
        owners = self.state.db.owners()
        old_sums = dict((p, f.checksum) for p, f in old.files())
        for path in sorted(set(old_sums) - shipped):
            real = self.w.real_path(path)
            if real is None or real in self.changes.written:
                continue
            if (o := owners.get(path)) is not None and o.name != old.name:
                continue
            if _protection(self.protected, path) == "+" and _disk_sum(self.w, real) not in (
                None,
                old_sums[path],
            ):
                continue  # changed in the image: apk keeps it
            if self.w.remove(real):
                self.changes.touch(real)
        taken = {d.path for p in self.state.db.packages if p.name != old.name for d in p.dirs}
        for d in sorted((d.path for d in old.dirs), key=lambda p: -p.count("/")):
            if d and d not in shipped and d not in taken:
                real = self.w.real_path(d)
                if real is not None and self.w.rmdir_if_empty(real):
                    self.changes.touch(real)


def _drop_file(pkg: Package, path: str) -> None:
    for d in pkg.dirs:
        d.files = [f for f in d.files if (f"{d.path}/{f.name}" if d.path else f.name) != path]


def _disk_sum(w: RootWriter, real: str) -> str | None:
    st = w.lstat(real)
    if st is None:
        return None
    if stat.S_ISLNK(st.st_mode):
        return q1(os.readlink(w.abs(real)).encode("utf-8", "surrogateescape"))
    data = w.read(real)
    return q1(data) if data is not None else None


# -- scripts and triggers -------------------------------------------------------------------------


def _glob_match(glob: str, path: str) -> bool:
    """fnmatch with FNM_PATHNAME, as apk matches trigger globs against directories."""
    g, p = glob.rstrip("/").split("/"), path.rstrip("/").split("/")
    return len(g) == len(p) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(p, g, strict=True))


class _ScriptRunner:
    """Runs scripts with the image's /bin/sh in the sandbox, or notes what did not run."""

    def __init__(self, rootfs: Path, sandbox: Sandbox | None) -> None:
        self.rootfs = rootfs
        self.sandbox = sandbox
        self.shell = inroot.is_executable(rootfs, SHELL)
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.failed: list[str] = []
        self.output: list[str] = []

    @property
    def why_not(self) -> str:
        if self.sandbox is None:
            return "--sandbox none"
        return "the image has no /bin/sh"

    def run(self, pkg: str, action: str, scripts: dict[str, bytes], args: list[str]) -> None:
        body = scripts.get(action)
        if body is not None:
            self._exec(f"{pkg} {action}", f"{pkg}.{action}", body, args)

    def _exec(self, what: str, fname: str, body: bytes, args: list[str]) -> None:
        if self.sandbox is None or not self.shell:
            self.skipped.append(what)
            return
        with tempfile.TemporaryDirectory(prefix="ocipatch-apk-") as tmp:
            script = Path(tmp) / fname
            script.write_bytes(body)
            script.chmod(0o755)
            spec = RunSpec(
                rootfs=self.rootfs,
                argv=["/" + SHELL, f"{SCRIPT_MOUNT}/{fname}", *args],
                binds=[(Path(tmp), SCRIPT_MOUNT, True)],
                network=False,
                timeout=SCRIPT_TIMEOUT,
            )
            result = self.sandbox.run(spec)
        self.output.append(f"== {what}\n{result.stdout}")
        if result.returncode != 0:
            # apk goes on and reports the package as broken; so does this, loudly.
            log.warning(
                "%s exited with %s: %s", what, result.returncode, oneline(tail(result.stdout, 3))
            )
            self.failed.append(f"{what} (exit {result.returncode})")
        else:
            self.ran.append(what)

    def triggers(self, state: _DbState, dirs: Iterable[str]) -> None:
        """Run the trigger of each package whose globs match a changed directory."""
        changed = sorted(dirs)
        by_sum = {p.checksum: p for p in state.db.packages}
        scripts = {
            (e.name, e.checksum): e.data for e in state.scripts or [] if e.action == "trigger"
        }
        for entry in state.triggers or []:
            pkg = by_sum.get(entry.checksum)
            if pkg is None:
                continue
            matched = [d for d in changed if any(_glob_match(g, d) for g in entry.globs)]
            body = scripts.get((pkg.name, pkg.checksum))
            if matched and body is not None:
                self._exec(f"{pkg.name} trigger", f"{pkg.name}.trigger", body, matched)

    def notes(self) -> list[str]:
        out = []
        if self.skipped:
            out.append(
                f"{self.why_not}: these apk scripts did not run, their effects are missing: "
                + ", ".join(self.skipped)
            )
        if self.failed:
            out.append(
                "apk scripts that failed (apk marks such packages broken): "
                + ", ".join(self.failed)
            )
        return out
