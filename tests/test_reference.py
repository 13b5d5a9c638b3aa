"""Reference parsing: Docker's defaults, digests, and skopeo-style transports."""

from __future__ import annotations

import pytest

from ocipatch.errors import UsageError
from ocipatch.oci.reference import parse_reference

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("debian", "docker.io", "library/debian", "latest", None),
        ("debian:12-slim", "docker.io", "library/debian", "12-slim", None),
        ("docker://alpine", "docker.io", "library/alpine", "latest", None),
        ("user/app", "docker.io", "user/app", "latest", None),
        ("index.docker.io/library/debian:12", "docker.io", "library/debian", "12", None),
        ("localhost/app", "localhost", "app", "latest", None),
        ("localhost:5000/app:1.2", "localhost:5000", "app", "1.2", None),
        ("127.0.0.1:5000/team/app:v1", "127.0.0.1:5000", "team/app", "v1", None),
        ("ghcr.io/org/app", "ghcr.io", "org/app", "latest", None),
        (f"quay.io/org/app@{D}", "quay.io", "org/app", None, D),
        (f"quay.io/org/app:1.0@{D}", "quay.io", "org/app", "1.0", D),
        ("[::1]:5000/app:x", "[::1]:5000", "app", "x", None),
    ],
)
def test_registry_references(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_reference(text)
    assert (ref.transport, ref.registry, ref.repository, ref.tag, ref.digest) == (
        "docker",
        registry,
        repository,
        tag,
        digest,
    )
    assert ref.reference == (digest or tag)


@pytest.mark.parametrize(
    ("text", "transport", "path", "tag"),
    [
        ("oci:/tmp/layout", "oci", "/tmp/layout", None),
        ("oci:/tmp/layout:v1", "oci", "/tmp/layout", "v1"),
        ("oci:relative/dir:latest", "oci", "relative/dir", "latest"),
        ("oci-archive:/tmp/img.tar", "oci-archive", "/tmp/img.tar", None),
        ("oci-archive:/tmp/img.tar:v2", "oci-archive", "/tmp/img.tar", "v2"),
        ("docker-archive:/tmp/img.tar", "docker-archive", "/tmp/img.tar", None),
        ("docker-archive:/tmp/img.tar:app:1.0", "docker-archive", "/tmp/img.tar", "app:1.0"),
        ("docker-archive:img.tar:host:5000/app:1", "docker-archive", "img.tar", "host:5000/app:1"),
        ("docker-archive:img.tar:team/app:1.0", "docker-archive", "img.tar", "team/app:1.0"),
        ("docker-archive:img.tar:1.0", "docker-archive", "img.tar", "1.0"),
    ],
)
def test_local_transports(text: str, transport: str, path: str, tag: str | None) -> None:
    ref = parse_reference(text)
    assert (ref.transport, ref.path, ref.tag) == (transport, path, tag)
    assert str(ref) == text


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty image reference"),
        ("ftp://host/x", "unsupported transport 'ftp'"),
        ("dir:/tmp/x", "unsupported transport 'dir'"),
        ("containers-storage:app", "unsupported transport"),
        ("UPPER/case", "invalid image reference"),
        ("app@sha256:xyz", "invalid digest"),
        ("app:bad tag", "invalid"),
        ("oci:", "names no path"),
        ("a:b:c", "invalid image reference"),
    ],
)
def test_malformed_references(text: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle) as exc:
        parse_reference(text)
    assert "\n" not in str(exc.value)


def test_with_tag() -> None:
    ref = parse_reference(f"reg.example/app:1@{D}").with_tag("1-patched")
    assert str(ref) == "reg.example/app:1-patched"
    with pytest.raises(UsageError):
        ref.with_tag("no/slash")


def test_docker_archive_name_without_tag_is_latest() -> None:
    ref = parse_reference("docker-archive:img.tar:host:5000/app")
    assert (ref.path, ref.tag) == ("img.tar", "host:5000/app:latest")
