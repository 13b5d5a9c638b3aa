"""One patch, start to end, as a short list of steps over the image's package manager
(ocipatch/distro/base.py PackageManager: everything ecosystem-specific is behind it):

read (OS, package manager, installed packages) -> requirements (the report's, unmet) -> reuse or plan
(the result cache) -> prepare the tree (unpack, snapshot) -> install (plan, apply, verify) ->
build the layer (diff, the packages' metadata) -> publish (manifest, write, tag last; VEX).

Re-patching an image ocipatch made starts again from the original layers (recorded in a config
label), so the result always has exactly one patch layer holding the old and the new changes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import enum
import functools
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocipatch import background, runs
from ocipatch.context import Context
from ocipatch.distro.base import (
    Action,
    ApplyOutcome,
    InstalledPackage,
    InstallEnv,
    KeyInputs,
    PackageChange,
    PackageManager,
    Patcher,
    Plan,
    PlanItem,
    Planner,
    Replay,
    Requirement,
    always_excluded,
)
from ocipatch.distro.detect import OsRelease, read_os_release
from ocipatch.distro.registry import detect, known_names, supported_ecosystems
from ocipatch.distro.versions import Comparator
from ocipatch.errors import UnsupportedError, UsageError
from ocipatch.fs.changes import Change, Snapshot, diff
from ocipatch.fs.layertime import LayerClock
from ocipatch.fs.layerwriter import PACKAGE_DATED_SINCE, WRITER_FORMAT, LayerInfo, write_layer
from ocipatch.fs.merged import MergedView
from ocipatch.logs import trace
from ocipatch.oci import mediatypes as mt
from ocipatch.oci.convert import for_destination
from ocipatch.oci.image import Image
from ocipatch.oci.mutate import append_layer
from ocipatch.oci.reference import ImageRef, check_tag, parse_reference
from ocipatch.oci.sameref import Clash, check_output_file, guard
from ocipatch.oci.transport import archive_repo_tag, write_image
from ocipatch.oci.types import Descriptor
from ocipatch.progress import Progress
from ocipatch.reports import identity
from ocipatch.reports.fixes import Fixed, after_patch, fixed_by_patch, fixed_ids, lowest_versions
from ocipatch.reports.load import check_report_matches, load_report
from ocipatch.reports.model import UpdateManifest
from ocipatch.resultcache import CachedResult, ResultCache
from ocipatch.workspace import (
    Unpacked,
    room_in_scratch,
    size_estimate,
    unpack_image,
    work_dir,
)

log = logging.getLogger(__name__)

LABEL_BASE_LAYERS = identity.BASE_LAYERS_LABEL
LABEL_BASE_DIGEST = identity.BASE_DIGEST_LABEL
LABEL_WRITER = "dev.ocipatch.writer"  # the WRITER_FORMAT of the patch layer
HISTORY_PREFIX = "ocipatch patch"


@dataclass
class PatchOptions:
    image: str
    report: Path | None = None
    tag: str | None = None
    tag_suffix: str = "patched"
    vex: Path | None = None
    ignore_errors: bool = False
    timeout: float | None = 600.0
    compression: str = "gzip"
    dry_run: bool = False
    sandbox: str = "auto"
    repo_mirrors: list[tuple[str, str]] = field(default_factory=list)
    insecure_repos: bool = False
    tooling_image: str | None = None  # distroless: the image whose package manager does the work
    overwrite: bool = False  # let -t name the source (ocipatch.oci.sameref)
    force_report: bool = False  # --vex from a report about another image


class Status(enum.StrEnum):
    """How a patch ended (the strings are the JSON output's)."""

    PATCHED = "patched"
    UP_TO_DATE = "up-to-date"
    DRY_RUN = "dry-run"


@dataclass
class PatchResult:
    status: Status
    source: ImageRef
    source_digest: str
    image: ImageRef | None = None
    image_digest: str | None = None
    updated: list[PackageChange] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    vulnerabilities_fixed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # shown when found; in --json's notes
    plan: Plan | None = None
    seconds: float = 0.0
    layer_size: int = 0
    replaced: tuple[str, str] | None = None  # (reference, digest it named before): --overwrite

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": str(self.status),
            "source": {"reference": str(self.source), "digest": self.source_digest},
            "image": {
                "reference": str(self.image) if self.image else str(self.source),
                "digest": self.image_digest or self.source_digest,
            },
            "updated": [{"name": c.name, "from": c.old, "to": c.new} for c in self.updated],
            "skipped": [{"name": n, "reason": r} for n, r in self.skipped],
            "vulnerabilities_fixed": self.vulnerabilities_fixed,
            "notes": [*self.warnings, *self.notes],
            "replaced": (
                {"reference": self.replaced[0], "digest": self.replaced[1]}
                if self.replaced
                else None
            ),
            "seconds": round(self.seconds, 2),
        }
        if self.plan is not None and self.status == Status.DRY_RUN:
            out["plan"] = [i.to_json() for i in self.plan.items]
        return out


def destination_for(source: ImageRef, tag: str | None, suffix: str) -> ImageRef:
    """-t as a full reference, a bare tag, or nothing: `<tag>-<suffix>` beside the source."""
    if tag is not None:
        if not tag.strip():
            raise UsageError("-t is empty: give a tag or a full reference, or leave -t out")
        if (
            any(tag.startswith(t + ":") for t in ("oci", "oci-archive", "docker-archive", "docker"))
            or "/" in tag
        ):
            dest = parse_reference(tag)
            if dest.transport == "docker-archive" and dest.tag is None and source.tag:
                # An archive names its image (RepoTags): the derived tag, under the source's
                # name (oci/transport.py archive_repo_tag). Without a source tag the caller
                # refuses it, once it has checked that the file is not the source.
                return dest.with_tag(derived_tag(source, suffix, f"-t {tag}:NAME:TAG"))
            return dest
        return source.with_tag(tag)
    return source.with_tag(derived_tag(source, suffix, "-t TAG"))


def derived_tag(source: ImageRef, suffix: str, hint: str) -> str:
    """The source's tag + `-<suffix>`; a tag already ending in the suffix is kept."""
    if not suffix.strip():
        raise UsageError("--tag-suffix is empty: give a suffix, e.g. --tag-suffix patched")
    check_tag(suffix, "--tag-suffix")
    base = source.tag
    if not base:
        raise UsageError(f"{source} has no tag to derive the patched tag from: pass {hint}")
    if base.endswith(f"-{suffix}"):
        return base
    return f"{base}-{suffix}"


def base_layer_count(image: Image) -> int:
    """How many layers are the original image's: all, unless ocipatch made the top one."""
    labels = (image.config.get("config") or {}).get("Labels") or {}
    raw = labels.get(LABEL_BASE_LAYERS)
    history = [h for h in image.config.get("history") or [] if not h.get("empty_layer")]
    if raw is not None and str(raw).isdigit():
        n = int(raw)
        if (
            n == len(image.layers) - 1
            and history
            and str(history[-1].get("created_by", "")).startswith(HISTORY_PREFIX)
        ):
            return n
    return len(image.layers)


def _package_dated(image: Image) -> bool:
    """Whether ocipatch's top layer dated package files by their packages (its writer's label)."""
    labels = (image.config.get("config") or {}).get("Labels") or {}
    raw = str(labels.get(LABEL_WRITER, ""))
    return raw.isdigit() and int(raw) >= PACKAGE_DATED_SINCE


def requirements_from(
    report: UpdateManifest, installed: list[InstalledPackage], compare: Comparator
) -> tuple[list[Requirement], list[tuple[str, str]]]:
    """Requirements of the report the image does not meet yet (it may be newer than the report,
    e.g. when patching an image ocipatch already patched); `compare` is its package manager's rule."""
    versions = {p.name: p.version for p in installed}
    reqs, skipped = [], []
    for u in report.updates:
        if u.name not in versions:
            skipped.append((u.name, "in the report but not installed in the image"))
            continue
        if compare(versions[u.name], u.fixed_version) >= 0:
            continue
        reqs.append(Requirement(u.name, u.fixed_version, tuple(u.vulnerability_ids)))
    return reqs, skipped


def patch(ctx: Context, opts: PatchOptions, progress: Progress) -> PatchResult:
    started = time.monotonic()
    src_ref = parse_reference(opts.image)
    dest_ref = destination_for(src_ref, opts.tag, opts.tag_suffix)
    # A re-patch of a tag already ending in the suffix derives the source itself: refused like
    # any other destination that is the source, unless --overwrite says to move that tag.
    clash = guard(src_ref, dest_ref, ctx.registry_options, overwrite=opts.overwrite)
    dest_ref = clash.target(dest_ref) if clash is not None else dest_ref
    if opts.vex is not None:
        check_output_file(opts.vex, "--vex", src_ref, dest_ref)
    if opts.compression not in ("gzip", "zstd"):
        raise UsageError(f"--compression {opts.compression}: use gzip or zstd")
    untagged_archive = dest_ref.transport == "docker-archive" and dest_ref.tag is None
    if untagged_archive and src_ref.transport != "docker-archive":
        raise UsageError(
            f"{src_ref} has no tag to derive the patched tag from: pass -t {dest_ref}:NAME:TAG"
        )
    report = load_report(opts.report) if opts.report is not None else None

    progress.step(f"Reading {src_ref}")
    image = ctx.open_image(src_ref)
    if untagged_archive:
        dest_ref = _archive_destination(image, dest_ref, opts.tag_suffix)
    said = _check_report_image(opts, report, image, src_ref)  # before anything is written
    if said.warning:
        progress.warn(said.warning)
    if report is not None and not report.updates and report.ecosystem in supported_ecosystems():
        # Nothing in the report has a fix: whatever the image holds, there is nothing to do,
        # and no layer needs reading to say so.
        digest = image.index.digest if image.index is not None else image.digest
        result = PatchResult(Status.UP_TO_DATE, src_ref, digest)
        if opts.vex is not None:
            result.notes.append("no VEX written: the report lists no package with a fixed version")
        result.seconds = time.monotonic() - started
        progress.done("Nothing to patch: the report lists no package with a fixed version")
    else:
        with contextlib.ExitStack() as stack:
            run = _Run(ctx, opts, progress, image, stack, started, src_ref, dest_ref, report)
            result = _patch(run)
    result.warnings += [said.warning] if said.warning else []
    result.notes[:0] = [said.note] if said.note else []
    return _replaced(result, clash)


def _archive_destination(image: Image, dest: ImageRef, suffix: str) -> ImageRef:
    """An untagged docker-archive destination of an untagged docker-archive source: the derived
    tag under the name the source archive's RepoTags give (known only once it is open)."""
    own = archive_repo_tag(image, None)
    if own is None:
        raise UsageError(
            f"{image.ref} has no tag to derive the patched tag from: pass -t {dest}:NAME:TAG"
        )
    name, _, tag = own.rpartition(":")
    return dest.with_tag(f"{name}:{tag if tag.endswith(f'-{suffix}') else f'{tag}-{suffix}'}")


def _replaced(result: PatchResult, clash: Clash | None) -> PatchResult:
    """--overwrite replaced the source: say which digest the destination named before."""
    if clash is not None and result.image is not None:
        old = clash.digest or result.source_digest
        result.replaced = (str(result.image), old)
        result.notes.append(f"replaced {result.image}, which named {old} before")
    return result


def _check_report_image(
    opts: PatchOptions, report: UpdateManifest | None, image: Image, src_ref: ImageRef
) -> identity.Assessment:
    """Whether the report was made from this image (reports/identity.py has the rule); a
    ReportError when --vex would state fixes for another product."""
    if report is None:
        return identity.Assessment()
    source = identity.source_identity(
        src_ref,
        image.digest,
        image.index.digest if image.index is not None else None,
        image.config_descriptor.digest,
        [layer.diff_id for layer in image.layers],
        base_layer_count(image),
        (image.config.get("config") or {}).get("Labels") or {},
    )
    return identity.assess(
        report.identity,
        source,
        report_path=str(opts.report),
        vex=opts.vex is not None,
        force=opts.force_report,
    )


# --- one patch, step by step -----------------------------------------------------------------


class _Run:
    """One patch under way: its inputs, and what each step leaves for the next."""

    def __init__(
        self,
        ctx: Context,
        opts: PatchOptions,
        progress: Progress,
        image: Image,
        stack: contextlib.ExitStack,
        started: float,
        src_ref: ImageRef,
        dest_ref: ImageRef,
        report: UpdateManifest | None,
    ) -> None:
        self.ctx, self.opts, self.progress, self.image = ctx, opts, progress, image
        self.stack, self.started, self.report = stack, started, report
        self.src_ref, self.dest_ref = src_ref, dest_ref
        self.clock = LayerClock.of(image.config)  # a malformed SOURCE_DATE_EPOCH fails here
        self.view = MergedView(image.layers, ctx.cache.work_dir("index"))
        self.keep = base_layer_count(image)
        source_digest = image.index.digest if image.index is not None else image.digest
        self.result = PatchResult(Status.PATCHED, src_ref, source_digest)
        self.unpacked: Unpacked | None = None
        # Set by _read:
        self.osr: OsRelease | None = None
        self.pm: PackageManager
        self.installed: list[InstalledPackage] = []
        self.versions: _Versions
        self.requirements: list[Requirement] | None = None
        # Set by _reuse_or_plan and _prepare_tree: the result cache's key and its planning.
        self.results: ResultCache | None = None
        self.planner: Planner | None = None
        self.key: str | None = None
        self.plan_later: Callable[[], Any] | None = None
        self.planning: Future[Any] | None = None  # the thread that computes the key


def _patch(run: _Run) -> PatchResult:
    _read(run)
    done = _check_requirements(run) or _reuse_or_plan(run)
    if done is not None:
        return done
    unpacked = _prepare_tree(run)
    patcher = _installer(run, unpacked)
    plan = patcher.plan(run.installed, run.requirements, ignore_errors=run.opts.ignore_errors)
    run.result.plan = plan
    run.result.skipped += [(i.name, i.reason) for i in plan.skipped]
    if run.opts.dry_run:
        run.result.status = Status.DRY_RUN
        run.result.seconds = time.monotonic() - run.started
        return run.result
    if not plan.updates:
        return _up_to_date(run, "Nothing to patch: no newer packages")
    snap, outcome = _apply(run, unpacked, patcher, plan)
    layer = _build_layer(run, unpacked, snap, outcome)
    return _publish(run, plan, layer)


def _read(run: _Run) -> None:
    """The image's OS and package manager, and what it has installed; an unseen image is
    unpacked here, indexing each layer in the same pass."""
    report, view = run.report, run.view
    # A report of another package manager fails below (another image's report, or an image
    # ocipatch cannot patch): the index alone says which, so nothing is unpacked for it.
    doomed = report is not None and report.ecosystem not in supported_ecosystems()
    if not view.indexed() and not doomed:
        # An image this cache has not seen (so no patch of it is cached either): one pass over
        # each layer extracts and indexes it, instead of one pass for each. The package manager is
        # not known yet: the snapshot leaves out what every one does (the diff the rest).
        work = run.stack.enter_context(work_dir(run.ctx, size_estimate(run.image)))
        run.unpacked = unpack_image(
            run.image, run.keep, work, run.progress, always_excluded, view.add_index
        )
        run.stack.callback(concurrent.futures.wait, [run.unpacked.snap])  # before the tree goes
    run.osr = osr = read_os_release(view)
    if report is not None:  # first: another image's report is the error, whatever its OS
        plat = run.image.platform
        check_report_matches(
            report,
            osr.id if osr else "",
            osr.version_id if osr else "",
            plat.architecture,
            plat.variant,
            image=str(run.src_ref),
        )
    pm = detect(view)
    if pm is None:
        raise UnsupportedError(
            f"{run.src_ref}: no package database found ({known_names()}): "
            "nothing ocipatch can patch"
        )
    run.installed = pm.read_db(view)  # a detect-only one says "not supported yet"
    if not pm.supported:
        raise UnsupportedError(f"{pm.name} images are not supported yet")
    if report is not None and report.ecosystem != pm.ecosystem:
        raise UnsupportedError(f"the report lists {report.ecosystem} packages: not supported yet")
    run.pm = pm
    run.versions = _versions(report, pm, view, run.image, run.keep, run.installed)


def _check_requirements(run: _Run) -> PatchResult | None:
    """The report's requirements the image does not meet yet; up to date without any."""
    if run.report is None:
        return None
    run.requirements, run.result.skipped = requirements_from(
        run.report, run.installed, run.pm.compare
    )
    if run.requirements:
        return None
    return _up_to_date(
        run, "Nothing to patch: every package in the report is already fixed or absent"
    )


def _reuse_or_plan(run: _Run) -> PatchResult | None:
    """The result cache: plan from the repositories' signed indices before unpacking, and reuse
    the layer of an identical earlier patch. On an image being unpacked (or an empty cache)
    every key misses: planning then runs beside the snapshot (_prepare_tree)."""
    opts, image = run.opts, run.image
    run.results = results = ResultCache(run.ctx.cache.work_dir("results"), run.ctx.cache)
    if opts.dry_run:
        return None
    inputs = KeyInputs(
        layers=[layer.digest for layer in image.layers],
        requirements=run.requirements,
        sandboxed=opts.sandbox != "none",
        compression=opts.compression,
        ignore_errors=opts.ignore_errors,
        mirrors=opts.repo_mirrors,
        times={**run.clock.key(), "replayed_dated": int(_package_dated(image))},
    )
    run.planner = planner = run.pm.planner(run.ctx, run.view, inputs)
    if planner is None:
        return None
    if run.unpacked is not None or results.empty():
        # A miss whatever the key: plan once the tree is unpacked (planning would slow the
        # unpack down), then fetch the plan's packages while the installer works.
        run.plan_later = functools.partial(planner.key, fetch=True)
        return None
    run.progress.step("Planning from the repositories' signed indices")
    run.key = planner.key(fetch=False)
    hit = results.get(run.key) if run.key else None
    if hit is not None:
        run.progress.step("The same patch was made before: reusing its layer")
        return _from_cache(run, hit)
    run.plan_later = planner.fetch  # a miss: the packages are fetched beside the snapshot
    return None


def _prepare_tree(run: _Run) -> Unpacked:
    """The unpacked tree with its snapshot under way; planning started beside it."""
    if run.unpacked is None:
        work = run.stack.enter_context(work_dir(run.ctx, sum(e.size for e in run.view.walk())))
        run.unpacked = unpack_image(run.image, run.keep, work, run.progress, run.pm.excluded)
        run.stack.callback(concurrent.futures.wait, [run.unpacked.snap])
    if run.plan_later is not None:
        assert run.planner is not None
        started_plan = background.start(run.plan_later, "plan")
        run.planner.started(started_plan)
        if run.key is None:
            run.planning = started_plan
    return run.unpacked


def _installer(run: _Run, unpacked: Unpacked) -> Patcher:
    """The sandbox (none with --sandbox none: nothing from the image runs) and the package
    manager's installer for it."""
    from ocipatch.sandbox.select import select_sandbox

    opts = run.opts
    passed_over: list[str] = []
    sandbox = None if opts.sandbox == "none" else select_sandbox(opts.sandbox, passed_over)
    for why in passed_over:
        run.progress.note(f"sandbox {why}: trying the next one")
    env = InstallEnv(
        ctx=run.ctx,
        rootfs=unpacked.rootfs,
        ownership=unpacked.own,
        work=unpacked.work,
        snapshot=unpacked.snap,
        sandbox=sandbox,
        osr=run.osr,
        platform=run.image.platform,
        progress=run.progress,
        timeout=opts.timeout,
        mirrors=opts.repo_mirrors,
        insecure=opts.insecure_repos,
        tooling_image=opts.tooling_image,
    )
    return run.pm.installer(env, run.pm.flavour(run.view, sandbox))


def _apply(
    run: _Run, unpacked: Unpacked, patcher: Patcher, plan: Plan
) -> tuple[Snapshot, ApplyOutcome]:
    """Install the plan and check every update reached its version."""
    if run.planner is not None:
        run.planner.wait()
    snap = unpacked.snap.result()  # before anything writes to the tree
    with room_in_scratch(unpacked.work):
        outcome = patcher.apply(plan)
    failed = patcher.verify(plan, ignore_errors=run.opts.ignore_errors)
    run.result.skipped += [(i.name, i.reason) for i in failed]
    run.result.updated = outcome.updated
    run.result.notes += outcome.notes
    return snap, outcome


def _build_layer(run: _Run, unpacked: Unpacked, snap: Snapshot, outcome: ApplyOutcome) -> LayerInfo:
    """The changes as one layer, owned and dated as the installed packages say."""
    run.progress.step("Writing the patch layer")
    changes = diff(snap, unpacked.rootfs, run.pm.excluded, ownership=unpacked.own)
    replay = None
    if run.keep < len(run.image.layers) and _package_dated(run.image):
        replay = Replay(run.view, run.keep)  # the previous patch layer's times are kept
    dated = run.pm.file_meta(changes, unpacked.rootfs, outcome.packages, replay)
    run.result.notes += run.pm.notes(dated.changes)
    mtime = run.clock.time(dated.newest)
    return _write_patch_layer(run.ctx, dated.changes, run.opts.compression, mtime)


def _publish(run: _Run, plan: Plan, layer: LayerInfo) -> PatchResult:
    """The patched image written (tag last), the result cached, the fixes and VEX."""
    result = run.result
    new_image = _assemble(run, layer)
    result.layer_size = layer.size
    run.progress.step(f"Writing {run.dest_ref}")
    result.image_digest = write_image(new_image, run.dest_ref, run.ctx.registry_options)
    result.image = run.dest_ref
    if run.planning is not None:
        try:
            run.key = run.planning.result()
        except Exception as e:  # the cache is an optimisation: never fail a done patch
            trace(log, "result cache key not computed: %s", e)
    if run.key is not None and run.results is not None:
        cached = CachedResult(layer.digest, layer.size, layer.diff_id, _meta(result, plan))
        run.results.put(run.key, cached)
    return _finish(run, new_image)


def _meta(result: PatchResult, plan: Plan) -> dict[str, Any]:
    """What a cache hit needs to report the same result as the run that made the layer."""
    return {
        "updated": [list(c) for c in result.updated],
        "skipped": result.skipped,
        "notes": result.notes,
        "plan": [{**i.to_json(), "vulnerabilities": list(i.vulnerabilities)} for i in plan.items],
    }


def _from_cache(run: _Run, hit: CachedResult) -> PatchResult:
    meta, result = hit.meta, run.result
    result.updated = [PackageChange(str(a), str(b), str(c)) for a, b, c in meta["updated"]]
    result.skipped = [(str(a), str(b)) for a, b in meta["skipped"]]
    result.notes = [
        *meta["notes"],
        "reused the patch layer of an identical earlier run (same base, same package versions)",
    ]
    result.plan = Plan(
        [
            PlanItem(
                d["name"],
                d["installed"],
                d["required"],
                d["available"],
                Action(d["action"]),
                d["reason"],
                tuple(d["vulnerabilities"]),
            )
            for d in meta["plan"]
        ]
    )
    new_image = _assemble(run, LayerInfo(hit.layer_digest, hit.diff_id, hit.layer_size))
    result.layer_size = hit.layer_size
    run.progress.step(f"Writing {run.dest_ref}")
    result.image_digest = write_image(new_image, run.dest_ref, run.ctx.registry_options)
    result.image = run.dest_ref
    return _finish(run, new_image)


@dataclass
class _Versions:
    """What the fixed vulnerabilities are read from: the report, and the package versions of
    the original image (below any earlier patch layer) and of the source, by name."""

    report: UpdateManifest | None
    base: dict[str, str]
    source: dict[str, str]
    compare: Comparator

    def fixed(self, updated: list[PackageChange]) -> list[Fixed]:
        """Every report fix the patch layer carries (this round's and earlier rounds')."""
        return fixed_by_patch(
            self.report, self.base, after_patch(self.source, updated), self.compare
        )


def _versions(
    report: UpdateManifest | None,
    pm: PackageManager,
    view: MergedView,
    image: Image,
    keep: int,
    installed: list[InstalledPackage],
) -> _Versions:
    cmp = pm.compare
    source = lowest_versions(((p.name, p.version) for p in installed), cmp)
    base = source
    if report is not None and keep < len(image.layers):
        # The original's packages: the merged base layers (indexed by now, the DB read).
        below = pm.read_db(MergedView(image.layers[:keep], view.index_cache_dir))
        base = lowest_versions(((p.name, p.version) for p in below), cmp)
    return _Versions(report, base, source, cmp)


def _up_to_date(run: _Run, message: str) -> PatchResult:
    """Nothing to write; an image ocipatch patched before still carries its fixes: they are
    reported, and --vex states them for the source image itself."""
    result, image, vex = run.result, run.image, run.opts.vex
    result.status = Status.UP_TO_DATE
    fixed = run.versions.fixed([])
    result.vulnerabilities_fixed = fixed_ids(fixed)
    if vex is not None:
        if fixed:
            _write_vex(run, vex, fixed, result.source, image.digest)
            result.notes.append(
                f"wrote the VEX for {result.source} ({image.digest}): its patch layer already "
                f"fixes {len(result.vulnerabilities_fixed)} of the report's vulnerabilities"
            )
        else:
            result.notes.append(_no_vex(run.versions))
    result.seconds = time.monotonic() - run.started
    run.progress.done(message)
    return result


def _no_vex(versions: _Versions) -> str:
    """Why --vex wrote nothing (OpenVEX needs at least one statement)."""
    if versions.report is None:
        return "no VEX written: without a report (-r) there are no vulnerabilities to state"
    return "no VEX written: no vulnerability of the report is fixed in this image by a patch layer"


def _finish(run: _Run, new_image: Image) -> PatchResult:
    """What a written patch (made now or reused) reports: fixed ids, the VEX, the time."""
    result = run.result
    fixed = run.versions.fixed(result.updated)
    result.vulnerabilities_fixed = fixed_ids(fixed)
    if run.opts.vex is not None:
        if fixed:
            _write_vex(run, run.opts.vex, fixed, run.dest_ref, new_image.digest)
        else:
            result.notes.append(_no_vex(run.versions))
    result.seconds = time.monotonic() - run.started
    run.progress.done(f"Patched {len(result.updated)} packages -> {run.dest_ref}")
    return result


def _write_patch_layer(
    ctx: Context, changes: list[Change], compression: str, mtime: int
) -> LayerInfo:
    """Write the layer into the blob cache, dated by the layer time."""
    tmp_dir = ctx.cache.work_dir("tmp")
    fd, name = runs.mkstemp(tmp_dir)
    try:
        with ctx.cache.room(), os.fdopen(fd, "wb") as out:
            info = write_layer(changes, out, compression, clamp_mtime=mtime)
        ctx.cache.put_file(info.digest, Path(name))
    finally:
        Path(name).unlink(missing_ok=True)  # put_file moved it, or the layer was not written
    return info


def _assemble(run: _Run, layer: LayerInfo) -> Image:
    """The patched image as it will be written (OCI when the destination or the layer needs
    it, so its digest is the one the VEX names)."""
    image, keep, updated = run.image, run.keep, run.result.updated
    desc = Descriptor(
        mt.layer_media_type(run.opts.compression, image.is_docker), layer.digest, layer.size
    )
    summary = ", ".join(f"{c.name} {c.new}" for c in updated[:20])
    history = {
        "created_by": f"{HISTORY_PREFIX}: {summary}" + (" …" if len(updated) > 20 else ""),
        "comment": "ocipatch",
    }
    labels = {
        LABEL_BASE_LAYERS: str(keep),
        LABEL_BASE_DIGEST: _original_digest(image, keep),
        LABEL_WRITER: str(WRITER_FORMAT),
    }
    appended = append_layer(
        image, desc, layer.diff_id, run.ctx.cache, history=history, labels=labels, keep_layers=keep
    )
    return for_destination(appended, run.dest_ref)


def _original_digest(image: Image, keep: int) -> str:
    labels = (image.config.get("config") or {}).get("Labels") or {}
    if keep < len(image.layers) and labels.get(LABEL_BASE_DIGEST):
        return str(labels[LABEL_BASE_DIGEST])
    return image.digest


def _write_vex(run: _Run, path: Path, fixed: list[Fixed], ref: ImageRef, digest: str) -> None:
    """One `fixed` statement per vulnerability, product the image `ref` at `digest`."""
    from ocipatch.vex import build_vex, fixed_vulns, oci_purl, vex_json

    arch = run.image.platform.architecture
    pairs = [(f.update, run.pm.purl(run.osr, f.update.name, f.version, arch)) for f in fixed]
    if ref.is_registry:
        product = oci_purl(ref.name, digest, ref.tag, arch)
    else:
        product = oci_purl("", digest, ref.tag, arch, name=Path(ref.path).stem or "image")
    path.write_text(vex_json(build_vex(product, fixed_vulns(pairs))))
