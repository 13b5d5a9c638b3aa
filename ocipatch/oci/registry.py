"""A registry as an image Source and as a Destination, over the RegistryClient."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ocipatch.oci.digest import verify_bytes
from ocipatch.oci.reference import ImageRef
from ocipatch.oci.remote import RegistryClient, RegistryOptions
from ocipatch.oci.types import Descriptor

_clients: dict[tuple[str, RegistryOptions], RegistryClient] = {}


def client_for(registry: str, options: RegistryOptions) -> RegistryClient:
    """One client (one session, one token cache) per registry and options."""
    key = (registry, options)
    if key not in _clients:
        _clients[key] = RegistryClient(registry, options)
    return _clients[key]


class RegistrySource:
    def __init__(self, ref: ImageRef, options: RegistryOptions) -> None:
        self.ref = ref
        self.client = client_for(ref.registry, options)

    def root_manifest(self) -> tuple[bytes, str]:
        data, media_type, _ = self.client.get_manifest(self.ref.repository, self.ref.reference)
        return data, media_type

    def manifest(self, desc: Descriptor) -> bytes:
        data, _, _ = self.client.get_manifest(self.ref.repository, desc.digest)
        return verify_bytes(data, desc.digest, desc.size, "manifest")

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        return self.client.open_blob(self.ref.repository, desc.digest)

    def local_blob(self, desc: Descriptor) -> Path | None:
        return None


class RegistryDestination:
    """Pushes blobs (skipping those present, mounting those in a sibling repository), then
    child manifests by digest, then the tagged root manifest last."""

    def __init__(self, ref: ImageRef, options: RegistryOptions) -> None:
        self.ref = ref
        self.client = client_for(ref.registry, options)
        self.results: dict[str, int] = {"exists": 0, "mounted": 0, "uploaded": 0}

    def has_blob(self, desc: Descriptor) -> bool:
        return self.client.blob_exists(self.ref.repository, desc.digest)

    def put_blob(
        self, desc: Descriptor, opener: Callable[[], BinaryIO], source: ImageRef | None = None
    ) -> str:
        mount_from = None
        if (
            source is not None
            and source.is_registry
            and source.registry == self.ref.registry
            and source.repository != self.ref.repository
        ):
            mount_from = source.repository
        result = self.client.push_blob(
            self.ref.repository, desc.digest, desc.size, opener, mount_from=mount_from
        )
        self.results[result] = self.results.get(result, 0) + 1
        return result

    def put_manifest(self, data: bytes, media_type: str, digest: str) -> None:
        self.client.put_manifest(self.ref.repository, digest, data, media_type)

    def put_root(self, data: bytes, media_type: str, digest: str) -> None:
        self.client.put_manifest(self.ref.repository, self.ref.tag or digest, data, media_type)

    def close(self) -> None:
        return None

    def discard(self) -> None:
        return None  # pushed blobs are unnamed until a manifest names them
