"""Issue #9, registry faults: `ocipatch copy` / `ocipatch patch` through a proxy that cuts
connections mid-blob, answers 500 to a manifest PUT, resets connections, and stops listening
for a while (a registry restart), in front of the real test registry.

Every run either succeeds with the digest of a clean run, or exits 3 with one line; the
destination tag is then absent or complete (skopeo reads the manifest and pulls every blob,
checking digests), never partial; the source is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ocipatch.oci.remote import RegistryClient, RegistryOptions
from tests.plugins.registry import Layout, Proxy, RegistryServer, make_oci_layout
from tests.test_patch_hermetic import env  # noqa: F401  (the hermetic image in the registry)

BIG = 3 << 20  # the layer: several MiB of random bytes, so cuts land mid-blob


@pytest.fixture(autouse=True)
def _no_ambient_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("OCIPATCH_REGISTRY_RETRY", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """An OCI layout whose layer (~3 MiB, incompressible) goes up in PATCH requests."""
    path = tmp_path_factory.mktemp("src") / "layout"
    files = {"big.bin": secrets.token_bytes(BIG), "hello.txt": b"hello\n"}
    return make_oci_layout(path, "v1", files)


def _tree(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def _repo(prefix: str) -> str:
    return f"faults/{prefix}-{secrets.token_hex(3)}"


def ocipatch(
    *args: str, retry: str | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "OCIPATCH_REGISTRY_RETRY"}
    environ["NO_COLOR"] = "1"
    if retry is not None:
        environ["OCIPATCH_REGISTRY_RETRY"] = retry
    return subprocess.run(
        [sys.executable, "-m", "ocipatch", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=timeout,
    )


def copy(
    source: Layout, dest: str, tmp_path: Path, *extra: str, retry: str | None = None
) -> subprocess.CompletedProcess[str]:
    cache = tmp_path / f"cache-{secrets.token_hex(3)}"
    return ocipatch(
        "copy", f"oci:{source.path}:v1", dest, "--cache-dir", str(cache), *extra, retry=retry
    )


def one_line(r: subprocess.CompletedProcess[str], code: int) -> str:
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ocipatch: error: "), r.stderr
    return lines[0]


def state(registry: RegistryServer, repo: str, tag: str, tmp_path: Path) -> str | None:
    """The manifest digest under repo:tag, after skopeo pulled every blob (digest-checked);
    None when the tag is absent. Read from the registry directly, not through a proxy."""
    ref = f"docker://{registry.direct_host}/{repo}:{tag}"
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", ref], capture_output=True
    )
    if raw.returncode != 0:
        assert b"manifest unknown" in raw.stderr, raw.stderr
        return None
    out = tmp_path / f"pulled-{secrets.token_hex(3)}"
    subprocess.run(
        ["skopeo", "copy", "-q", "--src-tls-verify=false", ref, f"oci:{out}:x"],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(out)
    return "sha256:" + hashlib.sha256(raw.stdout).hexdigest()


def check_outcome(
    r: subprocess.CompletedProcess[str],
    registry: RegistryServer,
    repo: str,
    source: Layout,
    before: dict[str, str],
    tmp_path: Path,
) -> None:
    """Success with the clean digest, or exit 3 and one line with the tag absent."""
    assert _tree(source.path) == before, "the source changed"
    got = state(registry, repo, "t", tmp_path)
    if r.returncode == 0:
        assert r.stdout.strip() == source.manifest_digest
        assert got == source.manifest_digest
    else:
        one_line(r, 3)
        assert got is None


# --------------------------------------------------------------------------- faults that pass


@pytest.mark.parametrize(
    ("fault", "match", "kw"),
    [
        # mid-blob cut of the layer's PATCH, after 1 MiB: the registry sees the partial body
        ("cut", r"^PATCH ", {"cut_after": 1 << 20}),
        # connection reset before the first blob PATCH/PUT reaches the registry
        ("reset", r"^(PATCH|PUT) /v2/.+/blobs/uploads/", {}),
        # a 500 to the first manifest PUT (PUT of a manifest is idempotent)
        ("500", r"^PUT /v2/.+/manifests/", {}),
        ("503", r".", {}),
    ],
)
def test_copy_survives(
    registry: RegistryServer,
    flaky_proxy: Callable[..., Proxy],
    source: Layout,
    tmp_path: Path,
    fault: str,
    match: str,
    kw: dict[str, Any],
) -> None:
    before = _tree(source.path)
    proxy = flaky_proxy(fault, failures=1, match=match, **kw)
    repo = _repo(fault)
    r = copy(source, f"{proxy.host}/{repo}:t", tmp_path)
    assert r.returncode == 0, r.stderr
    assert proxy.faults() >= 1
    check_outcome(r, registry, repo, source, before, tmp_path)


def test_cut_upload_is_sent_again_once(
    registry: RegistryServer, flaky_proxy: Callable[..., Proxy], source: Layout, tmp_path: Path
) -> None:
    """What a mid-blob cut costs: distribution voids a session that got part of a PATCH, so
    the layer goes again in a new session; nothing else is sent twice."""
    proxy = flaky_proxy("cut", failures=1, match=r"^PATCH ", cut_after=1 << 20)
    repo = _repo("cost")
    client = RegistryClient(proxy.host, RegistryOptions(backoff=0.05))
    data = (source.path / "blobs/sha256" / source.layer.digest.split(":")[1]).read_bytes()
    result = client.push_blob(repo, source.layer.digest, len(data), lambda: _open(source))
    assert result == "uploaded"
    assert proxy.sent("PATCH") == (1 << 20) + len(data)
    assert proxy.uploads(repo) == 1
    # HEAD, POST, PATCH (cut), HEAD, GET status (404: voided), POST, PATCH, PUT
    methods = [r.method for r in proxy.requests()]
    assert methods == ["HEAD", "POST", "PATCH", "HEAD", "GET", "POST", "PATCH", "PUT"], methods


def test_upload_resumes_from_the_session_offset(
    registry: RegistryServer, flaky_proxy: Callable[..., Proxy], source: Layout, tmp_path: Path
) -> None:
    """In chunks, a chunk that never reached the registry (the connection refused while it
    restarts) is sent from the offset the session reports: no byte twice."""
    proxy = flaky_proxy("down", failures=1, match=r"^PATCH ", after=1, down_for=1.0)
    repo = _repo("resume")
    size = source.layer.size
    client = RegistryClient(proxy.host, RegistryOptions(backoff=0.05, chunk_size=1 << 20))
    assert client.push_blob(repo, source.layer.digest, size, lambda: _open(source)) == "uploaded"
    assert len(proxy.outages) == 1
    assert proxy.sent("PATCH") == size  # no byte twice
    patches = [r.fault or r.status for r in proxy.requests() if r.method in ("PATCH", "GET")]
    assert patches == [202, "down", 204, 202, 202, 202], patches  # GET 204: "Range: 0-1048575"
    assert state_blob(registry, repo, source) == source.layer.data


def _open(source: Layout) -> Any:
    return (source.path / "blobs/sha256" / source.layer.digest.split(":")[1]).open("rb")


def state_blob(registry: RegistryServer, repo: str, source: Layout) -> bytes:
    client = RegistryClient(registry.direct_host, RegistryOptions())
    with client.open_blob(repo, source.layer.digest) as f:
        data: bytes = f.read()
    return data


def test_pull_cut_mid_blob_resumes(
    registry: RegistryServer, flaky_proxy: Callable[..., Proxy], source: Layout, tmp_path: Path
) -> None:
    repo = _repo("pull")
    assert copy(source, f"{registry.host}/{repo}:t", tmp_path).returncode == 0
    proxy = flaky_proxy("cut", failures=1, match=r"^GET /v2/.+/blobs/sha256:", cut_after=1 << 20)
    out = tmp_path / "out"
    r = ocipatch(
        "copy", f"{proxy.host}/{repo}:t", f"oci:{out}:t", "--cache-dir", str(tmp_path / "c")
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == source.manifest_digest
    gets = [x for x in proxy.requests() if x.method == "GET" and "/blobs/" in x.path]
    assert [x.fault for x in gets if source.layer.digest in x.path] == ["cut", ""]
    assert (out / "blobs/sha256" / source.layer.digest.split(":")[1]).read_bytes() == (
        source.layer.data
    )


def test_pull_through_a_registry_restart(
    registry: RegistryServer, flaky_proxy: Callable[..., Proxy], source: Layout, tmp_path: Path
) -> None:
    """The source registry is down for 2 s when the layer download starts."""
    repo = _repo("pulldown")
    assert copy(source, f"{registry.host}/{repo}:t", tmp_path).returncode == 0
    layer = f"^GET /v2/.+/blobs/{source.layer.digest}"
    proxy = flaky_proxy("down", failures=1, match=layer, down_for=2.0)
    out = tmp_path / "out"
    r = ocipatch(
        "copy", f"{proxy.host}/{repo}:t", f"oci:{out}:t", "--cache-dir", str(tmp_path / "c")
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == source.manifest_digest and len(proxy.outages) == 1
    assert (
        _tree(out)[f"blobs/sha256/{source.layer.digest.split(':')[1]}"]
        == (source.layer.digest.split(":")[1])
    )


def test_stalled_request_times_out_and_is_retried(
    registry: RegistryServer,
    flaky_proxy: Callable[..., Proxy],
    source: Layout,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A registry that takes a request and never answers: the read timeout (1 s here, 300 s
    in use) ends the attempt, and the request is sent again."""
    from ocipatch.oci import remote

    monkeypatch.setattr(remote, "TIMEOUT", (1.0, 1.0))
    repo = _repo("stall")
    assert copy(source, f"{registry.host}/{repo}:t", tmp_path).returncode == 0
    proxy = flaky_proxy("stall", failures=1, match=r"^GET /v2/.+/manifests/", down_for=3.0)
    client = RegistryClient(proxy.host, RegistryOptions(backoff=0.05))
    start = time.monotonic()
    assert client.get_manifest(repo, "t")[2] == source.manifest_digest
    assert 1.0 <= time.monotonic() - start < 3.0
    assert [r.fault for r in proxy.requests()] == ["stall", ""]


def test_registry_restart_mid_push(
    registry: RegistryServer, flaky_proxy: Callable[..., Proxy], source: Layout, tmp_path: Path
) -> None:
    """Down for 3 s when the layer upload starts: the push waits and succeeds."""
    before = _tree(source.path)
    proxy = flaky_proxy("down", failures=1, match=r"^PATCH ", down_for=3.0)
    repo = _repo("restart")
    start = time.monotonic()
    r = copy(source, f"{proxy.host}/{repo}:t", tmp_path)
    took = time.monotonic() - start
    assert r.returncode == 0, r.stderr
    assert len(proxy.outages) == 1 and took >= 3.0
    check_outcome(r, registry, repo, source, before, tmp_path)


def test_retry_after_is_honoured_in_a_copy(
    registry: RegistryServer, flaky_proxy: Callable[..., Proxy], source: Layout, tmp_path: Path
) -> None:
    proxy = flaky_proxy("429", failures=1, match=r"^PUT /v2/.+/manifests/", retry_after=2)
    repo = _repo("429")
    start = time.monotonic()
    r = copy(source, f"{proxy.host}/{repo}:t", tmp_path)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - start >= 2.0
    assert state(registry, repo, "t", tmp_path) == source.manifest_digest


# --------------------------------------------------------------------------- faults that fail


def test_down_longer_than_the_budget(
    registry: RegistryServer, flaky_proxy: Callable[..., Proxy], source: Layout, tmp_path: Path
) -> None:
    """Down for 8 s with a 2 s budget, when the config upload starts (the layer is up): exit 3
    in about the budget, one line naming the registry, the time tried and the option; the tag
    absent. A second run sends only what the first did not (the layer is HEAD-checked)."""
    before = _tree(source.path)
    config_hex = source.config.digest.split(":")[1]
    proxy = flaky_proxy("down", failures=1, match=rf"^PUT .*{config_hex}", down_for=8.0)
    repo = _repo("budget")
    start = time.monotonic()
    r = copy(source, f"{proxy.host}/{repo}:t", tmp_path, "--registry-retry-time", "2s")
    took = time.monotonic() - start
    line = one_line(r, 3)
    assert proxy.host in line and "--registry-retry-time" in line and "connection refused" in line
    assert re.search(r"retried for (1\.9|2\.\d)s", line), line
    assert 2.0 <= took < 10.0, took  # the budget, plus start-up and the last attempt
    check_outcome(r, registry, repo, source, before, tmp_path)
    assert proxy.uploads(repo) == 1  # the layer

    again = flaky_proxy("")
    r2 = copy(source, f"{again.host}/{repo}:t", tmp_path)
    assert r2.returncode == 0, r2.stderr
    assert again.uploads(repo) == 1 and again.sent("PATCH") == 0  # the config only
    check_outcome(r2, registry, repo, source, before, tmp_path)


def test_unavailable_registry_env_budget(
    registry: RegistryServer, flaky_proxy: Callable[..., Proxy], source: Layout, tmp_path: Path
) -> None:
    proxy = flaky_proxy("503", failures=None, match=r"^PUT /v2/.+/manifests/")
    repo = _repo("503")
    start = time.monotonic()
    r = copy(source, f"{proxy.host}/{repo}:t", tmp_path, retry="1s")
    assert time.monotonic() - start < 10
    line = one_line(r, 3)
    assert "unavailable" in line and "503" in line and "--registry-retry-time" in line
    assert state(registry, repo, "t", tmp_path) is None


def test_retry_after_beyond_the_budget_fails_at_once(
    registry: RegistryServer, flaky_proxy: Callable[..., Proxy], source: Layout, tmp_path: Path
) -> None:
    proxy = flaky_proxy("429", failures=None, match=r"^PUT /v2/.+/manifests/", retry_after=60)
    repo = _repo("429long")
    start = time.monotonic()
    r = copy(source, f"{proxy.host}/{repo}:t", tmp_path, "--registry-retry-time", "10s")
    assert time.monotonic() - start < 8
    line = one_line(r, 3)
    assert "rate limiting" in line and "retry after 1m00s" in line and "429" in line
    assert state(registry, repo, "t", tmp_path) is None


def test_bad_retry_time_is_usage_error(source: Layout, tmp_path: Path) -> None:
    line = one_line(copy(source, f"oci:{tmp_path}/o:t", tmp_path, "--registry-retry-time", "x"), 2)
    assert "--registry-retry-time" in line
    line = one_line(copy(source, f"oci:{tmp_path}/o:t", tmp_path, retry="soon"), 2)
    assert "OCIPATCH_REGISTRY_RETRY" in line


def test_auth_failure_is_not_retried(
    token_registry: RegistryServer, source: Layout, tmp_path: Path
) -> None:
    assert token_registry.proxy is not None
    before = len(token_registry.requests())
    cache = tmp_path / "c"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ocipatch",
            "copy",
            f"oci:{source.path}:v1",
            f"{token_registry.host}/{_repo('auth')}:t",
            "--cache-dir",
            str(cache),
            "--username",
            token_registry.username,
            "--password-stdin",
        ],
        input="wrong\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    one_line(r, 4)
    reqs = token_registry.requests()[before:]
    assert [x.status for x in reqs] == [401], reqs  # the HEAD, challenged; no retry


def test_manifest_cut_mid_body_is_read_again(
    registry: RegistryServer, flaky_proxy: Callable[..., Proxy], source: Layout, tmp_path: Path
) -> None:
    repo = _repo("mcut")
    assert copy(source, f"{registry.host}/{repo}:t", tmp_path).returncode == 0
    proxy = flaky_proxy("cut", failures=1, match=r"^GET /v2/.+/manifests/", cut_after=100)
    data, _, digest = RegistryClient(proxy.host, RegistryOptions(backoff=0.05)).get_manifest(
        repo, "t"
    )
    assert digest == source.manifest_digest and data == source.manifest
    assert [r.fault for r in proxy.requests()] == ["cut", ""]


# --------------------------------------------------------------------------- ocipatch patch


def test_patch_pushes_through_a_registry_restart(
    env: Any,  # noqa: F811 (the fixture imported above)
    registry: RegistryServer,
    flaky_proxy: Callable[..., Proxy],
    tmp_path: Path,
) -> None:
    """`ocipatch patch` whose push (to a new repository: every layer goes up) meets a 3 s
    restart at the first blob upload, or a 500 to the manifest PUT: it pushes the image a clean
    run pushes."""
    from tests.test_patch_hermetic import ocipatch as run_patch

    report = env.report("faults", {"ocp-lib": "2.0"})
    clean = run_patch(env, "-i", env.ref, "-r", str(report), "-t", "faults-clean")
    assert clean.returncode == 0, clean.stderr
    want = json.loads(clean.stdout)["image"]["digest"]

    down = flaky_proxy("down", failures=1, match=r"^(PUT|PATCH) /v2/.+/blobs/uploads/")
    repo = _repo("patch")
    r = run_patch(env, "-i", env.ref, "-r", str(report), "-t", f"{down.host}/{repo}:restart")
    assert r.returncode == 0, r.stderr
    assert len(down.outages) == 2  # the first PATCH, and then the first one-request PUT
    assert json.loads(r.stdout)["image"]["digest"] == want
    assert state(registry, repo, "restart", tmp_path) == want

    five = flaky_proxy("500", failures=1, match=r"^PUT /v2/.+/manifests/")
    r = run_patch(env, "-i", env.ref, "-r", str(report), "-t", f"{five.host}/{repo}:f500")
    assert r.returncode == 0, r.stderr
    assert five.faults() == 1
    assert state(registry, repo, "f500", tmp_path) == want
