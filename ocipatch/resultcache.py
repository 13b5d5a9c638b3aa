"""A content-addressed cache of patch results, so a patch already made is not made again.

The key is everything the patch layer depends on: the base layers (and a previous patch layer),
the exact set of package versions the repositories' signed indices select today (planned in pure
Python by the image's package manager from its own sources and keys, read through the merged
layers without unpacking: PackageManager.planner), the report's requirements, the apply mode,
the layer time's other inputs (SOURCE_DATE_EPOCH, the image's `created`) and ocipatch's version
and writer format. The same key means the same inputs, so the stored layer is what a new run
would write; a new package version in the archive changes the plan, so the key. Entries are a
layer blob in the blob cache plus a small JSON file, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocipatch import __version__, runs
from ocipatch.distro.base import KeyInputs
from ocipatch.fs.layerwriter import WRITER_FORMAT
from ocipatch.oci.cache import BlobCache, touch


def result_key(inputs: KeyInputs, plan: dict[str, Any]) -> str:
    """The key of a patch: the inputs every package manager shares and its plan (the exact
    package versions it selected, the requirements it planned for, its apply mode)."""
    doc = {
        "ocipatch": __version__,
        "layers": inputs.layers,
        "compression": inputs.compression,
        "writer": WRITER_FORMAT,
        "times": inputs.times,  # the layer time's inputs besides the packages (layertime.py)
        "ignore_errors": inputs.ignore_errors,
        **plan,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass
class CachedResult:
    layer_digest: str
    layer_size: int
    diff_id: str
    meta: dict[str, Any]


class ResultCache:
    def __init__(self, root: Path, blobs: BlobCache) -> None:
        self.root = root
        self.blobs = blobs

    def empty(self) -> bool:
        return not self.root.is_dir() or next(self.root.glob("*.json"), None) is None

    def get(self, key: str) -> CachedResult | None:
        path = self.root / f"{key}.json"
        try:
            doc = json.loads(path.read_text())
            hit = CachedResult(
                doc["layer_digest"], int(doc["layer_size"]), doc["diff_id"], doc["meta"]
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        # A hit whose layer was pruned is a miss: the patch is made again.
        if not self.blobs.has(hit.layer_digest) or not touch(path):
            return None
        return hit

    def put(self, key: str, hit: CachedResult) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        doc = {
            "layer_digest": hit.layer_digest,
            "layer_size": hit.layer_size,
            "diff_id": hit.diff_id,
            "meta": hit.meta,
        }
        fd, tmp = runs.mkstemp(self.root)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, self.root / f"{key}.json")
