"""Appending a layer: a new Image over the old one's layers, with config and manifest rewritten.

Only rootfs.diff_ids, history and labels change; every other config field is kept as it was.
Serialisation is compact and key order is kept, so the same input gives the same digests.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from ocipatch.oci.cache import BlobCache
from ocipatch.oci.digest import sha256_bytes
from ocipatch.oci.image import Image, Layer
from ocipatch.oci.types import Descriptor


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _history_for_layers(history: list[dict[str, Any]], keep_layers: int) -> list[dict[str, Any]]:
    """The history entries that belong to the first keep_layers layers (empty_layer entries
    between them included, in order)."""
    out: list[dict[str, Any]] = []
    seen = 0
    for h in history:
        if not h.get("empty_layer"):
            if seen == keep_layers:
                break
            seen += 1
        out.append(h)
    return out


def append_layer(
    image: Image,
    layer: Descriptor,
    diff_id: str,
    cache: BlobCache,
    *,
    history: dict[str, Any],
    labels: dict[str, str] | None = None,
    keep_layers: int | None = None,
) -> Image:
    """Return image with `layer` on top of its first keep_layers layers (all by default)."""
    keep = len(image.layers) if keep_layers is None else keep_layers
    config = copy.deepcopy(image.config)
    rootfs = config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    rootfs["diff_ids"] = [*list(rootfs.get("diff_ids") or [])[:keep], diff_id]
    entry = dict(history)
    if "created" not in entry and config.get("created"):
        entry["created"] = config["created"]
    config["history"] = [*_history_for_layers(list(config.get("history") or []), keep), entry]
    if labels:
        inner = config.setdefault("config", {})
        merged = dict(inner.get("Labels") or {})
        merged.update(labels)
        inner["Labels"] = merged
    config_bytes = _dump(config)

    manifest = copy.deepcopy(image.manifest)
    manifest["layers"] = [*list(manifest.get("layers") or [])[:keep], layer.to_json()]
    cfg = dict(manifest.get("config") or {})
    cfg.update({"digest": sha256_bytes(config_bytes), "size": len(config_bytes)})
    manifest["config"] = cfg
    manifest_bytes = _dump(manifest)

    layers = [*image.layers[:keep], Layer(layer, diff_id, None, cache)]
    return Image(
        image.ref,
        manifest_bytes,
        image.manifest_media_type,
        config_bytes,
        layers,
        image.source,
        image.index,
    )
