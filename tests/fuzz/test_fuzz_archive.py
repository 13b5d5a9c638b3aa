"""Fuzzing local images: docker-archive (manifest.json, config), OCI layouts (index.json, the
manifest and config they point at) and oci-archive files, read the way `ocipatch patch` reads
them (load_image, then every layer streamed to its end).

Property: an Image or an OcipatchError (ImageFormatError, IntegrityError, NotFoundError,
PlatformError, ...); and the blob cache is never written outside its own directory."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from ocipatch.errors import OcipatchError
from ocipatch.fs.merged import drain
from ocipatch.oci import mediatypes as mt
from ocipatch.oci.archive import DockerArchiveSource, OciArchiveSource
from ocipatch.oci.cache import BlobCache
from ocipatch.oci.image import load_image
from ocipatch.oci.layout import REF_NAME, LayoutSource
from ocipatch.oci.reference import ImageRef
from ocipatch.oci.types import Platform
from tests.fuzz.budget import counted, dumps, fuzz_settings, mutated_bytes, mutated_json

BOX = Path(tempfile.mkdtemp(prefix="ocipatch-fuzz-archive-"))
WORK = BOX / "work"  # archives and layouts under test
CACHE = BOX / "cache"  # the blob cache: nothing may land beside it


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


LAYER = _tar({"etc/os-release": b"ID=debian\nVERSION_ID=12\n", "var/lib/dpkg/status": b""})
CONFIG: dict[str, Any] = {
    "architecture": "amd64",
    "os": "linux",
    "config": {"Env": ["PATH=/usr/bin"]},
    "rootfs": {"type": "layers", "diff_ids": [_digest(LAYER)]},
}
CONFIG_NAME = _digest(json.dumps(CONFIG).encode()).split(":")[1] + ".json"
DOCKER_MANIFEST: list[Any] = [
    {"Config": CONFIG_NAME, "RepoTags": ["app:1"], "Layers": ["0123/layer.tar"]}
]


def manifest_for(config: bytes, layer: bytes = LAYER) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": _digest(config), "size": len(config)},
        "layers": [{"mediaType": mt.OCI_LAYER, "digest": _digest(layer), "size": len(layer)}],
    }


def index_for(manifest: bytes) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": _digest(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "1"},
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
    }


def docker_archive(manifest: bytes, config: bytes) -> bytes:
    return _tar({"0123/layer.tar": LAYER, CONFIG_NAME: config, "manifest.json": manifest})


def layout_files(index: bytes, manifest: bytes, config: bytes) -> dict[str, bytes]:
    return {
        "oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
        "index.json": index,
        **{f"blobs/sha256/{_digest(b)[7:]}": b for b in (manifest, config, LAYER)},
    }


CONFIG_BYTES = json.dumps(CONFIG).encode()
MANIFEST_BYTES = json.dumps(manifest_for(CONFIG_BYTES)).encode()
INDEX_BYTES = json.dumps(index_for(MANIFEST_BYTES)).encode()
SEED_DOCKER = docker_archive(json.dumps(DOCKER_MANIFEST).encode(), CONFIG_BYTES)
SEED_OCI = _tar(layout_files(INDEX_BYTES, MANIFEST_BYTES, CONFIG_BYTES))

tags = st.sampled_from([None, "1", "app:1", "nope"])
platforms = st.sampled_from([None, Platform("linux", "amd64"), Platform("linux", "arm64", "v8")])


def _reset() -> None:
    shutil.rmtree(BOX, ignore_errors=True)
    WORK.mkdir(parents=True)
    CACHE.mkdir()


def check_image(ref: ImageRef, platform: Platform | None) -> None:
    sources = {
        "docker-archive": DockerArchiveSource,
        "oci-archive": OciArchiveSource,
        "oci": LayoutSource,
    }
    with contextlib.suppress(OcipatchError):
        image = load_image(sources[ref.transport](ref), BlobCache(CACHE), platform)
        image.platform  # noqa: B018 - reads the config
        image.config_descriptor  # noqa: B018
        for layer in image.layers:
            with layer.open_tar() as f:
                drain(f)
    assert sorted(os.listdir(BOX)) == ["cache", "work"], "nothing written beside the cache"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@fuzz_settings()
@given(
    mutated_json([DOCKER_MANIFEST]).map(dumps) | mutated_bytes([dumps(DOCKER_MANIFEST)]),
    mutated_json([CONFIG]).map(dumps) | st.just(CONFIG_BYTES),
    tags,
)
@example(b'[{"Config": 1}]', CONFIG_BYTES, None)
@example(b'[{"Config": "x", "RepoTags": [1]}]', CONFIG_BYTES, "1")
@example(dumps(DOCKER_MANIFEST), b'{"rootfs": []}', None)
@example(dumps(DOCKER_MANIFEST), b'{"rootfs": {"diff_ids": ["sha256:../../../x"]}}', None)
@counted("docker-archive manifest.json and config")
def test_docker_archive_documents(manifest: bytes, config: bytes, tag: str | None) -> None:
    _reset()
    path = _write(WORK / "img.tar", docker_archive(manifest, config))
    check_image(ImageRef("docker-archive", path=str(path), tag=tag), None)


@fuzz_settings()
@given(mutated_bytes([SEED_DOCKER, SEED_OCI], max_ops=3), st.booleans(), tags, platforms)
# Cut short inside a member: tarfile.ReadError from getmembers().
@example(SEED_DOCKER[: SEED_DOCKER.index(b"manifest.json") + 522], True, None, None)
@counted("docker-archive and oci-archive bytes")
def test_archive_bytes(data: bytes, docker: bool, tag: str | None, plat: Platform | None) -> None:
    check_archive_bytes(data, docker, tag, plat)


def check_archive_bytes(
    data: bytes, docker: bool, tag: str | None = None, plat: Platform | None = None
) -> None:
    _reset()
    path = _write(WORK / "img.tar", data)
    check_image(
        ImageRef("docker-archive" if docker else "oci-archive", path=str(path), tag=tag), plat
    )


def _entry_with(**changes: Any) -> tuple[bytes, bytes, bytes]:
    """The seed layout with its index.json entry changed (crashes found, kept as examples)."""
    doc = index_for(MANIFEST_BYTES)
    doc["manifests"][0].update(changes)
    return dumps(doc), MANIFEST_BYTES, CONFIG_BYTES


def _config_digest(digest: str) -> dict[str, Any]:
    doc = manifest_for(CONFIG_BYTES)
    doc["config"]["digest"] = digest
    return doc


def _layout(
    manifest_doc: dict[str, Any] | None = None, config_doc: dict[str, Any] | None = None
) -> tuple[bytes, bytes, bytes]:
    config = dumps(config_doc) if config_doc is not None else CONFIG_BYTES
    manifest = dumps(manifest_doc if manifest_doc is not None else manifest_for(config))
    return dumps(index_for(manifest)), manifest, config


@st.composite
def layout_documents(draw: st.DrawFn) -> tuple[bytes, bytes, bytes]:
    """index.json, manifest and config with one of them mutated; the ones above it point at
    the mutated one by its new digest (so parsing, not the digest check, meets it)."""
    which = draw(st.sampled_from(["index", "manifest", "config"]))
    config = draw(mutated_json([CONFIG]).map(dumps)) if which == "config" else CONFIG_BYTES
    manifest_doc: Any = manifest_for(config)
    if which == "manifest":
        manifest_doc = draw(mutated_json([manifest_doc]))
    manifest = dumps(manifest_doc)
    index_doc: Any = index_for(manifest)
    if which == "index":
        index_doc = draw(mutated_json([index_doc]))
    return dumps(index_doc), manifest, config


@fuzz_settings()
@given(layout_documents(), tags, platforms)
@example(_entry_with(annotations=[{REF_NAME: "1"}]), "1", None)
@example(_entry_with(annotations={REF_NAME: None}), "2", None)
@example(_layout(manifest_doc=_config_digest("sha256:../../../../escape")), None, None)
@example(_layout(config_doc={**CONFIG, "rootfs": [CONFIG["rootfs"]]}), None, None)
@example(_layout(config_doc={**CONFIG, "rootfs": {"diff_ids": [[_digest(LAYER)]]}}), None, None)
@example(_layout(config_doc={**CONFIG, "variant": 7}), None, Platform("linux", "amd64"))
@counted("oci layout index.json, manifest, config")
def test_oci_layout_documents(
    docs: tuple[bytes, bytes, bytes], tag: str | None, plat: Platform | None
) -> None:
    _reset()
    root = WORK / "layout"
    for name, data in layout_files(*docs).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    check_image(ImageRef("oci", path=str(root), tag=tag), plat)
