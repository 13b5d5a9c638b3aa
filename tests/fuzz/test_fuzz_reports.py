"""Fuzzing scanner reports: Trivy and copa-native JSON, as decoded documents and as raw bytes.

Property: load_report/parse_report return an UpdateManifest or raise an OcipatchError (a
ReportError, or UnsupportedError for an OS family ocipatch does not know)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from ocipatch.errors import OcipatchError
from ocipatch.reports.load import load_report, parse_report
from ocipatch.reports.model import UpdateManifest
from tests.fuzz.budget import counted, dumps, fuzz_settings, mutated_bytes, mutated_json

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path("/work/shared/scanner-reports")


def _seed_files() -> list[Path]:
    files = sorted((ROOT / "fixtures" / "reports").glob("*.json"))
    if SHARED.is_dir():
        files += sorted(p for p in SHARED.iterdir() if ".json" in p.name)
    return files


SEED_BYTES = [p.read_bytes() for p in _seed_files()]
SEED_DOCS: list[Any] = [json.loads(b) for b in SEED_BYTES]
_TMP = Path(tempfile.mkdtemp(prefix="ocipatch-fuzz-reports-"))


def check_parse(doc: Any) -> None:
    try:
        manifest = parse_report(doc, "report")
    except OcipatchError:
        return
    assert isinstance(manifest, UpdateManifest)


def check_load(data: bytes) -> None:
    path = _TMP / "report.json"
    path.write_bytes(data)
    try:
        manifest = load_report(path)
    except OcipatchError as e:
        assert "\n" not in str(e).strip(), "an error is one line"
        return
    assert isinstance(manifest, UpdateManifest)


@fuzz_settings()
@given(mutated_json(SEED_DOCS))
@counted("reports (JSON documents)")
def test_parse_report_mutated_documents(doc: Any) -> None:
    check_parse(doc)


@fuzz_settings()
@given(mutated_json(SEED_DOCS).map(dumps) | mutated_bytes(SEED_BYTES) | st.binary(max_size=64))
@example(
    b'{"SchemaVersion": 2, "Metadata": {"OS": {"Family": "debian", "Name": ' + b"1" * 5000 + b"}}}"
)
@example(b"[" * 100_000)
@example(b"\xef\xbb\xbf" + b"{}")
@counted("reports (raw bytes)")
def test_load_report_raw_bytes(data: bytes) -> None:
    check_load(data)
