"""The rpm adapter's DIRECT installer over an unpacked rootfs, in pure Python (no librpm).

plan: the installed rpmdb (or rpmmanifest), the image's repositories (repos.py) and dnf's
choice of upgrades (resolve.py). apply:
1. download and verify every planned package before anything is written (exit 7 on a bad one);
2. per package: extract the cpio payload (gz/xz/zstd/bzip2) through the in-root writer, with
   the owners, modes, mtimes and link targets the header's file list records (%ghost files are
   not in a payload and are not written); a %config file the image changed is kept and the
   new one written as `.rpmnew` (%config(noreplace)) or the image's saved as `.rpmsave`;
3. remove what the old version (and each obsoleted package) listed and the new one does not;
4. the database: SQLite rpmdb rows (installed header blob = the package's header plus the
   install-time tags rpm adds, and the index tables rpm reads), or the rpmmanifest lines.
Scriptlets (%pre/%post of the new version, %preun/%postun of the old or obsoleted one) run
with the image's interpreter in the sandbox, network off; without a sandbox, without the
interpreter in the image, or for <lua>, ApplyOutcome.notes names them. BerkeleyDB and NDB
databases are refused (UnsupportedError) before anything is written.
"""

from __future__ import annotations

import bz2
import contextlib
import hashlib
import io
import lzma
import os
import sqlite3
import stat
import struct
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from ocipatch.distro.apk import inroot
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
from ocipatch.distro.rpm.db import MANIFEST_PATHS, InstalledRpms, RootDir, read_installed
from ocipatch.distro.rpm.header import Package, PackageFile, RpmFile
from ocipatch.distro.rpm.repos import RpmCandidate, RpmRepositories
from ocipatch.distro.rpm.resolve import Key, resolve
from ocipatch.distro.rpm.version import compare_evr
from ocipatch.errors import ApplyError, ImageFormatError, UnsupportedError, VerifyError
from ocipatch.fs.unpack import Owner, OwnershipMap
from ocipatch.sandbox.base import RunSpec, Sandbox

__all__ = ["EXCLUDED", "RpmPatcher", "excluded", "file_meta", "read_cpio"]

EXCLUDED = (
    "var/cache/dnf",
    "var/cache/yum",
    "var/cache/zypp",
    "var/cache/tdnf",
    "var/lib/rpm/.rpm.lock",
    "usr/lib/sysimage/rpm/.rpm.lock",
    "var/lib/rpm/.dbenv.lock",
    "usr/lib/sysimage/rpm/.dbenv.lock",
)
FILE_NOREPLACE = 1 << 4
PREIN, POSTIN, PREUN, POSTUN = 1023, 1024, 1025, 1026
SCRIPT_TAGS = {PREIN: "%pre", POSTIN: "%post", PREUN: "%preun", POSTUN: "%postun"}
SCRIPT_PROGS = {1023: 1085, 1024: 1086, 1025: 1087, 1026: 1088}
_DIGESTS = {"md5": hashlib.md5, "sha1": hashlib.sha1, "sha256": hashlib.sha256,
            "sha384": hashlib.sha384, "sha512": hashlib.sha512, "sha224": hashlib.sha224}  # fmt: skip


def excluded(path: str) -> bool:
    """rpm/dnf/zypper caches and locks (and BerkeleyDB's __db.* environment files)."""
    p = path.strip("/")
    if os.path.basename(p).startswith("__db.") and os.path.dirname(p) in (
        "var/lib/rpm",
        "usr/lib/sysimage/rpm",
    ):
        return True
    return any(p == e or p.startswith(e + "/") for e in EXCLUDED)


# -- cpio (newc / crc) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpioEntry:
    name: str  # "usr/bin/x" (leading "./" or "/" removed)
    mode: int
    ino: int
    nlink: int
    data: bytes


def _decompressor(kind: str, raw: bytes, where: str) -> bytes:
    try:
        if kind in ("gzip", ""):
            return zlib.decompress(raw, 16 + zlib.MAX_WBITS)
        if kind in ("xz", "lzma"):
            return lzma.decompress(raw)
        if kind == "zstd":
            return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
        if kind == "bzip2":
            return bz2.decompress(raw)
        if kind == "identity":
            return raw
    except (zlib.error, lzma.LZMAError, zstandard.ZstdError, OSError, ValueError) as e:
        raise ImageFormatError(f"{where}: the {kind} payload does not decompress: {e}") from None
    raise UnsupportedError(f"{where}: payload compressor {kind!r} is not supported")


def read_cpio(data: bytes, where: str) -> Iterator[CpioEntry]:
    """The members of a newc ("070701") or crc ("070702") cpio archive, up to TRAILER!!!."""
    pos = 0
    while True:
        head = data[pos : pos + 110]
        if len(head) < 110 or head[:6] not in (b"070701", b"070702"):
            raise ImageFormatError(f"{where}: not a newc cpio member at byte {pos}")
        try:
            f = [int(head[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise ImageFormatError(f"{where}: bad cpio header at byte {pos}") from None
        ino, mode, nlink, size, namesize = f[0], f[1], f[4], f[6], f[11]
        name_end = pos + 110 + namesize
        name = data[pos + 110 : name_end - 1].decode("utf-8", "surrogateescape")
        start = name_end + (-(name_end) % 4)
        end = start + size
        if end > len(data):
            raise ImageFormatError(f"{where}: cpio member {name!r} is cut short")
        pos = end + (-end % 4)
        if name == "TRAILER!!!":
            return
        rel = name[2:] if name.startswith("./") else name.lstrip("/")
        yield CpioEntry(rel.rstrip("/"), mode, ino, nlink, data[start:end])


def payload(rpm: RpmFile, data: bytes, where: str) -> dict[str, CpioEntry]:
    raw = _decompressor(rpm.payload_compressor, data[rpm.payload_offset :], where)
    return {"/".join(p for p in e.name.split("/") if p not in ("", ".")): e
            for e in read_cpio(raw, where)}  # fmt: skip


# -- metadata -----------------------------------------------------------------------------------


def _ids(f: PackageFile, users: dict[str, int], groups: dict[str, int]) -> tuple[int, int]:
    return users.get(f.user, 0), groups.get(f.group, 0)


def file_meta(
    rpms: list[Path], users: dict[str, int], groups: dict[str, int]
) -> dict[str, tuple[int, int, int, int]]:
    """path -> (uid, gid, mode, mtime) of every file the packages' headers list."""
    from ocipatch.distro.rpm.header import read_rpm

    out: dict[str, tuple[int, int, int, int]] = {}
    for path in rpms:
        rpm = read_rpm(path.read_bytes(), str(path))
        for f in rpm.package.files():
            uid, gid = _ids(f, users, groups)
            out[f.path.lstrip("/")] = (uid, gid, f.mode & 0o7777, f.mtime)
    return out


# -- the patcher --------------------------------------------------------------------------------


@dataclass
class RepoConfig:
    cache_dir: Path
    mirrors: list[tuple[str, str]]
    insecure: bool
    arch: str


@dataclass
class _Fetched:
    cand: RpmCandidate
    path: Path
    rpm: RpmFile
    data: bytes
    old: list[Package] = field(default_factory=list)  # the installed packages it replaces


class RpmPatcher:
    """plan -> apply -> verify for an rpm image unpacked at `rootfs` (see the module doc)."""

    def __init__(
        self,
        rootfs: Path,
        ownership: OwnershipMap,
        config: RepoConfig,
        why: str,
        sandbox: Sandbox | None = None,
    ) -> None:
        self.rootfs = rootfs
        self.sandbox = sandbox
        self.ownership = ownership
        self.config = config
        self.why = why  # why scriptlets do not run
        self.chosen: dict[Key, RpmCandidate] = {}
        self.replaces: dict[Key, list[Key]] = {}
        self.notes: list[str] = []
        self._repos: RpmRepositories | None = None
        self._candidates: list[RpmCandidate] = []

    def _installed(self) -> InstalledRpms:
        got = read_installed(RootDir(self.rootfs))
        if got is None:
            raise ImageFormatError("the image has no rpmdb and no rpmmanifest")
        return got

    def plan(
        self,
        installed: list[InstalledPackage],
        requirements: list[Requirement] | None,
        *,
        ignore_errors: bool = False,
    ) -> Plan:
        db = self._installed()
        _check_writable(db)
        self._repos = RpmRepositories(
            self.rootfs, self.config.cache_dir, self.config.arch,
            mirrors=list(self.config.mirrors), insecure=self.config.insecure, installed=db,
        )  # fmt: skip
        self._candidates = self._repos.update()
        res = resolve(db.packages, self._candidates, requirements, ignore_errors=ignore_errors)
        self.chosen, self.replaces, self.notes = res.chosen, res.replaces, res.notes
        return res.plan

    def apply(self, plan: Plan) -> ApplyOutcome:
        assert self._repos is not None, "plan() first"
        db = self._installed()
        by_key = {(p.name, p.arch or ""): p for p in db.packages}
        fetched: list[_Fetched] = []
        for key, cand in sorted(self.chosen.items()):
            path, rpm = self._repos.download(cand)
            olds = [by_key[k] for k in [key, *self.replaces.get(key, [])] if k in by_key]
            olds = [self._with_header(o) for o in olds]
            fetched.append(_Fetched(cand, path, rpm, path.read_bytes(), olds))
        # Payloads decompressed (and so checked) and every path checked (no `..`, no .wh.)
        # before the first write, too.
        payloads = [payload(f.rpm, f.data, str(f.path)) for f in fetched]
        for f in fetched:
            for pf in f.rpm.package.files():
                member_path(f.rpm.package.name, pf.path)
        _check_conflicts(db, fetched)
        users, groups = inroot.users_and_groups(self.rootfs)
        writer = RootWriter(self.rootfs, self.ownership)
        outcome = ApplyOutcome()
        done: list[tuple[_Fetched, list[int]]] = []
        runner = ScriptRunner(self.rootfs, self.sandbox, self.why)
        for f, members in zip(fetched, payloads, strict=True):
            new = f.rpm.package
            upgrade = any(o.name == new.name for o in f.old)
            runner.run(new, PREIN, 2 if upgrade else 1)
            others = _owned_paths([p for p in db.packages if p not in f.old])
            states, kept = _Files(writer, users, groups, others).install(new, members, f.old)
            for real, suffix in kept:
                outcome.notes.append(
                    f"/{real}: changed in the image; "
                    + (
                        "the package's version is "
                        if suffix == ".rpmnew"
                        else "the image's saved as "
                    )
                    + f"/{real}{suffix}"
                )
            runner.run(new, POSTIN, 2 if upgrade else 1)
            for old in f.old:  # the old version's (or the obsoleted package's) removal scripts
                left = 1 if old.name == new.name else 0
                runner.run(old, PREUN, left)
                runner.run(old, POSTUN, left)
            done.append((f, states))
            prev = next((o for o in f.old if o.name == new.name), f.old[0] if f.old else None)
            outcome.updated.append(PackageChange(new.name, prev.evr if prev else "", new.evr))
            outcome.packages.append(f.path)
        _write_db(writer, db, done)
        outcome.notes += runner.notes()
        outcome.output = "\n".join(runner.output)
        outcome.notes = self._repos.notes + self.notes + outcome.notes
        outcome.updated.sort()
        return outcome

    def _with_header(self, old: Package) -> Package:
        """An rpmmanifest's package has no file list: take it from the repository's copy of
        the same NEVRA (verified like any download); else the old files cannot be removed."""
        if old.header is not None or self._repos is None:
            return old
        for c in self._candidates:
            e = c.entry
            if (e.name, e.version, e.release, e.arch) == (
                old.name,
                old.version,
                old.release,
                old.arch,
            ):
                _, rpm = self._repos.download(c)
                pkg = rpm.package
                pkg.record = old.record
                return pkg
        self.notes.append(
            f"{old.nevra}: the image records no file list (rpmmanifest only) and the repositories "
            "no longer offer it: files it had that the new version lacks are left in place"
        )
        return old

    def verify(self, plan: Plan, *, ignore_errors: bool = False) -> list[PlanItem]:
        after: dict[str, list[str]] = {}
        for p in self._installed().packages:
            after.setdefault(p.name, []).append(p.evr)
        failed: list[PlanItem] = []
        for item in plan.updates:
            got = after.get(item.name, [])
            best = max(got, key=_evr_key) if got else None
            ok = best is not None and (
                item.required is None or compare_evr(best, item.required) >= 0
            )
            # An obsoleted package is gone: its replacement must be there instead.
            repl = [
                c.name for k, c in self.chosen.items() if k[0] == item.name and c.name != item.name
            ]
            ok = ok or (not got and bool(repl) and all(r in after for r in repl))
            if not ok:
                item.action = Action.SKIP
                item.reason = f"still at {best or 'nothing'} after installing"
                failed.append(item)
        if failed and not ignore_errors:
            raise VerifyError(
                "after installing, "
                + "; ".join(f"{i.name} is not at {i.required or 'a newer version'}" for i in failed)
            )
        return failed


class _EvrKey:
    def __init__(self, evr: str) -> None:
        self.evr = evr

    def __lt__(self, other: _EvrKey) -> bool:
        return compare_evr(self.evr, other.evr) < 0


def _evr_key(evr: str) -> _EvrKey:
    return _EvrKey(evr)


def _check_conflicts(db: InstalledRpms, fetched: list[_Fetched]) -> None:
    """rpm's file conflict: a new file another installed package (not replaced here, not an
    instance of the same name) owns with other content or mode; ApplyError before any write."""
    replaced = [id(o) for f in fetched for o in f.old]
    owned: dict[str, tuple[Package, PackageFile]] = {}
    for p in db.packages:
        if id(p) not in replaced and p.header is not None:
            for pf in p.files():
                owned.setdefault(pf.path, (p, pf))
    for f in fetched:
        new = f.rpm.package
        for pf in new.files():
            hit = owned.get(pf.path)
            if hit is None or stat.S_ISDIR(pf.mode) or pf.is_ghost:
                continue
            other, theirs = hit
            if other.name == new.name or stat.S_ISDIR(theirs.mode) or theirs.is_ghost:
                continue
            if (theirs.digest, theirs.mode, theirs.linkto) != (pf.digest, pf.mode, pf.linkto):
                raise ApplyError(
                    f"{new.nevra} would overwrite {pf.path}, which {other.nevra} owns with other "
                    "content (rpm refuses this file conflict too); update the image with its "
                    "own package manager, or patch without this package"
                )


def _check_writable(db: InstalledRpms) -> None:
    if db.location is None or db.location.backend == "sqlite":
        return
    kind = {"bdb": "BerkeleyDB", "ndb": "NDB"}[db.location.backend]
    raise UnsupportedError(
        f"{kind} rpmdb (/{db.location.path}): writing it is not supported; rebuild the image "
        "with an SQLite rpmdb (rpm --rebuilddb with %_db_backend sqlite) or patch it with the "
        "image's own package manager"
    )


# -- one package's files ---------------------------------------------------------------------------


def _owned_paths(pkgs: list[Package]) -> frozenset[str]:
    return frozenset(f.path for p in pkgs if p.header is not None for f in p.files())


class _Files:
    def __init__(
        self,
        w: RootWriter,
        users: dict[str, int],
        groups: dict[str, int],
        others: frozenset[str] = frozenset(),
    ) -> None:
        self.others = others  # paths other installed packages own: never removed
        self.saved: list[str] = []  # changed config files the new version dropped
        self.w = w
        self.users = users
        self.groups = groups

    def install(
        self, pkg: Package, members: dict[str, CpioEntry], olds: list[Package]
    ) -> tuple[list[int], list[tuple[str, str]]]:
        """Write the package's files; (FILESTATES, [(kept path, suffix)])."""
        old_files = {f.path: f for o in olds if o.header is not None for f in o.files()}
        files = pkg.files()
        links: dict[int, str] = {}  # cpio inode -> first path written
        # newc puts a hard link set's data on its last member only.
        link_data = {m.ino: m.data for m in members.values() if m.nlink > 1 and m.data}
        kept: list[tuple[str, str]] = []
        states: list[int] = []
        for f in files:
            rel = member_path(pkg.name, f.path)
            if f.is_ghost or (not stat.S_ISDIR(f.mode) and rel not in members):
                states.append(0)
                continue
            uid, gid = _ids(f, self.users, self.groups)
            owner = Owner("file", uid, gid, f.mode & 0o7777, f.mtime)
            if stat.S_ISDIR(f.mode):
                real, _ = self.w.mkdir(rel, Owner("dir", uid, gid, f.mode & 0o7777, f.mtime))
                self._fix_dir(real, Owner("dir", uid, gid, f.mode & 0o7777, f.mtime))
            elif stat.S_ISLNK(f.mode):
                self.w.symlink(rel, Owner("symlink", uid, gid, 0o777, f.mtime, linkname=f.linkto))
            elif stat.S_ISREG(f.mode):
                m = members[rel]
                if m.nlink > 1 and m.ino in links:  # a hard link set: one inode
                    self.w.hardlink(rel, links[m.ino], pkg.name)
                    states.append(0)
                    continue
                data = m.data if not m.nlink > 1 else link_data.get(m.ino, m.data)
                suffix = self._config(f, old_files.get(f.path), pkg.digest_algo, data)
                if suffix == ".rpmnew":
                    kept.append((self.w.place(rel), suffix))
                    rel += suffix
                elif suffix == ".rpmsave":
                    real = self.w.place(rel)
                    mine = self.w.read(real) or b""
                    self.w.write_file(rel + suffix, mine, self.w.ownership.get(real) or owner)
                    kept.append((real, suffix))
                self.w.write_file(rel, data, owner)
                if m.nlink > 1 and suffix is None:
                    links.setdefault(m.ino, rel)
            else:
                raise ApplyError(
                    f"{pkg.name} holds /{rel}, a device or fifo, which ocipatch does not install; "
                    "update the image with its own package manager"
                )
            states.append(0)
        self._remove(olds, {f.path for f in files})
        return states, kept + [(p, ".rpmsave") for p in self.saved]

    def _fix_dir(self, real: str, owner: Owner) -> None:
        cur = self.w.ownership.get(real)
        if cur is not None and (cur.uid, cur.gid, cur.mode) != (owner.uid, owner.gid, owner.mode):
            self.w.ownership[real] = Owner("dir", owner.uid, owner.gid, owner.mode, cur.mtime)
            if self.w.privileged:
                with contextlib.suppress(OSError):
                    os.chmod(self.w.abs(real), owner.mode, follow_symlinks=False)

    def _config(
        self, f: PackageFile, old: PackageFile | None, algo: str, data: bytes
    ) -> str | None:
        """rpm's %config rule: the image's changed copy is kept (.rpmnew) or saved (.rpmsave)."""
        if not f.is_config:
            return None
        real = self.w.real_path(f.path.lstrip("/"))
        disk = self.w.read(real) if real is not None else None
        if disk is None:
            return None
        h = _DIGESTS.get(algo, hashlib.sha256)
        now, new = h(disk).hexdigest(), h(data).hexdigest()
        if now == new or (old is not None and old.digest == now):
            return None
        return ".rpmnew" if f.flags & FILE_NOREPLACE else ".rpmsave"

    def _remove(self, olds: list[Package], keep: set[str]) -> None:
        gone = sorted(
            _owned_paths(olds) - keep - self.others,
            key=lambda p: -p.count("/"),
        )
        old = {f.path: (f, o.digest_algo) for o in olds if o.header is not None for f in o.files()}
        for path in gone:
            real = self.w.real_path(path.lstrip("/"))
            if real is None:
                continue
            st = self.w.lstat(real)
            if st is not None and stat.S_ISDIR(st.st_mode):
                self.w.rmdir_if_empty(real)
                continue
            f, algo = old[path]
            data = self.w.read(real) if f.is_config else None
            h = _DIGESTS.get(algo, hashlib.sha256)
            if data is not None and h(data).hexdigest() != f.digest:
                # rpm's rule: a changed config file the package no longer ships is saved
                owner = self.w.ownership.get(real) or Owner("file", 0, 0, 0o644, 0)
                self.w.write_file(real + ".rpmsave", data, owner)
                self.saved.append(real)
            self.w.remove(real)


# -- the database -----------------------------------------------------------------------------------

# rpm's index tables: table -> header tag (rpmdb.c dbiTags).
INDEX_TAGS = {
    "Name": 1000, "Basenames": 1117, "Group": 1016, "Requirename": 1049, "Providename": 1047,
    "Conflictname": 1054, "Obsoletename": 1090, "Triggername": 1066, "Dirnames": 1118,
    "Installtid": 1128, "Sigmd5": 261, "Sha1header": 269, "Filetriggername": 5069,
    "Transfiletriggername": 5079, "Recommendname": 5046, "Suggestname": 5049,
    "Supplementname": 5052, "Enhancename": 5055,
}  # fmt: skip
# Requires rpm leaves out of Requirename: install-only (pre/post scripts, rpmlib, keyring).
_INSTALL_ONLY = (1 << 9) | (1 << 10) | (1 << 24) | (1 << 26) | (1 << 7) | (1 << 5)
# Signature header tags rpm merges into the installed header (headerMergeLegacySigs).
_SIG_MAP = {1000: 257, 1002: 259, 1004: 261, 1005: 262, 1007: 1046}
INT32, BIN, STRING, STRING_ARRAY, CHAR = 4, 7, 6, 8, 1


def _entry_bytes(typ: int, value: list[int] | bytes | str | list[str]) -> tuple[bytes, int]:
    if typ == INT32:
        assert isinstance(value, list)
        return struct.pack(f">{len(value)}I", *value), len(value)
    if typ == CHAR:
        assert isinstance(value, list)
        return bytes(value), len(value)  # type: ignore[arg-type]
    if typ == BIN:
        assert isinstance(value, bytes)
        return value, len(value)
    if typ == STRING:
        assert isinstance(value, str)
        return value.encode() + b"\0", 1
    assert isinstance(value, list)
    return b"".join(str(v).encode() + b"\0" for v in value), len(value)


_ALIGN = {INT32: 4, 3: 2, 5: 8}


def installed_blob(rpm: RpmFile, states: list[int], when: int, color: int) -> bytes:
    """The header rpm stores for an installed package: the package's header (its immutable
    region untouched) plus the signature tags and install-time tags outside it."""
    blob = rpm.header.blob
    il = struct.unpack_from(">I", blob, 0)[0]
    index, data = bytearray(blob[8 : 8 + 16 * il]), bytearray(blob[8 + 16 * il :])
    extra: list[tuple[int, int, bytes, int]] = []
    sig = rpm.signature
    for tag, e in sorted(sig.entries.items()):
        new = _SIG_MAP.get(tag, tag if 256 <= tag < 1000 else None)
        if new is None or rpm.header.has(new):
            continue
        extra.append((new, e.type, _raw(sig.data, e), e.count))
    extra.append((1008, INT32, struct.pack(">I", when), 1))
    if states:
        extra.append((1029, CHAR, bytes(states), len(states)))
    extra.append((1127, INT32, struct.pack(">I", color), 1))
    extra.append((1128, INT32, struct.pack(">I", when), 1))
    if rpm.header.has(1098):  # PREFIXES -> INSTPREFIXES
        b, n = _entry_bytes(STRING_ARRAY, rpm.header.strings(1098))
        extra.append((1099, STRING_ARRAY, b, n))
    extra.sort()
    for tag, typ, raw, count in extra:
        data += b"\0" * (-len(data) % _ALIGN.get(typ, 1))
        index += struct.pack(">IIiI", tag, typ, len(data), count)
        data += raw
    return struct.pack(">II", il + len(extra), len(data)) + bytes(index) + bytes(data)


def _raw(data: bytes, e: object) -> bytes:
    from ocipatch.distro.rpm.header import Entry

    assert isinstance(e, Entry)
    sizes = {INT32: 4, CHAR: 1, 2: 1, 3: 2, 5: 8, BIN: 1}
    if e.type in sizes:
        return data[e.offset : e.offset + sizes[e.type] * e.count]
    end = e.offset
    for _ in range(e.count):
        end = data.index(b"\0", end) + 1
    return data[e.offset : end]


def index_rows(h: Package) -> list[tuple[str, bytes | str, int]]:
    """(table, key, idx) rows rpm keeps for a header: a name repeated within a header once,
    except basenames and dirnames (one row per file list position)."""
    hdr = h.header
    assert hdr is not None
    rows: list[tuple[str, bytes | str, int]] = []
    req_flags = hdr.ints(1048)
    for table, tag in INDEX_TAGS.items():
        e = hdr.entries.get(tag)
        if e is None:
            continue
        if e.type in (INT32, BIN):
            raw = _raw(hdr.data, e)
            if e.type == INT32:
                for i in range(e.count):
                    rows.append(
                        (table, struct.pack("=I", struct.unpack_from(">I", raw, 4 * i)[0]), i)
                    )
            else:
                rows.append((table, raw, 0))
            continue
        values = hdr.strings(tag)
        seen: set[str] = set()
        for i, v in enumerate(values):
            if tag == 1049 and i < len(req_flags) and req_flags[i] & _INSTALL_ONLY:
                continue
            if v in seen and tag not in (1117, 1118):  # file names are indexed every time
                continue
            seen.add(v)
            rows.append((table, v, i))
    return rows


def install_time(db: InstalledRpms, new: list[Package]) -> int:
    """INSTALLTIME/INSTALLTID of this run, from the inputs only (the layer stays reproducible):
    SOURCE_DATE_EPOCH when set, else the newest of the image's install times and the new
    packages' build times (never older than what `rpm -qa --last` already lists)."""
    sde = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if sde.isdigit():
        return int(sde)
    times = [p.installtime or 0 for p in db.packages] + [p.buildtime or 0 for p in new]
    return max(times, default=0)


def _write_db(
    writer: RootWriter, db: InstalledRpms, done: list[tuple[_Fetched, list[int]]]
) -> None:
    when = install_time(db, [f.rpm.package for f, _ in done])
    if db.location is None:
        _write_manifests(writer, db, done, when)
        return
    rel = db.location.path
    real = writer.place(rel)
    colors = [p.header.integer(1127) for p in db.packages if p.header is not None]
    color = next((c for c in colors if c is not None), 0)
    with tempfile.TemporaryDirectory(prefix="ocipatch-rpmdb-") as tmp:
        copy = Path(tmp) / "rpmdb.sqlite"
        copy.write_bytes(writer.read(real) or b"")
        wal = writer.read(real + "-wal")
        if wal is not None:
            (Path(tmp) / "rpmdb.sqlite-wal").write_bytes(wal)
        con = sqlite3.connect(copy)
        try:
            with con:
                for f, states in done:
                    for old in f.old:
                        con.execute("DELETE FROM Packages WHERE hnum=?", (old.record,))
                        for table in _tables(con):
                            con.execute(f"DELETE FROM '{table}' WHERE hnum=?", (old.record,))
                    blob = installed_blob(f.rpm, states, when, color)
                    cur = con.execute("INSERT INTO Packages (blob) VALUES (?)", (blob,))
                    hnum = cur.lastrowid
                    from ocipatch.distro.rpm.header import parse_header

                    new = Package.from_header(parse_header(blob, "new header"), hnum or 0)
                    tables = set(_tables(con))
                    for table, key, idx in index_rows(new):
                        if table in tables:
                            con.execute(
                                f"INSERT INTO '{table}' (key, hnum, idx) VALUES (?,?,?)",
                                (key, hnum, idx),
                            )
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            con.close()
        old_owner = writer.ownership.get(real)
        owner = old_owner or Owner("file", 0, 0, 0o644, when)
        writer.write_file(rel, copy.read_bytes(), dataclass_replace(owner, when))
        for side in ("-wal", "-shm"):
            if writer.lstat(real + side) is not None:
                writer.remove(real + side)


def dataclass_replace(owner: Owner, mtime: int) -> Owner:
    import dataclasses

    return dataclasses.replace(owner, mtime=mtime)


def _tables(con: sqlite3.Connection) -> list[str]:
    rows = con.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    return [r[0] for r in rows if r[0] in INDEX_TAGS]


def _manifest2(p: Package, when: int) -> str:
    epoch = str(p.epoch) if p.epoch is not None else "(none)"
    return "\t".join([
        p.name, f"{p.version}-{p.release}", str(when), str(p.buildtime or 0),
        p.vendor or "(none)", epoch, str(p.size), p.arch or "(none)",
        str(p.epoch or 0), p.sourcerpm or "(none)",
    ])  # fmt: skip


def _write_manifests(
    writer: RootWriter, db: InstalledRpms, done: list[tuple[_Fetched, list[int]]], when: int
) -> None:
    """container-manifest-2 (tab-separated) and -1 (NEVRA) lines: old ones out, new ones in."""
    gone = {(o.name, o.arch) for f, _ in done for o in f.old}
    new = [f.rpm.package for f, _ in done]
    for path in MANIFEST_PATHS:
        real = writer.real_path(path)
        data = writer.read(real) if real is not None else None
        if data is None or real is None:
            continue
        lines = [ln for ln in data.decode().splitlines() if ln.strip()]
        two = path.endswith("-2")
        kept = [ln for ln in lines if _line_key(ln, two) not in gone]
        kept += [_manifest2(p, when) if two else f"{p.name}-{p.version}-{p.release}.{p.arch}"
                 for p in new]  # fmt: skip
        owner = writer.ownership.get(real) or Owner("file", 0, 0, 0o644, when)
        writer.write_file(path, ("\n".join(kept) + "\n").encode(), owner)


def _line_key(line: str, two: bool) -> tuple[str, str | None]:
    if two:
        fields = line.split("\t")
        return fields[0], (fields[7] if len(fields) > 7 and fields[7] != "(none)" else None)
    from ocipatch.distro.rpm.db import parse_nevra

    try:
        e = parse_nevra(line.strip())
    except ValueError:
        return line, None
    return e.name, e.arch


# -- scriptlets -----------------------------------------------------------------------------------

SCRIPT_MOUNT = "/.ocipatch-rpm-scripts"
SCRIPT_TIMEOUT = 600.0


class ScriptRunner:
    """Runs a package's scriptlets with the image's interpreter in the sandbox (network off),
    as rpm does (`$1`: the number of instances of the package after the transaction), or names
    those that cannot run: no sandbox, no interpreter in the image, or a <lua> scriptlet."""

    def __init__(self, rootfs: Path, sandbox: Sandbox | None, why: str) -> None:
        self.rootfs = rootfs
        self.sandbox = sandbox
        self.why = why
        self.skipped: list[str] = []
        self.failed: list[str] = []
        self.output: list[str] = []

    def run(self, pkg: Package, tag: int, instances: int) -> None:
        h = pkg.header
        if h is None:
            return
        prog = h.strings(SCRIPT_PROGS[tag]) if h.has(SCRIPT_PROGS[tag]) else []
        body = h.string(tag) if h.has(tag) else None
        if body is None and not prog:
            return
        what = f"{pkg.name} {SCRIPT_TAGS[tag]}" + (f" ({prog[0]})" if prog else "")
        argv = list(prog) or ["/bin/sh"]
        if self.sandbox is None or argv[0] == "<lua>":
            self.skipped.append(what + (" (lua)" if argv[0] == "<lua>" else ""))
            return
        if not inroot.is_executable(self.rootfs, argv[0].lstrip("/")):
            self.skipped.append(f"{what}: {argv[0]} is not in the image")
            return
        with tempfile.TemporaryDirectory(prefix="ocipatch-rpm-") as tmp:
            if body is not None:
                script = Path(tmp) / "script"
                script.write_text(body)
                argv.append(f"{SCRIPT_MOUNT}/script")
            spec = RunSpec(
                rootfs=self.rootfs,
                argv=[*argv, str(instances)],
                binds=[(Path(tmp), SCRIPT_MOUNT, True)],
                network=False,
                timeout=SCRIPT_TIMEOUT,
            )
            result = self.sandbox.run(spec)
        self.output.append(f"== {what}\n{result.stdout}")
        if result.returncode != 0:
            self.failed.append(f"{what} (exit {result.returncode})")

    def notes(self) -> list[str]:
        out = []
        if self.skipped:
            out.append(
                f"{self.why}: these rpm scriptlets did not run, their effects are missing: "
                + ", ".join(self.skipped)
            )
        if self.failed:
            out.append("rpm scriptlets that failed (rpm goes on too): " + ", ".join(self.failed))
        return out
