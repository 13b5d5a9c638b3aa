"""Build Debian 12 test images from the Debian archive, with ocipatch's own layer writer.

- one layer: a mmdebstrap minbase of bookworm main (so packages lag bookworm-security);
- two layers (--upper pkg,pkg): the same base, and above it the packages a second mmdebstrap
  run added, diffed file by file (dpkg's status then lives in the upper layer).

The image's apt sources list bookworm, bookworm-updates and bookworm-security like the
official image, taken from this machine's apt configuration. Results are OCI layouts cached
under ~/.cache/ocipatch-tests keyed by every input; building needs root (mmdebstrap).

    python -m tools.build_image [--upper openssl,curl] [--arch arm64] OUT_LAYOUT[:TAG]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from ocipatch.fs.changes import Change, Snapshot, diff, snapshot
from ocipatch.fs.layerwriter import write_layer
from ocipatch.fs.unpack import OwnershipMap, unpack
from ocipatch.oci import mediatypes as mt
from ocipatch.oci.digest import sha256_bytes
from ocipatch.oci.layout import LayoutDestination
from ocipatch.oci.types import Descriptor
from tools.debian_rootfs import CACHE_DIR, DEFAULT_EPOCH, archive_sources, build_rootfs_tarball

SUITE = "bookworm"
CREATED = "2023-11-14T22:13:20Z"  # DEFAULT_EPOCH as RFC 3339


class TarballLayer:
    """A plain rootfs tarball seen as a layer (ocipatch.fs.merged.TarLayer)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.digest = "sha256:" + hashlib.sha256(str(path).encode()).hexdigest()

    def open_tar(self) -> BinaryIO:
        return self.path.open("rb")


def image_sources() -> bytes:
    """The image's own apt sources: all three suites, like the official debian:12 image."""
    return archive_sources(SUITE, updates=True).encode()


def _unpack_tarball(tarball: Path, dest: Path) -> OwnershipMap:
    own = unpack([TarballLayer(tarball)], dest)
    # Like the official image: deb822 sources with -updates and -security, nothing else.
    for old in ("etc/apt/sources.list",):
        (dest / old).unlink(missing_ok=True)
        own.pop(old)
    srcdir = dest / "etc/apt/sources.list.d"
    for p in list(srcdir.iterdir()) if srcdir.is_dir() else []:
        p.unlink()
        own.pop(f"etc/apt/sources.list.d/{p.name}")
    srcdir.mkdir(parents=True, exist_ok=True)
    (srcdir / "debian.sources").write_bytes(image_sources())
    return own


def _all_changes(root: Path, own: OwnershipMap) -> list[Change]:
    return diff(Snapshot(root, {}, own), root, ownership=own)


def _write(changes: list[Change], work: Path) -> tuple[Descriptor, str, Path]:
    tmp = work / "layer.tmp"
    with tmp.open("wb") as out:
        info = write_layer(changes, out, "gzip", clamp_mtime=DEFAULT_EPOCH)
    final = work / info.digest.split(":")[1]
    tmp.rename(final)
    return Descriptor(mt.OCI_LAYER_GZIP, info.digest, info.size), info.diff_id, final


def build_debian_image(
    out: Path,
    tag: str = "latest",
    *,
    upper: Sequence[str] = (),
    arch: str | None = None,
    base_include: Sequence[str] = (),
) -> Path:
    """Write (or reuse) an OCI layout at out with the image tagged tag; returns out."""
    base_tar = build_rootfs_tarball(SUITE, arch=arch, include=base_include)
    layers_tars = [base_tar]
    if upper:
        layers_tars.append(build_rootfs_tarball(SUITE, arch=arch, include=[*base_include, *upper]))
    key = hashlib.sha256(
        json.dumps([str(t) for t in layers_tars] + [image_sources().decode(), "v1"]).encode()
    ).hexdigest()[:16]
    cached = CACHE_DIR / f"image-{key}"
    if not (cached / "index.json").exists():
        _build(cached, layers_tars, arch)
    return copy_cached_layout(cached, out, tag)


def copy_cached_layout(cached: Path, out: Path, tag: str) -> Path:
    """Copy a cached one-image layout (tagged "latest") to out, tagged `tag`."""
    if out.resolve() != cached.resolve():
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(cached, out)
    if tag != "latest":
        index = json.loads((out / "index.json").read_text())
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] = tag
        (out / "index.json").write_text(json.dumps(index, indent=2))
    return out


def _build(target: Path, tarballs: list[Path], arch: str | None) -> None:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-image-", dir=CACHE_DIR) as tmp:
        work = Path(tmp)
        base_root = work / "base"
        own = _unpack_tarball(tarballs[0], base_root)
        layers = [_write(_all_changes(base_root, own), work)]
        if len(tarballs) > 1:
            snap = snapshot(base_root, own)
            upper_root = work / "upper"
            upper_own = _unpack_tarball(tarballs[1], upper_root)
            layers.append(_write(diff(snap, upper_root, ownership=upper_own), work))
        arch_name = arch or _host_arch(base_root)
        config = {
            "created": CREATED,
            "architecture": arch_name,
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["bash"],
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id, _ in layers]},
            "history": [
                {"created": CREATED, "created_by": f"mmdebstrap {SUITE} minbase"},
                *(
                    [{"created": CREATED, "created_by": "apt-get install (upper layer)"}]
                    if len(layers) > 1
                    else []
                ),
            ],
        }
        config_bytes = json.dumps(config, separators=(",", ":")).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {
                "mediaType": mt.OCI_CONFIG,
                "digest": sha256_bytes(config_bytes),
                "size": len(config_bytes),
            },
            "layers": [desc.to_json() for desc, _, _ in layers],
        }
        manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode()
        staging = work / "layout"
        dest = LayoutDestination(staging, "latest")
        for desc, _, path in layers:
            dest.put_blob(desc, lambda p=path: p.open("rb"))  # type: ignore[misc]
        dest.put_blob(
            Descriptor(mt.OCI_CONFIG, sha256_bytes(config_bytes), len(config_bytes)),
            lambda: io.BytesIO(config_bytes),
        )
        dest.put_root(manifest_bytes, mt.OCI_MANIFEST, sha256_bytes(manifest_bytes))
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(staging), target)


def _host_arch(root: Path) -> str:
    # dpkg's architecture names are the OCI ones for amd64/arm64, the cases we build.
    arch_file = root / "var/lib/dpkg/arch"
    if arch_file.exists():
        return arch_file.read_text().split()[0]
    import subprocess

    return subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build a Debian 12 test image as an OCI layout.")
    p.add_argument("out", help="OUT_DIR[:TAG]")
    p.add_argument("--upper", default="", help="packages of a second layer, comma separated")
    p.add_argument("--arch", default=None)
    args = p.parse_args(argv)
    out, _, tag = args.out.partition(":")
    upper = [x for x in args.upper.split(",") if x]
    print(build_debian_image(Path(out), tag or "latest", upper=upper, arch=args.arch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
