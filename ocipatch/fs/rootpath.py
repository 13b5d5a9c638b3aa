"""Paths inside a root, resolved as a chroot would: the one place that follows an image's symlinks.

`resolve` walks a path component by component over a `Tree` (the disk below a directory, see
`DiskTree`, or an in-memory tree like MergedView's):

- empty and `.` components are skipped; `..` drops the last resolved component and stops at the
  root (`/../etc` is `etc`);
- a symlink is followed (a final one only with follow_final): an absolute target starts again at
  the root, a relative one goes on from the symlink's directory; more than `max_hops` symlinks
  raise SymlinkLoop (Linux's MAXSYMLINKS is 40);
- so no result ever leaves the root, whatever the links say.

Results are relative paths in ocipatch.fs naming (no leading `/`, the root is `""`) whose
existing components are no symlinks, except a final one that was not followed.

`file_type` maps an lstat mode to the type names ocipatch.fs uses everywhere.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

# Same limit as Linux (MAXSYMLINKS): more hops than this is a loop.
MAX_SYMLINKS = 40

_TYPE_NAMES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
}


def file_type(mode: int) -> str | None:
    """'file', 'dir', 'symlink', 'char', 'block' or 'fifo' for an lstat st_mode; None for what a
    layer cannot hold (sockets and the like)."""
    return _TYPE_NAMES.get(stat.S_IFMT(mode))


class Tree(Protocol):
    """What resolution needs to know about a tree; paths are relative, never `""`."""

    def kind(self, rel: str) -> str | None:
        """rel's type, not following it: 'dir', 'symlink', anything else for a non-directory;
        None if rel does not exist."""
        ...

    def readlink(self, rel: str) -> str:
        """The target of the symlink rel, as stored."""
        ...


class DiskTree:
    """The files below `root` on disk, as a Tree (lstat/readlink, never following)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root)

    def kind(self, rel: str) -> str | None:
        try:
            st = os.lstat(os.path.join(self.root, rel))
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:  # a name no file system holds: not there
                return None
            raise
        return file_type(st.st_mode) or "other"

    def readlink(self, rel: str) -> str:
        return os.readlink(os.path.join(self.root, rel))


class RootPathError(Exception):
    """A path that cannot be resolved; callers turn it into their own ocipatch error."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path  # the path being resolved, as given


class SymlinkLoop(RootPathError):
    """More than max_hops symlinks (ELOOP)."""

    def __init__(self, path: str) -> None:
        super().__init__(f"too many symlinks resolving {path!r}", path)


class NotADirectory(RootPathError):
    """With mkdir: `component` (a resolved path of type `kind`) is where a directory must be."""

    def __init__(self, path: str, component: str, kind: str) -> None:
        super().__init__(f"{component!r} is not a directory, yet {path!r} needs it to be one", path)
        self.component = component
        self.kind = kind


def resolve(
    tree: Tree,
    path: str,
    *,
    follow_final: bool = True,
    need_dir: bool = False,
    mkdir: Callable[[str], None] | None = None,
    max_hops: int = MAX_SYMLINKS,
) -> str | None:
    """The real path of `path` in tree, or None where it cannot exist.

    Every component but the last must be a directory (after following symlinks); the last one
    must be too with need_dir, else it may be anything or missing. A missing component that has
    to be a directory gives None, or with mkdir, mkdir(real path) is called to make it (the
    caller creates the directory and records its owner) and resolution goes on. A non-directory
    where a directory is needed gives None, or with mkdir raises NotADirectory.
    """
    return _walk(tree, path, follow_final, need_dir, mkdir, False, max_hops)


def resolve_lenient(tree: Tree, path: str, *, max_hops: int = MAX_SYMLINKS) -> str:
    """Where path lands in tree, never None: what does not exist is kept as named.

    A missing or non-directory component is kept, and so is everything below it (nothing there
    can exist, so it is not looked up), until a `..` climbs back above it; from there on links
    are followed again. For mount points and files to read that may be absent.
    """
    real = _walk(tree, path, True, False, None, True, max_hops)
    assert real is not None  # lenient never gives up
    return real


def resolve_in_root(root: Path, path: str, *, max_hops: int = MAX_SYMLINKS) -> Path:
    """`path` as the image sees it, mapped under the host directory `root` (chroot semantics):
    every symlink on the way (absolute or relative, `..` included) is resolved inside the root,
    never on the host; what does not exist is kept as named. Raises SymlinkLoop. The one
    resolver of image paths on disk: the sandbox's mount points and the package managers'
    configuration files go through it."""
    return root.joinpath(resolve_lenient(DiskTree(root), path, max_hops=max_hops))


def _components(path: str) -> list[str]:
    """path's components, last first (so that pop() gives the next one)."""
    return [p for p in reversed(path.split("/")) if p not in ("", ".")]


def _walk(
    tree: Tree,
    path: str,
    follow_final: bool,
    need_dir: bool,
    mkdir: Callable[[str], None] | None,
    lenient: bool,
    max_hops: int,
) -> str | None:
    pending = _components(path)
    cur: list[str] = []
    dead = -1  # lenient: cur[dead:] lies below a missing or non-directory component
    hops = 0
    while pending:
        comp = pending.pop()
        if comp == "..":
            if cur:
                cur.pop()
            if len(cur) <= dead:
                dead = -1
            continue
        if dead >= 0:
            cur.append(comp)
            continue
        last = not pending
        cand = "/".join([*cur, comp])
        kind = tree.kind(cand)
        if kind == "symlink" and (follow_final or not last):
            hops += 1
            if hops > max_hops:
                raise SymlinkLoop(path)
            target = tree.readlink(cand)
            if target.startswith("/"):
                cur = []
            pending.extend(_components(target))
            continue
        dir_needed = not last or need_dir
        if kind is None:
            if mkdir is not None:
                mkdir(cand)
            elif lenient:
                dead = len(cur)
            elif dir_needed:
                return None
        elif kind != "dir" and dir_needed:
            if mkdir is not None:
                raise NotADirectory(path, cand, kind)
            if not lenient:
                return None
            dead = len(cur)
        cur.append(comp)
    return "/".join(cur)
