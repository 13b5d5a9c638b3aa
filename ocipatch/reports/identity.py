"""Which image a report was made from, and whether that is the image being patched.

A report names its image in several ways; Trivy writes ArtifactName (the reference as the user
typed it, or a path for a tar or layout), Metadata.ImageID (the config digest, or the
manifest/index digest with Docker's containerd store), Metadata.RepoDigests
("repo@sha256:..."), Metadata.RepoTags, Metadata.DiffIDs (the layers) and Metadata.ImageConfig
(with the config's labels). copa's native manifests name no image.

The rule, strongest evidence first:

1. SAME: a digest the report carries equals the source's manifest, index or config digest, or
   the report lists exactly the source's layers (same DiffIDs: the same files, so the same
   packages, whatever the config says).
2. SAME_LINE: one of the two is an image ocipatch patched (labels dev.ocipatch.base.*) and the
   other is its original or another patch of that original: the original's digest (label)
   is among the other side's digests, or the base layers are equal.
3. OTHER: the report carries digests or layers and none of the above holds. A report of an
   earlier scan of the same repository:tag whose digest has moved on is another image.
4. No digests and no layers: the references decide, normalised (localhost = 127.0.0.1 = ::1,
   docker.io defaults, `latest`): equal repository and tag is SAME; the tag of an image
   ocipatch made from the reported one (`1.0-patched` for `1.0`) is SAME_LINE; another
   repository or tag is OTHER. A path (a scanned tar or layout) compared with a registry
   reference, or a report naming nothing, is UNKNOWN: no warning.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ocipatch.errors import ReportError, UsageError
from ocipatch.oci.reference import LOCAL_TRANSPORTS, ImageRef, parse_reference

BASE_DIGEST_LABEL = "dev.ocipatch.base.digest"
BASE_LAYERS_LABEL = "dev.ocipatch.base.layers"

_DIGEST = re.compile(r"^(sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128})$")
_BARE_ID = re.compile(r"^[0-9a-f]{64}$")
_LOOPBACK = {"localhost", "127.0.0.1", "::1", "[::1]"}
_DOCKER_HUB = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.xz", ".tar.bz2")


class Verdict(enum.Enum):
    SAME = "same"
    SAME_LINE = "same product line"
    OTHER = "another image"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ReportIdentity:
    """What a report says about the image it was made from (all optional)."""

    name: str = ""  # ArtifactName as written
    digests: frozenset[str] = frozenset()
    references: tuple[str, ...] = ()  # registry references without a digest
    paths: tuple[str, ...] = ()  # a scanned file or directory
    diff_ids: tuple[str, ...] = ()
    base_digest: str | None = None  # the report's image is an ocipatch patch of this one
    base_layers: int | None = None

    @property
    def empty(self) -> bool:
        return not (self.digests or self.references or self.paths or self.diff_ids)

    @property
    def base_diff_ids(self) -> tuple[str, ...]:
        """The layers below an ocipatch patch layer (all layers for any other image)."""
        n = self.base_layers
        if n is not None and 0 < n < len(self.diff_ids):
            return self.diff_ids[:n]
        return self.diff_ids


@dataclass(frozen=True)
class SourceIdentity:
    """The image being patched, as -i names it and as its manifest and config say."""

    ref: ImageRef
    digests: frozenset[str]  # manifest, index (when chosen from one), config
    diff_ids: tuple[str, ...]
    keep: int  # base layers: fewer than diff_ids when ocipatch made the image
    base_digest: str | None = None  # label of an image ocipatch made

    @property
    def patched(self) -> bool:
        return self.keep < len(self.diff_ids)

    @property
    def base_diff_ids(self) -> tuple[str, ...]:
        return self.diff_ids[: self.keep]


@dataclass(frozen=True)
class Match:
    verdict: Verdict
    why: str = ""  # what decided it, for messages


# --- reading a report's identity --------------------------------------------------------------


def normalize_digest(text: str) -> str | None:
    """'sha256:<hex>' in lower case; a bare 64-hex ID (as `docker images` shows) is sha256."""
    d = text.strip().lower()
    if _BARE_ID.match(d):
        d = f"sha256:{d}"
    return d if _DIGEST.match(d) else None


def _strings(value: Any) -> list[str]:
    """A string or a list of strings; anything else (malformed identity) is no evidence."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def looks_like_path(text: str) -> bool:
    """True for what Trivy writes when it scanned a file or directory (`--input`)."""
    t = text.strip()
    if t.startswith(("/", "./", "../", "~")) or t in (".", ".."):
        return True
    if any(t.startswith(f"{tr}:") for tr in LOCAL_TRANSPORTS):
        return True
    return t.lower().endswith(_ARCHIVE_SUFFIXES) or os.path.exists(t)


def _label(config: Any, key: str) -> str | None:
    if not isinstance(config, dict):
        return None
    inner = config.get("config")
    labels = inner.get("Labels") if isinstance(inner, dict) else None
    value = labels.get(key) if isinstance(labels, dict) else None
    return value.strip() if isinstance(value, str) and value.strip() else None


def _split_reference(text: str, digests: set[str], refs: list[str]) -> None:
    """A bare digest, `name@digest` or a plain reference, into digests or references."""
    if not text:
        return
    digest = normalize_digest(text)
    if digest is not None:
        digests.add(digest)
        return
    head, at, tail = text.rpartition("@")
    if at and (found := normalize_digest(tail)) is not None:
        digests.add(found)
        text = head
    if text:
        refs.append(text)


def trivy_identity(doc: Mapping[str, Any]) -> ReportIdentity:
    """The identity fields of a Trivy JSON report; malformed ones are ignored (no evidence)."""
    meta = doc.get("Metadata")
    meta = meta if isinstance(meta, dict) else {}
    name = doc.get("ArtifactName")
    name = name.strip() if isinstance(name, str) else ""
    digests: set[str] = set()
    refs: list[str] = []
    paths = [name] if name and looks_like_path(name) else []
    named = [] if paths or not name else [name]
    for text in [*_strings(meta.get("ImageID")), *_strings(meta.get("RepoDigests"))]:
        _split_reference(text.strip(), digests, [])  # digests only: no name to compare
    for text in [*_strings(meta.get("RepoTags")), *_strings(meta.get("Reference")), *named]:
        _split_reference(text.strip(), digests, refs)
    diff_ids = tuple(d for d in (normalize_digest(t) for t in _strings(meta.get("DiffIDs"))) if d)
    config = meta.get("ImageConfig")
    base = _label(config, BASE_DIGEST_LABEL)
    layers = _label(config, BASE_LAYERS_LABEL)
    return ReportIdentity(
        name=name,
        digests=frozenset(digests),
        references=tuple(dict.fromkeys(refs)),
        paths=tuple(paths),
        diff_ids=diff_ids,
        base_digest=normalize_digest(base) if base else None,
        base_layers=int(layers) if layers and layers.isdigit() else None,
    )


def source_identity(
    ref: ImageRef,
    manifest_digest: str,
    index_digest: str | None,
    config_digest: str,
    diff_ids: Sequence[str],
    keep: int,
    labels: Mapping[str, Any],
) -> SourceIdentity:
    digests = {d for d in (manifest_digest, index_digest, config_digest, ref.digest) if d}
    base = labels.get(BASE_DIGEST_LABEL) if keep < len(diff_ids) else None
    return SourceIdentity(
        ref=ref,
        digests=frozenset(d.lower() for d in digests),
        diff_ids=tuple(d.lower() for d in diff_ids),
        keep=keep,
        base_digest=normalize_digest(base) if isinstance(base, str) else None,
    )


# --- references -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Name:
    registry: str
    repository: str
    tag: str | None


def _host(registry: str) -> str:
    host, port = registry.lower(), ""
    if host.startswith("["):  # [::1]:5000
        inner, _, rest = host[1:].partition("]")
        host, port = inner, rest.lstrip(":")
    elif host.count(":") == 1:
        host, _, port = host.partition(":")
    if host in _LOOPBACK:
        host = "localhost"
    if host in _DOCKER_HUB:
        host = "docker.io"
    return f"{host}:{port}" if port else host


def _name(ref: ImageRef) -> _Name:
    registry = _host(ref.registry)
    repository = ref.repository.lower()
    if registry == "docker.io" and "/" not in repository:
        repository = f"library/{repository}"
    return _Name(registry, repository, ref.tag)


def _parse(text: str) -> _Name | None:
    try:
        ref = parse_reference(text)
    except UsageError:
        return None
    return _name(ref) if ref.is_registry else None


def _local_path(text: str) -> str:
    """The file or directory of a path, or of an `oci:DIR[:TAG]`-style reference."""
    if any(text.startswith(f"{t}:") for t in LOCAL_TRANSPORTS):
        try:
            return parse_reference(text).path
        except UsageError:
            return text
    return text


def _same_path(a: str, b: str) -> bool:
    def real(p: str) -> str:
        return os.path.realpath(os.path.expanduser(_local_path(p)))

    return real(a) == real(b)


def _by_reference(report: ReportIdentity, source: SourceIdentity) -> Match:
    if not source.ref.is_registry:
        if any(_same_path(p, source.ref.path) for p in report.paths):
            return Match(Verdict.SAME, f"the report names the same path {source.ref.path}")
        return Match(Verdict.UNKNOWN)
    names = [n for n in (_parse(r) for r in report.references) if n is not None]
    if not names:
        return Match(Verdict.UNKNOWN)
    src = _name(source.ref)
    for n in names:
        if (n.registry, n.repository) != (src.registry, src.repository):
            continue
        if n.tag is None or src.tag is None or n.tag == src.tag:
            return Match(Verdict.SAME, "same repository and tag")
        if source.patched and src.tag.startswith(f"{n.tag}-"):
            return Match(Verdict.SAME_LINE, f"{n.repository}:{n.tag} patched as :{src.tag}")
    return Match(Verdict.OTHER, "another repository or tag, and no digest to say otherwise")


# --- the rule ---------------------------------------------------------------------------------


def _same_line(report: ReportIdentity, source: SourceIdentity) -> str | None:
    """Why the two are one product line (original and ocipatch patches of it), or None."""
    if source.base_digest and source.base_digest in report.digests:
        return "the report is of the original this patched image was made from"
    if report.base_digest and report.base_digest in source.digests:
        return "the report is of an image ocipatch patched from this one"
    if report.base_digest and report.base_digest == source.base_digest:
        return "the report is of another patch of the same original"
    made = source.patched or report.base_diff_ids != report.diff_ids
    if made and report.diff_ids and report.base_diff_ids == source.base_diff_ids:
        return "the report's image and this one have the same base layers below a patch layer"
    return None


def match(report: ReportIdentity | None, source: SourceIdentity) -> Match:
    """How the report's image relates to the source image (module docstring: the rule)."""
    if report is None or report.empty:
        return Match(Verdict.UNKNOWN)
    common = report.digests & source.digests
    if common:
        return Match(Verdict.SAME, f"same digest {min(common)}")
    if report.diff_ids and report.diff_ids == source.diff_ids:
        return Match(Verdict.SAME, "same layers")
    line = _same_line(report, source)
    if line is not None:
        return Match(Verdict.SAME_LINE, line)
    if report.digests or report.diff_ids:
        return Match(Verdict.OTHER, "the digests differ")
    return _by_reference(report, source)


# --- what to say ------------------------------------------------------------------------------


def _short(digest: str) -> str:
    alg, _, hexpart = digest.partition(":")
    return f"{alg}:{hexpart[:12]}"


def describe(report: ReportIdentity) -> str:
    """The report's image in a few words: its name and a digest when it has them."""
    name = report.name or next(iter(report.references), "") or next(iter(report.paths), "")
    digest = next(iter(sorted(report.digests)), "")
    if name and digest and digest.split(":", 1)[1][:12] not in name:
        return f"{name} ({_short(digest)})"
    return name or (_short(digest) if digest else "an unnamed image")


def other_image_message(report: ReportIdentity, source: SourceIdentity, why: str) -> str:
    return (
        f"the report is about {describe(report)}, not {source.ref} ({why}): its fixed "
        "versions may not fit this image; scan this image and pass that report"
    )


def same_line_message(report: ReportIdentity, source: SourceIdentity, why: str) -> str:
    return (
        f"the report is about {describe(report)}, not {source.ref} itself: {why}; its fixes "
        "are checked against this image's packages"
    )


def refusal_message(report_path: str, report: ReportIdentity, source: SourceIdentity) -> str:
    return (
        f"report {report_path} is about another image ({describe(report)}) than {source.ref}: "
        "a VEX from it would state fixes for the wrong product; scan this image and pass "
        "that report, or add --force-report if it does describe this image"
    )


@dataclass(frozen=True)
class Assessment:
    """What a patch says about the report's image: a warning (another image) or a note (the
    same product line), or nothing."""

    warning: str | None = None
    note: str | None = None


def assess(
    report: ReportIdentity | None,
    source: SourceIdentity,
    *,
    report_path: str,
    vex: bool,
    force: bool,
) -> Assessment:
    """Raise ReportError when a VEX would be written from a report about another image (unless
    forced); otherwise the line to show, if any."""
    found = match(report, source)
    if report is None or found.verdict in (Verdict.SAME, Verdict.UNKNOWN):
        return Assessment()
    if found.verdict is Verdict.SAME_LINE:
        return Assessment(note=same_line_message(report, source, found.why))
    if vex and not force:
        raise ReportError(refusal_message(report_path, report, source))
    return Assessment(warning=other_image_message(report, source, found.why))
