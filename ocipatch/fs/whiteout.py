"""Whiteouts: the one module that knows how OCI layers mark deletions, and how paths are named.

The rules (OCI image-spec `layer.md`, the AUFS convention it inherits, and what containerd,
Docker and umoci do when they apply a layer):

1. An entry `D/.wh.NAME` deletes `D/NAME` -- and, if that is a directory, everything below it --
   as it exists in the layers *below*. The whiteout entry itself never appears in the merged tree.
2. An entry `D/.wh..wh..opq` makes `D` opaque: every child of `D` that comes from a lower layer
   is hidden. Children of `D` that the *same* layer adds stay visible. `D` itself stays.
3. Whiteouts (plain and opaque) apply to lower layers only. A layer may carry both `.wh.NAME` and
   a new `NAME` ("delete the old one, here is the new one"): the new `NAME` survives whatever the
   order of the two entries in the tar. The spec asks writers to put whiteouts before their
   siblings, but readers must not rely on it; so every applier here keeps a *written set* (the
   paths the current layer has written, plus their ancestors) and never deletes those. Keeping
   the ancestors matters for `D/x` followed by `.wh.D` in one layer: `D` stays (with its lower
   metadata), the lower children of `D` go, `D/x` stays.
4. A non-directory entry at `P` replaces whatever a lower layer had at `P`, including a lower
   directory and all its children (tar extraction semantics: remove, then create). A directory
   over a directory merges: the upper metadata wins and the children of both stay.
5. Names starting `.wh..wh.` other than the opaque marker (`.wh..wh.plnk`, `.wh..wh.aufs`) are
   AUFS bookkeeping: they are neither entries nor whiteouts and are ignored. A whiteout whose
   target would be empty, `.` or `..` is malformed and ignored too (containerd rejects it).
6. Whiteout entries carry no content; their mode, owner and mtime mean nothing.
7. Paths resolve inside the root: a parent that is a symlink is followed *within* the root (an
   absolute target starts again at the root, `..` stops at the root), like containerd's
   `fs.RootPath` or a chroot. This applies to whiteouts as well as to entries, so a whiteout can
   never delete anything outside the root either.

Path naming: every path in ocipatch.fs is relative to the root, with no leading `/` or `./`, no
trailing `/`, no empty or `.` component: `"./usr/bin/"` and `"/usr/bin"` both become
`"usr/bin"`, and the root itself is `""`.
"""

from __future__ import annotations

import posixpath
from typing import Literal

PREFIX = ".wh."
# Marks its directory opaque (rule 2).
OPAQUE = ".wh..wh..opq"
# Prefix of AUFS metadata names (rule 5); the opaque marker also starts with it.
_META_PREFIX = ".wh..wh."

Kind = Literal["entry", "whiteout", "opaque", "meta"]


def normalize(path: str) -> str:
    """`"./usr//bin/"` -> `"usr/bin"`; `".."` components stop at the root (`"/../etc"` -> `"etc"`).

    Use for paths a caller asks about. For names read from a tar, check `escapes_root` first:
    a layer name that climbs above its root is refused rather than clamped.
    """
    if not path:
        return ""
    norm = posixpath.normpath("/" + path)
    # normpath keeps a leading "//" (POSIX allows it a special meaning); strip every slash.
    return norm.lstrip("/")


def escapes_root(name: str) -> bool:
    """True if a tar member name (or hardlink target) climbs above the root with `..`.

    A leading `/` is ignored first, as GNU tar does: `/etc/passwd` names `etc/passwd` in the root.
    """
    depth = 0
    for part in name.lstrip("/").split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def split(path: str) -> tuple[str, str]:
    """`"a/b/c"` -> `("a/b", "c")`; `"c"` -> `("", "c")`. The path must be normalized."""
    parent, _, base = path.rpartition("/")
    return parent, base


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def classify(path: str) -> Kind:
    """What a normalized tar member name is: a real entry, a whiteout, an opaque marker, or
    AUFS/malformed metadata to ignore."""
    base = split(path)[1]
    if not base.startswith(PREFIX):
        return "entry"
    if base == OPAQUE:
        return "opaque"
    if base.startswith(_META_PREFIX):
        return "meta"
    if base[len(PREFIX) :] in ("", ".", ".."):
        return "meta"
    return "whiteout"


def is_whiteout(path: str) -> bool:
    """`D/.wh.NAME` (not the opaque marker, not AUFS metadata)."""
    return classify(normalize(path)) == "whiteout"


def is_opaque(path: str) -> bool:
    """`D/.wh..wh..opq`."""
    return classify(normalize(path)) == "opaque"


def is_special(path: str) -> bool:
    """Any name reserved by the whiteout convention: never a real file in a merged tree."""
    return split(normalize(path))[1].startswith(PREFIX)


def whiteout_target(path: str) -> str:
    """`"usr/.wh.foo"` -> `"usr/foo"`: the path a whiteout deletes. ValueError if not a whiteout."""
    norm = normalize(path)
    if classify(norm) != "whiteout":
        raise ValueError(f"not a whiteout entry: {path!r}")
    parent, base = split(norm)
    return join(parent, base[len(PREFIX) :])


def opaque_dir(path: str) -> str:
    """`"usr/share/.wh..wh..opq"` -> `"usr/share"`: the directory an opaque marker covers."""
    norm = normalize(path)
    if classify(norm) != "opaque":
        raise ValueError(f"not an opaque marker: {path!r}")
    return split(norm)[0]


def whiteout_name_for(path: str) -> str:
    """`"usr/bin/foo"` -> `"usr/bin/.wh.foo"`: the tar name that deletes path from lower layers."""
    norm = normalize(path)
    if not norm:
        raise ValueError("the root cannot be whited out")
    parent, base = split(norm)
    return join(parent, PREFIX + base)


def opaque_name_for(directory: str) -> str:
    """`"usr/share"` -> `"usr/share/.wh..wh..opq"`."""
    return join(normalize(directory), OPAQUE)


def ancestors(path: str) -> list[str]:
    """Strict ancestors of a normalized path, nearest first, root (`""`) excluded."""
    out: list[str] = []
    parent = split(path)[0]
    while parent:
        out.append(parent)
        parent = split(parent)[0]
    return out


def sort_key(name: str) -> tuple[tuple[int, str], ...]:
    """Order for writing tar entries: component by component (parents before children, a subtree
    contiguous), and whiteouts before their siblings as the spec recommends (rule 3)."""
    parts = name.split("/")
    head = tuple((1, p) for p in parts[:-1])
    last = parts[-1]
    return (*head, (0 if last.startswith(PREFIX) else 1, last))
