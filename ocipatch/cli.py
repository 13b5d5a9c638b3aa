"""Command line: parse, call, map errors to exit codes. No logic lives here.

Every failure a user can cause ends as one line on stderr and the exit code of its error class
(docs/cli.md); a traceback only with --debug.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ocipatch import __version__
from ocipatch.errors import UsageError
from ocipatch.exits import OneLineGroup, fail

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Run a command; any failure ends as one line and its documented code (ocipatch.exits).
    --debug, given before or after the command name, adds the traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs["debug"] = bool(kwargs.get("debug")) or _group_debug()
        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:  # the reader went away (e.g. `| head`): nothing to say
            sys.stderr.close()
            sys.exit(1)
        except (Exception, KeyboardInterrupt) as e:
            fail(e, kwargs["debug"])

    return wrapper  # type: ignore[return-value]


def _group_debug() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().params.get("debug"))


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
            "--registry-retry-time",
            metavar="DURATION",
            help="How long to retry a registry that is down, resets connections or answers "
            "429/5xx (30s, 2m, 0 for no retries) [default: $OCIPATCH_REGISTRY_RETRY or 30s].",
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
        registry_retry_time=kwargs.pop("registry_retry_time", None),
        cache_dir=kwargs.pop("cache_dir", None),
        platform_text=kwargs.pop("platform_text", None),
        debug=kwargs.pop("debug", False),
    )


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ocipatch")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logging.")
def main(debug: bool) -> None:
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
@click.option("--overwrite", is_flag=True, help="Let DESTINATION be SOURCE itself.")
@registry_options
@handle_errors
def copy(source: str, destination: str, overwrite: bool, **kwargs: Any) -> None:
    """Copy an image between transports (registry, oci:, oci-archive:, docker-archive:).

    Useful to stage tooling images for air-gapped hosts. Blobs already present are skipped.
    """
    from ocipatch.oci.reference import parse_reference
    from ocipatch.oci.sameref import guard
    from ocipatch.oci.transport import write_image

    ctx = build_context(kwargs)
    src = parse_reference(source)
    dst = parse_reference(destination)
    clash = guard(src, dst, ctx.registry_options, overwrite=overwrite, option="DESTINATION")
    dst = clash.target(dst) if clash is not None else dst
    img = ctx.open_image(src)
    digest = write_image(img, dst, ctx.registry_options)
    click.echo(digest)


def _parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    t = text.strip().lower()
    try:
        seconds = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise UsageError(f"invalid --timeout {text!r}: use e.g. 90s, 10m or 1h")
    return seconds


def _parse_mirror(text: str) -> tuple[str, str]:
    src, sep, dst = text.partition("=")
    if not sep or not src or not dst:
        raise UsageError(
            f"invalid --repo-mirror {text!r}: use FROM=TO, e.g. http://deb.example=http://mirror.lan"
        )
    return src, dst


@main.command()
@click.option("-i", "--image", required=True, help="Image to patch (any transport).")
@click.option(
    "-r",
    "--report",
    type=click.Path(path_type=Path),
    help="Trivy JSON or copa native report; without it, every upgradable package is updated.",
)
@click.option("-t", "--tag", help="Destination: a bare tag (same repository) or a full reference.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Let the destination be the source itself (replaced atomically, old digest reported).",
)
@click.option(
    "--tag-suffix",
    default="patched",
    show_default=True,
    help="Suffix of the derived tag when -t is not given.",
)
@click.option(
    "--vex",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write an OpenVEX 0.2.0 document of the fixed vulnerabilities.",
)
@click.option(
    "--force-report",
    is_flag=True,
    help="Write --vex even from a report about another image than -i (it names the result).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary on stdout.")
@click.option(
    "--ignore-errors",
    is_flag=True,
    help="Skip packages that cannot reach their fixed version instead of failing.",
)
@click.option(
    "--timeout", default="10m", show_default=True, help="Time limit for the package manager run."
)
@click.option(
    "--compression", type=click.Choice(["gzip", "zstd"]), default="gzip", show_default=True
)
@click.option("--dry-run", is_flag=True, help="Print the plan; change and push nothing.")
@click.option("--sandbox", default="auto", show_default=True, help="auto, bwrap, proot or none.")
@click.option(
    "--repo-mirror",
    "repo_mirrors",
    multiple=True,
    metavar="FROM=TO",
    help="Rewrite package repository URLs for this patch only (repeatable).",
)
@click.option("--insecure-repos", is_flag=True, help="Turn off apt's signature checks (dangerous).")
@click.option(
    "--tooling-image",
    help="Distroless images: image providing apt/dpkg [default: debian:<major>-slim or ubuntu:<version>].",
)
@click.option(
    "--push",
    is_flag=True,
    hidden=True,
    help="Accepted for copa compatibility: registry destinations are always pushed.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@registry_options
@handle_errors
def patch(
    image: str,
    report: Path | None,
    tag: str | None,
    overwrite: bool,
    tag_suffix: str,
    vex: Path | None,
    force_report: bool,
    as_json: bool,
    ignore_errors: bool,
    timeout: str,
    compression: str,
    dry_run: bool,
    sandbox: str,
    repo_mirrors: tuple[str, ...],
    tooling_image: str | None,
    insecure_repos: bool,
    push: bool,
    quiet: bool,
    **kwargs: Any,
) -> None:
    """Update the OS packages of an image and write it with one patch layer.

    Exit 0 when patched and when already up to date (--json's "status" tells which).
    """
    from ocipatch.patch import PatchOptions
    from ocipatch.patch import patch as run_patch
    from ocipatch.progress import Progress

    ctx = build_context(kwargs)
    progress = Progress(quiet=quiet)
    if insecure_repos:
        progress.warn(
            "--insecure-repos turns off apt's signature checks: packages are not verified"
        )
    opts = PatchOptions(
        image=image,
        report=report,
        tag=tag,
        overwrite=overwrite,
        tag_suffix=tag_suffix,
        vex=vex,
        ignore_errors=ignore_errors,
        timeout=_parse_duration(timeout),
        compression=compression,
        dry_run=dry_run,
        sandbox=sandbox,
        repo_mirrors=[_parse_mirror(m) for m in repo_mirrors],
        insecure_repos=insecure_repos,
        tooling_image=tooling_image,
        force_report=force_report,
    )
    result = run_patch(ctx, opts, progress)
    for note in result.notes:
        progress.note(note)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    _print_result(result)


def _print_result(result: Any) -> None:
    if result.status == "dry-run" and result.plan is not None:
        click.echo(f"{'package':30} {'installed':28} {'required':28} {'available':28} action")
        for i in result.plan.items:
            click.echo(
                f"{i.name:30} {i.installed:28} {i.required or '-':28} {i.available or '-':28} {i.action}{' (' + i.reason + ')' if i.reason else ''}"
            )
        return
    for name, old, new in result.updated:
        click.echo(f"updated {name} {old or '(new)'} -> {new}")
    for name, reason in result.skipped:
        click.echo(f"skipped {name}: {reason}")
    if result.replaced:
        click.echo(f"replaced {result.replaced[0]}, which named {result.replaced[1]}")
    if result.status == "up-to-date":
        click.echo(f"{result.source} is up to date")
    else:
        click.echo(f"{result.image}@{result.image_digest}")


def _add_groups() -> None:
    from ocipatch.cachecli import cache

    main.add_command(cache)


_add_groups()
