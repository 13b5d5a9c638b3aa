"""`ocipatch inspect`: what ocipatch sees in an image, read through the merged layers."""

from __future__ import annotations

from typing import Any

from ocipatch.distro.detect import read_os_release
from ocipatch.distro.registry import detect
from ocipatch.fs.merged import MergedView
from ocipatch.oci.cache import BlobCache
from ocipatch.oci.image import Image


def merged_view(image: Image, cache: BlobCache) -> MergedView:
    return MergedView(image.layers, cache.work_dir("index"))


def inspect_image(image: Image, cache: BlobCache) -> dict[str, Any]:
    view = merged_view(image, cache)
    osr = read_os_release(view)
    pm = detect(view)
    packages = [p.to_json() for p in pm.read_db(view)] if pm is not None else []
    plat = image.platform
    return {
        "reference": str(image.ref),
        "digest": image.index.digest if image.index is not None else image.digest,
        "manifest_digest": image.digest,
        "platform": {"os": plat.os, "architecture": plat.architecture, "variant": plat.variant},
        "os": {"id": osr.id, "version_id": osr.version_id} if osr else None,
        "package_manager": pm.name if pm is not None else None,
        "packages": packages,
        "layers": [
            {"digest": layer.digest, "size": layer.descriptor.size} for layer in image.layers
        ],
    }
