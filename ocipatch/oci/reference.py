"""Image references: registry names with Docker's defaults, and skopeo-style local transports.

- `debian` is `docker.io/library/debian:latest`; `host:5000/app:1.2`, `app@sha256:...` and
  `app:1.2@sha256:...` (tag kept for display, digest wins) work as in Docker.
- `docker://REF` is the same as a plain `REF`.
- `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`, `docker-archive:FILE[:NAME:TAG]` name local images,
  spelled as skopeo spells them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ocipatch.errors import UsageError

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
REGISTRY_TRANSPORT = "docker"
LOCAL_TRANSPORTS = ("oci", "oci-archive", "docker-archive")
# skopeo transports a user may type that ocipatch does not read: named so the error is clear.
_OTHER_TRANSPORTS = ("containers-storage", "dir", "docker-daemon", "ostree", "sif", "tarball")

# From the distribution reference grammar (distribution/reference/regexp.go), simplified to
# what a CLI user types: lowercase path components separated by '/', tag up to 128 chars.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
# The OCI distribution spec's tag grammar, ASCII only (\w would admit any Unicode letter).
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
# The NAME of a docker-archive's NAME:TAG: a repository, maybe with a registry host[:port].
_ARCHIVE_NAME = re.compile(rf"^(?:[A-Za-z0-9.-]+(?::\d+)?/)?{_COMPONENT}(?:/{_COMPONENT})*$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-fA-F0-9]{32,}$")
_HOST = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::\d+)?$"
)


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference. For registries: registry/repository:tag@digest. For local
    transports: `path` and an optional `tag` (OCI ref name, or docker-archive `name:tag`)."""

    transport: str
    registry: str = ""
    repository: str = ""
    tag: str | None = None
    digest: str | None = None
    path: str = ""

    @property
    def is_registry(self) -> bool:
        return self.transport == REGISTRY_TRANSPORT

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest when known, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def name(self) -> str:
        """registry/repository, the name used in purls and for display."""
        return f"{self.registry}/{self.repository}"

    def with_tag(self, tag: str) -> ImageRef:
        """This reference with another tag; a docker-archive's tag may be NAME:TAG."""
        archive = self.transport == "docker-archive"
        name, sep, bare = tag.rpartition(":") if archive else ("", "", tag)
        check_tag(bare)
        if sep and not _ARCHIVE_NAME.match(name):
            raise UsageError(f"invalid image name {name!r} in {tag!r}: use NAME:TAG, e.g. app:1.2")
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> ImageRef:
        return replace(self, digest=digest)

    def __str__(self) -> str:
        if self.is_registry:
            s = self.name
            if self.tag:
                s += f":{self.tag}"
            if self.digest:
                s += f"@{self.digest}"
            return s
        return f"{self.transport}:{self.path}" + (f":{self.tag}" if self.tag else "")


def is_valid_tag(tag: str) -> bool:
    return _TAG.fullmatch(tag) is not None


def check_tag(tag: str, what: str = "tag") -> None:
    if not is_valid_tag(tag):
        raise UsageError(
            f"invalid {what} {tag!r}: a tag is 1-128 of letters, digits, '_', '.', '-' "
            "and does not start with '.' or '-'"
        )


def parse_reference(text: str) -> ImageRef:
    """Parse what a user typed; raise UsageError with one line on anything malformed."""
    text = text.strip()
    if not text:
        raise UsageError("empty image reference: give e.g. registry.example/app:1.2 or oci:DIR:TAG")
    if text.startswith("docker://"):
        return _parse_registry(text[len("docker://") :], text)
    head, sep, rest = text.partition(":")
    if sep and head in LOCAL_TRANSPORTS:
        return _parse_local(head, rest, text)
    if sep and (head in _OTHER_TRANSPORTS or rest.startswith("//")):
        raise UsageError(
            f"unsupported transport {head!r} in {text!r}: use a registry reference, "
            "oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker-archive:FILE"
        )
    return _parse_registry(text, text)


def _parse_local(transport: str, rest: str, original: str) -> ImageRef:
    if not rest:
        raise UsageError(f"{original!r} names no path: use {transport}:PATH[:TAG]")
    if transport == "docker-archive":
        path, tag = _split_docker_archive(rest)
    else:
        path, tag = rest, None
        # The tag follows the last ':' unless that ':' is part of the path (e.g. a Windows drive
        # or a directory name); skopeo uses the same rule: a tag never contains '/'.
        if ":" in rest:
            p, _, t = rest.rpartition(":")
            if t and "/" not in t:
                path, tag = p, t
    if not path:
        raise UsageError(f"{original!r} names no path: use {transport}:PATH[:TAG]")
    return ImageRef(transport=transport, path=path, tag=tag)


def _split_docker_archive(rest: str) -> tuple[str, str | None]:
    """FILE[:NAME:TAG] split as skopeo does, at the first ':' (NAME may hold a registry's
    host:port); a lone word after FILE is a bare tag, a NAME with no tag gets `latest`."""
    path, sep, ref = rest.partition(":")
    if not sep or not ref:
        return path, None
    _name, colon, tag = ref.rpartition(":")
    if colon and "/" not in tag:
        return path, ref
    if "/" not in ref:
        return path, ref
    return path, f"{ref}:{DEFAULT_TAG}"


def _parse_registry(text: str, original: str) -> ImageRef:
    name, digest = text, None
    if "@" in text:
        name, _, digest = text.partition("@")
        if not _DIGEST.match(digest):
            raise UsageError(f"invalid digest in {original!r}: expected sha256:<64 hex digits>")
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, _, tag = name.rpartition(":")
        if not _TAG.fullmatch(tag):
            raise UsageError(f"invalid tag {tag!r} in {original!r}")
    parts = name.split("/", 1)
    if len(parts) == 2 and (
        "." in parts[0] or ":" in parts[0] or parts[0] == "localhost" or parts[0].startswith("[")
    ):
        registry, repository = parts
        port = re.search(r"(?<=[^:]:)\d+$", registry)
        if not _HOST.match(registry) or (port is not None and not 0 < int(port[0]) < 65536):
            raise UsageError(f"invalid registry host {registry!r} in {original!r}")
    else:
        registry, repository = DEFAULT_REGISTRY, name
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = f"library/{repository}"
    if not _REPO.match(repository):
        raise UsageError(
            f"invalid image reference {original!r}: repository names are lowercase letters, "
            "digits and separators, e.g. registry.example/team/app:1.2"
        )
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return ImageRef(
        transport=REGISTRY_TRANSPORT,
        registry=registry,
        repository=repository,
        tag=tag,
        digest=digest,
    )
