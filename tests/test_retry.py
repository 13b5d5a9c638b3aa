"""The retry budget's parsing and arithmetic (the registry behaviour: test_faults_registry.py)."""

from __future__ import annotations

import re
import time

import pytest

from ocipatch.errors import UsageError
from ocipatch.oci.retry import Budget, parse_duration, retry_time_from


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30.0),
        ("30s", 30.0),
        ("2.5", 2.5),
        ("500ms", 0.5),
        ("2m", 120.0),
        ("1.5m", 90.0),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        (" 45S ", 45.0),
        ("0", 0.0),
        ("0s", 0.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "x", "-1", "1d", "s", "30 s", "inf", "nan", "1m-5s", "ms"])
def test_bad_durations_name_the_option(text: str) -> None:
    with pytest.raises(UsageError, match="--registry-retry-time") as err:
        parse_duration(text)
    assert err.value.exit_code == 2


def test_option_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCIPATCH_REGISTRY_RETRY", "2m")
    assert retry_time_from(None) == 120.0
    assert retry_time_from("5s") == 5.0
    monkeypatch.setenv("OCIPATCH_REGISTRY_RETRY", "later")
    with pytest.raises(UsageError, match="OCIPATCH_REGISTRY_RETRY"):
        retry_time_from(None)
    monkeypatch.delenv("OCIPATCH_REGISTRY_RETRY")
    assert retry_time_from(None) == 30.0


def test_budget_is_time_since_the_first_failure() -> None:
    budget = Budget(0.3, backoff=0.05)
    start = time.monotonic()
    waits = 0
    while budget.wait():
        waits += 1
    took = time.monotonic() - start
    assert 0.3 <= took < 1.0 and waits >= 3
    assert re.search(r"retried for 0\.\ds, \d+ attempts", budget.spent())
    assert "--registry-retry-time" in budget.spent()


def test_progress_gives_a_fresh_budget() -> None:
    budget = Budget(0.2, backoff=0.05)
    assert budget.wait()
    time.sleep(0.25)
    budget.progress()
    assert budget.wait()  # without progress() the 0.2 s would be spent


def test_retry_after_beyond_the_budget_ends_at_once() -> None:
    budget = Budget(1.0, backoff=0.05)
    start = time.monotonic()
    assert not budget.wait(retry_after=60)
    assert time.monotonic() - start < 0.1
    assert "asked to retry after 1m00s" in budget.spent()


def test_zero_means_no_retries() -> None:
    budget = Budget(0, backoff=0.05)
    assert not budget.wait()
    assert "not retried" in budget.spent()
