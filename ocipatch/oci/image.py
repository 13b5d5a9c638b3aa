"""The lazy image model: an Image is a manifest, a config and Layers whose bytes are fetched only
when read. Sources (registry, OCI layout, archives) implement the small `Source` protocol; this
module derives the rest (index resolution, platform choice, verification, caching).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ocipatch.background import start_each
from ocipatch.errors import ImageFormatError, IntegrityError, PlatformError
from ocipatch.fs.compress import open_decompressed
from ocipatch.oci import jsondoc
from ocipatch.oci import mediatypes as mt
from ocipatch.oci.cache import BlobCache
from ocipatch.oci.digest import VerifiedReader, is_digest, verify_bytes
from ocipatch.oci.reference import ImageRef
from ocipatch.oci.types import Descriptor, Platform


class Source(Protocol):
    """Where an image's bytes come from. Nothing returned here is trusted yet: callers verify."""

    ref: ImageRef

    def root_manifest(self) -> tuple[bytes, str]:
        """The manifest or index the reference names, and its media type."""

    def manifest(self, desc: Descriptor) -> bytes:
        """A manifest named by digest (a child of an index)."""

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        """The raw bytes of a blob, unverified."""

    def local_blob(self, desc: Descriptor) -> Path | None:
        """A local file already holding the blob (OCI layout), or None."""


class Layer:
    """One layer: its descriptor and diff_id; bytes are fetched into the cache on first read."""

    def __init__(self, desc: Descriptor, diff_id: str, source: Source | None, cache: BlobCache):
        self.descriptor = desc
        self.diff_id = diff_id
        self._source = source
        self._cache = cache
        self._verified_path: Path | None = None
        self._pending: Future[Path] | None = None  # a fetch prefetch() started

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    def with_media_type(self, media_type: str) -> Layer:
        """The same blob under another media type (same digest: the bytes do not change)."""
        other = Layer(
            replace(self.descriptor, media_type=media_type), self.diff_id, self._source, self._cache
        )
        other._verified_path = self._verified_path
        other._pending = self._pending
        return other

    @property
    def compression(self) -> str:
        return mt.compression_of(self.descriptor.media_type)

    def path(self) -> Path:
        """A local file holding the compressed blob, verified against its digest once."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self._verified_path = pending.result()
        return self._fetch()

    def _fetch(self) -> Path:
        if self._verified_path is not None:
            return self._verified_path
        cached = self._cache.path(self.digest)
        if self._cache.has(self.digest):
            self._verified_path = cached
            return cached
        if self._source is None:
            raise IntegrityError(f"layer {self.digest} is missing from the cache")
        local = self._source.local_blob(self.descriptor)
        if local is not None:
            # A layout's blob is read in place, but only after one full digest check.
            with local.open("rb") as f:
                VerifiedReader(f, self.digest, self.descriptor.size, "layer").finish()
            self._verified_path = local
            return local
        src = self._source
        self._verified_path = self._cache.fetch(
            self.digest, self.descriptor.size, lambda: src.open_blob(self.descriptor), "layer"
        )
        return self._verified_path

    def open_for_copy(self) -> BinaryIO:
        """The compressed bytes for copying elsewhere: from the cache or a local file when
        there, else streamed from the source (verified as read) without filling the cache."""
        if self._verified_path is not None or self._cache.has(self.digest) or self._source is None:
            return self.open_compressed()
        local = self._source.local_blob(self.descriptor)
        raw = local.open("rb") if local is not None else self._source.open_blob(self.descriptor)
        return VerifiedReader(raw, self.digest, self.descriptor.size, "layer")  # type: ignore[return-value]

    def open_compressed(self) -> BinaryIO:
        return self.path().open("rb")

    def open_tar(self) -> BinaryIO:
        """The uncompressed tar stream. Its diff_id is checked when read to the end."""
        raw = open_decompressed(self.open_compressed(), self.compression)
        return VerifiedReader(raw, self.diff_id, None, "layer (uncompressed)")  # type: ignore[return-value]


@dataclass
class IndexInfo:
    """The index an image was selected from, kept so that a destination can write a new index
    that keeps every other platform."""

    data: bytes
    media_type: str
    digest: str
    entry: Descriptor
    # Child manifests by digest that the source does not hold (made by oci/convert.py).
    children: dict[str, bytes] = field(default_factory=dict)


@dataclass
class Image:
    ref: ImageRef
    manifest_bytes: bytes
    manifest_media_type: str
    config_bytes: bytes
    layers: list[Layer]
    source: Source | None
    index: IndexInfo | None = None
    manifest: dict[str, Any] = field(init=False)
    config: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.manifest = _load_json(self.manifest_bytes, "manifest")
        self.config = _load_config(self.config_bytes)

    @property
    def digest(self) -> str:
        from ocipatch.oci.digest import sha256_bytes

        return sha256_bytes(self.manifest_bytes)

    @property
    def config_descriptor(self) -> Descriptor:
        return Descriptor.from_json(self.manifest.get("config"), "config descriptor")

    @property
    def platform(self) -> Platform:
        p = Platform.from_json(self.config, "image config")
        return p if p.os else Platform("linux", p.architecture, p.variant)

    @property
    def is_docker(self) -> bool:
        return mt.is_docker(self.manifest_media_type)


def _load_json(data: bytes, what: str) -> dict[str, Any]:
    return jsondoc.parse_object(data, what)


def _load_config(data: bytes) -> dict[str, Any]:
    """The image config, with the shape of every field ocipatch reads checked once here."""
    config = _load_json(data, "image config")

    def bad(field: str, want: str) -> ImageFormatError:
        return ImageFormatError(f"image config is malformed: {field} is not {want}")

    rootfs = config.get("rootfs") or {}
    diff_ids = (rootfs.get("diff_ids") or []) if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(is_digest(d) for d in diff_ids):
        raise bad("rootfs.diff_ids", "a list of digests")
    for key in ("os", "architecture", "variant"):
        if config.get(key) is not None and not isinstance(config[key], str):
            raise bad(key, "a string")
    inner = config.get("config") or {}
    if not isinstance(inner, dict):
        raise bad("config", "an object")
    labels = inner.get("Labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise bad("config.Labels", "an object of strings")
    history = config.get("history") or []
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise bad("history", "a list of objects")
    return config


def _list(obj: dict[str, Any], key: str, what: str = "manifest") -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ImageFormatError(f"{what}: {key} is not a list")
    return value


def diff_ids_of(config: dict[str, Any]) -> list[str]:
    """rootfs.diff_ids of an image config: digests, one per layer."""
    rootfs = config.get("rootfs") or {}
    if not isinstance(rootfs, dict):
        raise ImageFormatError("image config: rootfs is not an object")
    diff_ids = _list(rootfs, "diff_ids", "image config rootfs")
    for d in diff_ids:
        if not is_digest(d):
            raise ImageFormatError(f"image config: diff_id {d!r} is not sha256:<64 hex digits>")
    return diff_ids


def media_type_of(data: bytes, declared: str) -> str:
    """The media type a manifest declares; falls back to its mediaType field, then its shape."""
    if declared and declared in mt.ALL_MANIFESTS:
        return declared
    obj = _load_json(data, "manifest")
    inner = obj.get("mediaType")
    if isinstance(inner, str) and inner in mt.ALL_MANIFESTS:
        return inner
    if "manifests" in obj:
        return mt.OCI_INDEX
    if "layers" in obj and "config" in obj:
        return mt.OCI_MANIFEST
    raise ImageFormatError(f"unsupported manifest media type {declared or inner!r}")


def select_platform(index_bytes: bytes, want: Platform) -> Descriptor:
    idx = _load_json(index_bytes, "image index")
    entries = [Descriptor.from_json(m, "index entry") for m in _list(idx, "manifests", "index")]
    # Attestation manifests (buildx) carry platform unknown/unknown: never a match.
    candidates = [e for e in entries if e.platform is not None and e.media_type in mt.MANIFESTS]
    for e in candidates:
        if e.platform is not None and want.matches(e.platform):
            return e
    have = ", ".join(sorted({str(e.platform) for e in candidates if e.platform})) or "none"
    raise PlatformError(
        f"platform {want} is not in the image index (it has: {have}): choose one with --platform"
    )


def load_image(source: Source, cache: BlobCache, platform: Platform | None = None) -> Image:
    """Resolve the reference to one platform's manifest and read its config (both verified)."""
    data, declared = source.root_manifest()
    media_type = media_type_of(data, declared)
    index: IndexInfo | None = None
    if media_type in mt.INDEXES:
        from ocipatch.oci.digest import sha256_bytes

        entry = select_platform(data, platform or Platform.host())
        index = IndexInfo(data, media_type, sha256_bytes(data), entry)
        child = verify_bytes(source.manifest(entry), entry.digest, entry.size, "manifest")
        media_type = media_type_of(child, entry.media_type)
        if media_type in mt.INDEXES:
            raise ImageFormatError(f"nested image index {entry.digest} is not supported")
        data = child
    manifest = _load_json(data, "manifest")
    config_desc = Descriptor.from_json(manifest.get("config"), "config descriptor")
    config_path = cache.fetch(
        config_desc.digest, config_desc.size, lambda: source.open_blob(config_desc), "config"
    )
    config_bytes = config_path.read_bytes()
    config = _load_config(config_bytes)
    layer_descs = [Descriptor.from_json(d, "layer descriptor") for d in _list(manifest, "layers")]
    diff_ids = diff_ids_of(config)
    if len(diff_ids) != len(layer_descs):
        raise ImageFormatError(
            f"image config lists {len(diff_ids)} diff_ids for {len(layer_descs)} layers"
        )
    for d in layer_descs:
        try:
            mt.compression_of(d.media_type)
        except ValueError:
            raise ImageFormatError(
                f"layer {d.digest} has unsupported media type {d.media_type!r}"
            ) from None
    have = Platform.from_json(config, "image config")
    if platform is not None and index is None and not platform.matches(have):
        raise PlatformError(
            f"image {source.ref} is {have}, not {platform}: it has no index to choose from"
        )
    layers = [Layer(d, diff, source, cache) for d, diff in zip(layer_descs, diff_ids, strict=True)]
    return Image(source.ref, data, media_type, config_bytes, layers, source, index)


def prefetch(layers: Sequence[Layer]) -> None:
    """Fetch the blobs of layers not in the cache yet, in order, on a background thread: the
    caller works on layer i while layer i+1 downloads. Layer.path() waits for its own fetch
    and raises its error; a fetch nobody waits for is dropped."""
    todo = [
        layer
        for layer in layers
        if layer._verified_path is None
        and layer._pending is None
        and layer._source is not None
        and not layer._cache.has(layer.digest)
    ]
    if not todo:
        return
    for layer, fut in zip(todo, start_each([lay._fetch for lay in todo], "prefetch"), strict=True):
        layer._pending = fut


def iter_chunks(f: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    while chunk := f.read(size):
        yield chunk
