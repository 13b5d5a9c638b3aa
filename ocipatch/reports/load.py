"""Read a report file of any supported format, and check it belongs to the image being patched."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ocipatch.errors import ReportError
from ocipatch.reports.model import UpdateManifest, ecosystem_for_os, normalize_family
from ocipatch.reports.native import looks_native, parse_native
from ocipatch.reports.trivy import parse_trivy

__all__ = [
    "check_report_matches",
    "ecosystem_for_os",
    "load_report",
    "normalize_arch",
    "parse_report",
]


def parse_report(doc: Any, report: str = "report") -> UpdateManifest:
    """Detect the format of a decoded JSON document and convert it."""
    if isinstance(doc, list):
        # Trivy before 0.20 wrote a bare list of results (what SchemaVersion 2 replaced).
        raise ReportError(
            f"{report} looks like an old Trivy report (a bare list, SchemaVersion 1); "
            "re-scan with a current Trivy (`trivy image --format json -o report.json IMAGE`)"
        )
    if not isinstance(doc, dict):
        raise ReportError(f"{report} is not a Trivy JSON report nor a copa update manifest")
    if "SchemaVersion" in doc:
        return parse_trivy(doc, report)
    if looks_native(doc):
        return parse_native(doc, report)
    if "bomFormat" in doc or "spdxVersion" in doc:
        kind = "a CycloneDX" if "bomFormat" in doc else "an SPDX"
        raise ReportError(
            f"{report} is {kind} SBOM, not a vulnerability report; pass Trivy's JSON report "
            "(`trivy image --format json`)"
        )
    if "runs" in doc and "version" in doc:
        raise ReportError(
            f"{report} is a SARIF file; pass Trivy's JSON report (`trivy image --format json`)"
        )
    if "matches" in doc and "descriptor" in doc:
        raise ReportError(
            f"{report} is a Grype report, which is not supported yet; scan with Trivy "
            "(`trivy image --format json`) or convert it to a copa v1alpha2 manifest"
        )
    raise ReportError(
        f"{report} is not a Trivy JSON report (no SchemaVersion) nor a copa update manifest "
        "(no apiVersion); pass the output of `trivy image --format json`"
    )


def load_report(path: Path) -> UpdateManifest:
    """Read and convert one report file; every problem is a one-line ReportError."""
    path = Path(path)
    try:
        is_dir = path.is_dir()
    except OSError as e:
        raise ReportError(f"cannot read report {path}: {e.strerror or e}") from None
    if is_dir:
        raise ReportError(
            f"{path} is a directory: a report directory is for multi-platform images, "
            "not supported yet; pass the report file of the one platform being patched"
        )
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ReportError(f"report {path} does not exist") from None
    except OSError as e:
        raise ReportError(f"cannot read report {path}: {e.strerror or e}") from None
    if not data.strip():
        raise ReportError(f"report {path} is empty; pass the output of `trivy image --format json`")
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ReportError(f"report {path} is not JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise ReportError(
            f"report {path} is not JSON ({e.msg} at line {e.lineno} column {e.colno}); "
            "pass the output of `trivy image --format json`"
        ) from None
    except RecursionError:
        raise ReportError(f"report {path} is not usable JSON (nested too deeply)") from None
    except ValueError as e:  # not a syntax error: a number with more digits than int() takes
        raise ReportError(
            f"report {path} is not usable JSON ({str(e).split(':')[0]}); "
            "pass the output of `trivy image --format json`"
        ) from None
    return parse_report(doc, f"report {path}")


# --- matching a report with the image ---------------------------------------------------------

_ARCH_ALIASES = {
    "x86_64": "amd64",
    "x86-64": "amd64",
    "aarch64": "arm64",
    "armhf": "arm",
    "armel": "arm",
    "armv7": "arm",
    "armv7l": "arm",
    "armv7hl": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i486": "386",
    "i586": "386",
    "i686": "386",
    "x86": "386",
    "ppc64el": "ppc64le",
    "loongarch64": "loong64",
    "mips64el": "mips64le",
}
_ARCH_VARIANT = {
    "armhf": "v7",
    "armv7": "v7",
    "armv7l": "v7",
    "armv7hl": "v7",
    "armv6l": "v6",
    "armel": "v6",
    "aarch64": "v8",
}

# os-release IDs that Trivy names differently (Trivy family on the right).
_FAMILY_ALIASES = {
    "rhel": "redhat",
    "amzn": "amazon",
    "ol": "oracle",
    "almalinux": "alma",
    "mariner": "cbl-mariner",
}
# How many leading version numbers identify a release. Debian's os-release says "12" where
# Trivy says "12.5", so one number by default; Ubuntu and Alpine releases need two
# (22.04 vs 22.10, 3.20 vs 3.21); rolling distributions have no release to compare.
_RELEASE_PARTS = {"ubuntu": 2, "alpine": 2, "opensuse-leap": 2, "sles": 2, "slem": 2}
_ROLLING = frozenset({"wolfi", "chainguard", "opensuse-tumbleweed"})
_VERSION_NUMBERS = re.compile(r"\s*v?(\d+(?:\.\d+)*)")


def normalize_arch(arch: str, variant: str | None = None) -> tuple[str, str | None]:
    """GOARCH name and variant for an architecture written the Go, Debian or uname way."""
    a = arch.strip().lower()
    v = (variant or "").strip().lower() or _ARCH_VARIANT.get(a)
    a = _ARCH_ALIASES.get(a, a)
    if a == "arm64" and v == "v8":
        v = None  # v8 is the only arm64 variant in use; treat it as the default
    return a, v


def _family(os_id: str) -> str:
    fam = normalize_family(os_id)
    return _FAMILY_ALIASES.get(fam, fam)


def _release(version: str, parts: int) -> tuple[int, ...] | None:
    m = _VERSION_NUMBERS.match(version)
    if not m:
        return None
    return tuple(int(n) for n in m.group(1).split("."))[:parts]


def _same_release(family: str, a: str, b: str) -> bool:
    if family in _ROLLING:
        return True
    parts = _RELEASE_PARTS.get(family, 1)
    ra, rb = _release(a, parts), _release(b, parts)
    if ra is None or rb is None:
        # No number on one side (e.g. Debian sid has no VERSION_ID): nothing reliable to compare.
        return True
    n = min(len(ra), len(rb))
    return ra[:n] == rb[:n]


def _platform(arch: str, variant: str | None) -> str:
    return f"{arch}/{variant}" if variant else arch or "unknown architecture"


def check_report_matches(
    manifest: UpdateManifest, os_id: str, os_version: str, arch: str, variant: str | None
) -> None:
    """Raise ReportError if the report was made for another OS, release or architecture.

    os_id/os_version are the image's /etc/os-release ID and VERSION_ID; arch/variant its config's
    platform. A report without an architecture (e.g. a filesystem scan) is checked on the OS only.
    """
    rep_family, img_family = _family(manifest.os_type), _family(os_id)
    rep_arch, rep_variant = normalize_arch(manifest.arch, manifest.variant)
    img_arch, img_variant = normalize_arch(arch, variant)
    os_ok = rep_family == img_family and _same_release(rep_family, manifest.os_version, os_version)
    arch_ok = (
        not rep_arch
        or not img_arch
        or (
            rep_arch == img_arch
            and (rep_variant is None or img_variant is None or rep_variant == img_variant)
        )
    )
    if os_ok and arch_ok:
        return
    rep_os = " ".join(p for p in (manifest.os_type, manifest.os_version) if p)
    img_os = " ".join(p for p in (normalize_family(os_id), os_version.strip()) if p)
    raise ReportError(
        f"report is for {rep_os} ({_platform(rep_arch, rep_variant)}) but the image is "
        f"{img_os or 'an unknown OS'} ({_platform(img_arch, img_variant)}): "
        "scan this image and pass that report"
    )
