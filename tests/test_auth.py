"""Credential lookup: flags, auth files, credential helpers; and the client using them."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import secrets
import stat
from pathlib import Path

import pytest

from ocipatch.errors import AuthError, UsageError
from ocipatch.oci.auth import (
    DOCKER_HUB_KEY,
    Credentials,
    auth_files,
    lookup_credentials,
    normalize_key,
)
from ocipatch.oci.remote import RegistryClient, RegistryOptions
from tests.plugins.registry import RegistryServer


def _b64(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _write(path: Path, doc: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def _helper(bin_dir: Path, name: str, answers: dict[str, tuple[str, str]]) -> Path:
    """A real docker-credential-<name> executable; logs the server URLs it is asked for."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    log = bin_dir / f"{name}.log"
    cases = "".join(
        f"  '{url}') printf '%s' '{json.dumps({'ServerURL': url, 'Username': u, 'Secret': s})}';;\n"
        for url, (u, s) in answers.items()
    )
    script = bin_dir / f"docker-credential-{name}"
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1" = get ] || exit 2\n'
        "read -r url\n"
        f"echo \"$url\" >> '{log}'\n"
        'case "$url" in\n'
        f"{cases}"
        "  *) echo 'credentials not found in native keychain'; exit 1;;\n"
        "esac\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return log


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A clean environment: no auth file exists until a test writes one."""
    return {
        "HOME": str(tmp_path / "home"),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin",
    }


def test_explicit_credentials_win(env: dict[str, str], tmp_path: Path) -> None:
    env["REGISTRY_AUTH_FILE"] = str(
        _write(tmp_path / "a.json", {"auths": {"r.example": {"auth": _b64("file", "pw")}}})
    )
    assert lookup_credentials("r.example", "flag", "secret", env) == Credentials("flag", "secret")
    assert lookup_credentials("r.example", env=env) == Credentials("file", "pw")
    with pytest.raises(UsageError):
        lookup_credentials("r.example", "flag", None, env)


def test_nothing_configured(env: dict[str, str]) -> None:
    assert lookup_credentials("r.example", env=env) is None


@pytest.mark.parametrize(
    "key",
    [
        "r.example:5000",
        "https://r.example:5000",
        "http://r.example:5000/v1/",
        "https://R.Example:5000/v2/",
    ],
)
def test_auths_key_spellings(env: dict[str, str], tmp_path: Path, key: str) -> None:
    env["REGISTRY_AUTH_FILE"] = str(
        _write(tmp_path / "a.json", {"auths": {key: {"auth": _b64("u", "p:with:colons")}}})
    )
    assert lookup_credentials("r.example:5000", env=env) == Credentials("u", "p:with:colons")
    assert lookup_credentials("r.example:5001", env=env) is None
    assert lookup_credentials("r.example", env=env) is None


@pytest.mark.parametrize("registry", ["docker.io", "index.docker.io", "registry-1.docker.io"])
def test_docker_hub_aliases(env: dict[str, str], registry: str) -> None:
    _write(
        Path(env["HOME"]) / ".docker/config.json",
        {"auths": {DOCKER_HUB_KEY: {"auth": _b64("hubuser", "hubpw")}}},
    )
    assert lookup_credentials(registry, env=env) == Credentials("hubuser", "hubpw")
    assert normalize_key(registry) == "docker.io"


def test_file_order(env: dict[str, str], tmp_path: Path) -> None:
    def entry(user: str) -> dict[str, object]:
        return {"auths": {"r.example": {"username": user, "password": "pw"}}}

    docker = _write(tmp_path / "dockercfg/config.json", entry("docker"))
    podman = _write(Path(env["XDG_RUNTIME_DIR"]) / "containers/auth.json", entry("podman"))
    explicit = _write(tmp_path / "explicit.json", entry("explicit"))
    env["DOCKER_CONFIG"] = str(docker.parent)
    env["REGISTRY_AUTH_FILE"] = str(explicit)
    assert auth_files(env) == [explicit, podman, docker]
    assert lookup_credentials("r.example", env=env) == Credentials("explicit", "pw")
    explicit.unlink()
    assert lookup_credentials("r.example", env=env) == Credentials("podman", "pw")
    podman.unlink()
    assert lookup_credentials("r.example", env=env) == Credentials("docker", "pw")
    # A file without an entry for this registry does not stop the search.
    _write(podman, {"auths": {"other.example": {"auth": _b64("x", "y")}}})
    assert lookup_credentials("r.example", env=env) == Credentials("docker", "pw")


def test_identity_token(env: dict[str, str], tmp_path: Path) -> None:
    env["REGISTRY_AUTH_FILE"] = str(
        _write(
            tmp_path / "a.json",
            {"auths": {"r.example": {"auth": _b64("someone", ""), "identitytoken": "refresh"}}},
        )
    )
    creds = lookup_credentials("r.example", env=env)
    assert creds == Credentials("<token>", "refresh") and creds.identity_token == "refresh"
    assert "refresh" not in repr(creds)


@pytest.mark.parametrize(
    "bad", ["%%%not-base64", base64.b64encode(b"no-colon-here").decode(), "/w=="]
)
def test_malformed_auth_entry(env: dict[str, str], tmp_path: Path, bad: str) -> None:
    path = _write(tmp_path / "a.json", {"auths": {"r.example": {"auth": bad}}})
    env["REGISTRY_AUTH_FILE"] = str(path)
    with pytest.raises(AuthError, match=r"r\.example") as err:
        lookup_credentials("r.example", env=env)
    assert str(path) in str(err.value) and err.value.exit_code == 4


def test_unreadable_auth_file(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "a.json"
    bad.write_text("{not json")
    env["REGISTRY_AUTH_FILE"] = str(bad)
    with pytest.raises(AuthError, match=str(bad)):
        lookup_credentials("r.example", env=env)


def test_cred_helpers(env: dict[str, str], tmp_path: Path) -> None:
    log = _helper(
        tmp_path / "bin",
        "test",
        {"r.example:5000": ("helperuser", "helperpw"), DOCKER_HUB_KEY: ("hub", "hubpw")},
    )
    _write(
        Path(env["HOME"]) / ".docker/config.json",
        {
            "auths": {"r.example:5000": {"auth": _b64("fileuser", "filepw")}},
            "credHelpers": {"r.example:5000": "test", "docker.io": "test"},
        },
    )
    # credHelpers beats the auths entry; the helper is asked with the registry's server URL.
    assert lookup_credentials("r.example:5000", env=env) == Credentials("helperuser", "helperpw")
    assert lookup_credentials("docker.io", env=env) == Credentials("hub", "hubpw")
    assert log.read_text().split() == ["r.example:5000", DOCKER_HUB_KEY]


def test_creds_store(env: dict[str, str], tmp_path: Path) -> None:
    _helper(tmp_path / "bin", "store", {"r.example": ("storeuser", "storepw")})
    _write(
        Path(env["HOME"]) / ".docker/config.json",
        {"auths": {"r.example": {}, "other.example": {}}, "credsStore": "store"},
    )
    assert lookup_credentials("r.example", env=env) == Credentials("storeuser", "storepw")
    assert lookup_credentials("other.example", env=env) is None  # "not found" answer


def test_missing_helper_is_anonymous(env: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    _write(Path(env["HOME"]) / ".docker/config.json", {"credsStore": "absent"})
    with caplog.at_level(logging.WARNING):
        assert lookup_credentials("r.example", env=env) is None
    assert "docker-credential-absent" in caplog.text


# --------------------------------------------------------------------------- with a registry


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point every auth-file variable into tmp_path; returns the REGISTRY_AUTH_FILE path."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    auth_file = tmp_path / "auth.json"
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth_file))
    return auth_file


def test_client_uses_auth_file(tls_registry: RegistryServer, isolated: Path) -> None:
    _write(
        isolated,
        {
            "auths": {
                tls_registry.host: {"auth": _b64(tls_registry.username, tls_registry.password)}
            }
        },
    )
    client = RegistryClient(tls_registry.host, RegistryOptions(ca_file=tls_registry.ca_path))
    assert client.blob_exists("auth/test", "sha256:" + "0" * 64) is False


def test_client_uses_cred_helper(
    tls_registry: RegistryServer,
    isolated: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    log = _helper(
        tmp_path / "bin",
        "test",
        {tls_registry.host: (tls_registry.username, tls_registry.password)},
    )
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    _write(isolated, {"credHelpers": {f"https://{tls_registry.host}": "test"}})
    client = RegistryClient(tls_registry.host, RegistryOptions(ca_file=tls_registry.ca_path))
    blob = secrets.token_bytes(64)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    assert client.push_blob("auth/helper", digest, 64, lambda: io.BytesIO(blob)) == "uploaded"
    assert log.read_text().split() == [tls_registry.host]  # asked once, then cached


def test_client_identity_token_oauth(token_registry: RegistryServer, isolated: Path) -> None:
    assert token_registry.token_server is not None
    _write(
        isolated,
        {"auths": {token_registry.host: {"identitytoken": token_registry.refresh_token}}},
    )
    client = RegistryClient(token_registry.host, RegistryOptions(backoff=0.01))
    assert client.blob_exists("auth/idtoken", "sha256:" + "0" * 64) is False
    assert token_registry.token_server.log[-1] == ("POST", token_registry.username, 200)


def test_client_anonymous_bearer_refused(token_registry: RegistryServer, isolated: Path) -> None:
    client = RegistryClient(token_registry.host, RegistryOptions(backoff=0.01))
    with pytest.raises(AuthError, match="anonymous"):
        client.blob_exists("auth/anon", "sha256:" + "0" * 64)
