"""Work started ahead of when its result is needed, on daemon threads.

concurrent.futures' pools are joined when the interpreter exits, so a run that fails or is
interrupted early would wait for a prefetch of gigabytes to end. Work started here is dropped
at exit instead: everything it writes into the caches goes through a temp file and an atomic
rename, so dropping it mid-way can leave a temp file, never a half-written entry.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


def start(fn: Callable[[], T], name: str) -> Future[T]:
    """Run fn on a daemon thread; its result or exception lands in the returned Future."""
    return start_each([fn], name)[0]


def start_each(fns: list[Callable[[], T]], name: str) -> list[Future[T]]:
    """Run fns one after another on one daemon thread (in order: the first is needed first)."""
    futs: list[Future[T]] = [Future() for _ in fns]
    for f in futs:
        f.set_running_or_notify_cancel()

    def run() -> None:
        for fn, fut in zip(fns, futs, strict=True):
            try:
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(e)

    if fns:
        threading.Thread(target=run, name=name, daemon=True).start()
    return futs
