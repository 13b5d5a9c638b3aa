"""What registry faults cost (issue #9): the time a 3 s registry outage adds to `ocipatch copy`,
and the requests and bytes sent again after an upload is cut mid-blob (restart) or a chunk is
refused (resume). Uses the test registry and fault proxy of tests/plugins/registry.py.

    PYTHONPATH=. .venv/bin/python -m tools.measure_retry [--rounds N] [--mib M]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO

from ocipatch.oci.remote import RegistryClient, RegistryOptions
from tests.plugins.registry import Layout, Proxy, RegistryServer, make_oci_layout

_CASES: list[tuple[str, RegistryOptions, dict[str, Any]]] = [
    (
        "one PATCH, cut after 8 MiB (distribution voids the session: restart)",
        RegistryOptions(),
        {"fault": "cut", "match": r"^PATCH ", "cut_after": 8 << 20},
    ),
    (
        "8 MiB chunks, cut 1 MiB into chunk 2 (restart)",
        RegistryOptions(chunk_size=8 << 20),
        {"fault": "cut", "match": r"^PATCH ", "after": 1, "cut_after": 1 << 20},
    ),
    (
        "8 MiB chunks, chunk 2 refused during a 1 s outage (resume)",
        RegistryOptions(chunk_size=8 << 20),
        {"fault": "down", "match": r"^PATCH ", "after": 1, "down_for": 1.0},
    ),
]


def _copy(layout: Layout, host: str, cache: Path) -> float:
    start = time.monotonic()
    dest = f"{host}/measure/r-{secrets.token_hex(3)}:t"
    args = ["copy", f"oci:{layout.path}:v1", dest, "--cache-dir", str(cache)]
    r = subprocess.run(
        [sys.executable, "-m", "ocipatch", *args],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "OCIPATCH_REGISTRY_RETRY"},
    )
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    return time.monotonic() - start


def outage(layout: Layout, upstream: tuple[str, int], rounds: int, cache: Path) -> None:
    for i in range(rounds):
        clean = Proxy(upstream)
        t_clean = _copy(layout, clean.host, cache)
        clean.close()
        down = Proxy(upstream, "down", 1, r"^PATCH ", down_for=3.0)
        t_down = _copy(layout, down.host, cache)
        down.close()
        print(
            f"outage run {i}: clean {t_clean:.2f}s, 3 s outage at the layer PATCH "
            f"{t_down:.2f}s: adds {t_down - t_clean:.2f}s"
        )


def cuts(layout: Layout, upstream: tuple[str, int]) -> None:
    size = layout.layer.size

    def opener() -> BinaryIO:
        return (layout.path / "blobs/sha256" / layout.layer.digest.split(":")[1]).open("rb")

    for label, opts, fault in _CASES:
        proxy = Proxy(upstream, **fault)
        client = RegistryClient(proxy.host, opts)
        start = time.monotonic()
        client.push_blob(f"measure/cut-{secrets.token_hex(3)}", layout.layer.digest, size, opener)
        took = time.monotonic() - start
        reqs = proxy.requests()
        sent = sum(r.body for r in reqs if r.method in ("PATCH", "PUT"))
        trace = " ".join(r.method + ("!" if r.fault else "") for r in reqs)
        print(
            f"{label}: blob {size} B, body bytes sent {sent} (again: {sent - size}), "
            f"{len(reqs)} requests ({trace}), {took:.2f}s"
        )
        proxy.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mib", type=int, default=20, help="size of the test layer")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ocipatch-measure-retry-"))
    server = RegistryServer(work / "registry").start()
    try:
        files = {"big.bin": secrets.token_bytes(args.mib << 20)}
        layout = make_oci_layout(work / "layout", "v1", files)
        upstream = ("127.0.0.1", server.port)
        outage(layout, upstream, args.rounds, work / "cache")
        cuts(layout, upstream)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
