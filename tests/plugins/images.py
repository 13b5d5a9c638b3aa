"""pytest fixtures: real Debian 12 images built from the Debian archive (cached), and readers
that are independent of ocipatch (skopeo, umoci, trivy, dpkg-query)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

from tools.build_image import build_debian_image

TRIVY = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "trivy"
# Packages of the upper layer of the two-layer image: openssl's binary and libraries are what
# the e2e tests run after patching.
UPPER = ("openssl", "ca-certificates")


def _need_root_tools() -> None:
    if shutil.which("mmdebstrap") is None or os.geteuid() != 0:
        pytest.skip("building Debian images needs mmdebstrap and root (tools/setup installs it)")


@pytest.fixture(scope="session")
def debian_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer Debian 12 minbase image (bookworm main) as an OCI layout, tag `12`."""
    _need_root_tools()
    return build_debian_image(tmp_path_factory.mktemp("img") / "debian", "12")


@pytest.fixture(scope="session")
def debian_two_layer_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two layers: minbase, then openssl and ca-certificates (dpkg status in the upper layer)."""
    _need_root_tools()
    return build_debian_image(tmp_path_factory.mktemp("img") / "debian2", "12", upper=UPPER)


def skopeo(*args: str) -> str:
    return subprocess.run(
        ["skopeo", *args], check=True, capture_output=True, text=True, timeout=600
    ).stdout


def trivy_packages(layout: Path, cache_dir: Path, purl_type: str = "deb") -> dict[str, str]:
    """name -> version (with epoch) of the packages (purl type deb, apk, ...) trivy finds in an
    OCI layout, offline."""
    out = cache_dir / "cdx.json"
    subprocess.run(
        [
            str(TRIVY),
            "image",
            "--input",
            str(layout),
            "--format",
            "cyclonedx",
            "--quiet",
            "--cache-dir",
            str(cache_dir / "trivy"),
            "--skip-db-update",
            "--offline-scan",
            "-o",
            str(out),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    doc = json.loads(out.read_text())
    found: dict[str, str] = {}
    for c in doc.get("components", []):
        purl = c.get("purl", "")
        if not purl.startswith(f"pkg:{purl_type}/"):
            continue
        version = purl.split("@", 1)[1].split("?", 1)[0]
        quals = dict(q.split("=", 1) for q in purl.partition("?")[2].split("&") if "=" in q)
        if "epoch" in quals:
            version = f"{quals['epoch']}:{version}"
        found[c["name"]] = unquote(version)
    return found


def umoci_unpack(layout: Path, tag: str, dest: Path) -> Path:
    """Unpack with umoci (an independent reader); returns the rootfs directory."""
    subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{layout}:{tag}", str(dest)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return dest


def dpkg_query(rootfs: Path) -> dict[str, str]:
    """name -> version of installed packages as dpkg-query reads the rootfs's database."""
    out = subprocess.run(
        [
            "dpkg-query",
            f"--admindir={rootfs}/var/lib/dpkg",
            "-W",
            "-f",
            "${db:Status-Abbrev}\t${Package}\t${Version}\n",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {
        line.split("\t")[1]: line.split("\t")[2]
        for line in out.splitlines()
        if line.startswith("ii")
    }
