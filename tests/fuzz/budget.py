"""The fuzzing budget (hypothesis profiles), input counters and the mutation strategies every
target shares.

Profiles: `fuzz-ci` (the default: ~200 inputs per target, what the test suite runs) and
`fuzz-long` (tools/fuzz). OCIPATCH_FUZZ_PROFILE picks one; OCIPATCH_FUZZ_EXAMPLES overrides the
number of inputs per target. The property of every target: the parser returns a value or raises
an `ocipatch.errors.OcipatchError` (the documented errors); anything else is a crash.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

CI_EXAMPLES = 200
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "fuzz-ci",
    max_examples=CI_EXAMPLES,
    deadline=None,
    suppress_health_check=_SLOW_OK,
    print_blob=True,
)
settings.register_profile(
    "fuzz-long",
    max_examples=20_000,
    deadline=None,
    suppress_health_check=_SLOW_OK,
    print_blob=True,
)


def fuzz_settings(scale: float = 1.0) -> settings:
    """The settings of one target; `scale` shrinks the budget of a slow one (gpgv, disk)."""
    base = settings.get_profile(os.environ.get("OCIPATCH_FUZZ_PROFILE", "fuzz-ci"))
    n = int(os.environ.get("OCIPATCH_FUZZ_EXAMPLES", "0") or 0) or base.max_examples
    return settings(base, max_examples=max(10, math.ceil(n * scale)))


# Inputs tried per target in this process, and the target of each test function (tools/fuzz
# prints them, through tests/fuzz/conftest.py).
TRIED: Counter[str] = Counter()
TARGET_OF: dict[str, str] = {}

F = TypeVar("F", bound=Callable[..., None])


def counted(target: str) -> Callable[[F], F]:
    """Count each input the wrapped test body sees under `target`."""

    def wrap(fn: F) -> F:
        TARGET_OF[fn.__name__] = target

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> None:
            TRIED[target] += 1
            fn(*args, **kwargs)

        return run  # type: ignore[return-value]

    return wrap


# -- bytes ---------------------------------------------------------------------------------------
@st.composite
def mutated_bytes(draw: st.DrawFn, seeds: list[bytes], max_ops: int = 6) -> bytes:
    """A seed with byte flips, overwrites, insertions, deletions and a truncation."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, max_ops))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "dup"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0, 0x0A, 0x20, 0x22, 0x2F, 0x3A, 0x7F, 0xFF, 0x80]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[pos:]
        elif op == "dup" and data:
            end = min(len(data), pos + draw(st.integers(1, 512)))
            data[pos:pos] = data[pos:end]
    return bytes(data)


@st.composite
def mutated_text(draw: st.DrawFn, seeds: list[str], max_ops: int = 4) -> str:
    """A seed with characters replaced, inserted or deleted (any Unicode, control chars too)."""
    text = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(0, max_ops))):
        op = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, len(text)))
        if op == "replace":
            text = text[:pos] + draw(st.characters()) + text[pos + 1 :]
        elif op == "insert":
            text = text[:pos] + draw(st.text(max_size=8)) + text[pos:]
        elif op == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 16)) :]
        else:
            text = text[:pos]
    return text


# -- JSON ---------------------------------------------------------------------------------------
HUGE = 10**400  # beyond any int64, beyond a float; json.loads still accepts its digits

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([HUGE, -HUGE, 2**63, -(2**63) - 1, 0, -1])
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["", " ", "\x00", "../../etc/passwd", "sha256:", "a" * 300])
)
junk_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every location in a JSON document, as key/index paths from the root (root included)."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _replace(doc: Any, path: tuple[Any, ...], fn: Callable[[Any], Any]) -> Any:
    if not path:
        return fn(doc)
    head, rest = path[0], path[1:]
    copy: Any = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[head] = _replace(doc[head], rest, fn)
    return copy


@st.composite
def mutated_json(draw: st.DrawFn, seeds: list[Any], max_ops: int = 4) -> Any:
    """A valid document with values swapped for junk of the wrong type, keys dropped or added,
    lists emptied or duplicated, strings changed: what a hand-edited or foreign file holds."""
    doc = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(1, max_ops))):
        path = draw(st.sampled_from(_paths(doc)))
        op = draw(st.sampled_from(["junk", "drop", "add", "dup", "text", "empty", "wrap"]))

        def change(v: Any, op: str = op) -> Any:
            if op == "junk":
                return draw(junk_json)
            if op == "drop" and isinstance(v, dict) and v:
                k = draw(st.sampled_from(sorted(v, key=str)))
                return {kk: vv for kk, vv in v.items() if kk != k}
            if op == "drop" and isinstance(v, list) and v:
                i = draw(st.integers(0, len(v) - 1))
                return v[:i] + v[i + 1 :]
            if op == "add" and isinstance(v, dict):
                return {**v, draw(st.text(max_size=12)): draw(junk_json)}
            if op == "dup" and isinstance(v, list):
                return v + v
            if op == "text" and isinstance(v, str):
                return draw(mutated_text([v]))
            if op == "empty":
                return type(v)() if isinstance(v, dict | list | str) else None
            if op == "wrap":
                return [v]
            return draw(junk_json)

        doc = _replace(doc, path, change)
    return doc


def dumps(doc: Any) -> bytes:
    """JSON text of a fuzzed document (NaN and huge numbers allowed, as a file may hold)."""
    return json.dumps(doc, allow_nan=True).encode()
