"""How long a registry operation keeps retrying: a time budget, not a count.

A registry that restarts, a load balancer that drops a connection, a 503 during a deploy: all
pass within seconds. Each operation (one request, one blob upload or download) that fails
transiently retries with exponential backoff and jitter until `total` seconds have passed
since its first failure; an upload or download that makes progress starts a fresh budget.
Retry-After is honoured within the budget. Never retried: 401/403, 404, integrity failures.
"""

from __future__ import annotations

import os
import random
import re
import time

from ocipatch.errors import UsageError

DEFAULT_RETRY_TIME = 30.0
ENV_RETRY_TIME = "OCIPATCH_REGISTRY_RETRY"
OPTION = "--registry-retry-time"
# Statuses that mean "try again": timeouts, rate limits, a proxy or registry (re)starting.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_BACKOFF = 2.0  # one sleep: a restarted registry is noticed within 2 s

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")


def parse_duration(text: str, what: str = OPTION) -> float:
    """'30' or '30s', '500ms', '2m', '1m30s' -> seconds; UsageError naming `what` otherwise."""
    s = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d*)?|\.\d+", s):
        return float(s)
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise UsageError(
            f"{what} {text!r}: not a duration (examples: 30s, 2m, 1m30s, 500ms, 0 for no retries)"
        )
    return total


def retry_time_from(option: str | None) -> float:
    """The budget: the option if given, else $OCIPATCH_REGISTRY_RETRY, else the default."""
    if option is not None:
        return parse_duration(option, OPTION)
    env = os.environ.get(ENV_RETRY_TIME, "").strip()
    return parse_duration(env, ENV_RETRY_TIME) if env else DEFAULT_RETRY_TIME


def format_duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Budget:
    """The retries of one operation. Call `wait()` after each transient failure."""

    def __init__(self, total: float, backoff: float) -> None:
        self.total = max(0.0, total)
        self.backoff = backoff
        self.failures = 0
        self.started: float | None = None  # first failure since the last progress
        self.first: float | None = None  # first failure of the operation
        self.refused_wait: float | None = None  # a Retry-After beyond the budget

    def wait(self, retry_after: float | None = None) -> bool:
        """Sleep before the next attempt and return True, or False when the budget is spent."""
        now = time.monotonic()
        if self.started is None:
            self.started = now
        if self.first is None:
            self.first = now
        self.failures += 1
        left = self.started + self.total - now
        if left <= 0:
            return False
        if retry_after is not None and retry_after > left:
            self.refused_wait = retry_after
            return False
        time.sleep(min(self._delay(retry_after), left))
        return True

    def progress(self) -> None:
        """The operation moved forward (bytes accepted): the next outage gets a whole budget."""
        self.started = None

    def _delay(self, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        base = min(self.backoff * (2.0 ** min(self.failures - 1, 30)), MAX_BACKOFF)
        return base / 2 + random.uniform(0, base / 2)  # equal jitter

    def spent(self) -> str:
        """How the retrying ended, for the error message: '..., retried for 30s (9 attempts)'."""
        if self.total <= 0:
            return f"not retried: {OPTION} is 0"
        tried = time.monotonic() - (self.first if self.first is not None else time.monotonic())
        attempts = f"{self.failures} attempt{'s' if self.failures != 1 else ''}"
        if self.refused_wait is not None:
            return (
                f"the registry asked to retry after {format_duration(self.refused_wait)}, "
                f"beyond the retry time of {format_duration(self.total)}; raise {OPTION}"
            )
        return (
            f"retried for {format_duration(tried)}, {attempts}; raise {OPTION} "
            f"(now {format_duration(self.total)}) to wait longer"
        )
