""".apk v2 packages: signature stream, control stream (.PKGINFO, scripts), data stream.

The package's identity is its C: value, `Q1` + base64(SHA-1 of the compressed control stream)
as APKINDEX and the installed DB carry it; the control stream's .PKGINFO carries `datahash`,
the SHA-256 (hex) of the compressed data stream, and the signature covers the control stream:
so a verified signature or a C: that matches a verified index, plus a matching datahash, vouch
for every byte. Each regular file in the data tar also carries its SHA-1 in a PAX header
`APK-TOOLS.checksum.SHA1` (hex), from which the installed DB's Z: is made.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from ocipatch.distro.apk.db import (
    DEFAULT_DIR_ACL,
    DEFAULT_FILE_ACL,
    SCRIPT_ACTIONS,
    DirEntry,
    FileEntry,
    Package,
    ScriptEntry,
    format_acl,
)
from ocipatch.distro.apk.records import q1, q1_digest
from ocipatch.distro.apk.signing import (
    GzipStream,
    Signature,
    TrustedKeys,
    is_signature_stream,
    read_signatures,
    split_gzip_streams,
    verify_signatures,
)
from ocipatch.errors import IntegrityError, UnsupportedError

__all__ = [
    "PKGINFO_LETTERS",
    "ApkFile",
    "DataEntry",
    "installed_package",
    "read_apk",
    "recorded_member",
    "script_entries",
    "verify_checksum",
    "verify_datahash",
    "verify_package_signature",
]

# .PKGINFO key -> installed DB / APKINDEX letter (abuild writes these keys; apk-tools maps them).
PKGINFO_LETTERS = {
    "pkgname": "P",
    "pkgver": "V",
    "arch": "A",
    "size": "I",
    "pkgdesc": "T",
    "url": "U",
    "license": "L",
    "origin": "o",
    "maintainer": "m",
    "builddate": "t",
    "commit": "c",
    "provider_priority": "k",
    "depend": "D",
    "provides": "p",
    "install_if": "i",
    "replaces": "r",
    "replaces_priority": "q",
}
_ALWAYS = (("pkgdesc", "T"), ("url", "U"), ("license", "L"))
_IF_SET = (("origin", "o"), ("maintainer", "m"), ("commit", "c"))
_IF_NONZERO = (("builddate", "t"), ("provider_priority", "k"))
_DEPS = (("depend", "D"), ("provides", "p"), ("install_if", "i"))
_ORDER = "CPVASITULomtckDpi"


def _uint(value: str) -> int:
    return int(value) if value.strip().isdigit() else 0


def _ordered(fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return sorted(fields, key=lambda kv: _ORDER.index(kv[0]))


_CHECKSUM_PAX = "APK-TOOLS.checksum.SHA1"


@dataclass(frozen=True)
class DataEntry:
    """One member of the data tar."""

    path: str
    type: bytes  # tarfile type: REGTYPE, DIRTYPE, SYMTYPE, LNKTYPE, CHRTYPE, ...
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    size: int
    mtime: int
    linkname: str
    sha1: str  # hex from the PAX header, "" when absent (dirs, old packages)
    xattrs: dict[str, str] = field(default_factory=dict)


@dataclass
class ApkFile:
    """A parsed .apk v2 file. Streams are kept compressed, as they are hashed that way."""

    source: str
    size: int
    signatures: list[Signature]
    control_stream: bytes
    data_stream: bytes
    pkginfo: list[tuple[str, str]]
    scripts: dict[str, bytes]  # action ("pre-install", "trigger", ...) -> script
    control_files: dict[str, bytes]  # every control member, by name (".PKGINFO", ".melange.yaml")

    def info(self, key: str, default: str = "") -> str:
        """The first value of a .PKGINFO key."""
        return next((v for k, v in self.pkginfo if k == key), default)

    def info_all(self, key: str) -> list[str]:
        return [v for k, v in self.pkginfo if k == key]

    @property
    def name(self) -> str:
        return self.info("pkgname")

    @property
    def version(self) -> str:
        return self.info("pkgver")

    @property
    def arch(self) -> str:
        return self.info("arch")

    @cached_property
    def checksum(self) -> str:
        """The package's C: value: Q1 + base64(SHA-1(compressed control stream))."""
        return q1(self.control_stream)

    @cached_property
    def data_sha256(self) -> str:
        return hashlib.sha256(self.data_stream).hexdigest()

    @property
    def triggers(self) -> list[str]:
        """The directory globs of the package's trigger script (.PKGINFO `triggers`)."""
        return " ".join(self.info_all("triggers")).split()

    def index_fields(self) -> list[tuple[str, str]]:
        """The package's lines as apk-tools writes them into APKINDEX and the installed DB.

        As apk_pkg_write_index_header: C P V, A if known, S I T U L always, o m if known,
        t and k if not 0, c if present, then D p i when not empty.
        """
        fields = [("C", self.checksum), ("P", self.name), ("V", self.version)]
        if self.has_info("arch"):
            fields.append(("A", self.arch))
        fields.append(("S", str(self.size)))
        fields += [("I", str(_uint(self.info("size"))))]
        fields += [(letter, self.info(key)) for key, letter in _ALWAYS]
        fields += [(letter, self.info(key)) for key, letter in _IF_SET if self.has_info(key)]
        fields += [
            (letter, str(_uint(self.info(key))))
            for key, letter in _IF_NONZERO
            if _uint(self.info(key))
        ]
        return _ordered(fields + self._list_fields(_DEPS))

    def installed_fields(self) -> list[tuple[str, str]]:
        """index_fields plus the installed DB's r: (replaces) and q: (replaces priority)."""
        fields = self.index_fields() + self._list_fields((("replaces", "r"),))
        if _uint(self.info("replaces_priority")):
            fields.append(("q", str(_uint(self.info("replaces_priority")))))
        return fields

    def has_info(self, key: str) -> bool:
        return any(k == key for k, _ in self.pkginfo)

    def _list_fields(self, keys: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
        out = []
        for key, letter in keys:
            items = " ".join(self.info_all(key)).split()
            if items:
                out.append((letter, " ".join(items)))
        return out

    def open_data(self) -> tarfile.TarFile:
        """The data tar, for reading members (the caller closes it)."""
        content = split_gzip_streams(self.data_stream, self.source)[0].content
        return tarfile.open(fileobj=io.BytesIO(content), mode="r:")

    def data_entries(self) -> Iterator[DataEntry]:
        with self.open_data() as tar:
            for m in tar:
                pax = m.pax_headers
                xattrs = {k: v for k, v in pax.items() if k.startswith("SCHILY.xattr.")}
                yield DataEntry(
                    path=m.name,
                    type=m.type,
                    mode=m.mode,
                    uid=m.uid,
                    gid=m.gid,
                    uname=m.uname,
                    gname=m.gname,
                    size=m.size,
                    mtime=int(m.mtime),
                    linkname=m.linkname,
                    sha1=pax.get(_CHECKSUM_PAX, ""),
                    xattrs=xattrs,
                )

    def verify_file_checksums(self) -> int:
        """Check each member's PAX SHA-1 (of the content, or a symlink's target); the count.

        A mismatch raises IntegrityError. These SHA-1s become the installed DB's Z: values.
        """
        checked = 0
        with self.open_data() as tar:
            for m in tar:
                expected = m.pax_headers.get(_CHECKSUM_PAX, "")
                if not expected:
                    continue
                actual = member_sha1(tar, m)
                if actual is not None and actual != expected:
                    raise IntegrityError(
                        f"{self.source}: {m.name} does not match its SHA-1 in the package "
                        f"({actual} != {expected}); the package is damaged or tampered with"
                    )
                checked += 1
        return checked


def member_sha1(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str | None:
    """SHA-1 hex as apk computes it: a file's content, a symlink's target; None for others."""
    if member.issym():
        return hashlib.sha1(member.linkname.encode("utf-8", "surrogateescape")).hexdigest()
    if not member.isfile():
        return None
    f = tar.extractfile(member)
    return hashlib.sha1(f.read() if f is not None else b"").hexdigest()


def _parse_pkginfo(text: str) -> list[tuple[str, str]]:
    # Like apk-tools: comments and lines without " = " are skipped, keys may repeat.
    pairs = []
    for line in text.splitlines():
        key, sep, value = line.partition(" = ")
        if sep and key and not key.startswith("#"):
            pairs.append((key.strip(), value.strip()))
    return pairs


def _control_members(stream: GzipStream, source: str) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(stream.content), mode="r:") as tar:
            for m in tar:
                f = tar.extractfile(m) if m.isfile() else None
                members[m.name] = f.read() if f is not None else b""
    except (tarfile.TarError, EOFError) as e:
        raise IntegrityError(f"{source}: the control tar is unreadable ({e})") from None
    return members


def read_apk(data: bytes, source: str = "package") -> ApkFile:
    """Parse an .apk v2 file (signed or not). Nothing is verified here: see verify_*.

    Damaged gzip or tar, or no .PKGINFO, raises IntegrityError (a downloaded package that does
    not parse was altered on the way); an apk v3 (ADB) package raises UnsupportedError.
    """
    if data[:4] == b"ADB." or data[:3] == b"ADB":
        raise UnsupportedError(f"{source}: an apk v3 (ADB) package; only apk v2 is handled")
    streams = split_gzip_streams(data, source)
    signatures: list[Signature] = []
    while streams and len(streams) > 2 and is_signature_stream(streams[0]):
        signatures.extend(read_signatures(streams.pop(0)))
    if len(streams) != 2:
        raise IntegrityError(
            f"{source}: expected control and data gzip streams after the signature, "
            f"found {len(streams)}; the file is not an apk v2 package or is damaged"
        )
    control, data_stream = streams
    members = _control_members(control, source)
    if ".PKGINFO" not in members:
        raise IntegrityError(f"{source}: no .PKGINFO in the control stream")
    pkginfo = _parse_pkginfo(members[".PKGINFO"].decode("utf-8", "replace"))
    scripts = {
        name[1:]: body
        for name, body in members.items()
        if name.startswith(".") and name != ".PKGINFO" and _is_script(name)
    }
    return ApkFile(
        source=source,
        size=len(data),
        signatures=signatures,
        control_stream=control.raw,
        data_stream=data_stream.raw,
        pkginfo=pkginfo,
        scripts=scripts,
        control_files=members,
    )


_SCRIPT_NAMES = frozenset(
    f".{s}"
    for s in (
        "pre-install",
        "post-install",
        "pre-upgrade",
        "post-upgrade",
        "pre-deinstall",
        "post-deinstall",
        "trigger",
    )
)


def _is_script(name: str) -> bool:
    return name in _SCRIPT_NAMES


def verify_checksum(apk: ApkFile, expected: str) -> None:
    """The package's C: must equal `expected` (from a verified APKINDEX); else IntegrityError."""
    if apk.checksum != expected:
        raise IntegrityError(
            f"{apk.source}: checksum {apk.checksum} does not match the index's {expected}; "
            "the package was altered or the index is stale"
        )


def verify_datahash(apk: ApkFile) -> bool:
    """Check .PKGINFO's datahash against the data stream; False when the package has none."""
    expected = apk.info("datahash")
    if not expected:
        return False
    if apk.data_sha256 != expected.lower():
        raise IntegrityError(
            f"{apk.source}: the data stream's SHA-256 {apk.data_sha256} is not the datahash "
            f"{expected} in .PKGINFO; the package was altered"
        )
    return True


def verify_package_signature(apk: ApkFile, keys: TrustedKeys) -> Signature:
    """The signature over the control stream that verifies with a trusted key; else exit 7."""
    return verify_signatures(apk.signatures, apk.control_stream, keys, f"package {apk.source}")


def _safe_name(name: str) -> bool:
    # apk-tools skips (and flags) absolute names, `.`/`..` parts and control characters.
    parts = name.split("/")
    return (
        not name.startswith("/")
        and "." not in parts
        and ".." not in parts
        and not any(ord(c) < 32 or c == "\x7f" for c in name)
    )


def recorded_member(name: str) -> bool:
    """Whether apk installs and records the data tar member `name` (see installed_package)."""
    name = name.rstrip("/")
    base = name.rpartition("/")[2]
    return (
        bool(name)
        and not name.startswith(".")
        and _safe_name(name)
        and not base.startswith(".keep_")
    )


def _acl(uid: int, gid: int, mode: int, default: tuple[int, int, int]) -> str | None:
    return None if (uid, gid, mode & 0o7777) == default else format_acl(uid, gid, mode)


class _DirTable:
    """The package's F: records in the order apk creates them (first use)."""

    def __init__(self, pkg: Package) -> None:
        self.pkg = pkg
        self.by_path: dict[str, DirEntry] = {}

    def get(self, path: str) -> DirEntry:
        entry = self.by_path.get(path)
        if entry is None:
            entry = self.by_path[path] = DirEntry(path=path)
            self.pkg.dirs.append(entry)
        return entry


def installed_package(
    apk: ApkFile,
    users: Mapping[str, int] | None = None,
    groups: Mapping[str, int] | None = None,
) -> Package:
    """The installed DB entry apk-tools writes after installing `apk`.

    Fields from installed_fields(); then, in data tar order, an F: for each directory (with M:
    unless 0:0:755) and an R: for each other member under the F: of its parent (a: unless
    0:0:644, Z: from its PAX SHA-1; a hard link takes its target's). Owners are resolved by
    name through `users`/`groups` (the image's /etc/passwd and /etc/group), else the tar's
    numeric ids, as apk does. Like apk, `.keep_*` files, names starting with '.', and unsafe
    names are left out. xattr checksums are not computed (see docs/apk.md).
    """
    users, groups = users or {}, groups or {}
    pkg = Package(fields=apk.installed_fields())
    dirs = _DirTable(pkg)
    sums: dict[str, str | None] = {}
    with apk.open_data() as tar:
        for m in tar:
            name = m.name.rstrip("/")
            if not name or name.startswith(".") or not _safe_name(name):
                continue
            uid, gid = users.get(m.uname, m.uid), groups.get(m.gname, m.gid)
            if m.isdir():
                dirs.get(name).acl = _acl(uid, gid, m.mode, DEFAULT_DIR_ACL)
                continue
            parent, _, base = name.rpartition("/")
            if base.startswith(".keep_"):
                continue
            sha1 = m.pax_headers.get(_CHECKSUM_PAX, "")
            checksum = q1_digest(bytes.fromhex(sha1)) if sha1 else None
            if m.islnk():
                checksum = sums.get(m.linkname.rstrip("/"), checksum)
            sums[name] = checksum
            acl = _acl(uid, gid, m.mode, DEFAULT_FILE_ACL)
            dirs.get(parent).files.append(FileEntry(name=base, acl=acl, checksum=checksum))
    return pkg


def script_entries(apk: ApkFile, mtime: int | None = None) -> list[ScriptEntry]:
    """The package's scripts as scripts.tar members, in apk-tools' order.

    apk-tools 2.14 stamps them with the package's build time; pass `mtime` to choose.
    """
    stamp = _uint(apk.info("builddate")) if mtime is None else mtime
    return [
        ScriptEntry(
            name=apk.name,
            version=apk.version,
            checksum=apk.checksum,
            action=action,
            data=apk.scripts[action],
            mtime=stamp,
        )
        for action in SCRIPT_ACTIONS
        if action in apk.scripts
    ]
