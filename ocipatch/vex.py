"""OpenVEX 0.2.0 documents saying which vulnerabilities a patch fixed, and the purls they need.

One statement per fixed vulnerability, status "fixed", product = the patched image
(`pkg:oci/...@sha256:...`), subcomponents = the updated packages (`pkg:deb/...` etc.).
Only vulnerabilities whose package really reached the required version belong here: the
caller passes those, never skipped, unfixed or language-package findings.

The output is deterministic for a given timestamp: statements sorted by vulnerability ID,
subcomponents sorted, and the document @id derived from a hash of the content.
Purls follow the purl specification: components are percent-encoded except letters, digits,
'.', '-', '_', '~' and ':' (a colon is never encoded, so epochs and digests stay readable);
qualifiers are sorted by key.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from ocipatch.reports.model import PackageUpdate

OPENVEX_CONTEXT = "https://openvex.dev/ns/v0.2.0"
_DOC_ID_PREFIX = "https://openvex.dev/docs/public/vex-"

# Where a vulnerability ID has a canonical public page, that page is its @id.
_VULN_PAGES = {
    "CVE-": "https://nvd.nist.gov/vuln/detail/",
    "GHSA-": "https://github.com/advisories/",
}


@dataclass(frozen=True)
class FixedVuln:
    """A vulnerability the patch fixed, and the purls of the packages that fix it."""

    vuln_id: str
    packages: list[str]


# --- purls ------------------------------------------------------------------------------------


def _pct(text: str) -> str:
    # quote() never encodes letters, digits and '_.-~'; the purl spec adds ':'.
    return quote(text, safe=":")


def _purl(
    ptype: str,
    namespace: str | None,
    name: str,
    version: str | None,
    qualifiers: Mapping[str, str | None],
) -> str:
    out = f"pkg:{ptype}/"
    if namespace:
        out += "/".join(_pct(seg) for seg in namespace.split("/") if seg) + "/"
    out += _pct(name)
    if version:
        out += "@" + _pct(version)
    quals = sorted((k.lower(), v) for k, v in qualifiers.items() if v)
    if quals:
        out += "?" + "&".join(f"{k}={_pct(v)}" for k, v in quals)
    return out


def oci_purl(
    repository: str,
    digest: str,
    tag: str | None = None,
    arch: str | None = None,
    name: str | None = None,
) -> str:
    """pkg:oci/NAME@DIGEST?arch=..&repository_url=..&tag=.. for an image.

    repository is registry/path (e.g. "registry.example:5000/team/app"); NAME is its last path
    segment, lower-cased, unless given. An empty repository (an OCI layout, an archive) gives a
    purl without repository_url, so then pass name.
    """
    purl_name = (name or repository.rstrip("/").rsplit("/", 1)[-1]).lower()
    if not purl_name:
        raise ValueError("an OCI purl needs a repository or a name")
    if not digest:
        raise ValueError("an OCI purl needs the image digest")
    return _purl(
        "oci",
        None,
        purl_name,
        digest,
        {"arch": arch, "repository_url": repository or None, "tag": tag},
    )


def _distro(distro_id: str, distro_version: str | None) -> str:
    return f"{distro_id}-{distro_version}" if distro_version else distro_id


def deb_purl(
    distro_id: str, name: str, version: str, arch: str | None, distro_version: str | None
) -> str:
    """pkg:deb/debian/openssl@3.0.15-1~deb12u1?arch=amd64&distro=debian-12"""
    ns = distro_id.lower()
    return _purl("deb", ns, name, version, {"arch": arch, "distro": _distro(ns, distro_version)})


def apk_purl(
    distro_id: str, name: str, version: str, arch: str | None, distro_version: str | None
) -> str:
    """pkg:apk/alpine/musl@1.2.5-r9?arch=x86_64&distro=alpine-3.21.3"""
    ns = distro_id.lower()
    return _purl("apk", ns, name, version, {"arch": arch, "distro": _distro(ns, distro_version)})


def rpm_purl(
    distro_id: str, name: str, version: str, arch: str | None, distro_version: str | None
) -> str:
    """pkg:rpm/rocky/openssl-libs@1.1.1k-5.el8_5?arch=x86_64&distro=rocky-8.5&epoch=1

    The purl rpm type keeps the epoch in a qualifier, not in the version.
    """
    ns = distro_id.lower()
    epoch, sep, rest = version.partition(":")
    if sep and epoch.isdigit():
        version = rest
    else:
        epoch = ""
    return _purl(
        "rpm",
        ns,
        name,
        version,
        {"arch": arch, "distro": _distro(ns, distro_version), "epoch": epoch or None},
    )


_PURL_BUILDERS = {"deb": deb_purl, "apk": apk_purl, "rpm": rpm_purl}


def package_purl(
    ecosystem: str,
    distro_id: str,
    name: str,
    version: str,
    arch: str | None,
    distro_version: str | None,
) -> str:
    """The purl of an OS package of ecosystem 'deb', 'apk' or 'rpm'."""
    try:
        build = _PURL_BUILDERS[ecosystem]
    except KeyError:
        raise ValueError(f"no purl type for package ecosystem {ecosystem!r}") from None
    return build(distro_id, name, version, arch, distro_version)


# --- documents --------------------------------------------------------------------------------


def fixed_vulns(updated: Iterable[tuple[PackageUpdate, str]]) -> list[FixedVuln]:
    """Group (update applied, purl of the package now installed) pairs by vulnerability ID."""
    by_vuln: dict[str, set[str]] = {}
    for update, purl in updated:
        for vuln_id in update.vulnerability_ids:
            by_vuln.setdefault(vuln_id, set()).add(purl)
    return [FixedVuln(v, sorted(p)) for v, p in sorted(by_vuln.items())]


def _timestamp(timestamp: str | None) -> str:
    if timestamp:
        return timestamp
    # Reproducible builds convention: a fixed clock when SOURCE_DATE_EPOCH is set.
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    when = datetime.fromtimestamp(int(epoch), UTC) if epoch.isdigit() else datetime.now(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _vulnerability(vuln_id: str) -> dict[str, str]:
    for prefix, page in _VULN_PAGES.items():
        if vuln_id.startswith(prefix):
            return {"@id": page + vuln_id, "name": vuln_id}
    return {"name": vuln_id}


def build_vex(
    image_purl: str,
    fixed: list[FixedVuln],
    author: str = "ocipatch",
    timestamp: str | None = None,
) -> dict[str, Any]:
    """An OpenVEX 0.2.0 document with one "fixed" statement per vulnerability.

    timestamp is RFC 3339 (e.g. "2024-05-01T12:00:00Z"); without it SOURCE_DATE_EPOCH or the
    current time is used. The schema needs at least one statement: with nothing fixed there is
    no VEX document to write, and ValueError says so.
    """
    merged: dict[str, set[str]] = {}
    for item in fixed:
        if not item.vuln_id:
            raise ValueError("a fixed vulnerability needs an ID")
        merged.setdefault(item.vuln_id, set()).update(item.packages)
    if not merged:
        raise ValueError("no fixed vulnerabilities: an OpenVEX document needs one statement")
    statements: list[dict[str, Any]] = []
    for vuln_id in sorted(merged):
        product: dict[str, Any] = {"@id": image_purl}
        if merged[vuln_id]:
            product["subcomponents"] = [{"@id": p} for p in sorted(merged[vuln_id])]
        statements.append(
            {"vulnerability": _vulnerability(vuln_id), "products": [product], "status": "fixed"}
        )
    body: dict[str, Any] = {
        "@context": OPENVEX_CONTEXT,
        "author": author,
        "timestamp": _timestamp(timestamp),
        "version": 1,
        "tooling": "ocipatch",
        "statements": statements,
    }
    digest = hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    doc: dict[str, Any] = {"@context": OPENVEX_CONTEXT, "@id": _DOC_ID_PREFIX + digest}
    doc.update((k, v) for k, v in body.items() if k != "@context")
    return doc


def vex_json(doc: Mapping[str, Any]) -> str:
    """The document as written to a file: indented JSON, key order as built, final newline."""
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
