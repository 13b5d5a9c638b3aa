"""Opening images from any transport and writing them to any transport.

Write order is what keeps a failed run harmless: every blob first, then child manifests by
digest, and the tag (or index.json entry, or the archive's rename) last.
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ocipatch import space
from ocipatch.errors import UsageError
from ocipatch.oci import mediatypes as mt
from ocipatch.oci.archive import (
    DockerArchiveSource,
    OciArchiveDestination,
    OciArchiveSource,
    write_docker_archive,
)
from ocipatch.oci.cache import BlobCache
from ocipatch.oci.convert import for_destination
from ocipatch.oci.digest import VerifiedReader, sha256_bytes
from ocipatch.oci.image import Image, Layer, Source, load_image
from ocipatch.oci.layout import LayoutDestination, LayoutSource
from ocipatch.oci.reference import ImageRef
from ocipatch.oci.registry import RegistryDestination, RegistrySource
from ocipatch.oci.remote import RegistryOptions
from ocipatch.oci.types import Descriptor, Platform

# The repository name of a docker-archive made from an image that has none (an OCI layout).
DEFAULT_ARCHIVE_NAME = "ocipatch/image"


class Destination(Protocol):
    def has_blob(self, desc: Descriptor) -> bool: ...

    def put_blob(
        self, desc: Descriptor, opener: Callable[[], BinaryIO], source: ImageRef | None = None
    ) -> str: ...

    def put_manifest(self, data: bytes, media_type: str, digest: str) -> None: ...

    def put_root(self, data: bytes, media_type: str, digest: str) -> None: ...

    def close(self) -> None:
        """Commit: for an archive, the rename that replaces the file."""

    def discard(self) -> None:
        """A write failed: drop what close() would have committed (the source stays as it was)."""


def open_source(ref: ImageRef, options: RegistryOptions) -> Source:
    if ref.is_registry:
        return RegistrySource(ref, options)
    if ref.transport == "oci":
        return LayoutSource(ref)
    if ref.transport == "oci-archive":
        return OciArchiveSource(ref)
    if ref.transport == "docker-archive":
        return DockerArchiveSource(ref)
    raise UsageError(f"unsupported transport {ref.transport!r}")


def open_image(
    ref: ImageRef, options: RegistryOptions, cache: BlobCache, platform: Platform | None = None
) -> Image:
    return load_image(open_source(ref, options), cache, platform)


def _open_destination(ref: ImageRef, options: RegistryOptions) -> Destination:
    if ref.is_registry:
        return RegistryDestination(ref, options)
    if ref.transport == "oci":
        return LayoutDestination(Path(ref.path), ref.tag)
    if ref.transport == "oci-archive":
        return OciArchiveDestination(Path(ref.path), ref.tag)
    raise UsageError(f"cannot write to transport {ref.transport!r}")


def _layer_opener(layer: Layer) -> Callable[[], BinaryIO]:
    def opener() -> BinaryIO:
        return layer.open_for_copy()

    return opener


def _blob_opener(source: Source | None, desc: Descriptor) -> Callable[[], BinaryIO]:
    def opener() -> BinaryIO:
        assert source is not None
        return VerifiedReader(source.open_blob(desc), desc.digest, desc.size)  # type: ignore[return-value]

    return opener


def _room_at_destination(
    write: Callable[[Image, ImageRef, RegistryOptions], str],
) -> Callable[[Image, ImageRef, RegistryOptions], str]:
    """A local destination filling up is reported as that directory's (space.room_in)."""

    @functools.wraps(write)
    def wrapper(image: Image, dest_ref: ImageRef, options: RegistryOptions) -> str:
        if dest_ref.is_registry:
            return write(image, dest_ref, options)
        path = Path(dest_ref.path)
        where = path if dest_ref.transport == "oci" else path.parent
        with space.room_in(space.destination(where)):
            return write(image, dest_ref, options)

    return wrapper


@_room_at_destination
def write_image(image: Image, dest_ref: ImageRef, options: RegistryOptions) -> str:
    """Write image to dest_ref; returns the digest the destination tag now names. The image is
    converted to OCI media types first when the destination or a layer needs it."""
    image = for_destination(image, dest_ref)
    if dest_ref.transport == "docker-archive":
        return _write_docker_archive(image, dest_ref)
    dest = _open_destination(dest_ref, options)
    try:
        digest = _write(image, dest)
    except BaseException:
        dest.discard()
        raise
    dest.close()
    return digest


def _write(image: Image, dest: Destination) -> str:
    """Blobs, child manifests, then the root; the caller commits (close) or discards."""
    src_ref = image.ref
    for layer in image.layers:
        dest.put_blob(layer.descriptor, _layer_opener(layer), src_ref)
    cfg = image.config_descriptor
    dest.put_blob(cfg, lambda: io.BytesIO(image.config_bytes), src_ref)
    digest = sha256_bytes(image.manifest_bytes)
    if image.index is None:
        dest.put_root(image.manifest_bytes, image.manifest_media_type, digest)
        return digest
    dest.put_manifest(image.manifest_bytes, image.manifest_media_type, digest)
    index_bytes = _copy_siblings(image, dest, digest)
    index_digest = sha256_bytes(index_bytes)
    dest.put_root(index_bytes, image.index.media_type, index_digest)
    return index_digest


def _copy_siblings(image: Image, dest: Destination, new_digest: str) -> bytes:
    """Copy the index's other platforms to dest; return the index with this platform's entry
    pointing at the new manifest. The index is left byte-identical when nothing changed."""
    assert image.index is not None
    index: dict[str, Any] = json.loads(image.index.data)
    old = image.index.entry
    source = image.source
    for entry in index.get("manifests") or []:
        desc = Descriptor.from_json(entry)
        if desc.digest == old.digest:
            continue
        if source is None:
            continue
        data = image.index.children.get(desc.digest) or source.manifest(desc)
        if desc.media_type in mt.MANIFESTS:
            child = json.loads(data)
            blobs = [child.get("config"), *(child.get("layers") or [])]
            for b in blobs:
                if isinstance(b, dict):
                    bd = Descriptor.from_json(b)
                    dest.put_blob(bd, _blob_opener(source, bd), image.ref)
        dest.put_manifest(data, desc.media_type, desc.digest)
    if new_digest == old.digest:
        return image.index.data
    for entry in index.get("manifests") or []:
        if entry.get("digest") == old.digest:
            entry["digest"] = new_digest
            entry["size"] = len(image.manifest_bytes)
            entry["mediaType"] = image.manifest_media_type
    return json.dumps(index, indent=2).encode()


def _write_docker_archive(image: Image, dest_ref: ImageRef) -> str:
    tag = archive_repo_tag(image, dest_ref.tag)
    layers = [(layer.diff_id, None, _tar_opener(layer)) for layer in image.layers]
    write_docker_archive(Path(dest_ref.path), tag, image.config_bytes, layers)
    return sha256_bytes(image.config_bytes)


def archive_repo_tag(image: Image, tag: str | None) -> str | None:
    """The RepoTags entry of a docker-archive written from image: NAME:TAG as given; a bare
    TAG under the source's name; no tag: the source's own name and tag (None if it has none)."""
    name, own = _source_name_tag(image)
    tag = tag or own
    if not tag:
        return None
    return tag if ":" in tag else f"{name}:{tag}"


def _source_name_tag(image: Image) -> tuple[str, str | None]:
    """The source's repository name (DEFAULT_ARCHIVE_NAME when it has none) and its tag."""
    src = image.ref
    if src.is_registry:
        return src.name, src.tag
    repo_tag = image.source.repo_tag if isinstance(image.source, DockerArchiveSource) else None
    if repo_tag and ":" in repo_tag:
        name, _, tag = repo_tag.rpartition(":")
        return name, tag
    return DEFAULT_ARCHIVE_NAME, src.tag


def _tar_opener(layer: Layer) -> Callable[[], BinaryIO]:
    def opener() -> BinaryIO:
        return _Drained(layer.open_tar())  # type: ignore[return-value]

    return opener


class _Drained:
    """Reads a stream and, when it is closed, drains the rest so its digest check runs."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw

    def read(self, n: int = -1) -> bytes:
        return self._raw.read(n)

    def __enter__(self) -> _Drained:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            while self._raw.read(1 << 20):
                pass
        self._raw.close()
