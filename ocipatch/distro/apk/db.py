"""apk's state files inside an image: the installed DB, world, repositories, triggers, scripts.tar.

`lib/apk/db/installed` (apko writes `usr/lib/apk/db/installed` on usr-merged roots) is one
block of `X:value` lines per package, blocks separated by a blank line. A block holds the
package's own letters (see records.py), then its file records: `F:dir` (relative, no leading
`/`; empty = the root), `M:uid:gid:mode[:xattr-checksum]` when the dir is not 0:0:755,
`R:file` in the last F, `a:uid:gid:mode[:xattr]` when the file is not 0:0:644, `Z:` checksum
(Q1 + base64 SHA-1 of the content, or of the target for a symlink). This module keeps every
line it reads (unknown letters, apko's field order, apko's `0755` modes, a missing final blank
line) so `serialize_installed(read_installed(b))` is `b` byte for byte; a changed package is
written the way apk-tools writes it (apk_db_write_fdb in src/database.c).

Damaged input raises ImageFormatError naming the file and line.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ocipatch.distro.apk.records import Dependency, Record, checksum_is_valid
from ocipatch.distro.apk.version import is_valid_version
from ocipatch.errors import ImageFormatError

__all__ = [
    "INSTALLED_PATHS",
    "SCRIPTS_PATHS",
    "SCRIPT_ACTIONS",
    "TRIGGERS_PATHS",
    "DirEntry",
    "FileEntry",
    "InstalledDb",
    "Package",
    "RepositoriesFile",
    "RepositoryLine",
    "ScriptEntry",
    "TriggerEntry",
    "parse_acl",
    "read_installed",
    "read_repositories",
    "read_scripts_tar",
    "read_triggers",
    "read_world",
    "replace_scripts",
    "serialize_installed",
    "serialize_repositories",
    "serialize_scripts_tar",
    "serialize_triggers",
    "serialize_world",
]

# Where apk (and apko, on usr-merged roots) keeps its state, relative to the image root.
INSTALLED_PATHS = ("lib/apk/db/installed", "usr/lib/apk/db/installed")
TRIGGERS_PATHS = ("lib/apk/db/triggers", "usr/lib/apk/db/triggers")
SCRIPTS_PATHS = ("lib/apk/db/scripts.tar", "usr/lib/apk/db/scripts.tar")

DEFAULT_DIR_ACL = (0, 0, 0o755)
DEFAULT_FILE_ACL = (0, 0, 0o644)
_NUMERIC = frozenset("SItkq")
_FILE_LETTERS = frozenset("FMRaZ")
_FIX = "the image's apk database is damaged; rebuild the image or restore the file"


def parse_acl(acl: str) -> tuple[int, int, int, str]:
    """(uid, gid, mode, xattr checksum or "") of an `M:`/`a:` value `uid:gid:mode[:xattr]`.

    Raises ValueError for anything else. The mode is octal, with or without a leading 0.
    """
    parts = acl.split(":", 3)
    if len(parts) < 3 or not all(p.isdigit() for p in parts[:3]):
        raise ValueError(f"not an apk acl (uid:gid:mode): {acl!r}")
    if any(c not in "01234567" for c in parts[2]):
        raise ValueError(f"apk acl mode is not octal: {acl!r}")
    return int(parts[0]), int(parts[1]), int(parts[2], 8), parts[3] if len(parts) > 3 else ""


def format_acl(uid: int, gid: int, mode: int, xattr: str = "") -> str:
    """An acl value as apk-tools writes it (mode in octal without a leading 0)."""
    return f"{uid}:{gid}:{mode & 0o7777:o}" + (f":{xattr}" if xattr else "")


@dataclass
class FileEntry:
    """An `R:` record: a file (or symlink, device...) in its directory, with acl and checksum."""

    name: str
    acl: str | None = None
    checksum: str | None = None
    # Lines of letters this module does not know, kept where they were for round-trips.
    extra: list[tuple[str, str]] = field(default_factory=list)

    @property
    def owner_mode(self) -> tuple[int, int, int]:
        """(uid, gid, mode) of the file; apk's default is 0:0:644."""
        return parse_acl(self.acl)[:3] if self.acl else DEFAULT_FILE_ACL


@dataclass
class DirEntry:
    """An `F:` record: a directory the package owns, its acl and the files in it."""

    path: str
    acl: str | None = None
    files: list[FileEntry] = field(default_factory=list)
    extra: list[tuple[str, str]] = field(default_factory=list)

    @property
    def owner_mode(self) -> tuple[int, int, int]:
        """(uid, gid, mode) of the directory; apk's default is 0:0:755."""
        return parse_acl(self.acl)[:3] if self.acl else DEFAULT_DIR_ACL


@dataclass
class Package(Record):
    """One installed package: its fields (records.Record) and the dirs and files it owns."""

    dirs: list[DirEntry] = field(default_factory=list)
    # Blank lines after the block (1 normally; 0 when a file ends right after it).
    blank_lines_after: int = field(default=1, compare=False)

    def files(self) -> Iterator[tuple[str, FileEntry]]:
        """(path relative to the root, entry) for every R: record."""
        for d in self.dirs:
            for f in d.files:
                yield (f"{d.path}/{f.name}" if d.path else f.name), f

    def paths(self) -> list[str]:
        return [path for path, _ in self.files()]

    def block_lines(self) -> Iterator[str]:
        """The lines of this package's block, as apk-tools writes them (no trailing blank)."""
        yield from self.lines()
        for d in self.dirs:
            yield f"F:{d.path}"
            if d.acl is not None:
                yield f"M:{d.acl}"
            yield from (f"{k}:{v}" for k, v in d.extra)
            for f in d.files:
                yield f"R:{f.name}"
                if f.acl is not None:
                    yield f"a:{f.acl}"
                if f.checksum is not None:
                    yield f"Z:{f.checksum}"
                yield from (f"{k}:{v}" for k, v in f.extra)


@dataclass
class InstalledDb:
    """The whole installed DB: packages in file order."""

    packages: list[Package] = field(default_factory=list)
    path: str = "lib/apk/db/installed"
    # False when the last line has no newline (only seen in hand-cut files).
    final_newline: bool = field(default=True, compare=False)
    # Blank lines before the first package: apk skips them; kept for round-trips.
    leading_blank_lines: int = field(default=0, compare=False)

    def get(self, name: str) -> Package | None:
        for pkg in self.packages:
            if pkg.name == name:
                return pkg
        return None

    def put(self, pkg: Package) -> None:
        """Add `pkg`, replacing the installed package of the same name in its place.

        A new name goes where apk would write it: apk-tools >= 2.14 keeps the file sorted by
        name (case-insensitive first), older ones in install order, so it is inserted in name
        order when the file is sorted and appended otherwise.
        """
        for i, old in enumerate(self.packages):
            if old.name == pkg.name:
                pkg.blank_lines_after = old.blank_lines_after
                self.packages[i] = pkg
                return
        keys = [_display_key(p.name) for p in self.packages]
        if keys == sorted(keys):
            at = sum(1 for k in keys if k <= _display_key(pkg.name))
        else:
            at = len(self.packages)
        if at == len(self.packages) and self.packages and not self.packages[-1].blank_lines_after:
            self.packages[-1].blank_lines_after, pkg.blank_lines_after = 1, 0
        self.packages.insert(at, pkg)

    def remove(self, name: str) -> Package | None:
        """Take the package `name` out of the DB; the removed package, or None."""
        for i, old in enumerate(self.packages):
            if old.name == name:
                del self.packages[i]
                if i == len(self.packages) and self.packages:
                    self.packages[-1].blank_lines_after = old.blank_lines_after
                return old
        return None

    def owners(self) -> dict[str, Package]:
        """Every R: path (relative, no leading /) and the package that owns it."""
        return {path: pkg for pkg in self.packages for path in pkg.paths()}

    def owner_of(self, path: str) -> Package | None:
        """The package whose R: records list `path` (a leading / is ignored)."""
        return self.owners().get(path.lstrip("/"))


def _display_key(name: str) -> tuple[str, str]:
    # apk_name_cmp_display: strcasecmp, then strcmp
    return name.lower(), name


class _DbParser:
    """Line-by-line reader of the installed DB; keeps the state apk's reader keeps."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.db = InstalledDb(path=path)
        self.pkg: Package | None = None
        self.dir: DirEntry | None = None
        self.file: FileEntry | None = None
        self.lineno = 0

    def fail(self, what: str, line: str | None = None) -> ImageFormatError:
        shown = f" ({line[:60]!r})" if line is not None else ""
        return ImageFormatError(f"{self.path} line {self.lineno}: {what}{shown}; {_FIX}")

    def feed(self, line: str) -> None:
        self.lineno += 1
        if not line:
            self.end_block()
            return
        if "\0" in line:
            raise self.fail("binary data in a text database")
        if len(line) < 2 or line[1] != ":":
            raise self.fail("expected an 'X:value' line", line)
        letter, value = line[0], line[2:]
        if self.pkg is None:
            self.pkg = Package()
            self.db.packages.append(self.pkg)
        if letter in _FILE_LETTERS:
            self.file_record(letter, value, line)
        elif self.dir is not None:
            # A package letter after the file records: keep it where it stands.
            (self.file or self.dir).extra.append((letter, value))
        else:
            self.check_value(letter, value, line)
            self.pkg.fields.append((letter, value))

    def check_value(self, letter: str, value: str, line: str) -> None:
        if letter in _NUMERIC and value and not value.isdigit():
            raise self.fail(f"{letter}: is not a number", line)
        if letter == "C" and not checksum_is_valid(value):
            raise self.fail("C: is not an apk checksum (truncated?)", line)

    def file_record(self, letter: str, value: str, line: str) -> None:
        assert self.pkg is not None
        if not self.pkg.name:
            raise self.fail(f"file record {letter}: before the package's P: line", line)
        if letter == "F":
            self.dir = DirEntry(path=value)
            self.file = None
            self.pkg.dirs.append(self.dir)
            return
        if self.dir is None:
            raise self.fail(f"{letter}: before any F: directory record", line)
        if letter == "R":
            self.file = FileEntry(name=value)
            self.dir.files.append(self.file)
        elif letter == "M":
            self.check_acl(value, line)
            self.dir.acl = value
        elif self.file is None:
            raise self.fail(f"{letter}: before any R: file record", line)
        elif letter == "a":
            self.check_acl(value, line)
            self.file.acl = value
        else:
            if not checksum_is_valid(value):
                raise self.fail("Z: is not an apk checksum (truncated?)", line)
            self.file.checksum = value

    def check_acl(self, value: str, line: str) -> None:
        try:
            parse_acl(value)
        except ValueError:
            raise self.fail("bad acl, expected uid:gid:mode", line) from None

    def end_block(self) -> None:
        if self.pkg is None:
            if self.db.packages:
                self.db.packages[-1].blank_lines_after += 1
            else:
                self.db.leading_blank_lines += 1
            return
        if not self.pkg.name or not self.pkg.version:
            raise self.fail("package block without P: name or V: version (truncated?)")
        self.pkg, self.dir, self.file = None, None, None

    def finish(self) -> InstalledDb:
        if self.pkg is not None:
            self.end_block()
            self.db.packages[-1].blank_lines_after = 0
        return self.db


def read_installed(data: bytes, path: str = INSTALLED_PATHS[0]) -> InstalledDb:
    """Parse an installed DB. `path` (as in the image) is only used in error messages."""
    text = data.decode("utf-8", errors="surrogateescape")
    parser = _DbParser(path)
    lines = text.split("\n")
    final_newline = lines[-1] == ""
    if final_newline:
        lines.pop()
    for line in lines:
        parser.feed(line)
    db = parser.finish()
    db.final_newline = final_newline or not lines
    return db


def serialize_installed(db: InstalledDb) -> bytes:
    """The DB as bytes; an unchanged DB gives back exactly the bytes it was read from."""
    out: list[str] = ["\n" * db.leading_blank_lines]
    for pkg in db.packages:
        out.extend(line + "\n" for line in pkg.block_lines())
        out.append("\n" * pkg.blank_lines_after)
    text = "".join(out)
    if not db.final_newline and text.endswith("\n"):
        text = text[:-1]
    return text.encode("utf-8", errors="surrogateescape")


# --- /etc/apk/world ----------------------------------------------------------------------------


def read_world(data: bytes, path: str = "etc/apk/world") -> list[Dependency]:
    """The packages asked for: one `name[@tag][op version]` per line (apk accepts any space)."""
    try:
        return [Dependency.parse(item) for item in data.decode("utf-8").split()]
    except (UnicodeDecodeError, ValueError) as e:
        raise ImageFormatError(f"{path}: {e}; fix the file in the image") from None


def serialize_world(deps: Iterable[Dependency]) -> bytes:
    """World as apk-tools writes it: one item per line, sorted by apk (keep the given order)."""
    return "".join(f"{d}\n" for d in deps).encode("utf-8")


# --- /etc/apk/repositories ---------------------------------------------------------------------


@dataclass
class RepositoryLine:
    """One line of /etc/apk/repositories; `url` is "" for comments and blank lines.

    `@tag url` pins a repository: only packages asked for as `name@tag` come from it.
    """

    text: str
    url: str = ""
    tag: str = ""

    def with_url(self, url: str) -> RepositoryLine:
        """The same line pointing elsewhere (e.g. --repo-mirror), tag and spacing kept."""
        return RepositoryLine(text=self.text.replace(self.url, url, 1), url=url, tag=self.tag)


@dataclass
class RepositoriesFile:
    lines: list[RepositoryLine] = field(default_factory=list)

    @property
    def repositories(self) -> list[RepositoryLine]:
        return [line for line in self.lines if line.url]


def _repository_line(text: str) -> RepositoryLine:
    words = text.split()
    if not words or words[0].startswith("#"):
        return RepositoryLine(text=text)
    tag = ""
    if words[0].startswith("@"):
        tag, words = words[0][1:], words[1:]
    # apk 3 also accepts `[v2|v3] url [component...]`: the URL is the first word with a scheme.
    url = next((w for w in words if "://" in w or w.startswith("/")), words[0] if words else "")
    return RepositoryLine(text=text, url=url, tag=tag)


def read_repositories(data: bytes, path: str = "etc/apk/repositories") -> RepositoriesFile:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ImageFormatError(f"{path}: not a text file; fix the file in the image") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return RepositoriesFile(lines=[_repository_line(line) for line in lines])


def serialize_repositories(repos: RepositoriesFile) -> bytes:
    return "".join(line.text + "\n" for line in repos.lines).encode("utf-8")


# --- lib/apk/db/triggers -----------------------------------------------------------------------


@dataclass
class TriggerEntry:
    """A package (by C: checksum) and the directory globs whose change runs its trigger."""

    checksum: str
    globs: list[str] = field(default_factory=list)


def read_triggers(data: bytes, path: str = TRIGGERS_PATHS[0]) -> list[TriggerEntry]:
    entries = []
    for lineno, line in enumerate(data.decode("utf-8", errors="surrogateescape").splitlines(), 1):
        words = line.split()
        if not words:
            continue
        if not checksum_is_valid(words[0]):
            raise ImageFormatError(
                f"{path} line {lineno}: expected '<checksum> <glob>...' ({line[:60]!r}); {_FIX}"
            )
        entries.append(TriggerEntry(checksum=words[0], globs=words[1:]))
    return entries


def serialize_triggers(entries: Iterable[TriggerEntry]) -> bytes:
    return "".join(" ".join([e.checksum, *e.globs]) + "\n" for e in entries).encode("utf-8")


# --- lib/apk/db/scripts.tar --------------------------------------------------------------------


@dataclass
class ScriptEntry:
    """A stored maintainer script: member `<name>-<version>.<checksum>.<action>`."""

    name: str
    version: str
    checksum: str
    action: str  # pre-install, post-install, pre-upgrade, post-upgrade, pre-deinstall, ..., trigger
    data: bytes
    mode: int = 0o755
    mtime: int = 0
    uid: int = 0
    gid: int = 0
    uname: str = "root"
    gname: str = "root"

    @property
    def member_name(self) -> str:
        return f"{self.name}-{self.version}.{self.checksum}.{self.action}"


# apk-tools' script order (apk_script_types): the order of one package's members in scripts.tar.
SCRIPT_ACTIONS = (
    "pre-install",
    "post-install",
    "pre-deinstall",
    "post-deinstall",
    "pre-upgrade",
    "post-upgrade",
    "trigger",
)


def replace_scripts(
    entries: list[ScriptEntry], name: str, new: list[ScriptEntry]
) -> list[ScriptEntry]:
    """scripts.tar entries with package `name`'s scripts replaced by `new`, in its old place.

    apk keeps the members in install order; an upgraded package keeps its position, a new
    one goes last. `new` may be empty (a package without scripts, or one removed).
    """
    first = next((i for i, e in enumerate(entries) if e.name == name), len(entries))
    kept = [e for e in entries if e.name != name]
    at = sum(1 for e in entries[:first] if e.name != name)
    return kept[:at] + new + kept[at:]


def split_script_name(member: str) -> tuple[str, str, str, str]:
    """(name, version, checksum, action) of a scripts.tar member name; ValueError if not one.

    The checksum may contain '/' and '.', so it is found by its fixed length from the right;
    the version is the shortest valid apk version after a '-' (names may contain '-').
    """
    base, _, action = member.rpartition(".")
    for size in (30, 46, 32, 40):  # Q1 + 28, Q2 + 44, md5 hex, sha1 hex
        if len(base) > size and base[-size - 1] == "." and checksum_is_valid(base[-size:]):
            nameversion, checksum = base[: -size - 1], base[-size:]
            break
    else:
        raise ValueError(f"not <name>-<version>.<checksum>.<action>: {member!r}")
    cuts = [i for i, c in enumerate(nameversion) if c == "-" and i > 0]
    valid = [i for i in cuts if is_valid_version(nameversion[i + 1 :])]
    if not valid or not action:
        raise ValueError(f"not <name>-<version>.<checksum>.<action>: {member!r}")
    cut = valid[-1]
    return nameversion[:cut], nameversion[cut + 1 :], checksum, action


def read_scripts_tar(data: bytes, path: str = SCRIPTS_PATHS[0]) -> list[ScriptEntry]:
    """The scripts in tar order; an unreadable tar or member name raises ImageFormatError."""
    entries = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                fobj = tar.extractfile(member)
                content = fobj.read() if fobj is not None else b""
                name, version, checksum, action = split_script_name(member.name)
                entries.append(
                    ScriptEntry(
                        name=name,
                        version=version,
                        checksum=checksum,
                        action=action,
                        data=content,
                        mode=member.mode,
                        mtime=int(member.mtime),
                        uid=member.uid,
                        gid=member.gid,
                        uname=member.uname,
                        gname=member.gname,
                    )
                )
    except (tarfile.TarError, ValueError, EOFError) as e:
        raise ImageFormatError(f"{path}: not a readable apk scripts.tar ({e}); {_FIX}") from None
    return entries


def _octal(value: int, width: int) -> bytes:
    # apk's put_octal: width-1 zero-padded octal digits and a NUL.
    return b"%0*o\0" % (width - 1, value)


def _tar_header(name: bytes, entry: ScriptEntry, size: int, typeflag: bytes) -> bytes:
    """A header as apk-tools' apk_tar_write_entry makes it (GNU magic, zeroed dev fields)."""
    hdr = bytearray(512)
    hdr[0 : len(name[:100])] = name[:100]
    hdr[100:108] = _octal(entry.mode & 0o7777, 8)
    hdr[108:116] = _octal(entry.uid, 8)
    hdr[116:124] = _octal(entry.gid, 8)
    hdr[124:136] = _octal(size, 12)
    hdr[136:148] = _octal(entry.mtime, 12)
    hdr[148:156] = b" " * 8
    hdr[156:157] = typeflag
    hdr[257:265] = b"ustar  \0"
    uname, gname = entry.uname.encode()[:31], entry.gname.encode()[:31]
    hdr[265 : 265 + len(uname)] = uname
    hdr[297 : 297 + len(gname)] = gname
    hdr[148:155] = _octal(sum(hdr), 7)
    return bytes(hdr)


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


def serialize_scripts_tar(entries: Iterable[ScriptEntry]) -> bytes:
    """scripts.tar as apk-tools writes it; the same entries always give the same bytes.

    Names longer than 99 bytes (apk-tools would cut them) get a GNU long-name record, which
    apk's and every other tar reader understand.
    """
    out = bytearray()
    for entry in entries:
        name = entry.member_name.encode("utf-8")
        if len(name) > 99:
            long_name = name + b"\0"
            out += _tar_header(b"././@LongLink", entry, len(long_name), b"L")
            out += _padded(long_name)
        out += _tar_header(name, entry, len(entry.data), b"0")
        out += _padded(entry.data)
    out += b"\0" * 1024
    return bytes(out)
