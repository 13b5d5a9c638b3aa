"""Docker schema2 -> OCI media types, where the destination or a layer needs it (as `skopeo
copy` does).

An OCI layout (and oci-archive) holds OCI manifests and indexes only: skopeo and umoci refuse a
Docker manifest in index.json. A Docker manifest cannot name a zstd layer: a registry stores it
but skopeo refuses to read it. Anything else keeps its types, so a Docker image pushed to a
registry keeps its digests.

Converting rewrites media types only: the config and layer blobs keep their bytes and digests;
the manifests (and the index, and every other platform's manifest in it) get new ones.
Serialisation is compact with keys in their order, so the same input gives the same digests.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from typing import Any

from ocipatch.oci import mediatypes as mt
from ocipatch.oci.digest import sha256_bytes, verify_bytes
from ocipatch.oci.image import Image, IndexInfo
from ocipatch.oci.reference import ImageRef
from ocipatch.oci.types import Descriptor

# Destinations that can only hold OCI media types.
OCI_ONLY_TRANSPORTS = ("oci", "oci-archive")


def for_destination(image: Image, dest: ImageRef) -> Image:
    """image as it must be written to dest: converted to OCI when needed, else unchanged."""
    return to_oci(image) if needs_oci(image, dest) else image


def needs_oci(image: Image, dest: ImageRef) -> bool:
    if not _has_docker_types(image):
        return False
    if dest.transport in OCI_ONLY_TRANSPORTS:
        return True
    if dest.transport == "docker-archive":
        return False  # it stores no media types
    # A registry: Docker stays Docker unless a layer has no Docker spelling (zstd).
    return image.is_docker and any(
        layer.descriptor.media_type not in mt.DOCKER_TO_OCI for layer in image.layers
    )


def _has_docker_types(image: Image) -> bool:
    if _docker_in_manifest(image.manifest):
        return True
    if image.index is None:
        return False
    if image.index.media_type == mt.DOCKER_MANIFEST_LIST:
        return True
    entries = json.loads(image.index.data).get("manifests") or []  # parsed once already
    return any(isinstance(e, dict) and e.get("mediaType") == mt.DOCKER_MANIFEST for e in entries)


def to_oci(image: Image) -> Image:
    """The same image with OCI media types throughout; its index (every platform) too."""
    manifest_bytes = manifest_to_oci(image.manifest_bytes)
    layers = [
        layer.with_media_type(_oci_type(layer.descriptor.media_type)) for layer in image.layers
    ]
    index = _index_to_oci(image, manifest_bytes) if image.index is not None else None
    return Image(
        image.ref,
        manifest_bytes,
        mt.OCI_MANIFEST,
        image.config_bytes,
        layers,
        image.source,
        index,
    )


def manifest_to_oci(data: bytes) -> bytes:
    """A manifest's bytes with OCI media types (unchanged bytes when it has none to change)."""
    manifest: dict[str, Any] = json.loads(data)
    if not _docker_in_manifest(manifest):
        return data
    out = copy.deepcopy(manifest)
    out["mediaType"] = mt.OCI_MANIFEST
    if isinstance(out.get("config"), dict):
        out["config"]["mediaType"] = _oci_type(str(out["config"].get("mediaType", "")))
    for layer in out.get("layers") or []:
        if isinstance(layer, dict):
            layer["mediaType"] = _oci_type(str(layer.get("mediaType", "")))
    return _dump(out)


def _docker_in_manifest(manifest: dict[str, Any]) -> bool:
    types = [manifest.get("mediaType"), (manifest.get("config") or {}).get("mediaType")]
    types += [layer.get("mediaType") for layer in manifest.get("layers") or []]
    return any(t in mt.DOCKER_TO_OCI for t in types)


def _oci_type(media_type: str) -> str:
    return mt.DOCKER_TO_OCI.get(media_type, media_type)


def _index_to_oci(image: Image, manifest_bytes: bytes) -> IndexInfo:
    """The index with this platform's entry naming manifest_bytes and every other Docker
    manifest converted; the converted siblings travel in IndexInfo.children."""
    assert image.index is not None
    index: dict[str, Any] = json.loads(image.index.data)
    children = dict(image.index.children)
    entry = image.index.entry
    for e in index.get("manifests") or []:
        if not isinstance(e, dict):
            continue
        this = e.get("digest") == image.index.entry.digest
        if this:
            data = manifest_bytes
        elif e.get("mediaType") == mt.DOCKER_MANIFEST and image.source is not None:
            data = manifest_to_oci(_sibling(image, Descriptor.from_json(e, "index entry")))
        else:
            continue
        digest = sha256_bytes(data)
        e.update({"mediaType": mt.OCI_MANIFEST, "digest": digest, "size": len(data)})
        if this:
            entry = Descriptor.from_json(e, "index entry")
        else:
            children[digest] = data
    index["mediaType"] = mt.OCI_INDEX
    index_bytes = _dump(index)
    return replace(
        image.index,
        data=index_bytes,
        media_type=mt.OCI_INDEX,
        digest=sha256_bytes(index_bytes),
        entry=entry,
        children=children,
    )


def _sibling(image: Image, desc: Descriptor) -> bytes:
    """Another platform's manifest, read from the source and checked against its digest."""
    assert image.source is not None
    return verify_bytes(image.source.manifest(desc), desc.digest, desc.size, "manifest")


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
