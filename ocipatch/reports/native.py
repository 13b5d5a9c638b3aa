"""copa-compatible "native" update manifests (what copa scanner plugins print) -> UpdateManifest.

v1alpha1: {"apiVersion": "v1alpha1", "metadata": {"os": {"type", "version"}, "config": {"arch"}},
           "updates": [{"name", "installedVersion", "fixedVersion", "vulnerabilityID"}],
           "nodeUpdates": [...]}
v1alpha2: the same metadata plus config.variant; OS packages in "osupdates", language packages
          in "langupdates" (entries may carry "type" and "class").
copa reads these with Go's encoding/json, which matches keys case-insensitively, so
"osUpdates" and "osupdates" are the same key here too. A document without apiVersion but with
that shape (older copa test data) is read like v1alpha2.
"""

from __future__ import annotations

from typing import Any

from ocipatch.errors import ReportError
from ocipatch.reports.model import (
    ReportEntry,
    UpdateManifest,
    build_updates,
    ecosystem_for_os,
    normalize_family,
)

API_VERSIONS = ("v1alpha1", "v1alpha2")


def _get(obj: dict[str, Any], key: str) -> Any:
    """obj[key], falling back to a case-insensitive match as Go's encoding/json does."""
    if key in obj:
        return obj[key]
    lowered = key.lower()
    for k, v in obj.items():
        if k.lower() == lowered:
            return v
    return None


def _obj(parent: dict[str, Any], key: str, where: str, report: str) -> dict[str, Any]:
    value = _get(parent, key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ReportError(f"{report} is malformed: {where}{key} is not an object")
    return value


def _text(parent: dict[str, Any], key: str, where: str, report: str) -> str:
    value = _get(parent, key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ReportError(f"{report} is malformed: {where}{key} is not a string")
    return value.strip()


def _list(parent: dict[str, Any], key: str, report: str) -> list[dict[str, Any]]:
    value = _get(parent, key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ReportError(f"{report} is malformed: {key} is not a list of objects")
    return value


def looks_native(doc: dict[str, Any]) -> bool:
    """True for a document with an apiVersion, or with copa's metadata.os and an update list."""
    if _get(doc, "apiVersion") is not None:
        return True
    metadata = _get(doc, "metadata")
    has_updates = any(_get(doc, k) is not None for k in ("updates", "osupdates"))
    return isinstance(metadata, dict) and _get(metadata, "os") is not None and has_updates


def parse_native(doc: dict[str, Any], report: str = "report") -> UpdateManifest:
    """Convert a decoded native manifest; `report` names it in error messages."""
    api = _get(doc, "apiVersion")
    if api is not None and api not in API_VERSIONS:
        raise ReportError(
            f"{report} has apiVersion {api!r}; supported native report versions are "
            f"{', '.join(API_VERSIONS)}"
        )
    metadata = _obj(doc, "metadata", "", report)
    os_info = _obj(metadata, "os", "metadata.", report)
    config = _obj(metadata, "config", "metadata.", report)
    family = normalize_family(_text(os_info, "type", "metadata.os.", report))
    if not family:
        raise ReportError(f"{report} has no metadata.os.type: the report must name the OS")
    ecosystem = ecosystem_for_os(family)

    lang_keys: tuple[str, ...]
    if api == "v1alpha1":
        os_key, lang_keys = "updates", ("nodeUpdates",)
    else:
        # v1alpha2, or no apiVersion: accept either spelling of the OS list.
        os_key = "osupdates" if _get(doc, "osupdates") is not None else "updates"
        lang_keys = ("langupdates", "nodeUpdates")

    entries: list[ReportEntry] = []
    for i, item in enumerate(_list(doc, os_key, report)):
        where = f"{os_key}[{i}]."
        fixed = _text(item, "fixedVersion", where, report)
        if not fixed:
            continue
        name = _text(item, "name", where, report)
        installed = _text(item, "installedVersion", where, report)
        if not name or not installed:
            raise ReportError(
                f"{report} is malformed: {os_key}[{i}] has no name or installedVersion"
            )
        entries.append(
            ReportEntry(
                name=name,
                installed_version=installed,
                fixed_version=fixed,
                vulnerability_id=_text(item, "vulnerabilityID", where, report),
            )
        )
    lang_ignored = sum(
        1
        for key in lang_keys
        for item in _list(doc, key, report)
        if _text(item, "fixedVersion", f"{key}.", report)
    )
    return UpdateManifest(
        os_type=family,
        os_version=_text(os_info, "version", "metadata.os.", report),
        arch=_text(config, "arch", "metadata.config.", report),
        variant=_text(config, "variant", "metadata.config.", report) or None,
        updates=build_updates(entries, ecosystem, report),
        lang_updates_ignored=lang_ignored,
    )
