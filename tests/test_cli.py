"""The command line as a user meets it: one line per error, a documented exit code, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests import synth
from tests.test_image import debianish_layers


def run(*args: str, cwd: Path | None = None, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ocipatch", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        input=stdin,
        timeout=120,
    )


@pytest.fixture
def layout(tmp_path: Path) -> synth.Built:
    return synth.write_layout(tmp_path / "layout", debianish_layers(), tag="v1")


def test_inspect_json(layout: synth.Built, tmp_path: Path) -> None:
    r = run("inspect", "--json", "--cache-dir", str(tmp_path / "c"), f"oci:{layout.layout}:v1")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert set(info) >= {
        "reference",
        "digest",
        "platform",
        "os",
        "package_manager",
        "packages",
        "layers",
    }
    assert info["platform"] == {"os": "linux", "architecture": "amd64", "variant": None}
    assert info["packages"][1] == {
        "name": "libssl3",
        "version": "3.0.11-1~deb12u2",
        "arch": "amd64",
    }


def test_inspect_table(layout: synth.Built, tmp_path: Path) -> None:
    r = run("inspect", "--cache-dir", str(tmp_path / "c"), f"oci:{layout.layout}:v1")
    assert r.returncode == 0, r.stderr
    assert "libssl3" in r.stdout and "3 packages" in r.stdout


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["inspect", "ftp://x/y"], 2, "unsupported transport"),
        (["inspect", "Not/Valid"], 2, "invalid image reference"),
        (["inspect", "oci:/nonexistent/layout"], 5, "no such directory"),
        (["inspect", "docker-archive:/nonexistent.tar"], 5, "no such file"),
        (["inspect", "--platform", "linux", "oci:/x"], 2, "invalid platform"),
        (["inspect", "--registry-ca", "/nonexistent.pem", "oci:/x"], 2, "--registry-ca"),
        (["inspect", "--username", "u", "oci:/x"], 2, "--password-stdin"),
    ],
)
def test_bad_input_one_line(args: list[str], code: int, needle: str, tmp_path: Path) -> None:
    r = run(*args, "--cache-dir", str(tmp_path / "c"))
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ocipatch: error:"), r.stderr
    assert needle in lines[0]
    assert "Traceback" not in r.stderr


def test_unreadable_layout(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "index.json").write_text("[]")
    r = run("inspect", f"oci:{bad}", "--cache-dir", str(tmp_path / "c"))
    assert r.returncode == 8 and "index.json" in r.stderr and len(r.stderr.splitlines()) == 1


def test_platform_not_in_index(tmp_path: Path) -> None:
    built = synth.write_multiarch_layout(tmp_path / "m", {"amd64": debianish_layers()})
    r = run(
        "inspect",
        "--platform",
        "linux/arm64",
        f"oci:{built.layout}",
        "--cache-dir",
        str(tmp_path / "c"),
    )
    assert r.returncode == 6 and "linux/arm64 is not in the image index" in r.stderr


def test_debug_shows_traceback(tmp_path: Path) -> None:
    r = run("inspect", "--debug", "oci:/nonexistent", "--cache-dir", str(tmp_path / "c"))
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_copy_between_transports(layout: synth.Built, tmp_path: Path) -> None:
    out = tmp_path / "copy.tar"
    r = run(
        "copy",
        f"oci:{layout.layout}:v1",
        f"oci-archive:{out}:v1",
        "--cache-dir",
        str(tmp_path / "c"),
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == layout.manifest_digest


def test_registry_auth_over_tls(tls_registry: Any, tmp_path: Path) -> None:
    """The CLI against a TLS + htpasswd registry: right credentials work, wrong ones exit 4,
    no CA gives the --registry-ca hint."""
    from tests.plugins.registry import push_test_image

    push_test_image(tls_registry, tmp_path, "cli/app", "1")
    ref = f"{tls_registry.host}/cli/app:1"
    common = ["--cache-dir", str(tmp_path / "c"), "--registry-ca", str(tls_registry.ca_path)]
    ok = run(
        "inspect",
        "--json",
        ref,
        *common,
        "--username",
        tls_registry.username,
        "--password-stdin",
        stdin=tls_registry.password + "\n",
    )
    assert ok.returncode == 0, ok.stderr
    bad = run(
        "inspect",
        ref,
        *common,
        "--username",
        tls_registry.username,
        "--password-stdin",
        stdin="wrong\n",
    )
    assert bad.returncode == 4 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    no_ca = run("inspect", ref, "--cache-dir", str(tmp_path / "c"))
    assert no_ca.returncode == 3 and "--registry-ca" in no_ca.stderr, no_ca.stderr


def test_flaky_registry_through_cli(registry: Any, flaky_proxy: Any, tmp_path: Path) -> None:
    from tests.plugins.registry import push_test_image

    push_test_image(registry, tmp_path, "cli/flaky", "1")
    for fault in ("503", "reset"):
        proxy = flaky_proxy(fault, failures=2)
        r = run(
            "inspect",
            "--json",
            f"{proxy.host}/cli/flaky:1",
            "--cache-dir",
            str(tmp_path / f"c-{fault}"),
        )
        assert r.returncode == 0, (fault, r.stderr)
