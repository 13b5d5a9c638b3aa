"""OCI image layout directories (`oci:DIR[:TAG]`), read and written.

Writing follows the layout spec: blobs first, then index.json replaced atomically, so a reader
never sees a tag that points at a missing blob.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from ocipatch.errors import ImageFormatError, NotFoundError
from ocipatch.oci import mediatypes as mt
from ocipatch.oci.cache import CHUNK
from ocipatch.oci.digest import VerifiedReader, verify_bytes
from ocipatch.oci.reference import ImageRef
from ocipatch.oci.types import Descriptor

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_FILE = {"imageLayoutVersion": "1.0.0"}


def blob_path(root: Path, digest: str) -> Path:
    alg, _, hexpart = digest.partition(":")
    return root / "blobs" / alg / hexpart


def read_index(root: Path, what: str) -> dict[str, Any]:
    index = root / "index.json"
    if not root.is_dir():
        raise NotFoundError(f"{what}: no such directory {root}")
    if not index.is_file():
        raise NotFoundError(f"{what}: {root} is not an OCI image layout (it has no index.json)")
    try:
        data = index.read_bytes()
    except OSError as e:
        raise ImageFormatError(f"{what}: unreadable index.json: {e}") from None
    return parse_index(data, what)


def parse_index(data: bytes, what: str) -> dict[str, Any]:
    """A layout's (or an oci-archive's) index.json, checked to be an image index."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ImageFormatError(f"{what}: unreadable index.json: {e}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("manifests") or [], list):
        raise ImageFormatError(f"{what}: index.json is not an OCI image index")
    return obj


def pick_entry(index: dict[str, Any], tag: str | None, what: str) -> Descriptor:
    entries = [Descriptor.from_json(m, "index.json entry") for m in index.get("manifests") or []]
    if tag is not None:
        for e in entries:
            if e.annotations.get(REF_NAME) == tag:
                return e
        tags = sorted(e.annotations[REF_NAME] for e in entries if REF_NAME in e.annotations)
        raise NotFoundError(f"{what}: no image tagged {tag!r} (tags: {', '.join(tags) or 'none'})")
    if len(entries) == 1:
        return entries[0]
    if not entries:
        raise NotFoundError(f"{what}: the layout holds no image")
    tags = sorted(e.annotations.get(REF_NAME, e.digest) for e in entries)
    raise NotFoundError(
        f"{what}: the layout holds {len(entries)} images; name one: {', '.join(tags)}"
    )


class LayoutSource:
    def __init__(self, ref: ImageRef) -> None:
        self.ref = ref
        self.root = Path(ref.path)
        self._what = str(ref)

    def root_manifest(self) -> tuple[bytes, str]:
        entry = pick_entry(read_index(self.root, self._what), self.ref.tag, self._what)
        return self.manifest(entry), entry.media_type

    def manifest(self, desc: Descriptor) -> bytes:
        path = self._existing(desc)
        return verify_bytes(path.read_bytes(), desc.digest, desc.size, "manifest")

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        return self._existing(desc).open("rb")

    def local_blob(self, desc: Descriptor) -> Path | None:
        return self._existing(desc)

    def _existing(self, desc: Descriptor) -> Path:
        path = blob_path(self.root, desc.digest)
        if not path.is_file():
            raise ImageFormatError(f"{self._what}: blob {desc.digest} is missing from the layout")
        return path


class LayoutDestination:
    """Blobs are written verified, index.json last."""

    def __init__(self, root: Path, tag: str | None) -> None:
        self.root = root
        self.tag = tag
        self.blobs_written = 0

    def has_blob(self, desc: Descriptor) -> bool:
        return blob_path(self.root, desc.digest).is_file()

    def put_blob(
        self, desc: Descriptor, opener: Callable[[], BinaryIO], source: ImageRef | None = None
    ) -> str:
        dest = blob_path(self.root, desc.digest)
        if dest.is_file():
            return "exists"
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out, opener() as raw:
                reader = VerifiedReader(raw, desc.digest, desc.size)
                while chunk := reader.read(CHUNK):
                    out.write(chunk)
                reader.finish()
            os.replace(tmp, dest)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self.blobs_written += 1
        return "uploaded"

    def put_manifest(self, data: bytes, media_type: str, digest: str) -> None:
        self.put_blob(Descriptor(media_type, digest, len(data)), lambda: io.BytesIO(data))

    def put_root(self, data: bytes, media_type: str, digest: str, platform: Any = None) -> None:
        self.put_manifest(data, media_type, digest)
        self.root.mkdir(parents=True, exist_ok=True)
        layout = self.root / "oci-layout"
        if not layout.exists():
            _atomic_write(layout, json.dumps(LAYOUT_FILE).encode())
        index_path = self.root / "index.json"
        if index_path.exists():
            index = read_index(self.root, f"oci:{self.root}")
        else:
            index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}
        entry: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": len(data)}
        if self.tag:
            entry["annotations"] = {REF_NAME: self.tag}
            keep = [
                m
                for m in index.get("manifests", [])
                if (m.get("annotations") or {}).get(REF_NAME) != self.tag
            ]
        else:
            keep = [m for m in index.get("manifests", []) if m.get("digest") != digest]
        index["manifests"] = [*keep, entry]
        _atomic_write(index_path, json.dumps(index, indent=2).encode() + b"\n")

    def close(self) -> None:
        return None


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
