"""ocipatch.oci.sameref: which destinations are the source, over many spellings.

Registry names are compared without a registry (a digest source's lookup is exercised against
the real registry in tests/test_overwrite.py); layouts and archives are real files."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
from pathlib import Path

import pytest

from ocipatch.errors import UsageError
from ocipatch.oci.reference import ImageRef, parse_reference
from ocipatch.oci.sameref import check_destination, find_clash, registry_identity
from tests import synth
from tests.test_image import debianish_layers


def no_lookup(ref: ImageRef) -> list[str] | None:
    raise AssertionError(f"a tag source needs no registry request (asked for {ref})")


def clash(src: str, dest: str) -> bool:
    return find_clash(parse_reference(src), parse_reference(dest), no_lookup) is not None


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("127.0.0.1:5000", "localhost:5000"),
        ("127.0.0.1:5000", "LOCALHOST:5000"),
        ("127.0.0.1:5000", "[::1]:5000"),
        ("127.0.0.1:5000", "[0:0:0:0:0:0:0:1]:5000"),
        ("127.0.0.1:5000", "127.1:5000"),
        ("127.0.0.1:5000", "127.0.0.2:5000"),
        ("127.0.0.1:5000", "0.0.0.0:5000"),
        ("127.0.0.1:5000", "localhost.:5000"),
        ("localhost", "localhost:80"),
        ("docker.io", "index.docker.io"),
        ("docker.io", "registry-1.docker.io"),
        ("docker.io", "Docker.IO"),
        ("registry.example", "registry.example:443"),
        ("Registry.Example:5000", "registry.example:5000"),
    ],
)
def test_same_registry(a: str, b: str) -> None:
    assert registry_identity(a) == registry_identity(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("127.0.0.1:5000", "127.0.0.1:5001"),
        ("localhost:5000", "localhost"),
        ("registry.example", "registry.example:5000"),
        ("registry.example", "other.example"),
        ("docker.io", "quay.io"),
        ("10.0.0.1:5000", "127.0.0.1:5000"),
    ],
)
def test_other_registry(a: str, b: str) -> None:
    assert registry_identity(a) != registry_identity(b)


@pytest.mark.parametrize(
    ("src", "dest"),
    [
        ("127.0.0.1:5000/app:1.2", "127.0.0.1:5000/app:1.2"),
        ("127.0.0.1:5000/app:1.2", "localhost:5000/app:1.2"),
        ("127.0.0.1:5000/app:1.2", "[::1]:5000/app:1.2"),
        ("127.0.0.1:5000/app:1.2", "docker://127.0.0.1:5000/app:1.2"),
        ("docker://localhost:5000/team/app:1.2", "127.0.0.1:5000/team/app:1.2"),
        ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest"),
        ("debian", "docker.io/library/debian:latest"),
        ("debian:12", "index.docker.io/library/debian:12"),
        ("library/debian:12", "registry-1.docker.io/debian:12"),
        ("docker://debian:12", "docker.io/debian:12"),
        # a digest source spelled with the tag too: the tag names the source as typed
        ("127.0.0.1:5000/app:1.2@sha256:" + "a" * 64, "127.0.0.1:5000/app:1.2"),
    ],
)
def test_registry_spellings_clash(src: str, dest: str) -> None:
    if "@" in src:
        found = find_clash(parse_reference(src), parse_reference(dest), lambda r: None)
        assert found is not None
    else:
        assert clash(src, dest)


@pytest.mark.parametrize(
    ("src", "dest"),
    [
        ("127.0.0.1:5000/app:1.2", "127.0.0.1:5000/app:1.2-patched"),
        ("127.0.0.1:5000/app:1.2", "127.0.0.1:5001/app:1.2"),
        ("127.0.0.1:5000/app:1.2", "127.0.0.1:5000/other:1.2"),
        ("127.0.0.1:5000/app:1.2", "127.0.0.1:5000/team/app:1.2"),
        ("127.0.0.1:5000/app:1.2", "127.0.0.1:5000/app:1.2b"),
        ("127.0.0.1:5000/app:v1", "127.0.0.1:5000/app:V1"),  # tags are case-sensitive
        ("debian:12", "quay.io/library/debian:12"),
        ("debian:12", "oci:debian:12"),
    ],
)
def test_registry_other_destinations(src: str, dest: str) -> None:
    assert not clash(src, dest)


def test_host_names_of_loopback() -> None:
    """A name that resolves only to loopback (here the host's own name when /etc/hosts maps it
    so) is the loopback registry on the same port."""
    name = socket.gethostname()
    try:
        addresses = {i[4][0] for i in socket.getaddrinfo(name, None)}
    except OSError:
        pytest.skip("the host name does not resolve")
    if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        pytest.skip(f"{name} resolves to {addresses}, not only loopback")
    assert clash("127.0.0.1:5000/app:1.2", f"{name}:5000/app:1.2")
    assert not clash("127.0.0.1:5000/app:1.2", f"{name}:5001/app:1.2")
    assert not clash("127.0.0.1:5000/app:1.2", "nonexistent.invalid:5000/app:1.2")


def test_digest_source_asks_the_registry() -> None:
    src = parse_reference("127.0.0.1:5000/app@sha256:" + "a" * 64)
    dest = parse_reference("127.0.0.1:5000/app:1.2")
    index = "sha256:" + "b" * 64
    assert find_clash(src, dest, lambda r: ["sha256:" + "a" * 64]) is not None
    found = find_clash(src, dest, lambda r: [index, "sha256:" + "a" * 64])
    assert found is not None and found.digest == index  # the index the tag names now
    assert find_clash(src, dest, lambda r: ["sha256:" + "c" * 64]) is None
    assert find_clash(src, dest, lambda r: None) is None  # no such tag yet
    other_repo = parse_reference("127.0.0.1:5000/other:1.2")
    assert find_clash(src, other_repo, no_lookup) is None  # another repository: not asked


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    return synth.write_layout(tmp_path / "layout", debianish_layers(), tag="v1").layout


def test_layout_spellings(layout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(layout)
    src = f"oci:{layout}:v1"
    for dest in (
        f"oci:{layout}:v1",
        "oci:layout:v1",
        "oci:./layout:v1",
        f"oci:{layout}/:v1",
        f"oci:{layout}/../layout:v1",
        "oci:link:v1",
        f"oci:{layout}",  # the layout's only image
    ):
        assert clash(src, dest), dest
    assert clash(f"oci:{layout}", "oci:layout:v1")  # untagged source, its tag as destination


def test_layout_other_destinations(layout: Path, tmp_path: Path) -> None:
    src = f"oci:{layout}:v1"
    assert not clash(src, f"oci:{layout}:v2")
    assert not clash(src, f"oci:{tmp_path / 'other'}:v1")
    assert not clash(src, f"oci-archive:{tmp_path / 'out.tar'}:v1")
    # a second tag on the same digest is another name: writing it leaves v1 alone
    index = (layout / "index.json").read_text()
    (layout / "index.json").write_text(
        index.replace('"manifests": [', '"manifests": [' + _entry(layout, "v2") + ",")
    )
    assert not clash(src, f"oci:{layout}:v2")
    assert not clash(src, f"oci:{layout}")  # untagged beside two images adds an entry


def _entry(layout: Path, tag: str) -> str:
    import json

    first = json.loads((layout / "index.json").read_text())["manifests"][0]
    return json.dumps({**first, "annotations": {"org.opencontainers.image.ref.name": tag}})


def test_file_inside_the_source_layout(layout: Path) -> None:
    src = f"oci:{layout}:v1"
    assert clash(src, f"docker-archive:{layout}/index.json")
    assert clash(src, f"oci-archive:{layout}/oci-layout")
    blob = next((layout / "blobs" / "sha256").iterdir())
    assert clash(src, f"docker-archive:{blob}")
    assert not clash(src, f"docker-archive:{layout}/saved.tar")


def test_archive_spellings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    archive = tmp_path / "a.tar"
    archive.write_bytes(b"not read by the check")
    (tmp_path / "link.tar").symlink_to(archive)
    os.link(archive, tmp_path / "hard.tar")
    (tmp_path / "sub").mkdir()
    for src in (f"docker-archive:{archive}", f"oci-archive:{archive}:v1"):
        for dest in (
            f"docker-archive:{archive}",
            "docker-archive:a.tar",
            "docker-archive:./sub/../a.tar:app:v2",  # another tag: the file is rewritten whole
            "docker-archive:link.tar",
            "docker-archive:hard.tar",
            f"oci-archive:{archive}:v2",
            "oci-archive:a.tar",
        ):
            assert clash(src, dest), (src, dest)
    shutil.copy(archive, tmp_path / "copy.tar")
    assert not clash(f"docker-archive:{archive}", "docker-archive:copy.tar")
    assert not clash(f"docker-archive:{archive}", "docker-archive:new.tar")
    assert not clash(f"docker-archive:{archive}", f"oci:{tmp_path}:v1")


@pytest.mark.parametrize(
    "dest",
    [
        "127.0.0.1:5000/app@sha256:" + "a" * 64,
        "oci:/tmp/x:-bad",
        "oci:/tmp/x:.bad",
        "oci-archive:/tmp/x.tar:caf\u00e9",
        "oci:/tmp/x:" + "a" * 129,
        "docker-archive:/tmp/x.tar:app:-bad",
    ],
)
def test_unwritable_destinations(dest: str) -> None:
    with pytest.raises(UsageError):
        check_destination(parse_reference(dest))


def test_destination_of_the_wrong_kind(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file, not a layout directory"):
        check_destination(parse_reference(f"oci:{tmp_path / 'file'}:v1"))
    with pytest.raises(UsageError, match="is a directory, not an archive file"):
        check_destination(parse_reference(f"docker-archive:{tmp_path}"))
    check_destination(parse_reference(f"oci:{tmp_path / 'new'}:v1"))
