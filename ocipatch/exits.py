"""How a run ends when something fails: one line `ocipatch: error: ...` on stderr and the exit
code of the failure's class (docs/cli.md). --debug adds the traceback before that line and
changes nothing else, so a script sees the same code with and without it.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from ocipatch.errors import OcipatchError
from ocipatch.space import NO_SPACE, out_of_space

EXIT_USAGE = 2
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


def describe(e: BaseException) -> tuple[str, int]:
    """The message and exit code for a failure of any kind."""
    if isinstance(e, OSError) and e.errno in NO_SPACE:
        e = out_of_space(e)
    if isinstance(e, OcipatchError):
        return str(e), e.exit_code
    if isinstance(e, KeyboardInterrupt | click.exceptions.Abort):
        return "interrupted", EXIT_INTERRUPTED
    if isinstance(e, OSError):  # permissions and the like: the file and the reason say enough
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror or e}", 1
    return (
        f"internal error: {type(e).__name__}: {e} (rerun with --debug and report it)",
        EXIT_INTERNAL,
    )


def fail(e: BaseException, debug: bool) -> NoReturn:
    if debug:
        traceback.print_exception(e, file=sys.stderr)
    message, code = describe(e)
    say(message, code)


def say(message: str, code: int) -> NoReturn:
    # One line whatever the message holds (a subprocess's output, a multi-line exception).
    line = " | ".join(part.strip() for part in message.splitlines() if part.strip())
    click.echo(f"ocipatch: error: {line}", err=True)
    sys.exit(code)


class OneLineGroup(click.Group):
    """A click group whose usage errors (unknown option or command, missing argument, bad
    choice) are one `ocipatch: error:` line with click's own hint, exit 2, no usage block.
    --help, --version and a bare `ocipatch` (which shows the help) behave as click's."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> NoReturn:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:
            e.show()
            sys.exit(e.exit_code)
        except click.UsageError as e:
            see = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            say(e.format_message() + see, EXIT_USAGE)
        except click.ClickException as e:
            say(e.format_message(), e.exit_code)
        except click.exceptions.Abort as e:
            fail(e, debug=False)
        sys.exit(rv if isinstance(rv, int) else 0)
