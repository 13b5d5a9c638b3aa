"""The image model over local transports, checked with skopeo and umoci as independent readers."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import pytest

from ocipatch.errors import ImageFormatError, IntegrityError, NotFoundError, PlatformError
from ocipatch.inspect import inspect_image
from ocipatch.oci.cache import BlobCache
from ocipatch.oci.digest import sha256_bytes
from ocipatch.oci.mutate import append_layer
from ocipatch.oci.reference import parse_reference
from ocipatch.oci.remote import RegistryOptions
from ocipatch.oci.transport import open_image, write_image
from ocipatch.oci.types import Descriptor, Platform
from tests import synth
from tests.synth import d, f, sym

OPTS = RegistryOptions()


def debianish_layers() -> list[list[synth.Entry]]:
    base = [
        d("etc"),
        d("usr"),
        d("usr/lib"),
        d("var"),
        d("var/lib"),
        d("var/lib/dpkg"),
        f("usr/lib/os-release", synth.OS_RELEASE),
        sym("etc/os-release", "../usr/lib/os-release"),
        f(
            "var/lib/dpkg/status",
            "Package: old\nStatus: install ok installed\nVersion: 1\nArchitecture: all\n",
        ),
        f("etc/hello", "base"),
    ]
    upper = [
        d("var"),
        d("var/lib"),
        d("var/lib/dpkg"),
        f("var/lib/dpkg/status", synth.DPKG_STATUS),
        f("etc/.wh.hello"),
    ]
    return [base, upper]


@pytest.fixture
def layout(tmp_path: Path) -> synth.Built:
    return synth.write_layout(tmp_path / "layout", debianish_layers(), tag="v1")


@pytest.fixture
def cache(tmp_path: Path) -> BlobCache:
    return BlobCache(tmp_path / "cache")


def test_layout_inspect(layout: synth.Built, cache: BlobCache) -> None:
    img = open_image(parse_reference(f"oci:{layout.layout}:v1"), OPTS, cache)
    assert img.digest == layout.manifest_digest
    info = inspect_image(img, cache)
    assert info["os"] == {"id": "debian", "version_id": "12"}
    assert info["package_manager"] == "dpkg"
    assert [(p["name"], p["version"]) for p in info["packages"]] == [
        ("base-files", "12.4+deb12u5"),
        ("libssl3", "3.0.11-1~deb12u2"),
        ("tzdata", "2024a-0+deb12u1"),
    ]
    assert [x["digest"] for x in info["layers"]] == layout.layer_digests


def test_layout_missing_tag_and_dir(layout: synth.Built, cache: BlobCache, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no image tagged 'nope'"):
        open_image(parse_reference(f"oci:{layout.layout}:nope"), OPTS, cache)
    with pytest.raises(NotFoundError, match="no such directory"):
        open_image(parse_reference(f"oci:{tmp_path}/absent"), OPTS, cache)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError, match="not an OCI image layout"):
        open_image(parse_reference(f"oci:{tmp_path}/empty"), OPTS, cache)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "index.json").write_text("{not json")
    with pytest.raises(ImageFormatError, match=r"index\.json is not valid JSON"):
        open_image(parse_reference(f"oci:{bad}"), OPTS, cache)


@pytest.mark.parametrize("how", ["flip", "append"])
def test_corrupt_layer_in_layout_is_refused(
    layout: synth.Built, cache: BlobCache, tmp_path: Path, how: str
) -> None:
    digest = layout.layer_digests[1]
    blob = layout.layout / "blobs" / "sha256" / digest.split(":")[1]
    data = bytearray(blob.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        data += b"extra"
    blob.write_bytes(bytes(data))
    img = open_image(parse_reference(f"oci:{layout.layout}:v1"), OPTS, cache)
    with pytest.raises(IntegrityError, match=digest):
        inspect_image(img, cache)
    dest = tmp_path / "out"
    with pytest.raises(IntegrityError, match=digest):
        write_image(img, parse_reference(f"oci:{dest}:copy"), OPTS)
    assert not (dest / "index.json").exists()


def test_corrupt_config_is_refused(layout: synth.Built, cache: BlobCache) -> None:
    manifest = json.loads(
        (layout.layout / "blobs/sha256" / layout.manifest_digest.split(":")[1]).read_bytes()
    )
    cfg = layout.layout / "blobs/sha256" / manifest["config"]["digest"].split(":")[1]
    cfg.write_bytes(cfg.read_bytes().replace(b"amd64", b"arm64"))
    with pytest.raises(IntegrityError, match=manifest["config"]["digest"]):
        open_image(parse_reference(f"oci:{layout.layout}:v1"), OPTS, cache)


def test_multiarch_platform_selection(tmp_path: Path, cache: BlobCache) -> None:
    layers = debianish_layers()
    built = synth.write_multiarch_layout(tmp_path / "multi", {"amd64": layers, "arm64": layers[:1]})
    ref = parse_reference(f"oci:{built.layout}")
    arm = open_image(ref, OPTS, cache, Platform.parse("linux/arm64"))
    assert arm.platform.architecture == "arm64" and len(arm.layers) == 1
    amd = open_image(ref, OPTS, cache, Platform.parse("linux/amd64"))
    assert len(amd.layers) == 2
    with pytest.raises(PlatformError, match="linux/s390x is not in the image index"):
        open_image(ref, OPTS, cache, Platform.parse("linux/s390x"))


def _skopeo(*args: str) -> str:
    return subprocess.run(["skopeo", *args], check=True, capture_output=True, text=True).stdout


@pytest.mark.parametrize("transport", ["docker-archive", "oci-archive"])
def test_archives_written_by_skopeo_read_the_same(
    layout: synth.Built, cache: BlobCache, tmp_path: Path, transport: str
) -> None:
    archive = tmp_path / f"{transport}.tar"
    _skopeo(
        "copy",
        "-q",
        f"oci:{layout.layout}:v1",
        f"{transport}:{archive}:app:v1"
        if transport == "docker-archive"
        else f"{transport}:{archive}:v1",
    )
    want = inspect_image(open_image(parse_reference(f"oci:{layout.layout}:v1"), OPTS, cache), cache)
    got = inspect_image(open_image(parse_reference(f"{transport}:{archive}"), OPTS, cache), cache)
    assert got["packages"] == want["packages"] and got["os"] == want["os"]


@pytest.mark.parametrize("transport", ["oci", "oci-archive", "docker-archive"])
def test_append_layer_and_write_is_read_by_skopeo_and_umoci(
    layout: synth.Built, cache: BlobCache, tmp_path: Path, transport: str
) -> None:
    img = open_image(parse_reference(f"oci:{layout.layout}:v1"), OPTS, cache)
    raw = synth.tar_bytes([d("etc"), f("etc/patched", "yes")])
    comp = gzip.compress(raw, mtime=0)
    digest = sha256_bytes(comp)
    cache.path(digest).parent.mkdir(parents=True, exist_ok=True)
    cache.path(digest).write_bytes(comp)
    desc = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", digest, len(comp))
    new = append_layer(
        img,
        desc,
        sha256_bytes(raw),
        cache,
        history={"created_by": "test"},
        labels={"org.example": "1"},
    )
    assert [x.digest for x in new.layers[:2]] == layout.layer_digests
    assert new.config["rootfs"]["diff_ids"][-1] == sha256_bytes(raw)
    assert new.config["config"]["Labels"] == {"org.example": "1"}
    assert new.config["config"]["Env"] == img.config["config"]["Env"]
    target = tmp_path / ("out" if transport == "oci" else "out.tar")
    write_image(new, parse_reference(f"{transport}:{target}:v2"), OPTS)
    info = json.loads(
        _skopeo(
            "inspect", f"{transport}:{target}" + ("" if transport == "docker-archive" else ":v2")
        )
    )
    assert len(info["Layers"]) == 3
    assert info["Labels"] == {"org.example": "1"}
    if transport == "oci":
        bundle = tmp_path / "bundle"
        subprocess.run(
            ["umoci", "raw", "unpack", "--rootless", "--image", f"{target}:v2", str(bundle)],
            check=True,
            capture_output=True,
        )
        assert (bundle / "etc/patched").read_text() == "yes"
        assert not (bundle / "etc/hello").exists()
    # Reading back through ocipatch gives the same manifest digest (deterministic write).
    again = open_image(
        parse_reference(f"{transport}:{target}" + (":v2" if transport != "docker-archive" else "")),
        OPTS,
        cache,
    )
    assert len(again.layers) == 3


def test_append_is_deterministic(layout: synth.Built, cache: BlobCache) -> None:
    img = open_image(parse_reference(f"oci:{layout.layout}:v1"), OPTS, cache)
    desc = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", "sha256:" + "1" * 64, 10)
    a = append_layer(img, desc, "sha256:" + "2" * 64, cache, history={"created_by": "x"})
    b = append_layer(img, desc, "sha256:" + "2" * 64, cache, history={"created_by": "x"})
    assert a.digest == b.digest and a.config_bytes == b.config_bytes
