"""Does a destination resolve to the source? `patch` asks before any work, so that `-t` naming
the source, in any spelling, never replaces it unless the user passes --overwrite.

- Registries: the same normalised host (localhost, 127.0.0.0/8, ::1, 0.0.0.0 and names that
  resolve only to loopback are one host on one port; docker.io, index.docker.io and
  registry-1.docker.io are one), repository and tag. A source named by digest is also the destination when the destination tag names that
  digest now, or an index listing it: one GET of the tag answers that.
- OCI layouts: the same directory (by inode, so relative, absolute, `dir/` and symlinked
  spellings agree) and a destination that, read as a source, picks the source's entry.
- Archives: the same file whatever the tag, since writing an archive replaces the whole file.
  A file written over a source layout's index.json, oci-layout or blobs clashes too.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ocipatch.errors import ImageFormatError, NotFoundError, UsageError
from ocipatch.oci import mediatypes as mt
from ocipatch.oci.layout import REF_NAME, pick_entry, read_index
from ocipatch.oci.reference import ImageRef, check_tag
from ocipatch.oci.remote import RegistryOptions, split_host

FILE_TRANSPORTS = ("oci-archive", "docker-archive")
DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")
LOOPBACK = "loopback"

# The digests a registry tag names now (its root manifest first, then an index's children),
# or None when the tag does not exist.
TagLookup = Callable[[ImageRef], list[str] | None]


@dataclass(frozen=True)
class Clash:
    """The destination names the source: `why` for the message, `digest` what the destination
    names now when the check learned it (else the caller knows it: the source's digest)."""

    why: str
    digest: str | None = None
    tag: str | None = None  # an untagged layout destination replaces the entry of this tag

    def target(self, dest: ImageRef) -> ImageRef:
        """Where --overwrite writes: `oci:DIR` naming the layout's only image replaces that
        image's entry (its tag), rather than adding an untagged one beside it."""
        if self.tag and dest.transport == "oci" and dest.tag is None:
            return replace(dest, tag=self.tag)
        return dest


def guard(
    src: ImageRef,
    dest: ImageRef,
    options: RegistryOptions,
    *,
    overwrite: bool,
    option: str = "-t",
) -> Clash | None:
    """Refuse (UsageError) a destination that is the source unless `overwrite`; return the
    clash so the caller can report what was replaced."""
    check_destination(dest)
    clash = find_clash(src, dest, registry_lookup(options))
    if clash is not None and not overwrite:
        raise UsageError(
            f"the destination {dest} {clash.why}: pick another {option}, or pass --overwrite "
            "to replace it"
        )
    return clash


def check_output_file(path: Path, option: str, *images: ImageRef) -> None:
    """Another file the run writes (--vex) must not land on an image: an archive, or a layout's
    index.json, oci-layout or blobs."""
    for ref in images:
        if ref.transport in FILE_TRANSPORTS and same_path(str(path), ref.path):
            raise UsageError(f"{option} {path} is the image file {ref}: write it elsewhere")
        if ref.transport == "oci" and _in_layout(Path(ref.path), path):
            raise UsageError(f"{option} {path} is a file of the layout {ref}: write it elsewhere")


def check_destination(dest: ImageRef) -> None:
    """What makes a destination unwritable, found before any work rather than after it."""
    if dest.is_registry and dest.digest:
        raise UsageError(
            f"the destination {dest} names a digest: a destination is a tag, e.g. -t REPO:TAG"
        )
    if dest.tag is not None:
        if dest.transport == "docker-archive":
            check_tag(dest.tag.rpartition(":")[2], "destination tag")
        else:
            check_tag(dest.tag, "destination tag")
    path = Path(dest.path) if dest.path else None
    if path is None:
        return
    if dest.transport == "oci" and path.exists() and not path.is_dir():
        raise UsageError(f"the destination {dest}: {path} is a file, not a layout directory")
    if dest.transport in FILE_TRANSPORTS and path.is_dir():
        raise UsageError(f"the destination {dest}: {path} is a directory, not an archive file")


def find_clash(src: ImageRef, dest: ImageRef, lookup: TagLookup) -> Clash | None:
    if src.is_registry and dest.is_registry:
        return _registry_clash(src, dest, lookup)
    if src.transport in FILE_TRANSPORTS and dest.transport in FILE_TRANSPORTS:
        if same_path(src.path, dest.path):
            return Clash("is the source archive file (writing replaces the whole file)")
        return None
    if src.transport == "oci" and dest.transport == "oci":
        return _layout_clash(src, dest)
    if src.transport == "oci" and dest.transport in FILE_TRANSPORTS:
        return _inside_layout(src, dest)
    return None


# ---------------------------------------------------------------------------- registries


def registry_identity(registry: str) -> tuple[str, int]:
    """(host, port) with every spelling of one registry mapped to one value."""
    host, port = split_host(registry.strip().lower())
    host = host.rstrip(".")
    if host in DOCKER_HUB:
        return DOCKER_HUB[0], 443
    ip = _ip(host)
    if (
        host == "localhost"
        or host.endswith(".localhost")
        or (ip is not None and (ip.is_loopback or ip.is_unspecified))
    ):
        return LOOPBACK, port or 80  # loopback registries are spoken to in plain HTTP
    return (ip.compressed if ip is not None else host), port or 443


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        # inet_aton's short and numeric forms (127.1, 2130706433) reach the same address.
        if not re.fullmatch(r"[0-9a-fx.]+", host):
            return None
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def same_registry(a: str, b: str) -> bool:
    """Equal identities, or two names on one port that both resolve only to loopback addresses
    (a host name in /etc/hosts, ip6-localhost): asked only when all else already matches."""
    ia, ib = registry_identity(a), registry_identity(b)
    if ia == ib:
        return True
    return ia[1] == ib[1] and _resolves_to_loopback(ia[0]) and _resolves_to_loopback(ib[0])


def _resolves_to_loopback(host: str) -> bool:
    if host == LOOPBACK:
        return True
    if host == DOCKER_HUB[0] or _ip(host) is not None:
        return False
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    ips = {_ip(str(info[4][0]).split("%", 1)[0]) for info in infos}
    return bool(ips) and all(ip is not None and (ip.is_loopback or ip.is_unspecified) for ip in ips)


def same_repository(a: ImageRef, b: ImageRef) -> bool:
    return _repo(a) == _repo(b) and same_registry(a.registry, b.registry)


def _repo(ref: ImageRef) -> str:
    repo = ref.repository.lower()
    if registry_identity(ref.registry)[0] == DOCKER_HUB[0] and "/" not in repo:
        return f"library/{repo}"
    return repo


def _registry_clash(src: ImageRef, dest: ImageRef, lookup: TagLookup) -> Clash | None:
    if not dest.tag or (src.tag != dest.tag and not src.digest) or not same_repository(src, dest):
        return None
    # Asked through the source's spelling of the registry: the one known to answer.
    dest = replace(dest, registry=src.registry, repository=src.repository)
    if src.tag == dest.tag:
        named = lookup(dest) if src.digest else None  # the tag may have moved since
        return Clash(
            "is the source image (same registry, repository and tag)", named[0] if named else None
        )
    if not src.digest:
        return None
    named = lookup(dest)
    if named and src.digest in named:
        now = "names it" if named[0] == src.digest else f"names the index {named[0]} holding it"
        return Clash(f"is the source {src.digest} (tag {dest.tag} {now})", named[0])
    return None


def registry_lookup(options: RegistryOptions) -> TagLookup:
    """One GET of the tag: its digest, and an index's children."""

    def lookup(ref: ImageRef) -> list[str] | None:
        from ocipatch.oci.registry import client_for

        assert ref.tag is not None
        try:
            data, media_type, digest = client_for(ref.registry, options).get_manifest(
                ref.repository, ref.tag
            )
        except NotFoundError:
            return None
        return [digest, *_children(data, media_type)]

    return lookup


def _children(data: bytes, media_type: str) -> list[str]:
    if media_type not in mt.INDEXES:
        return []
    try:
        doc = json.loads(data)
    except ValueError:
        return []
    entries = doc.get("manifests") if isinstance(doc, dict) else None
    return [str(m.get("digest")) for m in entries or [] if isinstance(m, dict)]


# ---------------------------------------------------------------------------- files


def same_path(a: str, b: str) -> bool:
    """One file or directory, however spelled (relative, absolute, trailing '/', symlink,
    hard link); for paths that do not exist yet, the same resolved name."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _layout_clash(src: ImageRef, dest: ImageRef) -> Clash | None:
    if not same_path(src.path, dest.path):
        return None
    what = f"oci:{src.path}"
    try:
        index = read_index(Path(src.path), what)
        source = pick_entry(index, src.tag, what)
    except (NotFoundError, ImageFormatError):
        return None  # the source cannot be read: opening it says why
    try:
        target = pick_entry(index, dest.tag, what)
    except NotFoundError:
        return None  # a new tag, or an untagged write beside several images
    if (target.digest, target.annotations.get(REF_NAME)) != (
        source.digest,
        source.annotations.get(REF_NAME),
    ):
        return None
    if dest.tag is None:
        why = "is the source image (the layout's only image)"
    else:
        why = f"is the source image (same layout directory, tag {dest.tag})"
    return Clash(why, source.digest, source.annotations.get(REF_NAME))


def _inside_layout(src: ImageRef, dest: ImageRef) -> Clash | None:
    if _in_layout(Path(src.path), Path(dest.path)):
        return Clash(f"is a file of the source layout {src.path}")
    return None


def _in_layout(layout: Path, path: Path) -> bool:
    root = Path(os.path.realpath(layout))
    target = Path(os.path.realpath(path))
    return target in (root / "index.json", root / "oci-layout") or target.is_relative_to(
        root / "blobs"
    )
