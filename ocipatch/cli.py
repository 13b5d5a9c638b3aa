"""Command line: parse, call, map errors to exit codes. No logic lives here.

Every failure a user can cause ends as one line on stderr and the exit code of its error class
(docs/cli.md); a traceback only with --debug.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ocipatch import __version__
from ocipatch.errors import OcipatchError, UsageError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


def _fail(message: str, code: int) -> None:
    click.echo(f"ocipatch: error: {message}", err=True)
    sys.exit(code)


def handle_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(kwargs.get("debug"))
        try:
            return fn(*args, **kwargs)
        except OcipatchError as e:
            if debug:
                raise
            _fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", EXIT_INTERRUPTED)
        except Exception as e:  # an unexpected bug: still one line unless --debug
            if debug:
                raise
            _fail(
                f"internal error: {type(e).__name__}: {e} (run with --debug for details)",
                EXIT_INTERNAL,
            )

    return wrapper  # type: ignore[return-value]


def registry_options(fn: F) -> F:
    opts = [
        click.option("--plain-http", is_flag=True, help="Use plain HTTP for every registry."),
        click.option(
            "--insecure-registry",
            "insecure_registries",
            multiple=True,
            metavar="HOST",
            help="Use plain HTTP for HOST[:PORT] (repeatable).",
        ),
        click.option(
            "--registry-ca",
            type=click.Path(dir_okay=False, path_type=Path),
            help="PEM file of CA certificates to trust for registries.",
        ),
        click.option("--username", help="Registry user name (password from --password-stdin)."),
        click.option(
            "--password-stdin", is_flag=True, help="Read the registry password from stdin."
        ),
        click.option(
            "--cache-dir",
            type=click.Path(file_okay=False, path_type=Path),
            help="Cache for blobs and unpacked layers [default: ~/.cache/ocipatch].",
        ),
        click.option(
            "--platform",
            "platform_text",
            metavar="OS/ARCH[/VARIANT]",
            help="Platform to pick from a multi-platform image [default: the host's].",
        ),
        click.option("--debug", is_flag=True, help="Show tracebacks and debug logging."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def build_context(kwargs: dict[str, Any]) -> Any:
    from ocipatch.context import Context

    password = None
    if kwargs.pop("password_stdin", False):
        if not kwargs.get("username"):
            raise UsageError("--password-stdin needs --username")
        password = sys.stdin.readline().rstrip("\r\n")
    return Context.create(
        plain_http=kwargs.pop("plain_http", False),
        insecure_registries=tuple(kwargs.pop("insecure_registries", ()) or ()),
        registry_ca=kwargs.pop("registry_ca", None),
        username=kwargs.pop("username", None),
        password=password,
        cache_dir=kwargs.pop("cache_dir", None),
        platform_text=kwargs.pop("platform_text", None),
        debug=kwargs.pop("debug", False),
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ocipatch")
def main() -> None:
    """Patch the OS packages of container images with no daemon and no root."""


@main.command()
@click.argument("image")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@registry_options
@handle_errors
def inspect(image: str, as_json: bool, **kwargs: Any) -> None:
    """Show the OS, package manager and packages of IMAGE.

    IMAGE is a registry reference (registry/repo:tag, repo@sha256:...) or oci:DIR[:TAG],
    oci-archive:FILE[:TAG], docker-archive:FILE[:NAME:TAG].
    """
    from ocipatch.inspect import inspect_image
    from ocipatch.oci.reference import parse_reference

    ctx = build_context(kwargs)
    ref = parse_reference(image)
    img = ctx.open_image(ref)
    info = inspect_image(img, ctx.cache)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    _print_inspect(info)


def _print_inspect(info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    osinfo = info["os"] or {}
    plat = info["platform"]
    console.print(f"[bold]{info['reference']}[/bold]  {info['digest']}")
    console.print(
        f"platform {plat['os']}/{plat['architecture']}"
        + (f"/{plat['variant']}" if plat["variant"] else "")
        + f"   os {osinfo.get('id', '?')} {osinfo.get('version_id', '')}"
        + f"   package manager {info['package_manager'] or 'none found'}"
        + f"   layers {len(info['layers'])}"
    )
    table = Table("package", "version", "arch", box=None)
    for p in info["packages"]:
        table.add_row(p["name"], p["version"], p["arch"])
    console.print(table)
    console.print(f"{len(info['packages'])} packages")


@main.command()
@click.argument("source")
@click.argument("destination")
@registry_options
@handle_errors
def copy(source: str, destination: str, **kwargs: Any) -> None:
    """Copy an image between transports (registry, oci:, oci-archive:, docker-archive:).

    Useful to stage tooling images for air-gapped hosts. Blobs already present are skipped.
    """
    from ocipatch.oci.reference import parse_reference
    from ocipatch.oci.transport import write_image

    ctx = build_context(kwargs)
    src = parse_reference(source)
    dst = parse_reference(destination)
    img = ctx.open_image(src)
    digest = write_image(img, dst, ctx.registry_options)
    click.echo(digest)
