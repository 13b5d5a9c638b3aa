"""Reading an unpacked image's files as the image sees them: symlinks resolved inside its root.

An image's `/etc/apk/keys/x.rsa.pub` may be a symlink to `/usr/share/apk/keys/x.rsa.pub`, and
on usr-merged roots `/lib` is a symlink to `usr/lib`: followed on the host, such a link could
read the host's files. Everything here goes through ocipatch.fs.rootpath, which never leaves
the root, and opens the result with O_NOFOLLOW.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ocipatch.errors import ImageFormatError
from ocipatch.fs import rootpath

__all__ = ["is_executable", "list_dir", "read_file", "real_path", "users_and_groups"]


def real_path(rootfs: Path, rel: str, *, follow_final: bool = True) -> str | None:
    """rel's real path inside rootfs (relative), or None where it cannot exist."""
    try:
        return rootpath.resolve(rootpath.DiskTree(rootfs), rel, follow_final=follow_final)
    except rootpath.SymlinkLoop:
        raise ImageFormatError(f"too many symlinks resolving /{rel} in the image") from None


def read_file(rootfs: Path, rel: str) -> bytes | None:
    """The content of the regular file rel (symlinks followed inside the root); None if absent
    or not a regular file."""
    real = real_path(rootfs, rel)
    if real is None or not real:
        return None
    try:
        fd = os.open(rootfs / real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError, OSError):
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read()


def list_dir(rootfs: Path, rel: str) -> list[str]:
    """The names in directory rel (resolved inside the root), sorted; [] when it is absent."""
    real = real_path(rootfs, rel)
    if real is None:
        return []
    path = rootfs / real if real else rootfs
    if path.is_symlink() or not path.is_dir():
        return []
    return sorted(os.listdir(path))


def is_executable(rootfs: Path, rel: str) -> bool:
    """Whether rel resolves inside the root to a regular file with an execute bit."""
    real = real_path(rootfs, rel)
    if not real:
        return False
    try:
        st = os.lstat(rootfs / real)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111)


def _ids(data: bytes | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            out.setdefault(parts[0], int(parts[2]))
    return out


def users_and_groups(rootfs: Path) -> tuple[dict[str, int], dict[str, int]]:
    """The image's user and group names -> ids (/etc/passwd, /etc/group), as apk resolves a
    package's owner names."""
    return _ids(read_file(rootfs, "etc/passwd")), _ids(read_file(rootfs, "etc/group"))
