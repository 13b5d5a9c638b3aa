"""Peak memory of `ocipatch inspect` and `ocipatch copy` on a >= 1 GB image (a measurement
script, not a test): builds a synthetic Debian-looking image with 1.1 GB of incompressible
layers, pushes it to a throwaway local registry, and runs each command under /usr/bin/time.

    .venv/bin/python -m tools.memcheck [--size-mb 1100]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ocipatch.fs.changes import Change
from ocipatch.fs.layerwriter import write_layer
from ocipatch.oci import mediatypes as mt
from ocipatch.oci.digest import sha256_bytes
from ocipatch.oci.layout import LayoutDestination
from ocipatch.oci.types import Descriptor

ROOT = Path(__file__).resolve().parents[1]
OCIPATCH = [str(ROOT / ".venv/bin/python"), "-m", "ocipatch"]
STATUS = "".join(
    f"Package: pkg{i}\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.{i}-1\n\n"
    for i in range(200)
)


def _big_file(path: Path, size: int) -> None:
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 1 << 22)
            f.write(os.urandom(n))
            left -= n


def build(layout: Path, work: Path, size_mb: int) -> None:
    """Three layers: two big ones (gzip level 1 and zstd) and a small top one with the dpkg
    database, so inspect must index the big ones but read only the top one."""
    dest = LayoutDestination(layout, "big")
    descs, diff_ids = [], []
    per_layer = size_mb // 2
    for i, comp in enumerate(("gzip", "zstd")):
        files = []
        for j in range(per_layer // 50):
            p = work / f"l{i}f{j}"
            _big_file(p, 50 << 20)
            files.append(Change.file(f"data/layer{i}/blob{j:03d}.bin", p))
        out = work / f"layer{i}"
        with out.open("wb") as f:
            info = write_layer(
                [Change.dir("data"), Change.dir(f"data/layer{i}"), *files],
                f,
                comp,
                clamp_mtime=0,
                level=1,
            )
        for c in files:
            assert isinstance(c.source, Path)
            c.source.unlink()
        media = mt.OCI_LAYER_GZIP if comp == "gzip" else mt.OCI_LAYER_ZSTD
        desc = Descriptor(media, info.digest, info.size)
        dest.put_blob(desc, lambda o=out: o.open("rb"))  # type: ignore[misc]
        out.unlink()
        descs.append(desc)
        diff_ids.append(info.diff_id)
    top = work / "top"
    with top.open("wb") as f:
        info = write_layer(
            [
                Change.dir("etc"),
                Change.file("etc/os-release", b'ID=debian\nVERSION_ID="12"\n'),
                Change.dir("var"),
                Change.dir("var/lib"),
                Change.dir("var/lib/dpkg"),
                Change.file("var/lib/dpkg/status", STATUS.encode()),
            ],
            f,
            "gzip",
            clamp_mtime=0,
        )
    desc = Descriptor(mt.OCI_LAYER_GZIP, info.digest, info.size)
    dest.put_blob(desc, lambda: top.open("rb"))
    descs.append(desc)
    diff_ids.append(info.diff_id)
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    ).encode()
    cdesc = Descriptor(mt.OCI_CONFIG, sha256_bytes(config), len(config))
    dest.put_blob(cdesc, lambda: io.BytesIO(config))
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": cdesc.to_json(),
            "layers": [d.to_json() for d in descs],
        }
    ).encode()
    dest.put_root(manifest, mt.OCI_MANIFEST, sha256_bytes(manifest))


def measure(args: list[str]) -> tuple[float, int]:
    """(seconds, peak RSS in MB) of one command."""
    start = time.monotonic()
    r = subprocess.run(["/usr/bin/time", "-v", *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{r.stderr[-2000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    return time.monotonic() - start, int(m.group(1)) // 1024 if m else -1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--size-mb", type=int, default=1100)
    args = p.parse_args()
    if not Path("/usr/bin/time").exists():
        sys.exit("needs /usr/bin/time (apt-get install time)")
    work = Path(tempfile.mkdtemp(prefix="ocipatch-memcheck-"))
    port = 5000 + os.getpid() % 1000
    reg = [sys.executable, str(ROOT / "tools/registry")]
    try:
        layout = work / "layout"
        t0 = time.monotonic()
        build(layout, work, args.size_mb)
        size = sum(f.stat().st_size for f in (layout / "blobs/sha256").iterdir())
        print(f"built {size / 1e9:.2f} GB image in {time.monotonic() - t0:.0f}s")
        subprocess.run(
            [*reg, "start", "--port", str(port), "--dir", str(work / "registry")],
            check=True,
            capture_output=True,
        )
        host = f"127.0.0.1:{port}"
        cache = str(work / "cache")
        rows = [
            (
                "copy oci: -> registry",
                [*OCIPATCH, "copy", f"oci:{layout}:big", f"{host}/mem/big:1", "--cache-dir", cache],
            ),
            (
                "inspect registry (cold cache)",
                [*OCIPATCH, "inspect", "--json", f"{host}/mem/big:1", "--cache-dir", cache],
            ),
            (
                "inspect registry (warm cache)",
                [*OCIPATCH, "inspect", "--json", f"{host}/mem/big:1", "--cache-dir", cache],
            ),
            (
                "copy registry -> other repo (mount)",
                [
                    *OCIPATCH,
                    "copy",
                    f"{host}/mem/big:1",
                    f"{host}/mem/other:1",
                    "--cache-dir",
                    cache,
                ],
            ),
            (
                "copy registry -> oci-archive",
                [
                    *OCIPATCH,
                    "copy",
                    f"{host}/mem/big:1",
                    f"oci-archive:{work}/big.tar",
                    "--cache-dir",
                    cache,
                ],
            ),
            (
                "copy registry -> docker-archive",
                [
                    *OCIPATCH,
                    "copy",
                    f"{host}/mem/big:1",
                    f"docker-archive:{work}/big-d.tar:mem/big:1",
                    "--cache-dir",
                    cache,
                ],
            ),
        ]
        print(f"{'operation':40} {'seconds':>8} {'peak RSS MB':>12}")
        for name, cmd in rows:
            secs, rss = measure(cmd)
            print(f"{name:40} {secs:8.1f} {rss:12d}")
    finally:
        subprocess.run(
            [*reg, "stop", "--dir", str(work / "registry"), "--purge"], capture_output=True
        )
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
