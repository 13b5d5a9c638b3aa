"""What the Debian archive offers today, read from its indices at test time (never hard-coded
versions). The archive's URL comes from this machine's apt sources."""

from __future__ import annotations

import functools
import lzma

import requests
from debian.deb822 import Packages
from debian.debian_support import version_compare

from tools.debian_rootfs import read_host_sources

SUITE = "bookworm"


@functools.lru_cache(maxsize=8)
def newest_versions(arch: str = "amd64") -> dict[str, str]:
    """name -> newest version over bookworm, bookworm-updates and bookworm-security (main)."""
    newest: dict[str, str] = {}
    for src in read_host_sources():
        for suite in src.suites:
            if not suite.startswith(SUITE):
                continue
            url = f"{src.uris[0].rstrip('/')}/dists/{suite}/main/binary-{arch}/Packages.xz"
            resp = requests.get(url, timeout=120)
            resp.raise_for_status()
            text = lzma.decompress(resp.content).decode("utf-8", "replace")
            for p in Packages.iter_paragraphs(text.splitlines(keepends=True), use_apt_pkg=False):
                name, ver = p["Package"], p["Version"]
                if name not in newest or version_compare(ver, newest[name]) > 0:
                    newest[name] = ver
    return newest


def pending_updates(installed: dict[str, str], arch: str = "amd64") -> dict[str, str]:
    """name -> newest version, for the installed packages the archive offers a newer one of."""
    newest = newest_versions(arch)
    return {
        n: newest[n]
        for n, v in installed.items()
        if n in newest and version_compare(newest[n], v) > 0
    }


def trivy_report(
    installed: dict[str, str],
    fixed: dict[str, str],
    arch: str = "amd64",
    os_name: str = "12.5",
    *,
    artifact: str | None = None,
    metadata: dict[str, object] | None = None,
) -> dict[str, object]:
    """A Trivy JSON (SchemaVersion 2) report: one CVE-TEST id per package needing an update.

    Without `artifact` and `metadata` it names no image (as a hand-made report); with them it
    carries ArtifactName and identity fields (ImageID, RepoDigests, DiffIDs ...) as Trivy's do."""
    vulns = [
        {
            "VulnerabilityID": f"CVE-2099-{i:04d}",
            "PkgName": name,
            "InstalledVersion": installed[name],
            "FixedVersion": fixed[name],
            "Severity": "HIGH",
        }
        for i, name in enumerate(sorted(fixed))
    ]
    doc: dict[str, object] = {"SchemaVersion": 2}
    if artifact is not None:
        doc["ArtifactName"] = artifact
    doc["ArtifactType"] = "container_image"
    doc["Metadata"] = {
        "OS": {"Family": "debian", "Name": os_name},
        "ImageConfig": {"architecture": arch, "os": "linux"},
        **(metadata or {}),
    }
    doc["Results"] = [
        {
            "Target": f"{artifact or 'image'} (debian 12)",
            "Class": "os-pkgs",
            "Type": "debian",
            "Vulnerabilities": vulns,
        }
    ]
    return doc
