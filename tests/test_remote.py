"""RegistryClient against a real distribution registry, with skopeo as the independent client."""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest
import requests

from ocipatch.errors import AuthError, IntegrityError, NotFoundError, RegistryError, UsageError
from ocipatch.oci import mediatypes
from ocipatch.oci.remote import RegistryClient, RegistryOptions, is_loopback, split_host
from tests.plugins.registry import (
    Layout,
    Proxy,
    RegistryServer,
    free_port,
    push_test_image,
    skopeo_raw,
)

FAST = RegistryOptions(backoff=0.01)


@pytest.fixture(autouse=True)
def _no_ambient_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the machine's own auth files out of these tests."""
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))


def _repo(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def image(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """An OCI image pushed by skopeo: test/oci:v1."""
    return push_test_image(registry, tmp_path_factory.mktemp("img"), "test/oci", "v1")


def _client(server: RegistryServer | Proxy, **kw: object) -> RegistryClient:
    return RegistryClient(server.host, RegistryOptions(backoff=0.01, **kw))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- manifests


def test_get_manifest_by_tag_and_digest(registry: RegistryServer, image: Layout) -> None:
    raw = skopeo_raw(f"docker://{registry.host}/test/oci:v1")
    client = _client(registry)
    data, media_type, digest = client.get_manifest("test/oci", "v1")
    assert data == raw == image.manifest
    assert digest == _sha(raw) == image.manifest_digest
    assert media_type == mediatypes.OCI_MANIFEST
    assert client.get_manifest("test/oci", digest) == (data, media_type, digest)


def test_docker_schema2_content_type(registry: RegistryServer, tmp_path: Path) -> None:
    push_test_image(registry, tmp_path, "test/docker", "v1", docker=True)
    raw = skopeo_raw(f"docker://{registry.host}/test/docker:v1")
    data, media_type, digest = _client(registry).get_manifest("test/docker", "v1")
    assert media_type == mediatypes.DOCKER_MANIFEST
    assert json.loads(data)["mediaType"] == mediatypes.DOCKER_MANIFEST
    assert (data, digest) == (raw, _sha(raw))


def test_manifest_digest_mismatch_is_integrity_error(
    image: Layout, flaky_proxy: Callable[..., Proxy]
) -> None:
    proxy = flaky_proxy("corrupt", failures=None, match=r"^GET /v2/.+/manifests/sha256:")
    with pytest.raises(IntegrityError, match=image.manifest_digest) as err:
        _client(proxy).get_manifest("test/oci", image.manifest_digest)
    assert err.value.exit_code == 7


@pytest.mark.parametrize(
    ("repository", "reference"),
    [("test/oci", "no-such-tag"), ("no/such-repo", "v1"), ("test/oci", "sha256:" + "0" * 64)],
)
def test_missing_manifest_is_not_found(
    registry: RegistryServer, image: Layout, repository: str, reference: str
) -> None:
    with pytest.raises(NotFoundError) as err:
        _client(registry).get_manifest(repository, reference)
    msg = str(err.value)
    assert repository in msg and reference in msg and registry.host in msg and "404" in msg
    assert err.value.exit_code == 5


def test_bad_reference_is_usage_error(registry: RegistryServer) -> None:
    client = _client(registry)
    with pytest.raises(UsageError):
        client.get_manifest("Upper/Case", "v1")
    with pytest.raises(UsageError):
        client.get_manifest("test/oci", "sha256:short")


def test_put_manifest_exact_bytes_round_trip(registry: RegistryServer, image: Layout) -> None:
    client = _client(registry)
    repo = _repo("roundtrip")
    for blob in (image.config, image.layer):
        # Mounted: the opener is never called.
        result = client.push_blob(repo, blob.digest, blob.size, io.BytesIO, mount_from="test/oci")
        assert result == "mounted"
    # Unusual but valid formatting: a re-serialising client would change the digest.
    doc = json.loads(image.manifest)
    data = (json.dumps(doc, indent=3, sort_keys=False) + "\n\n").encode()
    digest = client.put_manifest(repo, "odd", data, mediatypes.OCI_MANIFEST)
    assert digest == _sha(data)
    assert client.get_manifest(repo, "odd") == (data, mediatypes.OCI_MANIFEST, digest)
    assert skopeo_raw(f"docker://{registry.host}/{repo}:odd") == data
    # By digest too; and a digest reference that does not match the bytes is refused.
    assert client.put_manifest(repo, digest, data, mediatypes.OCI_MANIFEST) == digest
    with pytest.raises(IntegrityError):
        client.put_manifest(repo, image.manifest_digest, data, mediatypes.OCI_MANIFEST)


def test_list_tags(registry: RegistryServer, image: Layout) -> None:
    assert "v1" in _client(registry).list_tags("test/oci")
    with pytest.raises(NotFoundError):
        _client(registry).list_tags("no/such-repo")


# --------------------------------------------------------------------------- blobs


def test_fetch_blob_verifies_and_writes_atomically(
    registry: RegistryServer, image: Layout, tmp_path: Path
) -> None:
    client = _client(registry)
    dest = tmp_path / "layer.tar.gz"
    client.fetch_blob("test/oci", image.layer.digest, image.layer.size, dest)
    assert dest.read_bytes() == image.layer.data
    assert os.listdir(tmp_path) == ["layer.tar.gz"]
    assert client.blob_exists("test/oci", image.layer.digest)
    with client.open_blob("test/oci", image.config.digest) as f:
        assert f.read() == image.config.data


@pytest.mark.parametrize("fault", ["corrupt", "append"])
def test_fetch_blob_tampered_in_transit(
    image: Layout, flaky_proxy: Callable[..., Proxy], tmp_path: Path, fault: str
) -> None:
    proxy = flaky_proxy(fault, failures=None)
    dest = tmp_path / "layer"
    with pytest.raises(IntegrityError, match=image.layer.digest) as err:
        _client(proxy).fetch_blob("test/oci", image.layer.digest, image.layer.size, dest)
    assert err.value.exit_code == 7
    assert os.listdir(tmp_path) == []  # neither dest nor a temp file
    assert proxy.faults() == 1  # an integrity failure is not retried


def test_fetch_blob_corrupt_in_registry_storage(registry: RegistryServer, tmp_path: Path) -> None:
    repo = _repo("disk")
    data = secrets.token_bytes(5000)
    digest = _sha(data)
    client = _client(registry)
    assert client.push_blob(repo, digest, len(data), lambda: io.BytesIO(data)) == "uploaded"
    stored = registry.blob_data_path(digest)
    stored.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    with pytest.raises(IntegrityError, match=digest):
        client.fetch_blob(repo, digest, len(data), tmp_path / "blob")
    stored.write_bytes(data + b"extra")  # longer: refused from its Content-Length already
    with pytest.raises(IntegrityError, match=digest):
        client.fetch_blob(repo, digest, len(data), tmp_path / "blob")
    assert os.listdir(tmp_path) == []


def test_fetch_blob_wrong_expected_size(
    registry: RegistryServer, image: Layout, tmp_path: Path
) -> None:
    with pytest.raises(IntegrityError, match=image.layer.digest):
        _client(registry).fetch_blob(
            "test/oci", image.layer.digest, image.layer.size + 1, tmp_path / "x"
        )
    assert os.listdir(tmp_path) == []


def test_fetch_blob_resumes_after_connection_drop(
    registry: RegistryServer, flaky_proxy: Callable[..., Proxy], tmp_path: Path
) -> None:
    repo = _repo("resume")
    data = secrets.token_bytes(3 << 20)  # several reads, so the cut lands mid-stream
    digest = _sha(data)
    _client(registry).push_blob(repo, digest, len(data), lambda: io.BytesIO(data))
    proxy = flaky_proxy("truncate", failures=1)
    _client(proxy).fetch_blob(repo, digest, len(data), tmp_path / "blob")
    assert (tmp_path / "blob").read_bytes() == data
    gets = [r for r in proxy.requests() if r.method == "GET" and digest in r.path]
    assert [r.fault for r in gets] == ["truncate", ""]


def test_missing_blob(registry: RegistryServer, image: Layout, tmp_path: Path) -> None:
    client = _client(registry)
    missing = "sha256:" + "1" * 64
    assert client.blob_exists("test/oci", missing) is False
    with pytest.raises(NotFoundError, match=missing):
        client.fetch_blob("test/oci", missing, 1, tmp_path / "x")
    assert os.listdir(tmp_path) == []


def test_push_blob_uploaded_exists_mounted(registry: RegistryServer, tmp_path: Path) -> None:
    src, dst, other = _repo("push-src"), _repo("push-dst"), _repo("push-other")
    path = tmp_path / "blob"
    path.write_bytes(secrets.token_bytes(200_000))
    digest, size = _sha(path.read_bytes()), path.stat().st_size
    opened: list[BinaryIO] = []

    def opener() -> BinaryIO:
        f = path.open("rb")
        opened.append(f)
        return f

    client = _client(registry)
    assert client.push_blob(src, digest, size, opener) == "uploaded"
    assert registry.uploads(src) == 1 and len(opened) == 1 and opened[0].closed
    assert client.push_blob(src, digest, size, opener) == "exists"
    assert client.push_blob(dst, digest, size, opener, mount_from=src) == "mounted"
    assert registry.mounts(dst) == 1 and registry.uploads(dst) == 0
    # A mount from a repository that lacks the blob falls back to an upload.
    assert client.push_blob(other, digest, size, opener, mount_from="no/such-repo") == "uploaded"
    assert registry.uploads(other) == 1 and len(opened) == 2
    client.fetch_blob(dst, digest, size, tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == path.read_bytes()


def test_push_empty_blob(registry: RegistryServer) -> None:
    empty = _sha(b"")
    assert _client(registry).push_blob(_repo("empty"), empty, 0, lambda: io.BytesIO(b"")) in (
        "uploaded",
        "exists",
    )


def test_push_blob_content_not_matching_digest(registry: RegistryServer) -> None:
    with pytest.raises(IntegrityError):
        _client(registry).push_blob(_repo("bad"), _sha(b"right"), 5, lambda: io.BytesIO(b"wrong"))


# --------------------------------------------------------------------------- retries


@pytest.mark.parametrize("fault", ["503", "429", "reset"])
def test_transient_failures_are_retried(
    registry: RegistryServer,
    image: Layout,
    flaky_proxy: Callable[..., Proxy],
    tmp_path: Path,
    fault: str,
) -> None:
    proxy = flaky_proxy(fault, failures=2)
    client = _client(proxy)
    data, _, digest = client.get_manifest("test/oci", "v1")
    assert digest == image.manifest_digest
    client.fetch_blob("test/oci", image.layer.digest, image.layer.size, tmp_path / "layer")
    assert (tmp_path / "layer").read_bytes() == image.layer.data

    repo = _repo(f"flaky{fault}")
    blob = secrets.token_bytes(100_000)
    opens = 0

    def opener() -> BinaryIO:
        nonlocal opens
        opens += 1
        return io.BytesIO(blob)

    assert client.push_blob(repo, _sha(blob), len(blob), opener) == "uploaded"
    assert (
        client.put_manifest("test/oci", f"flaky-{fault}", data, mediatypes.OCI_MANIFEST) == digest
    )
    assert proxy.uploads(repo) == 1
    assert opens == 3  # the one-request upload PUT failed twice; each attempt reopened the body
    assert proxy.faults() >= 10


def test_retries_are_bounded(image: Layout, flaky_proxy: Callable[..., Proxy]) -> None:
    proxy = flaky_proxy("503", failures=None)
    client = RegistryClient(proxy.host, RegistryOptions(retry_time=0.5, backoff=0.05))
    start = time.monotonic()
    with pytest.raises(RegistryError) as err:
        client.get_manifest("test/oci", "v1")
    assert 0.5 <= time.monotonic() - start < 3.0
    assert err.value.status == 503 and err.value.retryable and err.value.exit_code == 3
    msg = str(err.value)
    assert "test/oci" in msg and "503" in msg and "--registry-retry-time" in msg
    assert 3 <= len(proxy.requests()) <= 8


def test_no_retries_with_zero_retry_time(image: Layout, flaky_proxy: Callable[..., Proxy]) -> None:
    proxy = flaky_proxy("503", failures=None)
    client = RegistryClient(proxy.host, RegistryOptions(retry_time=0))
    with pytest.raises(RegistryError, match="not retried"):
        client.get_manifest("test/oci", "v1")
    assert len(proxy.requests()) == 1


def test_retry_after_is_honoured(image: Layout, flaky_proxy: Callable[..., Proxy]) -> None:
    proxy = flaky_proxy("429", failures=1, retry_after=1)
    start = time.monotonic()
    _client(proxy).get_manifest("test/oci", "v1")
    assert time.monotonic() - start >= 1.0


def test_not_found_is_not_retried(image: Layout, flaky_proxy: Callable[..., Proxy]) -> None:
    proxy = flaky_proxy("")
    with pytest.raises(NotFoundError):
        _client(proxy).get_manifest("test/oci", "nope")
    assert len(proxy.requests()) == 1


def test_unreachable_registry_has_hint() -> None:
    port = free_port()  # nothing listens there
    client = RegistryClient(f"127.0.0.1:{port}", RegistryOptions(retry_time=0.2, backoff=0.01))
    with pytest.raises(RegistryError) as err:
        client.get_manifest("test/oci", "v1")
    msg = str(err.value)
    assert f"127.0.0.1:{port}" in msg and "test/oci" in msg
    assert "is the registry running" in msg and "--plain-http" in msg
    assert "connection refused" in msg


def test_unresolvable_host_fails_fast() -> None:
    client = RegistryClient("no-such-host.invalid", RegistryOptions(backoff=5))
    start = time.monotonic()
    with pytest.raises(RegistryError, match="resolve"):
        client.blob_exists("x/y", "sha256:" + "0" * 64)
    assert time.monotonic() - start < 5


# --------------------------------------------------------------------------- TLS and auth


def test_tls_without_ca_hints_registry_ca(tls_registry: RegistryServer) -> None:
    client = RegistryClient(
        tls_registry.host,
        RegistryOptions(username=tls_registry.username, password=tls_registry.password),
    )
    with pytest.raises(RegistryError, match="--registry-ca") as err:
        client.get_manifest("test/oci", "v1")
    assert tls_registry.host in str(err.value)


def test_tls_with_ca_and_basic_auth(tls_registry: RegistryServer, tmp_path: Path) -> None:
    layout = push_test_image(tls_registry, tmp_path, "test/oci", "v1")
    client = RegistryClient(
        tls_registry.host,
        RegistryOptions(
            ca_file=tls_registry.ca_path,
            username=tls_registry.username,
            password=tls_registry.password,
        ),
    )
    data, media_type, digest = client.get_manifest("test/oci", "v1")
    assert (data, media_type, digest) == (
        layout.manifest,
        mediatypes.OCI_MANIFEST,
        layout.manifest_digest,
    )
    client.fetch_blob("test/oci", layout.layer.digest, layout.layer.size, tmp_path / "l")
    blob = secrets.token_bytes(1000)
    assert client.push_blob("test/oci", _sha(blob), 1000, lambda: io.BytesIO(blob)) == "uploaded"


def test_wrong_password_is_auth_error_without_retries(tls_registry: RegistryServer) -> None:
    before = len(tls_registry.requests())
    client = RegistryClient(
        tls_registry.host,
        RegistryOptions(ca_file=tls_registry.ca_path, username="ocipatch", password="wrong"),
    )
    with pytest.raises(AuthError) as err:
        client.get_manifest("test/oci", "v1")
    assert err.value.exit_code == 4 and err.value.status == 401
    assert tls_registry.host in str(err.value)
    time.sleep(0.3)  # let the registry's log catch up, then count
    reqs = tls_registry.wait_requests(before + 2)[before:]
    assert [(r.method, r.status) for r in reqs] == [("GET", 401), ("GET", 401)]


def test_missing_credentials_is_auth_error(tls_registry: RegistryServer) -> None:
    client = RegistryClient(tls_registry.host, RegistryOptions(ca_file=tls_registry.ca_path))
    with pytest.raises(AuthError, match="--username"):
        client.get_manifest("test/oci", "v1")


def test_bearer_token_auth(token_registry: RegistryServer, tmp_path: Path) -> None:
    client = _client(
        token_registry, username=token_registry.username, password=token_registry.password
    )
    repo = _repo("tok")
    blob = secrets.token_bytes(1000)
    assert client.push_blob(repo, _sha(blob), len(blob), lambda: io.BytesIO(blob)) == "uploaded"
    client.fetch_blob(repo, _sha(blob), len(blob), tmp_path / "b")
    # A second repository needs a token of another scope; mounting needs both.
    other = _repo("tok2")
    assert (
        client.push_blob(other, _sha(blob), len(blob), lambda: io.BytesIO(blob), mount_from=repo)
        == "mounted"
    )


def test_bearer_wrong_password(token_registry: RegistryServer) -> None:
    assert token_registry.token_server is not None
    client = _client(token_registry, username=token_registry.username, password="nope")
    with pytest.raises(AuthError, match="token service") as err:
        client.blob_exists("any/repo", "sha256:" + "0" * 64)
    assert err.value.exit_code == 4
    assert token_registry.token_server.log[-1] == ("GET", token_registry.username, 401)


# --------------------------------------------------------------------------- addressing


@pytest.mark.parametrize(
    ("registry", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.1.2.3", True),
        ("[::1]:5000", True),
        ("example.com:5000", False),
        ("10.0.0.1:5000", False),
    ],
)
def test_is_loopback(registry: str, loopback: bool) -> None:
    assert is_loopback(registry) is loopback


def test_split_host() -> None:
    assert split_host("[::1]:5000") == ("::1", 5000)
    assert split_host("host:5000") == ("host", 5000)
    assert split_host("host") == ("host", None)


@pytest.mark.parametrize(
    ("registry", "options", "url"),
    [
        ("example.com", RegistryOptions(), "https://example.com/v2/"),
        ("example.com:5000", RegistryOptions(plain_http=True), "http://example.com:5000/v2/"),
        (
            "example.com:5000",
            RegistryOptions(insecure_registries=("example.com",)),
            "http://example.com:5000/v2/",
        ),
        (
            "example.com:5000",
            RegistryOptions(insecure_registries=("example.com:5001",)),
            "https://example.com:5000/v2/",
        ),
        ("docker.io", RegistryOptions(), "https://registry-1.docker.io/v2/"),
    ],
)
def test_scheme_and_api_host(registry: str, options: RegistryOptions, url: str) -> None:
    assert RegistryClient(registry, options)._url("/v2/") == url


def test_plain_http_to_tls_registry_explains(tls_registry: RegistryServer) -> None:
    client = RegistryClient(tls_registry.host, RegistryOptions(plain_http=True))
    with pytest.raises(RegistryError, match="speaks HTTPS") as err:
        client.get_manifest("test/oci", "v1")
    assert err.value.status == 400


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        (mediatypes.DOCKER_MANIFEST, b"{}", mediatypes.DOCKER_MANIFEST),
        (f"{mediatypes.OCI_INDEX}; charset=utf-8", b"{}", mediatypes.OCI_INDEX),
        (
            "application/json",
            b'{"mediaType": "%s"}' % mediatypes.OCI_MANIFEST.encode(),
            mediatypes.OCI_MANIFEST,
        ),
        (
            "",
            b'{"mediaType": "%s"}' % mediatypes.DOCKER_MANIFEST_LIST.encode(),
            mediatypes.DOCKER_MANIFEST_LIST,
        ),
        ("text/plain", b"not json", "text/plain"),
    ],
)
def test_media_type_falls_back_to_json(content_type: str, body: bytes, expected: str) -> None:
    resp = requests.Response()
    if content_type:
        resp.headers["Content-Type"] = content_type
    assert RegistryClient._media_type(resp, body) == expected
