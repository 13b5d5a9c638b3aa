"""Registry credentials: explicit flags, then the auth files podman and docker write.

Lookup order (first hit wins):
  1. explicit username/password (--username + --password-stdin);
  2. $REGISTRY_AUTH_FILE;
  3. ${XDG_RUNTIME_DIR}/containers/auth.json (podman, skopeo, buildah);
  4. $DOCKER_CONFIG/config.json, else ~/.docker/config.json.
Within one file: `credHelpers[host]` > an `auths` entry carrying credentials > `credsStore`.
Keys match with or without scheme and path ("https://host", "host", "http://host/v1/"), and the
Docker Hub aliases (docker.io, index.docker.io, registry-1.docker.io) are one registry.

An identity token (docker's `identitytoken`, or a helper answering with username "<token>") is
returned as Credentials("<token>", token): the registry client then trades it for a bearer
token with an OAuth2 refresh-token grant instead of sending it as a password.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocipatch.errors import AuthError, UsageError

log = logging.getLogger(__name__)

IDENTITY_TOKEN_USER = "<token>"
DOCKER_HUB_ALIASES = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
# The key `docker login` uses for Docker Hub, in auth files and with credential helpers.
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_HELPER_TIMEOUT = 60


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    @property
    def identity_token(self) -> str | None:
        """The OAuth2 refresh token, when these credentials are one rather than a password."""
        return self.password if self.username == IDENTITY_TOKEN_USER else None


def normalize_key(key: str) -> str:
    """'https://Host:5000/v1/' -> 'host:5000'; Docker Hub aliases -> 'docker.io'."""
    k = key.strip()
    for scheme in ("https://", "http://"):
        if k.lower().startswith(scheme):
            k = k[len(scheme) :]
            break
    k = k.split("/", 1)[0].lower()
    return "docker.io" if k in DOCKER_HUB_ALIASES else k


def helper_server_url(registry: str) -> str:
    """What to write on a credential helper's stdin for this registry."""
    return DOCKER_HUB_KEY if normalize_key(registry) == "docker.io" else registry


def auth_files(env: Mapping[str, str] | None = None) -> list[Path]:
    """The auth files consulted, in order (existing or not)."""
    env = os.environ if env is None else env
    files: list[Path] = []
    if env.get("REGISTRY_AUTH_FILE"):
        files.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        files.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    if env.get("DOCKER_CONFIG"):
        files.append(Path(env["DOCKER_CONFIG"]) / "config.json")
    else:
        home = env.get("HOME") or str(Path.home())
        files.append(Path(home) / ".docker" / "config.json")
    return files


def lookup_credentials(
    registry: str,
    username: str | None = None,
    password: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Credentials | None:
    """Credentials for `registry` ("host[:port]"), or None for anonymous access."""
    if username is not None or password is not None:
        if not username or password is None:
            raise UsageError("--username and a password (--password-stdin) must be given together")
        return Credentials(username, password)
    env = os.environ if env is None else env
    want = normalize_key(registry)
    for path in auth_files(env):
        if not path.is_file():
            continue
        creds = _from_file(path, want, registry, env)
        if creds is not None:
            log.debug("credentials for %s from %s", registry, path)
            return creds
    return None


def _from_file(path: Path, want: str, registry: str, env: Mapping[str, str]) -> Credentials | None:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # ValueError: also bad UTF-8, huge ints
        why = "nested too deeply" if isinstance(e, RecursionError) else e
        raise AuthError(f"cannot read auth file {path}: {why}; fix or remove it") from None
    if not isinstance(cfg, dict):
        raise AuthError(f"auth file {path} is not a JSON object; fix or remove it")

    helpers = cfg.get("credHelpers") or {}
    if isinstance(helpers, dict):
        for key, helper in sorted(helpers.items()):
            if normalize_key(key) == want and isinstance(helper, str) and helper:
                creds = run_helper(helper, helper_server_url(registry), env)
                if creds is not None:
                    return creds

    auths = cfg.get("auths") or {}
    if isinstance(auths, dict):
        # An exact key beats an alias spelling of the same registry.
        keys = sorted(auths, key=lambda k: (k != registry, k))
        for key in keys:
            entry = auths[key]
            if normalize_key(key) == want and isinstance(entry, dict):
                creds = _from_entry(entry, key, path)
                if creds is not None:
                    return creds

    store = cfg.get("credsStore")
    if isinstance(store, str) and store:
        return run_helper(store, helper_server_url(registry), env)
    return None


def _from_entry(entry: dict[str, Any], key: str, path: Path) -> Credentials | None:
    user, secret = "", ""
    raw = entry.get("auth")
    if isinstance(raw, str) and raw:
        try:
            decoded = base64.b64decode(raw, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthError(
                f"the 'auth' entry for {key} in {path} is not base64 of user:password; log in again"
            ) from None
        user, sep, secret = decoded.partition(":")
        if not sep:
            raise AuthError(
                f"the 'auth' entry for {key} in {path} has no ':' between user and password; "
                "log in again"
            )
    if isinstance(entry.get("username"), str) and entry["username"]:
        user = entry["username"]
        if isinstance(entry.get("password"), str):
            secret = entry["password"]
    token = entry.get("identitytoken")
    if isinstance(token, str) and token:
        return Credentials(IDENTITY_TOKEN_USER, token)
    if user:
        return Credentials(user, secret)
    return None


def run_helper(
    name: str, server_url: str, env: Mapping[str, str] | None = None
) -> Credentials | None:
    """Ask `docker-credential-<name> get`; None when it has nothing for this server.

    A missing or failing helper is logged and treated as "no credentials", as docker does for
    pulls: anonymous access may still work, and a registry that needs credentials answers 401.
    """
    binary = f"docker-credential-{name}"
    try:
        proc = subprocess.run(
            [binary, "get"],
            input=server_url.encode(),
            capture_output=True,
            timeout=_HELPER_TIMEOUT,
            env=dict(env) if env is not None else None,
            check=False,
        )
    except FileNotFoundError:
        log.warning("credential helper %s is configured but not on PATH", binary)
        return None
    except subprocess.TimeoutExpired:
        log.warning("credential helper %s timed out", binary)
        return None
    if proc.returncode != 0:
        msg = (proc.stdout or proc.stderr).decode(errors="replace").strip()
        if "credentials not found" not in msg.lower():
            log.warning("credential helper %s failed: %s", binary, msg)
        return None
    try:
        out = json.loads(proc.stdout)
        user, secret = out["Username"], out["Secret"]
    except (ValueError, RecursionError, KeyError, TypeError):
        log.warning("credential helper %s printed something that is not credentials", binary)
        return None
    if not isinstance(user, str) or not isinstance(secret, str) or not (user or secret):
        return None
    return Credentials(user, secret)
