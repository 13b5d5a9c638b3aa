"""Trivy JSON reports (`trivy image --format json`, SchemaVersion 2) -> UpdateManifest.

Used fields: Metadata.OS {Family, Name}; Metadata.ImageConfig {architecture, variant} (the
image config, so GOARCH names); Results[] {Class, Type, Vulnerabilities[] {PkgName, SrcName,
InstalledVersion, FixedVersion, VulnerabilityID}}; the image's identity (ArtifactName,
Metadata.ImageID, RepoDigests, RepoTags, DiffIDs, ImageConfig labels) via reports.identity. Only `Class == "os-pkgs"` results become
updates; language-package findings are counted and left alone.
"""

from __future__ import annotations

from typing import Any

from ocipatch.errors import ReportError
from ocipatch.reports.identity import trivy_identity
from ocipatch.reports.model import (
    ReportEntry,
    UpdateManifest,
    build_updates,
    ecosystem_for_os,
    normalize_family,
)

SCHEMA_VERSION = 2


def _str_field(obj: dict[str, Any], key: str, where: str, report: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ReportError(f"{report} is malformed: {where}.{key} is not a string")
    return value


def _dict_field(obj: dict[str, Any], key: str, where: str, report: str) -> dict[str, Any] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ReportError(f"{report} is malformed: {where}.{key} is not an object")
    return value


def _list_field(obj: dict[str, Any], key: str, where: str, report: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ReportError(f"{report} is malformed: {where}.{key} is not a list")
    return value


def parse_trivy(doc: dict[str, Any], report: str = "report") -> UpdateManifest:
    """Convert a decoded Trivy JSON document; `report` names it in error messages."""
    schema = doc.get("SchemaVersion")
    if schema != SCHEMA_VERSION:
        raise ReportError(
            f"{report} has Trivy SchemaVersion {schema!r}; only SchemaVersion 2 is supported: "
            "re-scan with a current Trivy (`trivy image --format json -o report.json IMAGE`)"
        )
    metadata = _dict_field(doc, "Metadata", "", report) or {}
    os_info = _dict_field(metadata, "OS", "Metadata", report)
    family = normalize_family(_str_field(os_info or {}, "Family", "Metadata.OS", report))
    if not family:
        raise ReportError(
            f"{report} has no Metadata.OS: Trivy found no operating system in what it scanned; "
            "scan the container image itself (`trivy image --format json IMAGE`)"
        )
    os_version = _str_field(os_info or {}, "Name", "Metadata.OS", report).strip()
    config = _dict_field(metadata, "ImageConfig", "Metadata", report) or {}
    arch = _str_field(config, "architecture", "Metadata.ImageConfig", report).strip()
    variant = _str_field(config, "variant", "Metadata.ImageConfig", report).strip() or None
    ecosystem = ecosystem_for_os(family)

    entries: list[ReportEntry] = []
    lang_ignored = 0
    for i, result in enumerate(_list_field(doc, "Results", "", report)):
        where = f"Results[{i}]"
        if not isinstance(result, dict):
            raise ReportError(f"{report} is malformed: {where} is not an object")
        klass = _str_field(result, "Class", where, report)
        # Reports from before Trivy had Class mark OS results by Type == the OS family.
        is_os = klass == "os-pkgs" or (
            not klass and normalize_family(_str_field(result, "Type", where, report)) == family
        )
        for j, vuln in enumerate(_list_field(result, "Vulnerabilities", where, report)):
            vwhere = f"{where}.Vulnerabilities[{j}]"
            if not isinstance(vuln, dict):
                raise ReportError(f"{report} is malformed: {vwhere} is not an object")
            fixed = _str_field(vuln, "FixedVersion", vwhere, report).strip()
            if not is_os:
                if fixed:
                    lang_ignored += 1
                continue
            if not fixed:
                continue
            name = _str_field(vuln, "PkgName", vwhere, report).strip()
            installed = _str_field(vuln, "InstalledVersion", vwhere, report).strip()
            if not name or not installed:
                raise ReportError(
                    f"{report} is malformed: {vwhere} has no PkgName or InstalledVersion"
                )
            entries.append(
                ReportEntry(
                    name=name,
                    installed_version=installed,
                    fixed_version=fixed,
                    vulnerability_id=_str_field(vuln, "VulnerabilityID", vwhere, report).strip(),
                    source=_str_field(vuln, "SrcName", vwhere, report).strip() or None,
                )
            )
    return UpdateManifest(
        os_type=family,
        os_version=os_version,
        arch=arch,
        variant=variant,
        updates=build_updates(entries, ecosystem, report),
        lang_updates_ignored=lang_ignored,
        identity=trivy_identity(doc),
    )
