"""Small synthetic images for tests, written with tarfile/gzip/json directly (independently of
ocipatch's own writer) into OCI layouts."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass
class Entry:
    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    linkname: str = ""


def f(name: str, data: bytes | str = b"", mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(
        name, data.encode() if isinstance(data, str) else data, tarfile.REGTYPE, mode, uid, gid
    )


def d(name: str, mode: int = 0o755) -> Entry:
    return Entry(name, b"", tarfile.DIRTYPE, mode)


def sym(name: str, target: str) -> Entry:
    return Entry(name, b"", tarfile.SYMTYPE, 0o777, linkname=target)


def hard(name: str, target: str) -> Entry:
    return Entry(name, b"", tarfile.LNKTYPE, 0o644, linkname=target)


def tar_bytes(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type, info.mode, info.uid, info.gid = e.type, e.mode, e.uid, e.gid
            info.linkname, info.mtime = e.linkname, 1700000000
            if e.type == tarfile.REGTYPE:
                info.size = len(e.data)
                t.addfile(info, io.BytesIO(e.data))
            else:
                t.addfile(info)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Built:
    layout: Path
    manifest_digest: str
    root_digest: str
    layer_digests: list[str] = field(default_factory=list)
    diff_ids: list[str] = field(default_factory=list)


def _put(layout: Path, data: bytes) -> str:
    digest = sha(data)
    p = layout / "blobs" / "sha256" / digest.split(":")[1]
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return digest


def image_blobs(
    layout: Path,
    layers: list[list[Entry]],
    arch: str = "amd64",
    extra_config: dict[str, Any] | None = None,
) -> tuple[bytes, list[str], list[str]]:
    """Write layers and config into layout's blobs; return (manifest bytes, digests, diff_ids)."""
    descs, diff_ids, digests = [], [], []
    for entries in layers:
        raw = tar_bytes(entries)
        comp = gzip.compress(raw, mtime=0)
        digest = _put(layout, comp)
        descs.append({"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": len(comp)})
        diff_ids.append(sha(raw))
        digests.append(digest)
    config: dict[str, Any] = {
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
    }
    config.update(extra_config or {})
    cfg = json.dumps(config).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": _put(layout, cfg), "size": len(cfg)},
        "layers": descs,
    }
    return json.dumps(manifest).encode(), digests, diff_ids


def write_layout(
    layout: Path,
    layers: list[list[Entry]],
    tag: str = "latest",
    arch: str = "amd64",
    extra_config: dict[str, Any] | None = None,
) -> Built:
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    mbytes, digests, diff_ids = image_blobs(layout, layers, arch, extra_config)
    mdigest = _put(layout, mbytes)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": mdigest,
                "size": len(mbytes),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    return Built(layout, mdigest, mdigest, digests, diff_ids)


def write_multiarch_layout(
    layout: Path, per_arch: dict[str, list[list[Entry]]], tag: str = "latest"
) -> Built:
    """An OCI layout whose tag names an image index with one manifest per architecture."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    entries = []
    for arch, layers in per_arch.items():
        mbytes, _, _ = image_blobs(layout, layers, arch)
        entries.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": _put(layout, mbytes),
                "size": len(mbytes),
                "platform": {"os": "linux", "architecture": arch},
            }
        )
    ibytes = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    idigest = _put(layout, ibytes)
    (layout / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": OCI_INDEX,
                        "digest": idigest,
                        "size": len(ibytes),
                        "annotations": {"org.opencontainers.image.ref.name": tag},
                    }
                ],
            }
        )
    )
    return Built(layout, entries[0]["digest"], idigest)


DPKG_STATUS = """Package: base-files
Status: install ok installed
Priority: required
Architecture: amd64
Version: 12.4+deb12u5

Package: libssl3
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Source: openssl
Version: 3.0.11-1~deb12u2

Package: removed-one
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0-1

Package: tzdata
Status: install ok installed
Architecture: all
Version: 2024a-0+deb12u1
"""

OS_RELEASE = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n'
