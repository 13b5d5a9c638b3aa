"""A real debootstrapped Debian 12 image, read through every transport and checked against
independent readers (dpkg-query, skopeo, umoci, trivy)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from ocipatch.inspect import inspect_image
from ocipatch.oci.cache import BlobCache
from ocipatch.oci.digest import sha256_bytes
from ocipatch.oci.mutate import append_layer
from ocipatch.oci.reference import parse_reference
from ocipatch.oci.remote import RegistryOptions
from ocipatch.oci.transport import open_image, write_image
from ocipatch.oci.types import Descriptor
from tests import synth
from tests.plugins.images import dpkg_query, skopeo, trivy_packages, umoci_unpack

OPTS = RegistryOptions()


def packages_of(ref: str, cache: BlobCache) -> dict[str, str]:
    info = inspect_image(open_image(parse_reference(ref), OPTS, cache), cache)
    assert info["os"] == {"id": "debian", "version_id": "12"}
    assert info["package_manager"] == "dpkg"
    return {p["name"]: p["version"] for p in info["packages"]}


@pytest.fixture(scope="module")
def expected(
    debian_two_layer_layout: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    rootfs = umoci_unpack(debian_two_layer_layout, "12", tmp_path_factory.mktemp("u") / "b")
    want = dpkg_query(rootfs)
    assert "openssl" in want and len(want) > 80
    return want


def test_inspect_matches_dpkg_query(
    debian_two_layer_layout: Path, expected: dict[str, str], tmp_path: Path
) -> None:
    got = packages_of(f"oci:{debian_two_layer_layout}:12", BlobCache(tmp_path / "c"))
    assert got == expected
    assert any(":" in v for v in got.values()), "an epoch version is kept as dpkg writes it"


def test_same_packages_from_every_transport(
    debian_two_layer_layout: Path, expected: dict[str, str], registry: object, tmp_path: Path
) -> None:
    host = registry.host  # type: ignore[attr-defined]
    src = f"oci:{debian_two_layer_layout}:12"
    skopeo("copy", "-q", "--dest-tls-verify=false", src, f"docker://{host}/inspect/debian:12")
    skopeo(
        "copy",
        "-q",
        "--format",
        "v2s2",
        "--dest-tls-verify=false",
        src,
        f"docker://{host}/inspect/debian:v2s2",
    )
    skopeo("copy", "-q", src, f"oci:{tmp_path}/layout:12")
    skopeo("copy", "-q", src, f"docker-archive:{tmp_path}/d.tar:debian:12")
    skopeo("copy", "-q", src, f"oci-archive:{tmp_path}/o.tar:12")
    for ref in (
        f"{host}/inspect/debian:12",
        f"{host}/inspect/debian:v2s2",
        f"oci:{tmp_path}/layout:12",
        f"docker-archive:{tmp_path}/d.tar",
        f"oci-archive:{tmp_path}/o.tar",
    ):
        assert packages_of(ref, BlobCache(tmp_path / "cache")) == expected, ref


def test_trivy_sees_the_same_packages(
    debian_two_layer_layout: Path, expected: dict[str, str], tmp_path: Path
) -> None:
    assert trivy_packages(debian_two_layer_layout, tmp_path) == expected


def test_round_trip_through_registry_uploads_only_new_blobs(
    debian_two_layer_layout: Path, registry: object, tmp_path: Path
) -> None:
    reg = registry
    host = reg.host  # type: ignore[attr-defined]
    skopeo(
        "copy",
        "-q",
        "--dest-tls-verify=false",
        f"oci:{debian_two_layer_layout}:12",
        f"docker://{host}/rt/debian:12",
    )
    cache = BlobCache(tmp_path / "cache")
    img = open_image(parse_reference(f"{host}/rt/debian:12"), OPTS, cache)
    raw = synth.tar_bytes([synth.d("etc"), synth.f("etc/ocipatch-test", "hello")])
    comp = gzip.compress(raw, mtime=0)
    digest = sha256_bytes(comp)
    cache.path(digest).parent.mkdir(parents=True, exist_ok=True)
    cache.path(digest).write_bytes(comp)
    new = append_layer(
        img,
        Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", digest, len(comp)),
        sha256_bytes(raw),
        cache,
        history={"created_by": "round trip"},
    )
    before = reg.uploads("rt/debian")  # type: ignore[attr-defined]
    write_image(new, parse_reference(f"{host}/rt/debian:12-new"), OPTS)
    assert reg.uploads("rt/debian") - before == 2  # type: ignore[attr-defined]  # the new layer and the config
    info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{host}/rt/debian:12-new"))
    assert (
        info["Layers"][:2] == [layer.digest for layer in img.layers] and info["Layers"][2] == digest
    )
    skopeo(
        "copy",
        "-q",
        "--src-tls-verify=false",
        f"docker://{host}/rt/debian:12-new",
        f"oci:{tmp_path}/back:new",
    )
    root = umoci_unpack(tmp_path / "back", "new", tmp_path / "bundle")
    assert (root / "etc/ocipatch-test").read_text() == "hello"
    # Copying to another repository of the same registry mounts instead of uploading.
    before = reg.uploads("rt/other")  # type: ignore[attr-defined]
    write_image(new, parse_reference(f"{host}/rt/other:1"), OPTS)
    assert reg.uploads("rt/other") - before <= 2  # type: ignore[attr-defined]
    assert reg.mounts("rt/other") >= 2  # type: ignore[attr-defined]
