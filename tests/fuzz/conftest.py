"""With OCIPATCH_FUZZ_STATS=FILE, write per target the inputs tried, the seconds spent and the
crashes found (tools/fuzz prints them). Profiles are registered in tests/fuzz/budget.py."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest

from tests.fuzz.budget import TARGET_OF, TRIED

_CRASHES: Counter[str] = Counter()
_SECONDS: Counter[str] = Counter()
_FAILED: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call":
        return
    target = TARGET_OF.get(report.nodeid.rsplit("::", 1)[-1], report.nodeid)
    _SECONDS[target] += report.duration  # generating, checking and shrinking inputs
    if report.failed:
        # Hypothesis reports each distinct bug with its own minimal failing example.
        found = len(re.findall(r"Falsifying example|Failing test case", report.longreprtext))
        _CRASHES[target] += max(1, found)
        _FAILED.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    out = os.environ.get("OCIPATCH_FUZZ_STATS")
    if out:
        doc = {
            "targets": {
                t: {"tried": TRIED[t], "crashes": _CRASHES[t], "seconds": round(_SECONDS[t], 1)}
                for t in sorted(set(TRIED) | set(_CRASHES))
            },
            "failed": _FAILED,
        }
        Path(out).write_text(json.dumps(doc, indent=1) + "\n")
