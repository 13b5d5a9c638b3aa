"""With OCIPATCH_FUZZ_STATS=FILE, write per target the inputs tried and the tests that failed
(tools/fuzz reads it). Profiles are registered in tests/fuzz/budget.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.fuzz.budget import TRIED

_FAILED: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed and report.when == "call":
        _FAILED.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    out = os.environ.get("OCIPATCH_FUZZ_STATS")
    if out:
        doc = {"tried": dict(TRIED), "failed": _FAILED}
        Path(out).write_text(json.dumps(doc, indent=1) + "\n")
