"""An image's apt sources, read from its rootfs: deb822 `*.sources` and one-line `*.list`.

Only what apt itself would use is returned by `read_sources`: `deb` entries (not `deb-src`),
enabled, in apt's reading order (sources.list, then sources.list.d/ by name). Files are read
through `image_path` (fs/rootpath.py resolve_in_root), so a symlink in the image can never
make us read a host file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ocipatch.errors import UnsupportedError
from ocipatch.fs import rootpath

INLINE_KEY_MARK = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
# apt ignores files in sources.list.d whose names hold anything else.
_PART_NAME = re.compile(r"^[A-Za-z0-9_.\-]+\.(list|sources)$")


@dataclass(frozen=True)
class AptSource:
    """One deb822 stanza or one one-line entry (a one-line entry has one URI and one suite)."""

    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str = ""  # keyring path(s) / fingerprints, or an inline armored key block
    architectures: tuple[str, ...] = ()  # empty: every architecture
    trusted: bool = False  # [trusted=yes]: apt accepts the repository unsigned
    check_valid_until: bool = True
    enabled: bool = True
    where: str = ""  # "FILE:LINE", for messages

    @property
    def inline_key(self) -> bool:
        return INLINE_KEY_MARK in self.signed_by

    def repos(self) -> list[tuple[str, str]]:
        """(uri, suite) pairs, in the stanza's order (deb822 allows several of each)."""
        return [(u, s) for u in self.uris for s in self.suites]

    def for_arch(self, arch: str) -> bool:
        return not self.architectures or arch in self.architectures


def _bool(value: str, default: bool) -> bool:
    v = value.strip().lower()
    if v in ("yes", "true", "with", "on", "enable", "1"):
        return True
    if v in ("no", "false", "without", "off", "disable", "0"):
        return False
    return default


def _words(value: str) -> tuple[str, ...]:
    return tuple(w for w in re.split(r"[\s,]+", value.strip()) if w)


def parse_deb822_sources(text: str, where: str = "") -> list[AptSource]:
    """Every stanza of a deb822 sources file, disabled ones included (enabled=False).

    Comments (`#` in column 0) may sit anywhere, also inside a multi-line field; a field's
    continuation line " ." is an empty line (used by inline Signed-By key blocks).
    """
    out: list[AptSource] = []
    fields: dict[str, list[str]] = {}
    last = ""
    start = 0
    for lineno, raw in enumerate([*text.splitlines(), ""], 1):
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if fields:
                out.append(_stanza(fields, f"{where}:{start}"))
            fields, last = {}, ""
            continue
        if raw[0] in " \t":
            if not last:
                raise UnsupportedError(f"{where}:{lineno}: continuation line outside a field")
            body = raw.strip()
            fields[last].append("" if body == "." else body)
            continue
        key, sep, value = raw.partition(":")
        if not sep:
            raise UnsupportedError(f"{where}:{lineno}: not a 'Field: value' line: {raw!r}")
        if not fields:
            start = lineno
        last = key.strip().lower()
        fields[last] = [value.strip()] if value.strip() else []
    return out


def _stanza(fields: dict[str, list[str]], where: str) -> AptSource:
    def one(name: str, default: str = "") -> str:
        return " ".join(fields[name]) if name in fields else default

    signed = "\n".join(fields.get("signed-by", []))
    if INLINE_KEY_MARK not in signed:
        signed = " ".join(_words(signed))
    return AptSource(
        types=_words(one("types", "deb")),
        uris=_words(one("uris")),
        suites=_words(one("suites")),
        components=_words(one("components")),
        signed_by=signed,
        architectures=_words(one("architectures")),
        trusted=_bool(one("trusted", "no"), False),
        check_valid_until=_bool(one("check-valid-until", "yes"), True),
        enabled=_bool(one("enabled", "yes"), True),
        where=where,
    )


def parse_one_line_sources(text: str, where: str = "") -> list[AptSource]:
    """`deb [opt=value ...] URI SUITE [COMPONENT ...]` lines; `deb-src` lines are kept too
    (types=("deb-src",)); comments and blank lines are skipped."""
    out: list[AptSource] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        kind, *tail = line.split(None, 1)
        rest = tail[0].strip() if tail else ""
        options: dict[str, str] = {}
        if rest.startswith("["):
            end = rest.find("]")
            if end < 0:
                raise UnsupportedError(f"{where}:{lineno}: unclosed '[' in {raw.strip()!r}")
            for opt in rest[1:end].split():
                key, sep, value = opt.partition("=")
                # arch+=/arch-= adjust apt's default list: not meaningful for one image.
                if sep and not key.endswith(("+", "-")):
                    options[key.lower()] = value
            rest = rest[end + 1 :].strip()
        words = rest.split()
        if len(words) < 2:
            raise UnsupportedError(f"{where}:{lineno}: expected 'URI SUITE [COMPONENT...]'")
        out.append(
            AptSource(
                types=(kind,),
                uris=(words[0],),
                suites=(words[1],),
                components=tuple(words[2:]),
                signed_by=" ".join(_words(options.get("signed-by", ""))),
                architectures=_words(options.get("arch", "")),
                trusted=_bool(options.get("trusted", "no"), False),
                check_valid_until=_bool(options.get("check-valid-until", "yes"), True),
                where=f"{where}:{lineno}",
            )
        )
    return out


def image_path(root: Path, path: str) -> Path:
    """`path` as the image sees it, mapped under `root` (fs/rootpath.py resolve_in_root); a
    symlink loop is the image's fault."""
    try:
        return rootpath.resolve_in_root(root, path)
    except rootpath.SymlinkLoop:
        raise UnsupportedError(
            f"too many levels of symbolic links in {path} in the image"
        ) from None


def read_sources(rootfs: Path) -> list[AptSource]:
    """The enabled `deb` sources of the image, in apt's order."""
    files: list[tuple[Path, str]] = []
    main = image_path(rootfs, "/etc/apt/sources.list")
    if main.is_file():
        files.append((main, "/etc/apt/sources.list"))
    parts = image_path(rootfs, "/etc/apt/sources.list.d")
    if parts.is_dir():
        for name in sorted(os.listdir(parts)):
            if _PART_NAME.match(name):
                p = image_path(rootfs, f"/etc/apt/sources.list.d/{name}")
                if p.is_file():
                    files.append((p, f"/etc/apt/sources.list.d/{name}"))
    out: list[AptSource] = []
    for path, shown in files:
        text = path.read_text(errors="replace")
        parsed = (
            parse_deb822_sources(text, shown)
            if shown.endswith(".sources")
            else parse_one_line_sources(text, shown)
        )
        out += [s for s in parsed if s.enabled and "deb" in s.types and s.uris and s.suites]
    return out
