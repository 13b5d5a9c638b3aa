"""What the packages say about their files: owner, group and mode from each .deb's data.tar,
and the local overrides in dpkg's statoverride file.

A sandbox that is not really root cannot chown, so the patch layer takes ownership from here
rather than from the disk: a root:shadow 2755 file stays root:shadow 2755.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from debian.debfile import DebError, DebFile

from ocipatch.errors import IntegrityError


@dataclass(frozen=True)
class FileMeta:
    uid: int
    gid: int
    mode: int  # permission bits incl. setuid/setgid/sticky


def deb_file_meta(debs: list[Path]) -> dict[str, FileMeta]:
    """path (relative, no leading ./) -> metadata, over every file of the given .debs."""
    out: dict[str, FileMeta] = {}
    for deb in debs:
        try:
            tar = DebFile(str(deb)).data.tgz()
        except (DebError, OSError, EOFError, ValueError) as e:
            raise IntegrityError(f"cannot read package {deb.name}: {e}") from None
        with tar:
            for m in tar.getmembers():
                name = m.name[2:] if m.name.startswith("./") else m.name.lstrip("/")
                name = name.rstrip("/")
                if name:
                    out[name] = FileMeta(m.uid, m.gid, m.mode & 0o7777)
    return out


def _id(name: str, table: dict[str, int]) -> int | None:
    if name.startswith("#"):
        return int(name[1:])
    return table.get(name)


def read_statoverride(rootfs: Path) -> dict[str, FileMeta]:
    """dpkg-statoverride entries ("user group mode path"), names resolved with the image's own
    passwd and group files (never the host's)."""
    path = rootfs / "var/lib/dpkg/statoverride"
    if not path.is_file():
        return {}
    users = _table(rootfs / "etc/passwd")
    groups = _table(rootfs / "etc/group")
    out: dict[str, FileMeta] = {}
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split(None, 3)
        if len(parts) != 4:
            continue
        uid, gid = _id(parts[0], users), _id(parts[1], groups)
        if uid is None or gid is None:
            continue
        try:
            mode = int(parts[2], 8)
        except ValueError:
            continue
        out[parts[3].lstrip("/")] = FileMeta(uid, gid, mode)
    return out


def _table(path: Path) -> dict[str, int]:
    table: dict[str, int] = {}
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            f = line.split(":")
            if len(f) >= 3 and f[2].isdigit():
                table[f[0]] = int(f[2])
    return table
