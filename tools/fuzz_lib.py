"""tools/fuzz: run tests/fuzz with the `fuzz-long` hypothesis profile (or one target under
atheris) and print, per target, the inputs tried, the crashes found and the time spent."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_hypothesis(examples: int, pytest_args: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="ocipatch-fuzz-") as tmp:
        stats = Path(tmp) / "stats.json"
        env = {
            **os.environ,
            "OCIPATCH_FUZZ_PROFILE": "fuzz-long",
            "OCIPATCH_FUZZ_EXAMPLES": str(examples),
            "OCIPATCH_FUZZ_STATS": str(stats),
        }
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore"]
        start = time.monotonic()
        rc = subprocess.run([*cmd, *(pytest_args or ["tests/fuzz"])], env=env, cwd=ROOT).returncode
        elapsed = time.monotonic() - start
        if not stats.is_file():
            print("tools/fuzz: pytest wrote no statistics (collection failed?)", file=sys.stderr)
            return rc or 1
        doc = json.loads(stats.read_text())
    print_table(doc["targets"], elapsed)
    for nodeid in doc["failed"]:
        print(f"crash: {nodeid} (its minimal failing input is in the pytest output above)")
    return rc


def print_table(targets: dict[str, dict[str, float]], elapsed: float) -> None:
    width = max([len(t) for t in targets] + [6])
    print(f"\n{'target':<{width}}  {'inputs':>8}  {'crashes':>7}  {'seconds':>8}")
    for name, row in sorted(targets.items()):
        print(f"{name:<{width}}  {row['tried']:>8}  {row['crashes']:>7}  {row['seconds']:>8.1f}")
    tried = sum(int(r["tried"]) for r in targets.values())
    crashes = sum(int(r["crashes"]) for r in targets.values())
    print(f"{'total':<{width}}  {tried:>8}  {crashes:>7}  {elapsed:>8.1f}")


def run_atheris(target: str, runs: int, extra: list[str]) -> int:
    """libFuzzer prints the inputs tried ("Done N runs") and, on a crash, the input and the
    traceback, and exits non-zero."""
    try:
        import atheris
    except ImportError:
        print(
            "tools/fuzz: atheris is not installed: .venv/bin/pip install atheris", file=sys.stderr
        )
        return 2
    from ocipatch.errors import OcipatchError
    from tests.fuzz.atheris_targets import TARGETS

    if target not in TARGETS:
        print(
            f"tools/fuzz: unknown target {target!r}: one of {', '.join(TARGETS)}", file=sys.stderr
        )
        return 2
    atheris.instrument_all()  # coverage feedback from everything loaded, ocipatch included
    check, seeds = TARGETS[target]
    corpus = Path(tempfile.mkdtemp(prefix=f"ocipatch-atheris-{target}-"))
    for i, seed in enumerate(seeds):
        (corpus / f"seed-{i}").write_bytes(seed)

    def one(data: bytes) -> None:
        with contextlib.suppress(OcipatchError):
            check(data)

    print(f"atheris: target {target}, corpus {corpus}, {runs} runs", flush=True)
    atheris.Setup([sys.argv[0], f"-runs={runs}", *extra, str(corpus)], one)
    atheris.Fuzz()  # does not return
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(prog="tools/fuzz", description=__doc__)
    ap.add_argument("--examples", type=int, default=5000, help="inputs per hypothesis target")
    ap.add_argument("--atheris", metavar="TARGET", help="fuzz one target with atheris instead")
    ap.add_argument("--runs", type=int, default=20000, help="atheris inputs (with --atheris)")
    args, rest = ap.parse_known_args()
    if args.atheris:
        return run_atheris(args.atheris, args.runs, rest)
    return run_hypothesis(args.examples, rest)


if __name__ == "__main__":
    sys.exit(main())
