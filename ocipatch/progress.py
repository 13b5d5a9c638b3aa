"""Progress on stderr: rich when stderr is a terminal, plain lines otherwise, nothing when quiet."""

from __future__ import annotations

import sys
import time

from rich.console import Console


class Progress:
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.console = Console(stderr=True, highlight=False)
        self.plain = not sys.stderr.isatty()
        self._start = time.monotonic()

    def _elapsed(self) -> str:
        return f"{time.monotonic() - self._start:6.1f}s"

    def step(self, message: str) -> None:
        if self.quiet:
            return
        if self.plain:
            print(f"[{self._elapsed()}] {message}", file=sys.stderr, flush=True)
        else:
            self.console.print(f"[dim]{self._elapsed()}[/dim] {message}")

    def note(self, message: str) -> None:
        if not self.quiet:
            print(f"note: {message}", file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        """Printed even with --quiet: something the user must not miss."""
        print(f"WARNING: {message}", file=sys.stderr, flush=True)

    def done(self, message: str) -> None:
        if self.quiet:
            return
        if self.plain:
            print(f"[{self._elapsed()}] {message}", file=sys.stderr, flush=True)
        else:
            self.console.print(f"[dim]{self._elapsed()}[/dim] [bold green]{message}[/bold green]")
