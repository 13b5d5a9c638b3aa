"""Issue #9: Docker schema2 sources give images every reader opens.

A Docker v2s2 image (or manifest list) written where Docker types cannot go is converted to OCI:
to an OCI layout or oci-archive, and when a layer has no Docker media type (zstd). To a registry
a Docker image with gzip layers stays byte for byte what it was. A docker-archive written
without NAME:TAG is named after the source. Every check is made by skopeo, umoci or by reading
the files, as a user would.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard

from ocipatch.oci import mediatypes as mt
from ocipatch.oci.cache import BlobCache
from ocipatch.oci.convert import manifest_to_oci
from ocipatch.oci.mutate import append_layer
from ocipatch.oci.reference import parse_reference
from ocipatch.oci.remote import RegistryOptions
from ocipatch.oci.transport import open_image, write_image
from ocipatch.oci.types import Descriptor, Platform
from ocipatch.patch import destination_for
from tests import synth
from tests.plugins.images import skopeo
from tests.plugins.registry import push_test_image, skopeo_copy, skopeo_raw
from tests.test_cli import run
from tests.test_image import debianish_layers
from tests.test_patch_hermetic import Env, dpkg_status, env, patched, versions

__all__ = ["env"]  # the hermetic image fixture, built once for this module

DOCKER_TYPES = {
    mt.DOCKER_MANIFEST,
    mt.DOCKER_MANIFEST_LIST,
    mt.DOCKER_CONFIG,
    mt.DOCKER_LAYER,
    mt.DOCKER_LAYER_GZIP,
    mt.DOCKER_LAYER_FOREIGN,
    mt.DOCKER_LAYER_FOREIGN_GZIP,
}


def media_types(manifest: dict[str, Any]) -> list[str]:
    """mediaType of a manifest, its config and each layer, in that order."""
    return [
        manifest["mediaType"],
        manifest["config"]["mediaType"],
        *(layer["mediaType"] for layer in manifest["layers"]),
    ]


def blob(layout: Path, digest: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads((layout / "blobs/sha256" / digest.split(":")[1]).read_bytes())
    return out


def ocipatch_copy(src: str, dst: str, cache: Path) -> str:
    r = run("copy", "--cache-dir", str(cache), src, dst)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def umoci_unpacks(layout: Path, tag: str, dest: Path) -> None:
    subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{layout}:{tag}", str(dest)],
        check=True,
        capture_output=True,
        timeout=300,
    )


@pytest.fixture
def v2s2(registry: Any, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """A one-layer Docker schema2 image in the registry: (reference, its manifest)."""
    push_test_image(registry, tmp_path, "convert/v2s2", "1", docker=True)
    ref = f"{registry.host}/convert/v2s2:1"
    manifest = json.loads(skopeo_raw(f"docker://{ref}"))
    assert set(media_types(manifest)) <= DOCKER_TYPES, "the source is Docker schema2"
    return ref, manifest


def check_oci_copy(layout: Path, tag: str, source: dict[str, Any], work: Path) -> dict[str, Any]:
    """The layout holds the source as OCI: same config and layer blobs, OCI types throughout,
    and skopeo and umoci both open it."""
    (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
    assert entry["mediaType"] == mt.OCI_MANIFEST
    manifest = blob(layout, entry["digest"])
    assert media_types(manifest) == [mt.OCI_MANIFEST, mt.OCI_CONFIG, mt.OCI_LAYER_GZIP]
    assert manifest["config"]["digest"] == source["config"]["digest"], "config bytes unchanged"
    assert [x["digest"] for x in manifest["layers"]] == [x["digest"] for x in source["layers"]]
    info = json.loads(skopeo("inspect", f"oci:{layout}:{tag}"))
    assert info["Layers"] == [x["digest"] for x in source["layers"]]
    umoci_unpacks(layout, tag, work / "rootfs")
    assert (work / "rootfs/hello.txt").read_bytes() == b"hello from ocipatch tests\n"
    return manifest


def test_copy_v2s2_to_layout_is_oci(v2s2: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    ref, source = v2s2
    out = tmp_path / "out"
    digest = ocipatch_copy(ref, f"oci:{out}:t", tmp_path / "c")
    manifest = check_oci_copy(out, "t", source, tmp_path)
    assert digest == json.loads((out / "index.json").read_text())["manifests"][0]["digest"]
    # The same input twice, into another layout and with a cold cache: the same digests.
    again = tmp_path / "again"
    assert ocipatch_copy(ref, f"oci:{again}:t", tmp_path / "c2") == digest
    assert blob(again, digest) == manifest


def test_copy_v2s2_to_oci_archive_is_oci(v2s2: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    ref, source = v2s2
    archive = tmp_path / "out.tar"
    ocipatch_copy(ref, f"oci-archive:{archive}:t", tmp_path / "c")
    json.loads(skopeo("inspect", f"oci-archive:{archive}:t"))
    layout = tmp_path / "unpacked"
    with tarfile.open(archive) as t:
        t.extractall(layout)
    check_oci_copy(layout, "t", source, tmp_path)


def test_copy_v2s2_to_registry_stays_docker(
    v2s2: tuple[str, dict[str, Any]], registry: Any, tmp_path: Path
) -> None:
    ref, _ = v2s2
    dest = f"{registry.host}/convert/kept:1"
    digest = ocipatch_copy(ref, dest, tmp_path / "c")
    assert skopeo_raw(f"docker://{dest}") == skopeo_raw(f"docker://{ref}"), "byte for byte"
    assert (
        digest == json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{ref}"))["Digest"]
    )


def test_docker_manifest_list_to_layout_is_an_oci_index(registry: Any, tmp_path: Path) -> None:
    """Every platform is converted, not only the host's: the index and each child."""
    src = synth.write_multiarch_layout(
        tmp_path / "multi",
        {"amd64": debianish_layers(), "arm64": debianish_layers()[:1]},
        tag="m",
    )
    ref = f"{registry.host}/convert/list:1"
    skopeo_copy(
        f"oci:{src.layout}:m", f"docker://{ref}", "--all", "--format", "v2s2", dest_server=registry
    )
    listed = json.loads(skopeo_raw(f"docker://{ref}"))
    assert listed["mediaType"] == mt.DOCKER_MANIFEST_LIST

    out = tmp_path / "out"
    digest = ocipatch_copy(ref, f"oci:{out}:t", tmp_path / "c")
    (entry,) = json.loads((out / "index.json").read_text())["manifests"]
    assert (entry["mediaType"], entry["digest"]) == (mt.OCI_INDEX, digest)
    index = blob(out, digest)
    assert index["mediaType"] == mt.OCI_INDEX
    assert [e["platform"]["architecture"] for e in index["manifests"]] == ["amd64", "arm64"]
    for e in index["manifests"]:
        assert e["mediaType"] == mt.OCI_MANIFEST
        child = blob(out, e["digest"])
        assert media_types(child)[:2] == [mt.OCI_MANIFEST, mt.OCI_CONFIG]
        assert set(media_types(child)[2:]) == {mt.OCI_LAYER_GZIP}
    # skopeo reads every platform of it (it refuses Docker types in a layout).
    skopeo("copy", "-q", "--all", f"oci:{out}:t", f"oci:{tmp_path / 'reread'}:t")
    # umoci unpacks one manifest, not an index: tag the converted amd64 child on its own.
    amd64 = index["manifests"][0]
    tagged = {k: amd64[k] for k in ("mediaType", "digest", "size")}
    tagged["annotations"] = {"org.opencontainers.image.ref.name": "amd64"}
    top = json.loads((out / "index.json").read_text())
    top["manifests"].append(tagged)
    (out / "index.json").write_text(json.dumps(top))
    umoci_unpacks(out, "amd64", tmp_path / "rootfs")
    assert (tmp_path / "rootfs/var/lib/dpkg/status").read_text() == synth.DPKG_STATUS


def test_zstd_layer_on_a_docker_manifest_list_converts_every_platform(
    registry: Any, tmp_path: Path
) -> None:
    """The mechanism `patch --compression zstd` uses, on a multi-platform Docker source: a zstd
    layer appended to one platform makes the list, and every platform in it, OCI."""
    src = synth.write_multiarch_layout(
        tmp_path / "multi", {"amd64": debianish_layers(), "arm64": debianish_layers()[:1]}
    )
    ref = f"{registry.host}/convert/zlist:1"
    skopeo_copy(
        f"oci:{src.layout}:latest", f"docker://{ref}", "--all", "--format", "v2s2",
        dest_server=registry,
    )  # fmt: skip
    cache = BlobCache(tmp_path / "cache")
    image = open_image(parse_reference(ref), RegistryOptions(), cache, Platform("linux", "amd64"))
    assert image.index is not None and image.index.media_type == mt.DOCKER_MANIFEST_LIST
    raw_tar = synth.tar_bytes([synth.f("added", "zstd layer\n")])
    blob = zstandard.ZstdCompressor().compress(raw_tar)
    (tmp_path / "layer").write_bytes(blob)
    cache.put_file(synth.sha(blob), tmp_path / "layer")
    desc = Descriptor(mt.layer_media_type("zstd", image.is_docker), synth.sha(blob), len(blob))
    new = append_layer(image, desc, synth.sha(raw_tar), cache, history={"created_by": "test"})
    dest = parse_reference(f"{registry.host}/convert/zlist:z")
    digest = write_image(new, dest, RegistryOptions())

    index = json.loads(skopeo_raw(f"docker://{dest}"))
    assert index["mediaType"] == mt.OCI_INDEX
    for e in index["manifests"]:
        assert e["mediaType"] == mt.OCI_MANIFEST
        child = json.loads(skopeo_raw(f"docker://{registry.host}/convert/zlist@{e['digest']}"))
        assert media_types(child)[:2] == [mt.OCI_MANIFEST, mt.OCI_CONFIG]
        last = mt.OCI_LAYER_ZSTD if e["platform"]["architecture"] == "amd64" else mt.OCI_LAYER_GZIP
        assert media_types(child)[-1] == last
    skopeo("copy", "-q", "--all", "--src-tls-verify=false", f"docker://{dest}",
           f"oci:{tmp_path / 'all'}:z")  # fmt: skip
    # Converted and written again: the same digests.
    assert write_image(new, dest, RegistryOptions()) == digest


def test_copy_docker_archive_to_layout_is_oci(tmp_path: Path) -> None:
    """A docker-archive reads as Docker schema2 with uncompressed layers: OCI plain tar layers."""
    src = synth.write_layout(tmp_path / "layout", debianish_layers(), tag="v1")
    archive = tmp_path / "in.tar"
    skopeo("copy", "-q", f"oci:{src.layout}:v1", f"docker-archive:{archive}:app:1")
    out = tmp_path / "out"
    ocipatch_copy(f"docker-archive:{archive}", f"oci:{out}:t", tmp_path / "c")
    (entry,) = json.loads((out / "index.json").read_text())["manifests"]
    manifest = blob(out, entry["digest"])
    assert media_types(manifest) == [entry["mediaType"], mt.OCI_CONFIG, mt.OCI_LAYER, mt.OCI_LAYER]
    assert entry["mediaType"] == mt.OCI_MANIFEST
    assert [x["digest"] for x in manifest["layers"]] == src.diff_ids
    json.loads(skopeo("inspect", f"oci:{out}:t"))
    umoci_unpacks(out, "t", tmp_path / "rootfs")
    assert (tmp_path / "rootfs/var/lib/dpkg/status").read_text() == synth.DPKG_STATUS


def test_foreign_and_plain_docker_layers_map_to_oci() -> None:
    """Each Docker layer type has its OCI twin; fields the mapping does not model are kept."""
    docker = {
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_MANIFEST,
        "config": {"mediaType": mt.DOCKER_CONFIG, "digest": "sha256:" + "c" * 64, "size": 3},
        "layers": [
            {"mediaType": t, "digest": "sha256:" + str(i) * 64, "size": 1}
            for i, t in enumerate(
                [
                    mt.DOCKER_LAYER_GZIP,
                    mt.DOCKER_LAYER,
                    mt.DOCKER_LAYER_FOREIGN_GZIP,
                    mt.DOCKER_LAYER_FOREIGN,
                    mt.OCI_LAYER_ZSTD,
                ]
            )
        ],
    }
    docker["layers"][2]["urls"] = ["https://example.invalid/layer"]
    data = json.dumps(docker).encode()
    oci = json.loads(manifest_to_oci(data))
    assert media_types(oci) == [
        mt.OCI_MANIFEST,
        mt.OCI_CONFIG,
        mt.OCI_LAYER_GZIP,
        mt.OCI_LAYER,
        mt.OCI_LAYER_ND_GZIP,
        mt.OCI_LAYER_ND,
        mt.OCI_LAYER_ZSTD,
    ]
    assert oci["layers"][2]["urls"] == ["https://example.invalid/layer"]
    assert [x["digest"] for x in oci["layers"]] == [x["digest"] for x in docker["layers"]]
    assert manifest_to_oci(data) == manifest_to_oci(data), "deterministic"
    assert manifest_to_oci(manifest_to_oci(data)) == manifest_to_oci(data), "idempotent"


# --- docker-archive names ----------------------------------------------------------------------


def repo_tags(archive: Path) -> list[str]:
    with tarfile.open(archive) as t:
        f = t.extractfile("manifest.json")
        assert f is not None
        (entry,) = json.loads(f.read())
    tags: list[str] = entry["RepoTags"]
    return tags


@pytest.mark.parametrize(
    ("dest", "expected"),
    [
        ("docker-archive:{out}", "{name}:1"),
        ("docker-archive:{out}:other/name:2", "other/name:2"),
    ],
)
def test_copy_to_docker_archive_names_the_image(
    v2s2: tuple[str, dict[str, Any]], tmp_path: Path, dest: str, expected: str
) -> None:
    ref, _ = v2s2
    out = tmp_path / "out.tar"
    ocipatch_copy(ref, dest.format(out=out), tmp_path / "c")
    want = expected.format(name=ref.rsplit(":", 1)[0])
    assert repo_tags(out) == [want]
    skopeo("inspect", f"docker-archive:{out}:{want}")


def test_copy_layout_to_docker_archive_gets_the_default_name(tmp_path: Path) -> None:
    src = synth.write_layout(tmp_path / "layout", debianish_layers(), tag="v1")
    out = tmp_path / "out.tar"
    ocipatch_copy(f"oci:{src.layout}:v1", f"docker-archive:{out}", tmp_path / "c")
    assert repo_tags(out) == ["ocipatch/image:v1"]
    skopeo("inspect", f"docker-archive:{out}:ocipatch/image:v1")


def test_patch_to_docker_archive_of_an_untagged_source_asks_for_a_name(tmp_path: Path) -> None:
    src = synth.write_layout(tmp_path / "layout", debianish_layers(), tag="v1")
    r = run(
        "patch",
        "-i",
        f"oci:{src.layout}",
        "-t",
        f"docker-archive:{tmp_path / 'out.tar'}",
        "--cache-dir",
        str(tmp_path / "c"),
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "NAME:TAG" in r.stderr, r.stderr
    assert not (tmp_path / "out.tar").exists()


@pytest.mark.parametrize(
    ("dest", "expected"),
    [("", "localhost:5000/team/app:1"), (":2", "localhost:5000/team/app:2")],
)
def test_copy_docker_archive_to_docker_archive_keeps_the_name(
    tmp_path: Path, dest: str, expected: str
) -> None:
    src = synth.write_layout(tmp_path / "layout", debianish_layers(), tag="v1")
    archive = tmp_path / "in.tar"
    skopeo(
        "copy", "-q", f"oci:{src.layout}:v1", f"docker-archive:{archive}:localhost:5000/team/app:1"
    )
    out = tmp_path / "out.tar"
    ocipatch_copy(f"docker-archive:{archive}", f"docker-archive:{out}{dest}", tmp_path / "c")
    assert repo_tags(out) == [expected]
    skopeo("inspect", f"docker-archive:{out}:{expected}")


@pytest.mark.parametrize(
    ("source", "tag", "expected"),
    [
        ("reg.example/app:1", "docker-archive:/o.tar", "docker-archive:/o.tar:1-patched"),
        ("docker-archive:/i.tar:app:1", None, "docker-archive:/i.tar:app:1-patched"),
        (
            "docker-archive:/i.tar:team/app:1",
            "docker-archive:/o.tar",
            "docker-archive:/o.tar:team/app:1-patched",
        ),
        ("oci:/l:1", "docker-archive:/o.tar:x/y:2", "docker-archive:/o.tar:x/y:2"),
        ("oci:/l:1", "oci:/o", "oci:/o"),
    ],
)
def test_patch_destination_of_a_docker_archive(source: str, tag: str | None, expected: str) -> None:
    assert str(destination_for(parse_reference(source), tag, "patched")) == expected


# --- patching a Docker schema2 image (the hermetic image of tests/test_patch_hermetic.py) ------


@pytest.fixture(scope="module")
def v2s2_env(env: Env) -> Env:
    """The hermetic test image, copied into the registry as Docker schema2 (same blobs)."""
    host = env.repo.split("/", 1)[0]
    ref = f"{host}/convert/ocp:1"
    skopeo(
        "copy", "-q", "--format", "v2s2", "--src-tls-verify=false", "--dest-tls-verify=false",
        f"docker://{env.ref}", f"docker://{ref}",
    )  # fmt: skip
    manifest = json.loads(skopeo_raw(f"docker://{ref}"))
    assert set(media_types(manifest)) <= DOCKER_TYPES
    assert [x["digest"] for x in manifest["layers"]] == env.layers
    return dataclasses.replace(env, ref=ref, repo=f"{host}/convert/ocp")


def raw(ref: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(skopeo_raw(f"docker://{ref}"))
    return out


def installed_after(env: Env, layout: Path, tag: str, name: str) -> dict[str, str]:
    rootfs = env.work / f"rootfs-{name}"
    umoci_unpacks(layout, tag, rootfs)
    return versions(dpkg_status(rootfs))


def test_zstd_patch_of_v2s2_is_an_oci_image(v2s2_env: Env) -> None:
    env = v2s2_env
    report = env.report("zstd", {"ocp-lib": "2.0"})
    vex = env.work / "zstd.vex.json"
    out = patched(env, "-i", env.ref, "-r", str(report), "-t", "zstd", "--compression", "zstd",
                  "--vex", str(vex))  # fmt: skip
    manifest = raw(env.dest("zstd"))
    n = len(env.layers)
    assert media_types(manifest) == [
        mt.OCI_MANIFEST, mt.OCI_CONFIG, *[mt.OCI_LAYER_GZIP] * n, mt.OCI_LAYER_ZSTD,
    ]  # fmt: skip
    assert [x["digest"] for x in manifest["layers"][:n]] == env.layers, "base blobs unchanged"
    info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{env.dest('zstd')}"))
    assert out["image"]["digest"] == info["Digest"]
    doc = json.loads(vex.read_text())
    assert info["Digest"].split(":")[1] in doc["statements"][0]["products"][0]["@id"]
    # skopeo reads the zstd layer (it recompresses it to gzip: umoci 0.4 cannot read zstd).
    layout = env.work / "pulled-zstd"
    skopeo("copy", "-q", "--src-tls-verify=false", "--dest-compress", "--dest-compress-format",
           "gzip", f"docker://{env.dest('zstd')}", f"oci:{layout}:p")  # fmt: skip
    assert installed_after(env, layout, "p", "zstd")["ocp-lib"] == "2.0"


def test_gzip_patch_of_v2s2_to_a_registry_stays_docker(v2s2_env: Env) -> None:
    env = v2s2_env
    report = env.report("gzip", {"ocp-lib": "2.0"})
    patched(env, "-i", env.ref, "-r", str(report), "-t", "gzip")
    manifest = raw(env.dest("gzip"))
    n = len(env.layers)
    assert media_types(manifest) == [
        mt.DOCKER_MANIFEST, mt.DOCKER_CONFIG, *[mt.DOCKER_LAYER_GZIP] * (n + 1),
    ]  # fmt: skip
    assert [x["digest"] for x in manifest["layers"][:n]] == env.layers
    layout = env.work / "pulled-gzip"
    skopeo(
        "copy", "-q", "--src-tls-verify=false", f"docker://{env.dest('gzip')}", f"oci:{layout}:p"
    )
    assert installed_after(env, layout, "p", "gzip")["ocp-lib"] == "2.0"


def test_patch_of_v2s2_to_a_layout_is_oci_and_deterministic(v2s2_env: Env) -> None:
    env = v2s2_env
    report = env.report("layout", {"ocp-lib": "2.0"})
    digests = []
    for name in ("layout-a", "layout-b"):
        layout = env.work / name
        out = patched(env, "-i", env.ref, "-r", str(report), "-t", f"oci:{layout}:p")
        (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
        assert (entry["mediaType"], entry["digest"]) == (mt.OCI_MANIFEST, out["image"]["digest"])
        manifest = blob(layout, entry["digest"])
        assert media_types(manifest) == [mt.OCI_MANIFEST, mt.OCI_CONFIG] + [mt.OCI_LAYER_GZIP] * (
            len(env.layers) + 1
        )
        assert json.loads(skopeo("inspect", f"oci:{layout}:p"))["Digest"] == entry["digest"]
        assert installed_after(env, layout, "p", name)["ocp-lib"] == "2.0"
        digests.append(entry["digest"])
    assert digests[0] == digests[1], "the same patch twice: the same image"


@pytest.mark.parametrize("source", ["registry", "layout"])
def test_patch_to_docker_archive_gets_the_derived_name(v2s2_env: Env, source: str) -> None:
    env = v2s2_env
    report = env.report("archive", {"ocp-lib": "2.0"})
    archive = env.work / f"patched-{source}.tar"
    src = env.ref if source == "registry" else f"oci:{env.work / 'layout'}:1"
    patched(env, "-i", src, "-r", str(report), "-t", f"docker-archive:{archive}")
    name = f"{env.repo}:1-patched" if source == "registry" else "ocipatch/image:1-patched"
    assert repo_tags(archive) == [name]
    info = json.loads(skopeo("inspect", f"docker-archive:{archive}"))
    assert len(info["Layers"]) == len(env.layers) + 1
    skopeo("inspect", f"docker-archive:{archive}:{name}")
