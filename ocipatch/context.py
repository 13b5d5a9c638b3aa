"""What one ocipatch run shares: registry options, the cache and the chosen platform."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ocipatch import runs, space
from ocipatch.errors import UsageError
from ocipatch.oci.cache import BlobCache, default_cache_dir
from ocipatch.oci.image import Image
from ocipatch.oci.reference import ImageRef
from ocipatch.oci.remote import RegistryOptions
from ocipatch.oci.retry import retry_time_from
from ocipatch.oci.transport import open_image
from ocipatch.oci.types import Platform


@dataclass
class Context:
    registry_options: RegistryOptions
    cache: BlobCache
    platform: Platform | None
    debug: bool = False

    @classmethod
    def create(
        cls,
        *,
        plain_http: bool = False,
        insecure_registries: tuple[str, ...] = (),
        registry_ca: Path | None = None,
        username: str | None = None,
        password: str | None = None,
        registry_retry_time: str | None = None,
        cache_dir: Path | None = None,
        platform_text: str | None = None,
        debug: bool = False,
    ) -> Context:
        if registry_ca is not None and not registry_ca.is_file():
            raise UsageError(f"--registry-ca {registry_ca}: no such file")
        if username and password is None:
            raise UsageError("--username needs --password-stdin (the password is read from stdin)")
        logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING)
        options = RegistryOptions(
            plain_http=plain_http,
            insecure_registries=insecure_registries,
            ca_file=registry_ca,
            username=username,
            password=password,
            retry_time=retry_time_from(registry_retry_time),
        )
        cache = BlobCache(
            space.writable_dir(
                cache_dir or default_cache_dir(),
                "--cache-dir" if cache_dir else "the cache directory",
                "pass --cache-dir DIR, a directory you can write",
            )
        )
        runs.start(cache.root)  # removes what killed runs left; protects this run from prune
        platform = Platform.parse(platform_text) if platform_text else None
        return cls(options, cache, platform, debug)

    def open_image(self, ref: ImageRef) -> Image:
        return open_image(ref, self.registry_options, self.cache, self.platform)
