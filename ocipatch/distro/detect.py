"""Which OS an image holds, from /etc/os-release (or /usr/lib/os-release, its fallback)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Protocol


class FileView(Protocol):
    """What adapters need of an image's filesystem: MergedView and a plain directory both fit."""

    def exists(self, path: str) -> bool: ...

    def read_file(self, path: str) -> bytes | None: ...

    def listdir(self, path: str) -> list[str]: ...

    def read_files(self, paths: list[str]) -> dict[str, bytes]: ...


@dataclass(frozen=True)
class OsRelease:
    id: str
    version_id: str
    id_like: tuple[str, ...] = ()
    version_codename: str = ""
    pretty_name: str = ""

    @property
    def major(self) -> str:
        return self.version_id.split(".", 1)[0]


def parse_os_release(text: str) -> OsRelease:
    """os-release is shell-quoted KEY=VALUE lines (os-release(5))."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        try:
            parts = shlex.split(raw)
        except ValueError:
            parts = [raw.strip("\"'")]
        values[key.strip()] = parts[0] if parts else ""
    return OsRelease(
        id=values.get("ID", "linux").lower(),
        version_id=values.get("VERSION_ID", ""),
        id_like=tuple(values.get("ID_LIKE", "").split()),
        version_codename=values.get("VERSION_CODENAME", ""),
        pretty_name=values.get("PRETTY_NAME", ""),
    )


def read_os_release(view: FileView) -> OsRelease | None:
    for path in ("etc/os-release", "usr/lib/os-release"):
        data = view.read_file(path)
        if data is not None:
            return parse_os_release(data.decode("utf-8", "replace"))
    return None
