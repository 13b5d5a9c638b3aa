"""The `X:value` records shared by apk's installed DB and APKINDEX, dependencies, checksums.

A record is an ordered list of (letter, value) pairs kept exactly as read, unknown letters
included, so a record written back gives the same lines. Accessors read the letters apk-tools
knows (src/package.c apk_pkg_add_info): C checksum, P name, V version, A arch, S .apk size,
I installed size, T description, U url, L license, o origin, m maintainer, t build time,
c commit, k provider priority, D depends, p provides, i install_if; the installed DB adds
r replaces, q replaces priority, s repository tag, f broken flags.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from ocipatch.distro.apk.version import version_match

__all__ = [
    "CANONICAL_ORDER",
    "Dependency",
    "Record",
    "checksum_is_valid",
    "format_deps",
    "parse_deps",
    "q1",
    "q1_digest",
]

# The order apk-tools writes a package's own letters in (apk_pkg_write_index_header, then
# apk_db_write_fdb); letters outside it are appended after, in the order they were added.
CANONICAL_ORDER = "CPVASITULomtckDpirqsf"

_DEP_RE = re.compile(
    r"^(?P<conflict>!?)(?P<name>[^<>=~!\s]+?)(?P<op>[<>=~]+)?(?P<version>(?<=[<>=~]).+)?$"
)


def q1_digest(digest: bytes) -> str:
    """apk's text form of a SHA-1 digest: `Q1` + base64 (used by C: and Z:)."""
    return "Q1" + base64.b64encode(digest).decode("ascii")


def q1(data: bytes) -> str:
    """`Q1` + base64(SHA-1(data)): a file's Z: value, or a package's C: over its control stream."""
    return q1_digest(hashlib.sha1(data).digest())


def checksum_is_valid(value: str) -> bool:
    """A C:/Z: value apk can read: `Q1`+base64 of 20 bytes, `Q2`+base64 of 32, or md5/sha1 hex."""
    if value[:2] in ("Q1", "Q2"):
        try:
            raw = base64.b64decode(value[2:], validate=True)
        except (binascii.Error, ValueError):
            return False
        return len(raw) == (20 if value[1] == "1" else 32)
    return len(value) in (32, 40) and all(c in "0123456789abcdef" for c in value)


@dataclass(frozen=True)
class Dependency:
    """One `[!]name[@tag][op version]` item of a D:, p:, i:, r: line or of /etc/apk/world.

    `op` is one of `< <= = >= > ~ <~ >~` (or `><` with a checksum as version, apk's pin to
    one exact package); provides such as `so:libc.musl-x86_64.so.1=1` use `=`.
    """

    name: str
    op: str = ""
    version: str = ""
    conflict: bool = False
    tag: str = ""

    @classmethod
    def parse(cls, text: str) -> Dependency:
        """Parse one item; ValueError for an empty name or an operator without a version."""
        m = _DEP_RE.match(text)
        if m is None:
            raise ValueError(f"not an apk dependency: {text!r}")
        name, op, version = m["name"], m["op"] or "", m["version"] or ""
        if op and not version:
            raise ValueError(f"apk dependency without a version after {op!r}: {text!r}")
        # The version is kept even when apk's rules call it invalid: real indexes carry
        # `pc:librtmp=v2.4` and `opensmtpd=6.8.0p2-r4`; compare_versions orders them as apk does.
        name, _, tag = name.partition("@")
        return cls(name=name, op=op, version=version, conflict=bool(m["conflict"]), tag=tag)

    def __str__(self) -> str:
        tag = f"@{self.tag}" if self.tag else ""
        return f"{'!' if self.conflict else ''}{self.name}{tag}{self.op}{self.version}"

    def matches_version(self, version: str) -> bool:
        """Whether a package at `version` satisfies the version part (conflicts not inverted)."""
        if not self.op:
            return True
        if self.op == "><":
            return False  # a checksum pin: compare C: values instead
        return version_match(version, self.op, self.version)


def parse_deps(value: str) -> list[Dependency]:
    """The items of a space-separated dependency line (D:, p:, i:, r:, world)."""
    return [Dependency.parse(item) for item in value.split()]


def format_deps(deps: list[Dependency]) -> str:
    return " ".join(str(d) for d in deps)


@dataclass
class Record:
    """Ordered `X:value` fields of one package (installed DB block or APKINDEX entry)."""

    fields: list[tuple[str, str]] = field(default_factory=list)

    def get(self, letter: str, default: str = "") -> str:
        """The value of the first `letter:` line, or `default` when there is none."""
        for key, value in self.fields:
            if key == letter:
                return value
        return default

    def has(self, letter: str) -> bool:
        return any(key == letter for key, _ in self.fields)

    def set(self, letter: str, value: str) -> None:
        """Replace the first `letter:` line in place, or add it where apk-tools would write it."""
        for i, (key, _) in enumerate(self.fields):
            if key == letter:
                self.fields[i] = (letter, value)
                return
        self.fields.insert(self._insert_at(letter), (letter, value))

    def remove(self, letter: str) -> None:
        self.fields = [(k, v) for k, v in self.fields if k != letter]

    def _insert_at(self, letter: str) -> int:
        # After the last present letter that apk writes before this one.
        rank = CANONICAL_ORDER.find(letter)
        if rank < 0:
            return len(self.fields)
        at = 0
        for i, (key, _) in enumerate(self.fields):
            if 0 <= CANONICAL_ORDER.find(key) < rank:
                at = i + 1
        return at

    def _int(self, letter: str) -> int:
        value = self.get(letter)
        return int(value) if value.isdigit() else 0

    def _deps(self, letter: str) -> list[Dependency]:
        return parse_deps(self.get(letter))

    @property
    def name(self) -> str:
        return self.get("P")

    @property
    def version(self) -> str:
        return self.get("V")

    @property
    def arch(self) -> str:
        return self.get("A")

    @property
    def checksum(self) -> str:
        """The C: value: Q1 + base64(SHA-1 of the package's compressed control stream)."""
        return self.get("C")

    @property
    def origin(self) -> str:
        return self.get("o") or self.name

    @property
    def size(self) -> int:
        """S: the size of the .apk file in bytes."""
        return self._int("S")

    @property
    def installed_size(self) -> int:
        return self._int("I")

    @property
    def depends(self) -> list[Dependency]:
        return self._deps("D")

    @property
    def provides(self) -> list[Dependency]:
        return self._deps("p")

    @property
    def install_if(self) -> list[Dependency]:
        # apko writes `i:[]` for "none"; apk would read `[]` as a name no package has.
        value = self.get("i")
        return [] if value == "[]" else parse_deps(value)

    @property
    def replaces(self) -> list[Dependency]:
        return self._deps("r")

    @property
    def provider_priority(self) -> int:
        return self._int("k")

    @property
    def filename(self) -> str:
        """The .apk name in a repository: `<name>-<version>.apk`."""
        return f"{self.name}-{self.version}.apk"

    def lines(self) -> Iterator[str]:
        for key, value in self.fields:
            yield f"{key}:{value}"
