"""`ocipatch cache info` and `ocipatch cache prune` (the logic is in ocipatch.cacheprune)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ocipatch.cli import handle_errors


def _cache_options(fn: Any) -> Any:
    fn = click.option("--debug", is_flag=True, help="Show tracebacks and debug logging.")(fn)
    return click.option(
        "--cache-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="The cache [default: ~/.cache/ocipatch].",
    )(fn)


def _root(cache_dir: Path | None) -> Path:
    from ocipatch.oci.cache import default_cache_dir

    return cache_dir or default_cache_dir()


@click.group()
def cache() -> None:
    """Show what the cache holds, remove what is old or least recently used."""


@cache.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@_cache_options
@handle_errors
def info(as_json: bool, cache_dir: Path | None, debug: bool) -> None:
    """Size of the cache per kind of entry, live runs, leftovers of killed runs."""
    from ocipatch.cacheprune import human
    from ocipatch.cacheprune import info as cache_info

    doc = cache_info(_root(cache_dir))
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    oldest = f", oldest use {doc['oldest_use']}" if doc["oldest_use"] else ""
    click.echo(f"{doc['cache']}: {human(doc['bytes'])} in {doc['entries']} entries{oldest}")
    for kind, k in sorted(doc["kinds"].items()):
        click.echo(f"  {kind:16} {k['entries']:7}  {human(k['bytes']):>10}")
    left = doc["leftovers"]
    click.echo(
        f"live runs: {doc['live_runs']}; leftovers of killed runs: {left['entries']} "
        f"({human(left['bytes'])})"
    )


@cache.command()
@click.option(
    "--max-size",
    metavar="SIZE",
    help="Remove least recently used entries down to SIZE (500M, 10G).",
)
@click.option("--older-than", metavar="AGE", help="Remove entries not used for AGE (12h, 7d, 2w).")
@click.option("--dry-run", is_flag=True, help="Print what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@_cache_options
@handle_errors
def prune(
    max_size: str | None,
    older_than: str | None,
    dry_run: bool,
    as_json: bool,
    cache_dir: Path | None,
    debug: bool,
) -> None:
    """Remove what killed runs left, then old and least recently used entries.

    Without --max-size or --older-than only the leftovers of killed runs are removed. Safe
    while other ocipatch runs use the same cache: nothing they may use is removed.
    """
    import logging

    from ocipatch.cacheprune import human, parse_age, parse_size
    from ocipatch.cacheprune import prune as run_prune

    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING)
    size = parse_size(max_size) if max_size is not None else None
    age = parse_age(older_than) if older_than is not None else None
    root = _root(cache_dir)
    report = run_prune(root, max_size=size, older_than=age, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    verb = "would remove" if dry_run else "removed"
    for r in report.leftovers:
        click.echo(f"{verb} leftover of a killed run {r.path} ({human(r.size)})")
    for e in report.removed:
        used = e.to_json(root)["last_used"]
        click.echo(f"{verb} {e.kind} {e.marker} ({human(e.size)}, last used {used})")
    kept = f"; {report.kept_in_use} kept as in use by a live run" if report.kept_in_use else ""
    click.echo(
        f"{'would free' if dry_run else 'freed'} {human(report.freed)} in "
        f"{len(report.removed) + len(report.leftovers)} entries; cache "
        f"{'would be' if dry_run else 'now'} {human(report.size_after)}{kept}"
    )
