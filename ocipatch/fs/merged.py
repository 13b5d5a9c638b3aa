"""MergedView: read an image's filesystem through its layers without extracting it.

Each layer is indexed once in a single streaming pass (names and metadata, never contents); the
index is cached as JSON by layer digest. The merged tree is then built in memory by applying the
indexes bottom-up with the rules of ocipatch.fs.whiteout -- exactly what `unpack` does on disk --
so a lookup is a dict lookup, and reading a file streams only the one layer that holds its bytes.

Paths given to the API may be absolute or relative (`"/etc/os-release"`, `"etc/os-release"`);
paths returned are normalized relative paths (`"etc/os-release"`, the root is `""`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from ocipatch import runs, space
from ocipatch.errors import ImageFormatError, UnsafeArchiveError
from ocipatch.fs import rootpath
from ocipatch.fs import whiteout as wh
from ocipatch.fs.compress import DECODE_ERRORS, ReadAhead
from ocipatch.oci.cache import touch

log = logging.getLogger(__name__)

INDEX_FORMAT = 1
_CHUNK = 1 << 20


class TarLayer(Protocol):
    """A layer as ocipatch.fs needs it: an uncompressed tar stream and a digest as cache key."""

    @property
    def digest(self) -> str: ...

    def open_tar(self) -> BinaryIO:
        """A fresh, non-seekable stream of the uncompressed tar; read it front to back."""
        ...


def member_type(member: tarfile.TarInfo) -> str | None:
    """'file', 'dir', 'symlink', 'hardlink', 'char', 'block', 'fifo', or None for anything else."""
    if member.isreg():  # also contiguous and GNU sparse files
        return "file"
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hardlink"
    if member.ischr():
        return "char"
    if member.isblk():
        return "block"
    if member.isfifo():
        return "fifo"
    return None


def drain(stream: BinaryIO) -> None:
    """Read a stream to its end so a verifying reader underneath runs its digest check."""
    while stream.read(_CHUNK):
        pass


# What reading a corrupt or truncated layer raises.
_LAYER_ERRORS: tuple[type[Exception], ...] = (
    tarfile.TarError,
    gzip.BadGzipFile,
    zlib.error,
    EOFError,
    *DECODE_ERRORS,
)

Visit = Callable[[int, tarfile.TarInfo, tarfile.TarFile], bool | None]


def scan_layer(layer: TarLayer, visit: Visit) -> None:
    """Stream a layer's tar once, calling visit(ordinal, member, tarfile) for each member.

    visit may read the current member's data with `tarfile.extractfile(member)`; returning True
    stops the walk (the rest of the stream is still drained, so the digest check runs). The
    ordinal counts members as tarfile yields them, so two scans of a layer agree on it.
    """
    stream = cast(BinaryIO, ReadAhead(layer.open_tar()))
    try:
        try:
            try:
                tf = tarfile.open(fileobj=stream, mode="r|")
            except tarfile.ReadError as e:
                if str(e) == "empty file":  # a 0-byte layer: nothing in it
                    return
                raise
            ordinal = 0
            while True:
                member = tf.next()
                if member is None:
                    break
                # Stream mode keeps every TarInfo in tf.members; drop them to bound memory.
                tf.members.clear()  # type: ignore[attr-defined]
                if visit(ordinal, member, tf):
                    break
                ordinal += 1
            drain(stream)
        except _LAYER_ERRORS as e:
            raise ImageFormatError(
                f"layer {layer.digest} is not a readable tar stream ({e}): the blob is corrupt "
                "or not a layer"
            ) from e
    finally:
        stream.close()


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One member of a layer as the index records it (names normalized, whiteouts apart)."""

    name: str
    type: str
    size: int
    mode: int
    uid: int
    gid: int
    mtime: int
    linkname: str  # symlink target as stored; hardlink target normalized
    ordinal: int
    devmajor: int = 0
    devminor: int = 0

    def to_json(self) -> list[Any]:
        return [
            "e",
            self.name,
            self.type,
            self.size,
            self.mode,
            self.uid,
            self.gid,
            self.mtime,
            self.linkname,
            self.ordinal,
            self.devmajor,
            self.devminor,
        ]


# An index op, in tar order: ("e", IndexEntry) | ("w", deleted path) | ("o", opaque directory).
Op = tuple[str, IndexEntry | str]


def member_name(layer_digest: str, raw: str) -> str:
    """Normalize a member name; UnsafeArchiveError if it climbs out of the root."""
    if wh.escapes_root(raw):
        raise UnsafeArchiveError(
            f"layer {layer_digest} has an entry {raw!r} that escapes the root: the image is "
            "malformed or malicious; refusing to use it"
        )
    return wh.normalize(raw)


# What the metadata of a member may hold: times as int64 nanoseconds (years 1678 to 2262: what
# os.utime takes), ids chown can set ((uid_t)-1 means "unchanged"), Linux device numbers (12-bit
# major, 20-bit minor: mknod refuses others).
_MTIME_LIMIT = (2**63 - 1) // 10**9
_ID_LIMIT = 2**32 - 2
_MAJOR_LIMIT = 2**12 - 1
_MINOR_LIMIT = 2**20 - 1
_NAME_MAX = 255
_PATH_MAX = 4095


def checked_mtime(layer_digest: str, name: str, m: tarfile.TarInfo, typ: str) -> int:
    """The member's mtime as an int, after checking the member fits a Linux file system;
    ImageFormatError for one that cannot be applied (a PAX time of 1e30 or nan, uid 2**40, a
    256-byte name, a symlink to "")."""
    if typ == "symlink" and not m.linkname:
        raise ImageFormatError(
            f"layer {layer_digest} has a symlink {name!r} to nothing (an empty target): the "
            "image is malformed"
        )
    long = [
        p for p in (*name.split("/"), *m.linkname.split("/")) if len(os.fsencode(p)) > _NAME_MAX
    ]
    if long or max(len(os.fsencode(name)), len(os.fsencode(m.linkname))) > _PATH_MAX:
        raise ImageFormatError(
            f"layer {layer_digest} has an entry {name!r} with a name or link target longer "
            f"than Linux allows ({_NAME_MAX} bytes a component, {_PATH_MAX} a path): the image "
            "is malformed"
        )
    try:
        mtime = int(m.mtime)
    except (ValueError, OverflowError):  # PAX mtime=nan / inf
        mtime = _MTIME_LIMIT + 1
    device = typ in ("char", "block")
    bad = [
        f"{what} {value}"
        for what, value, low, high in (
            ("mtime", mtime, -_MTIME_LIMIT, _MTIME_LIMIT),
            ("uid", m.uid, 0, _ID_LIMIT),
            ("gid", m.gid, 0, _ID_LIMIT),
            ("device major", m.devmajor if device else 0, 0, _MAJOR_LIMIT),
            ("device minor", m.devminor if device else 0, 0, _MINOR_LIMIT),
        )
        if not low <= value <= high
    ]
    if bad:
        bad[0] = bad[0] if mtime <= _MTIME_LIMIT else f"mtime {m.mtime}"
        raise ImageFormatError(
            f"layer {layer_digest} has an entry {name!r} with {bad[0]}, which no file system "
            "can hold: the image is malformed"
        )
    return mtime


def hardlink_target(layer_digest: str, name: str, raw: str) -> str:
    if wh.escapes_root(raw):
        raise UnsafeArchiveError(
            f"layer {layer_digest} has a hardlink {name!r} to {raw!r}, outside the root: the "
            "image is malformed or malicious; refusing to use it"
        )
    return wh.normalize(raw)


# Small files nearly every run reads (OS identity, dpkg's database, apt's sources and keys):
# their contents are kept during the indexing pass, so reading them later streams no layer.
CAPTURED = (
    "etc/os-release",
    "usr/lib/os-release",
    "var/lib/dpkg/status",
    "var/lib/dpkg/arch",
    "var/lib/dpkg/status.d/",
    "etc/apt/",
    "usr/share/keyrings/",
)
CAPTURE_MAX = 4 << 20


def _captured(name: str) -> bool:
    return any(name == c or (c.endswith("/") and name.startswith(c)) for c in CAPTURED)


def content_path(cache_dir: Path, digest: str, ordinal: int) -> Path:
    """Where the content of a layer's member (by tar ordinal) is kept once read."""
    alg, _, hexpart = digest.partition(":")
    return cache_dir / "files" / f"{alg}-{hexpart}" / str(ordinal)


def remember(cache_dir: Path | None, digest: str, ordinal: int, data: bytes) -> None:
    if cache_dir is None or len(data) > CAPTURE_MAX:
        return
    path = content_path(cache_dir, digest, ordinal)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = runs.mkstemp(path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written is only slower


class LayerIndexer:
    """Builds a layer's index member by member, in tar order, for any pass that streams the
    layer (the indexing pass, or an unpack that indexes as it extracts). With capture, the
    contents of the CAPTURED files are kept by ordinal."""

    def __init__(self, digest: str, *, capture: bool) -> None:
        self.digest = digest
        self.capture = capture
        self.ops: list[Op] = []
        self.captured: dict[int, bytes] = {}

    def visit(self, ordinal: int, m: tarfile.TarInfo, read: Callable[[], bytes]) -> None:
        """Record member m; read() returns its content (called only for a captured file)."""
        digest = self.digest
        name = member_name(digest, m.name)
        kind = wh.classify(name)
        if kind == "whiteout":
            self.ops.append(("w", wh.whiteout_target(name)))
            return
        if kind == "opaque":
            self.ops.append(("o", wh.opaque_dir(name)))
            return
        if kind == "meta":
            log.debug("layer %s: ignoring whiteout metadata %r", digest, m.name)
            return
        typ = member_type(m)
        if typ is None:
            log.warning("layer %s: skipping %r of unsupported tar type %r", digest, m.name, m.type)
            return
        link = m.linkname
        if typ == "hardlink":
            link = hardlink_target(digest, name, link)
        if self.capture and typ == "file" and m.size <= CAPTURE_MAX and _captured(name):
            self.captured[ordinal] = read()
        self.ops.append(
            (
                "e",
                IndexEntry(
                    name=name,
                    type=typ,
                    size=m.size if typ == "file" else 0,
                    mode=m.mode & 0o7777,
                    uid=m.uid,
                    gid=m.gid,
                    mtime=checked_mtime(digest, name, m, typ),
                    linkname=link,
                    ordinal=ordinal,
                    devmajor=m.devmajor if typ in ("char", "block") else 0,
                    devminor=m.devminor if typ in ("char", "block") else 0,
                ),
            )
        )


def index_layer(layer: TarLayer, captured: dict[int, bytes] | None = None) -> list[Op]:
    """One streaming pass over a layer: its entries, whiteouts and opaque markers in tar order.
    With `captured`, the contents of the CAPTURED files are collected into it by ordinal."""
    indexer = LayerIndexer(layer.digest, capture=captured is not None)

    def visit(ordinal: int, m: tarfile.TarInfo, tf: tarfile.TarFile) -> None:
        def read() -> bytes:
            f = tf.extractfile(m)
            return f.read() if f is not None else b""

        indexer.visit(ordinal, m, read)

    scan_layer(layer, visit)
    if captured is not None:
        captured.update(indexer.captured)
    return indexer.ops


def _ops_to_json(digest: str, ops: list[Op]) -> dict[str, Any]:
    return {
        "format": INDEX_FORMAT,
        "digest": digest,
        "ops": [op[1].to_json() if isinstance(op[1], IndexEntry) else [op[0], op[1]] for op in ops],
    }


def _ops_from_json(doc: Any, digest: str) -> list[Op] | None:
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        return None
    if doc.get("digest") != digest:
        return None
    ops: list[Op] = []
    for row in doc["ops"]:
        if row[0] == "e":
            ops.append(("e", IndexEntry(*row[1:])))
        else:
            ops.append((row[0], row[1]))
    return ops


_SAFE_DIGEST = re.compile(r"^[a-z0-9]+:[a-zA-Z0-9=_-]+$")


def _cache_file(cache_dir: Path, digest: str) -> Path:
    if _SAFE_DIGEST.match(digest) and len(digest) < 200:
        stem = digest.replace(":", "-")
    else:  # never let a digest string pick a path
        stem = "x-" + hashlib.sha256(digest.encode()).hexdigest()
    return cache_dir / f"{stem}.index.json"


def load_index(layer: TarLayer, cache_dir: Path | None) -> list[Op]:
    """The layer's index, from the cache when present, else by streaming the layer once."""
    path = _cache_file(cache_dir, layer.digest) if cache_dir is not None else None
    if path is not None and path.is_file() and touch(path):
        try:
            ops = _ops_from_json(json.loads(path.read_text("utf-8")), layer.digest)
        except (ValueError, KeyError, TypeError, IndexError):
            ops = None
        if ops is not None:
            return ops
        log.info("index cache %s is unreadable; rebuilding it", path)
    captured: dict[int, bytes] = {}
    ops = index_layer(layer, captured if cache_dir is not None else None)
    store_index(layer.digest, cache_dir, ops, captured)
    return ops


def cached_index_exists(digest: str, cache_dir: Path | None) -> bool:
    return cache_dir is not None and touch(_cache_file(cache_dir, digest))


def store_index(
    digest: str, cache_dir: Path | None, ops: list[Op], captured: dict[int, bytes]
) -> None:
    """Keep a layer's index and captured contents in the cache (no cache: nothing)."""
    if cache_dir is None:
        return
    for ordinal, data in captured.items():
        remember(cache_dir, digest, ordinal, data)
    path = _cache_file(cache_dir, digest)
    with space.room_in(space.cache(cache_dir)):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = runs.mkstemp(path.parent, suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(_ops_to_json(digest, ops), f, separators=(",", ":"))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@dataclass(frozen=True, slots=True)
class Entry:
    """A path of the merged tree.

    type is 'file', 'dir', 'symlink', 'hardlink' (a regular file sharing its content with
    `linkname`, the merged path it was linked to), 'char', 'block' or 'fifo'. size is the content
    size for 'file' and 'hardlink', else 0. layer is the index (bottom = 0) of the layer that
    wrote this path.
    """

    path: str
    type: str
    size: int
    mode: int
    uid: int
    gid: int
    mtime: int
    linkname: str
    layer: int
    devmajor: int = 0
    devminor: int = 0


@dataclass(slots=True)
class _Node:
    type: str
    size: int
    mode: int
    uid: int
    gid: int
    mtime: int
    linkname: str
    layer: int  # layer that wrote the path
    data_layer: int  # where the bytes live (differs from layer for hardlinks); -1: no bytes
    data_ordinal: int
    devmajor: int = 0
    devminor: int = 0


class _Tree:
    """The merged tree in memory: path -> node, and directory -> child names."""

    def __init__(self) -> None:
        self.nodes: dict[str, _Node] = {}
        self.children: dict[str, set[str]] = {"": set()}

    # -- resolution (a rootpath.Tree over the nodes) -------------------------------------------
    def kind(self, rel: str) -> str | None:
        node = self.nodes.get(rel)
        return None if node is None else node.type

    def readlink(self, rel: str) -> str:
        return self.nodes[rel].linkname

    def resolve(
        self, path: str, *, follow_final: bool, create_layer: int | None = None
    ) -> str | None:
        """The real path of a normalized path, following symlinks inside the root.

        Parents are always followed; the last component only with follow_final. Returns None when
        a parent is missing or not a directory; the final component need not exist. With
        create_layer, path is a directory to make: every missing component becomes an implicit
        directory and a non-directory one is an error. Raises rootpath.SymlinkLoop after
        rootpath.MAX_SYMLINKS hops.
        """
        if create_layer is None:
            return rootpath.resolve(self, path, follow_final=follow_final)
        layer = create_layer

        def mkdir(real: str) -> None:
            self._put(real, _implicit_dir(layer))

        try:
            return rootpath.resolve(
                self, path, follow_final=follow_final, need_dir=True, mkdir=mkdir
            )
        except rootpath.NotADirectory as e:
            raise ImageFormatError(
                f"{e.component!r} is a {e.kind}, yet a layer puts {path!r} below it: the "
                "image is malformed"
            ) from None

    # -- mutation ---------------------------------------------------------------------------
    def _put(self, path: str, node: _Node) -> None:
        parent, base = wh.split(path)
        self.nodes[path] = node
        self.children.setdefault(parent, set()).add(base)
        if node.type == "dir":
            self.children.setdefault(path, set())

    def remove_all(self, path: str) -> None:
        """Remove a path and everything below it."""
        if path not in self.nodes:
            return
        stack = [path]
        while stack:
            p = stack.pop()
            self.nodes.pop(p, None)
            for child in self.children.pop(p, ()):
                stack.append(wh.join(p, child))
        parent, base = wh.split(path)
        self.children.get(parent, set()).discard(base)

    def remove_lower(self, path: str, written: set[str], include_self: bool) -> None:
        """Whiteout rule 3: remove what lower layers put at/under path, keeping `written`."""
        if include_self and path not in written:
            self.remove_all(path)
            return
        node = self.nodes.get(path)
        if path and (node is None or node.type != "dir"):
            return
        for child in list(self.children.get(path, ())):
            self.remove_lower(wh.join(path, child), written, True)

    def apply(self, li: int, digest: str, ops: list[Op]) -> None:
        written: set[str] = set()
        for kind, arg in ops:
            try:
                if kind == "e":
                    assert isinstance(arg, IndexEntry)
                    self._apply_entry(li, digest, arg, written)
                elif kind == "w":
                    assert isinstance(arg, str)
                    parent, base = wh.split(arg)
                    rparent = self.resolve(parent, follow_final=True)
                    if rparent is not None:
                        self.remove_lower(wh.join(rparent, base), written, True)
                elif kind == "o":
                    assert isinstance(arg, str)
                    rdir = self.resolve(arg, follow_final=True)
                    if rdir is not None and (rdir == "" or rdir in self.nodes):
                        self.remove_lower(rdir, written, False)
            except rootpath.SymlinkLoop as e:
                raise ImageFormatError(f"layer {digest}: {e}: the image is malformed") from None

    def _apply_entry(self, li: int, digest: str, e: IndexEntry, written: set[str]) -> None:
        if not e.name:
            return  # the root directory itself: nothing to place
        parent, base = wh.split(e.name)
        rparent = self.resolve(parent, follow_final=True, create_layer=li)
        assert rparent is not None
        real = wh.join(rparent, base)
        if e.type == "hardlink":
            node = self._link_node(li, digest, e)
            if node is None:
                return
        else:
            node = _Node(
                e.type,
                e.size,
                e.mode,
                e.uid,
                e.gid,
                e.mtime,
                e.linkname,
                li,
                li if e.type == "file" else -1,
                e.ordinal,
                e.devmajor,
                e.devminor,
            )
        old = self.nodes.get(real)
        if old is not None and not (old.type == "dir" and node.type == "dir"):
            self.remove_all(real)
        self._put(real, node)
        # Mark the path and its ancestors as written by this layer (whiteout rule 3).
        p = real
        while p and p not in written:
            written.add(p)
            p = wh.split(p)[0]

    def _link_node(self, li: int, digest: str, e: IndexEntry) -> _Node | None:
        tparent, tbase = wh.split(e.linkname)
        rparent = self.resolve(tparent, follow_final=True)
        target = wh.join(rparent, tbase) if rparent is not None else None
        tnode = self.nodes.get(target) if target is not None else None
        if target is None or tnode is None:
            raise ImageFormatError(
                f"layer {digest}: hardlink {e.name!r} points to {e.linkname!r}, which does not "
                "exist: the image is malformed"
            )
        if tnode.type == "dir":
            raise ImageFormatError(
                f"layer {digest}: hardlink {e.name!r} points to directory {e.linkname!r}: the "
                "image is malformed"
            )
        if tnode.type in ("file", "hardlink"):
            return _Node(
                "hardlink",
                tnode.size,
                tnode.mode,
                tnode.uid,
                tnode.gid,
                tnode.mtime,
                target,
                li,
                tnode.data_layer,
                tnode.data_ordinal,
            )
        # A hard link to a symlink or device is another name for that same kind of inode.
        return _Node(
            tnode.type,
            0,
            tnode.mode,
            tnode.uid,
            tnode.gid,
            tnode.mtime,
            tnode.linkname,
            li,
            -1,
            -1,
            tnode.devmajor,
            tnode.devminor,
        )


def _implicit_dir(layer: int) -> _Node:
    # A parent a layer uses without listing it: what tar extraction would create.
    return _Node("dir", 0, 0o755, 0, 0, 0, "", layer, -1, -1)


def path_sort_key(path: str) -> tuple[str, ...]:
    """Component-wise order: a parent right before its subtree."""
    return tuple(path.split("/"))


class MergedView:
    """The merged filesystem of layers (bottom first, as in the manifest), read lazily."""

    def __init__(self, layers: Sequence[TarLayer], index_cache_dir: Path | None = None) -> None:
        self.layers = list(layers)
        self.index_cache_dir = index_cache_dir
        self._tree: _Tree | None = None
        self._known: dict[int, list[Op]] = {}  # indexes handed in by a pass that streamed a layer
        self._contents: dict[tuple[int, int], bytes] = {}  # (layer, ordinal) -> captured content

    def indexed(self) -> bool:
        """True when every layer's index is at hand without streaming the layer."""
        return all(
            li in self._known or cached_index_exists(layer.digest, self.index_cache_dir)
            for li, layer in enumerate(self.layers)
        )

    def add_index(self, digest: str, ops: list[Op], captured: dict[int, bytes]) -> None:
        """Take the index another pass over the layer built (an unpack that indexed as it
        extracted): kept here and in the cache, so no pass streams the layer again for it."""
        for li, layer in enumerate(self.layers):
            if layer.digest == digest and li not in self._known:
                self._known[li] = ops
                for ordinal, data in captured.items():
                    self._contents[(li, ordinal)] = data
        store_index(digest, self.index_cache_dir, ops, captured)

    @property
    def tree(self) -> _Tree:
        if self._tree is None:
            tree = _Tree()
            for li, layer in enumerate(self.layers):
                ops = self._known.get(li)
                if ops is None:
                    ops = load_index(layer, self.index_cache_dir)
                tree.apply(li, layer.digest, ops)
            self._tree = tree
        return self._tree

    def _lookup(self, path: str, follow: bool) -> tuple[str, _Node | None] | None:
        try:
            real = self.tree.resolve(wh.normalize(path), follow_final=follow)
        except rootpath.SymlinkLoop:
            return None  # like ELOOP: the path is not reachable
        if real is None:
            return None
        if real == "":
            return "", None
        node = self.tree.nodes.get(real)
        return None if node is None else (real, node)

    def entry(self, path: str, *, follow_symlinks: bool = False) -> Entry | None:
        """The entry at path (lstat-like: a final symlink is not followed unless asked)."""
        found = self._lookup(path, follow_symlinks)
        if found is None:
            return None
        real, node = found
        if node is None:
            return Entry("", "dir", 0, 0o755, 0, 0, 0, "", -1)
        return _entry(real, node)

    def exists(self, path: str) -> bool:
        """True if path exists, following symlinks (a dangling or looping link: False)."""
        return self._lookup(path, True) is not None

    def listdir(self, path: str) -> list[str]:
        """Sorted child names of a directory (symlinks followed); [] if absent or not a dir."""
        found = self._lookup(path, True)
        if found is None:
            return []
        real, node = found
        if node is not None and node.type != "dir":
            return []
        return sorted(self.tree.children.get(real, ()))

    def read_file(self, path: str) -> bytes | None:
        """The content of a regular file (symlinks followed); None if absent or not a file."""
        return self.read_files([path]).get(path)

    def read_files(self, paths: Iterable[str]) -> dict[str, bytes]:
        """Contents of many files, streaming each layer that holds any of them once.

        Keys are the paths as given; paths absent or not regular files are left out.
        """
        out: dict[str, bytes] = {}
        wanted: dict[int, dict[int, list[str]]] = {}
        for path in paths:
            found = self._lookup(path, True)
            if found is None or found[1] is None:
                continue
            node = found[1]
            if node.type not in ("file", "hardlink") or node.data_layer < 0:
                continue
            if node.size == 0:
                out[path] = b""
                continue
            wanted.setdefault(node.data_layer, {}).setdefault(node.data_ordinal, []).append(path)
        for li in sorted(wanted):
            missing = {
                o: names for o, names in wanted[li].items() if not self._cached(li, o, names, out)
            }
            if missing:
                read: dict[str, bytes] = {}
                self._read_layer(li, missing, read)
                for o, names in missing.items():
                    self._remember(li, o, read[names[0]])
                out.update(read)
        return out

    def _cached(self, li: int, ordinal: int, names: list[str], out: dict[str, bytes]) -> bool:
        """Contents kept from an earlier read (or the indexing pass): layers are immutable,
        named by digest, so they never go stale."""
        data = self._contents.get((li, ordinal))
        if data is not None:
            for name in names:
                out[name] = data
            return True
        if self.index_cache_dir is None:
            return False
        try:
            data = content_path(self.index_cache_dir, self.layers[li].digest, ordinal).read_bytes()
        except OSError:
            return False
        for name in names:
            out[name] = data
        return True

    def _remember(self, li: int, ordinal: int, data: bytes) -> None:
        remember(self.index_cache_dir, self.layers[li].digest, ordinal, data)

    def _read_layer(self, li: int, by_ordinal: dict[int, list[str]], out: dict[str, bytes]) -> None:
        remaining = len(by_ordinal)

        def visit(ordinal: int, m: tarfile.TarInfo, tf: tarfile.TarFile) -> bool:
            nonlocal remaining
            names = by_ordinal.get(ordinal)
            if names is None:
                return False
            f = tf.extractfile(m)
            data = f.read() if f is not None else b""
            for name in names:
                out[name] = data
            remaining -= 1
            return remaining == 0

        scan_layer(self.layers[li], visit)
        if remaining:
            raise ImageFormatError(
                f"layer {self.layers[li].digest} changed since it was indexed: clear the "
                f"index cache ({self.index_cache_dir}) and retry"
            )

    def walk(self) -> Iterator[Entry]:
        """Every path of the merged tree (root excluded), parents before their children."""
        nodes = self.tree.nodes
        for path in sorted(nodes, key=path_sort_key):
            yield _entry(path, nodes[path])


def _entry(path: str, n: _Node) -> Entry:
    return Entry(
        path,
        n.type,
        n.size,
        n.mode,
        n.uid,
        n.gid,
        n.mtime,
        n.linkname,
        n.layer,
        n.devmajor,
        n.devminor,
    )
