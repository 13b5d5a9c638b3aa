"""Release files and Packages indices, parsed with python-debian.

A Packages index of a full suite (bookworm main: 63k stanzas, 50 MB) takes python-debian ~7 s
to parse whole, so the index is only split into stanzas and scanned for Package and Provides
(0.1 s); a stanza is parsed with python-debian when the resolver first asks for its package.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property

from debian.deb822 import Packages, PkgRelation, Release

from ocipatch.distro.deb.db import control_lines, relation_problem
from ocipatch.distro.deb.rules import is_deb_version
from ocipatch.errors import IntegrityError

# Priorities apt gives a suite (apt_preferences(5)); no pinning files are read.
PRIORITY_DEFAULT = 500
PRIORITY_AUTOMATIC_UPGRADES = 100  # NotAutomatic + ButAutomaticUpgrades (backports)
PRIORITY_NOT_AUTOMATIC = 1  # NotAutomatic alone (experimental)
PRIORITY_INSTALLED = 100  # dpkg's status file
# apt accepts a Release dated up to this far in the future (Acquire::Max-FutureTime).
MAX_FUTURE = timedelta(seconds=10)


@dataclass(frozen=True)
class IndexFile:
    path: str  # relative to dists/SUITE/ (or the flat directory)
    sha256: str  # hex
    size: int


@dataclass(frozen=True)
class ReleaseInfo:
    """What a verified Release says about its suite."""

    url: str  # where the Release came from (after mirror rewriting)
    origin: str = ""
    label: str = ""
    suite: str = ""
    codename: str = ""
    date: datetime | None = None
    valid_until: datetime | None = None
    acquire_by_hash: bool = False
    not_automatic: bool = False
    but_automatic_upgrades: bool = False
    architectures: tuple[str, ...] = ()
    components: tuple[str, ...] = ()
    files: dict[str, IndexFile] = field(default_factory=dict, compare=False, hash=False)

    @property
    def priority(self) -> int:
        if self.not_automatic:
            return (
                PRIORITY_AUTOMATIC_UPGRADES
                if self.but_automatic_upgrades
                else PRIORITY_NOT_AUTOMATIC
            )
        return PRIORITY_DEFAULT

    @property
    def name(self) -> str:
        return self.codename or self.suite or self.url


def _date(value: str | None, what: str, url: str) -> datetime | None:
    if not value:
        return None
    try:
        d = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError):
        raise IntegrityError(f"Release file {url}: unreadable {what} {value!r}") from None
    return d if d.tzinfo is not None else d.replace(tzinfo=UTC)


def parse_release(text: str, url: str) -> ReleaseInfo:
    rel = Release(control_lines(text))
    files: dict[str, IndexFile] = {}
    entries = rel.get("SHA256", [])
    # python-debian gives a dict, not a list of them, for a one-line field ("SHA256: x").
    for entry in [entries] if isinstance(entries, Mapping) else entries:
        try:
            files[entry["name"]] = IndexFile(
                entry["name"], entry["sha256"].lower(), int(entry["size"])
            )
        except (KeyError, ValueError):
            raise IntegrityError(f"Release file {url}: malformed SHA256 line {entry!r}") from None
    if not files:
        raise IntegrityError(
            f"Release file {url} lists no SHA256 checksums: ocipatch accepts only SHA256-indexed "
            "repositories"
        )

    def yes(name: str) -> bool:
        return str(rel.get(name, "")).strip().lower() == "yes"

    return ReleaseInfo(
        url=url,
        origin=str(rel.get("Origin", "")),
        label=str(rel.get("Label", "")),
        suite=str(rel.get("Suite", "")),
        codename=str(rel.get("Codename", "")),
        date=_date(rel.get("Date"), "Date", url),
        valid_until=_date(rel.get("Valid-Until"), "Valid-Until", url),
        acquire_by_hash=yes("Acquire-By-Hash"),
        not_automatic=yes("NotAutomatic"),
        but_automatic_upgrades=yes("ButAutomaticUpgrades"),
        architectures=tuple(str(rel.get("Architectures", "")).split()),
        components=tuple(str(rel.get("Components", "")).split()),
        files=files,
    )


def check_dates(info: ReleaseInfo, now: datetime, *, check_valid_until: bool = True) -> None:
    """apt's date checks: not expired (Valid-Until), not from the future (Date)."""
    if check_valid_until and info.valid_until is not None and now > info.valid_until:
        raise IntegrityError(
            f"Release file {info.url} is expired (invalid since "
            f"{_ago(now - info.valid_until)} ago, Valid-Until {_fmt(info.valid_until)}): the "
            "mirror is stale or frozen; resync it (or, for a frozen snapshot, set "
            "check-valid-until=no on the source)"
        )
    if info.date is not None and info.date - now > MAX_FUTURE:
        raise IntegrityError(
            f"Release file {info.url} is not valid yet (Date {_fmt(info.date)} is "
            f"{_ago(info.date - now)} ahead of this machine's clock): check the system clock"
        )


def _fmt(d: datetime) -> str:
    return d.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(delta: timedelta) -> str:
    s = int(delta.total_seconds())
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    return (
        " ".join(f"{n}{u}" for n, u in ((days, "d"), (hours, "h"), (minutes, "min")) if n)
        or f"{s}s"
    )


# --- relations -----------------------------------------------------------------------------

_OPS = {"<": "<=", ">": ">="}  # the deprecated spellings


@dataclass(frozen=True)
class Relation:
    """One alternative of a dependency: NAME[:ARCHQUAL] [(OP VERSION)]."""

    name: str
    op: str | None = None  # "<<" "<=" "=" ">=" ">>"
    version: str | None = None
    archqual: str | None = None

    def __str__(self) -> str:
        q = f":{self.archqual}" if self.archqual else ""
        return f"{self.name}{q}" + (f" ({self.op} {self.version})" if self.op else "")


Group = tuple[Relation, ...]  # alternatives: any one satisfies it


def parse_relations(text: str | None) -> tuple[Group, ...]:
    """The groups of a relation field; ValueError for an alternative python-debian could not
    parse, or a version that is not a Debian version (comparing it would fail later)."""
    if not text or not text.strip():
        return ()
    out: list[Group] = []
    for group in PkgRelation.parse_relations(text):
        alts = []
        for alt in group:
            ver = alt.get("version")
            problem = relation_problem(alt)
            if problem:
                raise ValueError(problem)
            op, version = (_OPS.get(ver[0], ver[0]), ver[1]) if ver else (None, None)
            alts.append(Relation(alt["name"], op, version, alt.get("archqual")))
        if alts:
            out.append(tuple(alts))
    return tuple(out)


def group_text(group: Group) -> str:
    return " | ".join(str(r) for r in group)


def parse_provides(text: str | None) -> tuple[tuple[str, str | None], ...]:
    """(virtual name, provided version or None); only `=` is allowed in Provides."""
    return tuple(
        (g[0].name, g[0].version if g[0].op == "=" else None) for g in parse_relations(text)
    )


# --- packages ------------------------------------------------------------------------------


def source_of(field: str | None, name: str, version: str) -> tuple[str, str]:
    """(source name, source version) from a Source field: `NAME`, `NAME (VERSION)`, or absent
    (then the binary's own name and version)."""
    if not field or not field.strip():
        return name, version
    src, _, rest = field.strip().partition(" ")
    v = rest.strip()
    return src, v[1:-1].strip() if v.startswith("(") and v.endswith(")") else version


@dataclass(frozen=True)
class PackageRecord:
    """One package version offered by a suite."""

    name: str
    version: str
    arch: str
    filename: str
    sha256: str
    size: int
    depends: tuple[Group, ...]
    pre_depends: tuple[Group, ...]
    provides: tuple[tuple[str, str | None], ...]
    breaks: tuple[Group, ...]
    conflicts: tuple[Group, ...]
    multi_arch: str
    source: str  # the source package's name and version (Source: NAME (VERSION))
    source_version: str
    release: ReleaseInfo = field(compare=False, hash=False)
    base_url: str = ""  # the archive root that Filename is relative to

    @property
    def url(self) -> str:
        return f"{self.base_url.rstrip('/')}/{self.filename.lstrip('/')}"

    @property
    def priority(self) -> int:
        return self.release.priority


def _record(stanza: bytes, release: ReleaseInfo, base_url: str) -> PackageRecord:
    p = Packages(control_lines(stanza.decode("utf-8", "replace")))
    try:
        version = p["Version"].strip()
        if not is_deb_version(version):
            raise ValueError(f"Version {version!r}")
        return PackageRecord(
            name=p["Package"].strip(),
            version=version,
            arch=p.get("Architecture", "all").strip(),
            filename=p["Filename"].strip(),
            sha256=p["SHA256"].strip().lower(),
            size=int(p["Size"]),
            depends=parse_relations(p.get("Depends")),
            pre_depends=parse_relations(p.get("Pre-Depends")),
            provides=parse_provides(p.get("Provides")),
            breaks=parse_relations(p.get("Breaks")),
            conflicts=parse_relations(p.get("Conflicts")),
            multi_arch=p.get("Multi-Arch", "no").strip(),
            source=source_of(p.get("Source"), p["Package"].strip(), p["Version"].strip())[0],
            source_version=source_of(p.get("Source"), "", p["Version"].strip())[1],
            release=release,
            base_url=base_url,
        )
    except (KeyError, ValueError) as e:
        name = p.get("Package", "?")
        raise IntegrityError(
            f"Packages index of {release.url}: stanza of {name} lacks or garbles {e}"
        ) from None


_SEPARATOR = re.compile(rb"\n(?:[ \t]*\n)+")
_PACKAGE = re.compile(rb"^Package:[ \t]*(\S+)", re.M)
_PROVIDES = re.compile(rb"^Provides:(.*(?:\n[ \t].*)*)", re.M)


def _stanza_spans(data: bytes) -> Iterator[tuple[int, int]]:
    start = 0
    for sep in _SEPARATOR.finditer(data):
        yield start, sep.start()
        start = sep.end()
    if start < len(data):
        yield start, len(data)


class PackagesIndex:
    """One verified Packages file: stanzas by package name, parsed on first use."""

    def __init__(self, data: bytes, release: ReleaseInfo, base_url: str) -> None:
        self.release = release
        self.base_url = base_url
        # The file is kept once; stanzas are (start, end) offsets into it, sliced when a
        # package is looked up: a 45 MB index costs 45 MB, not twice that in slices.
        self._data = data
        self._raw: dict[str, list[tuple[int, int]]] = {}
        self.provided: dict[str, set[str]] = {}  # virtual name -> names that may provide it
        for start, end in _stanza_spans(data):
            m = _PACKAGE.search(data, start, end)
            if not m:
                continue
            name = m.group(1).decode("utf-8", "replace")  # as _record reads it
            self._raw.setdefault(name, []).append((start, end))
            pm = _PROVIDES.search(data, start, end)
            if pm:
                for virtual in re.split(rb",", pm.group(1)):
                    v = virtual.strip().split(b"(")[0].split(b":")[0].strip()
                    if v:
                        self.provided.setdefault(v.decode("utf-8", "replace"), set()).add(name)
        self._parsed: dict[str, list[PackageRecord]] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._raw

    def __len__(self) -> int:
        return len(self._raw)

    def names(self) -> Iterator[str]:
        return iter(self._raw)

    def get(self, name: str) -> list[PackageRecord]:
        if name not in self._parsed:
            self._parsed[name] = [
                _record(self._data[a:b], self.release, self.base_url)
                for a, b in self._raw.get(name, [])
            ]
        return self._parsed[name]

    @cached_property
    def stanza_count(self) -> int:
        return sum(len(v) for v in self._raw.values())
