"""OCI and Docker media types, and what kind of object each one names."""

from __future__ import annotations

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_ND = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_ND_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_ND_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar"

MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
ALL_MANIFESTS = MANIFESTS + INDEXES
# Sent as Accept when fetching a manifest by tag: every kind we can read.
ACCEPT_MANIFESTS = ", ".join(ALL_MANIFESTS)

LAYERS_GZIP = (OCI_LAYER_GZIP, OCI_LAYER_ND_GZIP, DOCKER_LAYER_GZIP, DOCKER_LAYER_FOREIGN_GZIP)
LAYERS_ZSTD = (OCI_LAYER_ZSTD, OCI_LAYER_ND_ZSTD)
LAYERS_PLAIN = (OCI_LAYER, OCI_LAYER_ND, DOCKER_LAYER, DOCKER_LAYER_FOREIGN)
LAYERS = LAYERS_GZIP + LAYERS_ZSTD + LAYERS_PLAIN

# Docker schema2 type -> its OCI equivalent (what `skopeo copy --format oci` writes). A layer
# type missing from the keys (zstd) has no Docker spelling: its image must be OCI.
DOCKER_TO_OCI = {
    DOCKER_MANIFEST: OCI_MANIFEST,
    DOCKER_MANIFEST_LIST: OCI_INDEX,
    DOCKER_CONFIG: OCI_CONFIG,
    DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
    DOCKER_LAYER: OCI_LAYER,
    DOCKER_LAYER_FOREIGN_GZIP: OCI_LAYER_ND_GZIP,
    DOCKER_LAYER_FOREIGN: OCI_LAYER_ND,
}


def compression_of(media_type: str) -> str:
    """'gzip', 'zstd' or 'none' for a layer media type; ValueError for anything else."""
    if media_type in LAYERS_GZIP:
        return "gzip"
    if media_type in LAYERS_ZSTD:
        return "zstd"
    if media_type in LAYERS_PLAIN:
        return "none"
    raise ValueError(f"not a layer media type: {media_type}")


def is_docker(manifest_media_type: str) -> bool:
    return manifest_media_type in (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)


def layer_media_type(compression: str, docker: bool) -> str:
    """The media type of a new layer, in the family (OCI or Docker schema2) of its manifest."""
    if docker:
        if compression == "gzip":
            return DOCKER_LAYER_GZIP
        if compression == "none":
            return DOCKER_LAYER
        # Docker schema2 has no zstd layer type: the image is converted to OCI when written
        # (oci/convert.py).
        return OCI_LAYER_ZSTD
    return {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD, "none": OCI_LAYER}[compression]
