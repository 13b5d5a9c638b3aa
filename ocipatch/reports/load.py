"""Read a report file of any supported format, and check it belongs to the image being patched."""

from __future__ import annotations

import codecs
import concurrent.futures
import json
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any, BinaryIO

from ocipatch import background
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


MAX_REPORT_BYTES = 256 << 20  # 256 MiB: far above a Trivy report of a large image
PIPE_WAIT = 10.0  # seconds a named pipe may wait for its writer before the report is refused
_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def load_report(path: Path) -> UpdateManifest:
    """Read and convert one report file; every problem is a one-line ReportError."""
    path = Path(path)
    data = _read_report(path)
    if not data.strip():
        raise ReportError(f"report {path} is empty; pass the output of `trivy image --format json`")
    return parse_report(_decode(data, path), f"report {path}")


def _read_report(path: Path) -> bytes:
    """The bytes of a regular file or a pipe (`-r /dev/stdin`, `-r <(...)`), at most
    MAX_REPORT_BYTES of them: a device or an endless stream never hangs nor fills memory."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ReportError(f"report {path} does not exist") from None
    except OSError as e:
        raise ReportError(f"cannot read report {path}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ReportError(
            f"{path} is a directory: a report directory is for multi-platform images, "
            "not supported yet; pass the report file of the one platform being patched"
        )
    for test, kind in _KINDS:
        if test(st.st_mode):
            raise ReportError(
                f"report {path} is {kind}: a report is a file or a pipe of at most "
                f"{MAX_REPORT_BYTES >> 20} MiB of JSON; pass the report file"
            )
    if stat.S_ISREG(st.st_mode) and st.st_size > MAX_REPORT_BYTES:
        raise _too_large(path, st.st_size)
    try:
        fd = _open_pipe(path) if stat.S_ISFIFO(st.st_mode) else os.open(path, os.O_RDONLY)
        with os.fdopen(fd, "rb", buffering=0) as f:
            data = _read_at_most(f, MAX_REPORT_BYTES + 1)
    except OSError as e:
        raise ReportError(f"cannot read report {path}: {e.strerror or e}") from None
    if len(data) > MAX_REPORT_BYTES:
        raise _too_large(path, None)
    return data


def _open_pipe(path: Path) -> int:
    """Open a pipe for reading. An anonymous one (`/dev/stdin`, `<(...)`) opens at once and is
    read for as long as its writer takes; a named one waits for a writer to open it, at most
    PIPE_WAIT seconds, instead of forever."""
    opening = background.start(lambda: os.open(path, os.O_RDONLY), "open report pipe")
    try:
        return opening.result(timeout=PIPE_WAIT)
    except concurrent.futures.TimeoutError:
        raise ReportError(
            f"report {path} is a named pipe nobody opened for writing within {PIPE_WAIT:.0f} s: "
            "start the writer first, or pass the report file"
        ) from None


def _read_at_most(f: BinaryIO, limit: int) -> bytes:
    buf = bytearray()
    while len(buf) < limit and (chunk := f.read(min(1 << 20, limit - len(buf)))):
        buf += chunk
    return bytes(buf)


def _too_large(path: Path, size: int | None) -> ReportError:
    has = f" ({size / (1 << 20):.0f} MiB)" if size is not None else ""
    return ReportError(
        f"report {path} is larger than the {MAX_REPORT_BYTES >> 20} MiB limit{has}: "
        "pass the JSON report of `trivy image --format json` for one image"
    )


def _decode(data: bytes, path: Path) -> Any:
    """The JSON document; every way json.loads can fail is a ReportError."""
    try:
        text = _text(data)
    except UnicodeDecodeError as e:
        raise ReportError(
            f"report {path} is not JSON: not UTF-8 text (byte 0x{data[e.start : e.start + 1].hex()} "
            f"at offset {e.start}); pass the output of `trivy image --format json`"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ReportError(
            f"report {path} is not JSON ({e.msg} at line {e.lineno} column {e.colno}); "
            "pass the output of `trivy image --format json`"
        ) from None
    except RecursionError:
        raise ReportError(f"report {path} is not usable JSON (nested too deeply)") from None
    except ValueError:  # Python's int conversion limit; its message is about Python
        raise ReportError(
            f"report {path} is not usable JSON: it holds a number longer than "
            f"{sys.get_int_max_str_digits()} digits"
        ) from None


def _text(data: bytes) -> str:
    """UTF-8 (with or without a BOM), or UTF-16 with a BOM (what PowerShell's `>` writes)."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16")
    return data.decode("utf-8-sig")


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
    manifest: UpdateManifest,
    os_id: str,
    os_version: str,
    arch: str,
    variant: str | None,
    image: str = "the image",
) -> None:
    """Raise ReportError if the report was made for another OS, release or architecture.

    os_id/os_version are the image's /etc/os-release ID and VERSION_ID; arch/variant its config's
    platform. A report without an architecture (e.g. a filesystem scan) is checked on the OS only.
    Whatever the OS families are (one ocipatch cannot patch included), a mismatch is this error:
    the fix is another report, not another tool.
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
    rep_os = " ".join(p for p in (normalize_family(manifest.os_type), manifest.os_version) if p)
    img_os = " ".join(p for p in (normalize_family(os_id), os_version.strip()) if p)
    raise ReportError(
        f"the report is for {with_article(rep_os)} image ({_platform(rep_arch, rep_variant)}) "
        f"but {image} is {img_os or 'of an unknown OS'} ({_platform(img_arch, img_variant)}): "
        "scan this image and pass its report"
    )


def with_article(noun: str) -> str:
    """'an alpine 3.19', 'a debian 12': English picks the article by the sound, here
    approximated by the first letter (OS names are read as words)."""
    return ("an " if noun[:1] and noun[0].lower() in "aeiou" else "a ") + noun
