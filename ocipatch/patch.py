"""One patch, start to end: open -> read the package DB -> plan -> apply in a sandbox -> diff ->
one squashed layer -> new manifest -> write (tag last) -> VEX and summary.

Re-patching an image ocipatch made starts again from the original layers (recorded in a config
label), so the result always has exactly one patch layer holding the old and the new changes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
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
from ocipatch.distro.adapters import Dpkg, detect
from ocipatch.distro.base import InstalledPackage, Patcher, Plan, PlanItem, Requirement
from ocipatch.distro.deb.aptrun import AptConfig, AptRunner
from ocipatch.distro.deb.debmeta import (
    DebMetaMemo,
    FileMeta,
    newest_time,
    packaged_paths,
    replayed_meta,
    with_package_metadata,
)
from ocipatch.distro.deb.direct import DirectConfig, DpkgDirectPatcher
from ocipatch.distro.deb.fetchahead import FetchAhead
from ocipatch.distro.deb.native import DpkgPatcher, exclude
from ocipatch.distro.detect import OsRelease, read_os_release
from ocipatch.distro.versions import Comparator, comparator
from ocipatch.errors import UnsupportedError, UsageError
from ocipatch.fs.changes import Change, diff
from ocipatch.fs.layertime import LayerClock
from ocipatch.fs.layerwriter import PACKAGE_DATED_SINCE, WRITER_FORMAT, write_layer
from ocipatch.fs.merged import MergedView
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
from ocipatch.resultcache import CachedResult, ResultCache, plan_key
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
    tooling_image: str | None = None  # distroless: the image whose apt/dpkg does the work
    overwrite: bool = False  # let -t name the source (ocipatch.oci.sameref)
    force_report: bool = False  # --vex from a report about another image


@dataclass
class PatchResult:
    status: str  # "patched" | "up-to-date" | "dry-run"
    source: ImageRef
    source_digest: str
    image: ImageRef | None = None
    image_digest: str | None = None
    updated: list[tuple[str, str, str]] = field(default_factory=list)
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
            "status": self.status,
            "source": {"reference": str(self.source), "digest": self.source_digest},
            "image": {
                "reference": str(self.image) if self.image else str(self.source),
                "digest": self.image_digest or self.source_digest,
            },
            "updated": [{"name": n, "from": a, "to": b} for n, a, b in self.updated],
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
        if self.plan is not None and self.status == "dry-run":
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
    """Whether ocipatch's top layer dated package files by their .debs (its writer's label)."""
    labels = (image.config.get("config") or {}).get("Labels") or {}
    raw = str(labels.get(LABEL_WRITER, ""))
    return raw.isdigit() and int(raw) >= PACKAGE_DATED_SINCE


def requirements_from(
    report: UpdateManifest, installed: list[InstalledPackage]
) -> tuple[list[Requirement], list[tuple[str, str]]]:
    """Requirements of the report the image does not meet yet (it may be newer than the report,
    e.g. when patching an image ocipatch already patched)."""
    from ocipatch.distro.versions import compare_deb

    versions = {p.name: p.version for p in installed}
    reqs, skipped = [], []
    for u in report.updates:
        if u.name not in versions:
            skipped.append((u.name, "in the report but not installed in the image"))
            continue
        if compare_deb(versions[u.name], u.fixed_version) >= 0:
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
    if report is not None and not report.updates and report.ecosystem == "deb":
        # Nothing in the report has a fix: whatever the image holds, there is nothing to do,
        # and no layer needs reading to say so.
        digest = image.index.digest if image.index is not None else image.digest
        result = PatchResult("up-to-date", src_ref, digest)
        if opts.vex is not None:
            result.notes.append("no VEX written: the report lists no package with a fixed version")
        result.seconds = time.monotonic() - started
        progress.done("Nothing to patch: the report lists no package with a fixed version")
    else:
        with contextlib.ExitStack() as stack:
            result = _patch(ctx, opts, progress, image, stack, started, src_ref, dest_ref, report)
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


def _patch(
    ctx: Context,
    opts: PatchOptions,
    progress: Progress,
    image: Image,
    stack: contextlib.ExitStack,
    started: float,
    src_ref: ImageRef,
    dest_ref: ImageRef,
    report: UpdateManifest | None,
) -> PatchResult:
    source_digest = image.index.digest if image.index is not None else image.digest
    clock = LayerClock.of(image.config)  # a malformed SOURCE_DATE_EPOCH fails here, early
    view = MergedView(image.layers, ctx.cache.work_dir("index"))
    keep = base_layer_count(image)
    unpacked: Unpacked | None = None
    # A report of another package manager fails below (another image's report, or an image
    # ocipatch cannot patch): the index alone says which, so nothing is unpacked for it.
    doomed = report is not None and report.ecosystem != "deb"
    if not view.indexed() and not doomed:
        # An image this cache has not seen (so no patch of it is cached either): one pass over
        # each layer extracts and indexes it, instead of one pass for each.
        work = stack.enter_context(work_dir(ctx, size_estimate(image)))
        unpacked = unpack_image(image, keep, work, progress, view.add_index)
        stack.callback(concurrent.futures.wait, [unpacked.snap])  # before the tree goes
    osr = read_os_release(view)
    if report is not None:  # first: another image's report is the error, whatever its OS
        plat = image.platform
        check_report_matches(
            report,
            osr.id if osr else "",
            osr.version_id if osr else "",
            plat.architecture,
            plat.variant,
            image=str(src_ref),
        )
    pm = detect(view)
    if pm is None:
        raise UnsupportedError(
            f"{src_ref}: no package database found (dpkg, apk or rpm): nothing ocipatch can patch"
        )
    installed = pm.read_db(view)  # apk/rpm say "not supported yet" here
    if not isinstance(pm, Dpkg):
        raise UnsupportedError(f"{pm.name} images are not supported yet")
    distroless = Dpkg.is_distroless(view)  # status.d, no status file: a tooling image's apt
    if report is not None and report.ecosystem != "deb":
        raise UnsupportedError(f"the report lists {report.ecosystem} packages: not supported yet")

    result = PatchResult("patched", src_ref, source_digest)
    versions = _versions(report, pm, view, image, keep, installed)  # what the VEX compares
    requirements: list[Requirement] | None = None
    if report is not None:
        requirements, result.skipped = requirements_from(report, installed)
        if not requirements:
            return _up_to_date(
                opts,
                result,
                versions,
                image,
                osr,
                started,
                progress,
                "Nothing to patch: every package in the report is already fixed or absent",
            )

    results = ResultCache(ctx.cache.work_dir("results"), ctx.cache)
    key: str | None = None
    planning: Future[str | None] | None = None
    ahead: FetchAhead | None = None
    plan_later: Callable[[], Any] | None = None
    memo = DebMetaMemo()
    if not distroless and not opts.dry_run:
        compute = functools.partial(
            plan_key,
            view,
            [layer.digest for layer in image.layers],
            requirements,
            mode="none" if opts.sandbox == "none" else "apt",
            compression=opts.compression,
            ignore_errors=opts.ignore_errors,
            mirrors=opts.repo_mirrors,
            cache_dir=ctx.cache.work_dir("repos"),
            times={**clock.key(), "replayed_dated": int(_package_dated(image))},
        )
        ahead = FetchAhead(
            None if opts.sandbox == "none" else ctx.cache.work_dir("apt") / "debs", memo
        )
        if unpacked is not None or results.empty():
            # A miss whatever the key: plan once the tree is unpacked (planning would slow
            # the unpack down), beside the snapshot; then fetch the plan's packages and read
            # their owners while apt and dpkg work.
            plan_later = functools.partial(compute, on_plan=ahead)
        else:
            progress.step("Planning from the repositories' signed indices")
            key = compute(on_plan=ahead.record)
            hit = results.get(key) if key else None
            if hit is not None:
                progress.step("The same patch was made before: reusing its layer")
                return _from_cache(
                    ctx, opts, image, keep, hit, result, dest_ref, osr, versions, started, progress
                )
            plan_later = ahead.fetch  # a miss: the packages are fetched beside the snapshot
    if unpacked is None:
        work = stack.enter_context(work_dir(ctx, sum(e.size for e in view.walk())))
        unpacked = unpack_image(image, keep, work, progress)
        stack.callback(concurrent.futures.wait, [unpacked.snap])
    work, rootfs, own = unpacked.work, unpacked.rootfs, unpacked.own
    if plan_later is not None:
        started_plan = background.start(plan_later, "plan")
        if ahead is not None:
            ahead.planning = started_plan
        if key is None:
            planning = started_plan
    from ocipatch.sandbox.select import select_sandbox

    # --sandbox none runs nothing from the image: repos/ resolves, debinstall unpacks.
    passed_over: list[str] = []
    sandbox = None if opts.sandbox == "none" else select_sandbox(opts.sandbox, passed_over)
    for why in passed_over:
        progress.note(f"sandbox {why}: trying the next one")
    apt_config = AptConfig(
        cache_dir=ctx.cache.work_dir("apt"),
        timeout=opts.timeout,
        mirrors=opts.repo_mirrors,
        insecure=opts.insecure_repos,
        log=work / "apt.log",
    )
    patcher: Patcher
    if distroless and sandbox is None:
        raise UsageError(
            "a distroless image is patched by its tooling image's apt, which needs a sandbox: "
            "use --sandbox auto, bwrap or proot"
        )
    if distroless:
        assert sandbox is not None
        from ocipatch.distro.deb.tooling import distroless_patcher

        unpacked.snap.result()  # the tooling image's apt works on the tree from the start

        patcher = distroless_patcher(
            ctx,
            tooling_image=opts.tooling_image,
            osr=osr,
            platform=image.platform,
            rootfs=rootfs,
            ownership=own,
            sandbox=sandbox,
            apt_config=apt_config,
            work=work,
            progress=progress,
        )
    elif sandbox is None:
        progress.step("Installing directly (--sandbox none): no maintainer script will run")
        patcher = DpkgDirectPatcher(
            rootfs,
            own,
            DirectConfig(ctx.cache.work_dir("repos"), opts.repo_mirrors, opts.insecure_repos),
            planned=ahead.install_set if ahead is not None else None,
        )
    else:
        progress.step(f"Running apt in {sandbox.name}")
        patcher = DpkgPatcher(
            rootfs,
            AptRunner(rootfs, sandbox, apt_config),
            planned=ahead.install_set if ahead is not None else None,
            empty_lists=work / "no-lists",
        )
    plan = patcher.plan(installed, requirements, ignore_errors=opts.ignore_errors)
    result.plan = plan
    result.skipped += [(i.name, i.reason) for i in plan.skipped]
    if opts.dry_run:
        result.status = "dry-run"
        result.seconds = time.monotonic() - started
        return result
    if not plan.updates:
        return _up_to_date(
            opts,
            result,
            versions,
            image,
            osr,
            started,
            progress,
            "Nothing to patch: no newer packages",
        )
    if ahead is not None:
        ahead.wait()
    snap = unpacked.snap.result()  # before anything writes to the tree
    with room_in_scratch(work):
        outcome = patcher.apply(plan)
    failed = patcher.verify(plan, ignore_errors=opts.ignore_errors)
    result.skipped += [(i.name, i.reason) for i in failed]
    result.updated = outcome.updated
    result.notes += outcome.notes

    progress.step("Writing the patch layer")
    changes = diff(snap, rootfs, exclude, ownership=own)
    replayed: dict[str, FileMeta] = {}
    if keep < len(image.layers) and _package_dated(image):
        # A re-patch: the previous patch layer's package files keep the times it gave them.
        replayed = replayed_meta(view, keep, packaged_paths(rootfs))
    changes = with_package_metadata(changes, rootfs, outcome.debs, memo, replayed=replayed)
    result.notes += _conffile_notes(changes)
    mtime = clock.time(newest_time(changes, outcome.debs, memo))
    layer = _write_patch_layer(ctx, changes, opts.compression, mtime)
    new_image = _assemble(ctx, image, keep, layer, opts.compression, result.updated, dest_ref)
    result.layer_size = layer[2]
    progress.step(f"Writing {dest_ref}")
    result.image_digest = write_image(new_image, dest_ref, ctx.registry_options)
    result.image = dest_ref
    if planning is not None:
        try:
            key = planning.result()
        except Exception as e:  # the cache is an optimisation: never fail a done patch
            log.debug("result cache key not computed: %s", e)
    if key is not None:
        results.put(key, CachedResult(layer[0], layer[2], layer[1], _meta(result, plan)))

    return _finish(opts, result, osr, image, new_image, dest_ref, versions, started, progress)


def _conffile_notes(changes: list[Change]) -> list[str]:
    return [
        f"kept the image's /{c.path[: -len('.dpkg-dist')]}; the package's new version is /{c.path}"
        for c in changes
        if c.path.endswith(".dpkg-dist") and c.type == "file"
    ]


def _meta(result: PatchResult, plan: Plan) -> dict[str, Any]:
    """What a cache hit needs to report the same result as the run that made the layer."""
    return {
        "updated": result.updated,
        "skipped": result.skipped,
        "notes": result.notes,
        "plan": [{**i.to_json(), "vulnerabilities": list(i.vulnerabilities)} for i in plan.items],
    }


def _from_cache(
    ctx: Context,
    opts: PatchOptions,
    image: Image,
    keep: int,
    hit: CachedResult,
    result: PatchResult,
    dest_ref: ImageRef,
    osr: OsRelease | None,
    versions: _Versions,
    started: float,
    progress: Progress,
) -> PatchResult:
    meta = hit.meta
    result.updated = [(str(a), str(b), str(c)) for a, b, c in meta["updated"]]
    result.skipped = [(str(a), str(b)) for a, b in meta["skipped"]]
    result.notes = [
        *meta["notes"],
        "reused the patch layer of an identical earlier run (same base, same package versions)",
    ]
    plan = Plan(
        [
            PlanItem(
                d["name"],
                d["installed"],
                d["required"],
                d["available"],
                d["action"],
                d["reason"],
                tuple(d["vulnerabilities"]),
            )
            for d in meta["plan"]
        ]
    )
    result.plan = plan
    new_image = _assemble(
        ctx,
        image,
        keep,
        (hit.layer_digest, hit.diff_id, hit.layer_size),
        opts.compression,
        result.updated,
        dest_ref,
    )
    result.layer_size = hit.layer_size
    progress.step(f"Writing {dest_ref}")
    result.image_digest = write_image(new_image, dest_ref, ctx.registry_options)
    result.image = dest_ref
    return _finish(opts, result, osr, image, new_image, dest_ref, versions, started, progress)


@dataclass
class _Versions:
    """What the fixed vulnerabilities are read from: the report, and the package versions of
    the original image (below any earlier patch layer) and of the source, by name."""

    report: UpdateManifest | None
    base: dict[str, str]
    source: dict[str, str]
    compare: Comparator
    ecosystem: str

    def fixed(self, updated: list[tuple[str, str, str]]) -> list[Fixed]:
        """Every report fix the patch layer carries (this round's and earlier rounds')."""
        return fixed_by_patch(
            self.report, self.base, after_patch(self.source, updated), self.compare
        )


def _versions(
    report: UpdateManifest | None,
    pm: Dpkg,
    view: MergedView,
    image: Image,
    keep: int,
    installed: list[InstalledPackage],
) -> _Versions:
    cmp = comparator(pm.ecosystem)
    source = lowest_versions(((p.name, p.version) for p in installed), cmp)
    base = source
    if report is not None and keep < len(image.layers):
        # The original's packages: the merged base layers (indexed by now, the DB captured).
        below = pm.read_db(MergedView(image.layers[:keep], view.index_cache_dir))
        base = lowest_versions(((p.name, p.version) for p in below), cmp)
    return _Versions(report, base, source, cmp, pm.ecosystem)


def _up_to_date(
    opts: PatchOptions,
    result: PatchResult,
    versions: _Versions,
    image: Image,
    osr: OsRelease | None,
    started: float,
    progress: Progress,
    message: str,
) -> PatchResult:
    """Nothing to write; an image ocipatch patched before still carries its fixes: they are
    reported, and --vex states them for the source image itself."""
    result.status = "up-to-date"
    fixed = versions.fixed([])
    result.vulnerabilities_fixed = fixed_ids(fixed)
    if opts.vex is not None:
        if fixed:
            _write_vex(opts.vex, fixed, result.source, image.digest, image, osr, versions)
            result.notes.append(
                f"wrote the VEX for {result.source} ({image.digest}): its patch layer already "
                f"fixes {len(result.vulnerabilities_fixed)} of the report's vulnerabilities"
            )
        else:
            result.notes.append(_no_vex(versions))
    result.seconds = time.monotonic() - started
    progress.done(message)
    return result


def _no_vex(versions: _Versions) -> str:
    """Why --vex wrote nothing (OpenVEX needs at least one statement)."""
    if versions.report is None:
        return "no VEX written: without a report (-r) there are no vulnerabilities to state"
    return "no VEX written: no vulnerability of the report is fixed in this image by a patch layer"


def _finish(
    opts: PatchOptions,
    result: PatchResult,
    osr: OsRelease | None,
    image: Image,
    new_image: Image,
    dest_ref: ImageRef,
    versions: _Versions,
    started: float,
    progress: Progress,
) -> PatchResult:
    """What a written patch (made now or reused) reports: fixed ids, the VEX, the time."""
    fixed = versions.fixed(result.updated)
    result.vulnerabilities_fixed = fixed_ids(fixed)
    if opts.vex is not None:
        if fixed:
            _write_vex(opts.vex, fixed, dest_ref, new_image.digest, image, osr, versions)
        else:
            result.notes.append(_no_vex(versions))
    result.seconds = time.monotonic() - started
    progress.done(f"Patched {len(result.updated)} packages -> {dest_ref}")
    return result


def _write_patch_layer(
    ctx: Context, changes: list[Change], compression: str, mtime: int
) -> tuple[str, str, int]:
    """Write the layer into the blob cache, dated by the layer time; (digest, diff_id, size)."""
    tmp_dir = ctx.cache.work_dir("tmp")
    fd, name = runs.mkstemp(tmp_dir)
    try:
        with ctx.cache.room(), os.fdopen(fd, "wb") as out:
            info = write_layer(changes, out, compression, clamp_mtime=mtime)
        ctx.cache.put_file(info.digest, Path(name))
    finally:
        Path(name).unlink(missing_ok=True)  # put_file moved it, or the layer was not written
    return info.digest, info.diff_id, info.size


def _assemble(
    ctx: Context,
    image: Image,
    keep: int,
    layer: tuple[str, str, int],
    compression: str,
    updated: list[tuple[str, str, str]],
    dest_ref: ImageRef,
) -> Image:
    """The patched image as it will be written (OCI when dest_ref or the layer needs it, so
    its digest is the one the VEX names)."""
    digest, diff_id, size = layer
    desc = Descriptor(mt.layer_media_type(compression, image.is_docker), digest, size)
    summary = ", ".join(f"{n} {b}" for n, _, b in updated[:20])
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
        image, desc, diff_id, ctx.cache, history=history, labels=labels, keep_layers=keep
    )
    return for_destination(appended, dest_ref)


def _original_digest(image: Image, keep: int) -> str:
    labels = (image.config.get("config") or {}).get("Labels") or {}
    if keep < len(image.layers) and labels.get(LABEL_BASE_DIGEST):
        return str(labels[LABEL_BASE_DIGEST])
    return image.digest


def _write_vex(
    path: Path,
    fixed: list[Fixed],
    ref: ImageRef,
    digest: str,
    image: Image,
    osr: OsRelease | None,
    versions: _Versions,
) -> None:
    """One `fixed` statement per vulnerability, product the image `ref` at `digest`."""
    from ocipatch.vex import build_vex, fixed_vulns, oci_purl, package_purl, vex_json

    arch = image.platform.architecture
    pairs = [
        (
            f.update,
            package_purl(
                versions.ecosystem,
                osr.id if osr else "debian",
                f.update.name,
                f.version,
                arch,
                osr.version_id if osr else None,
            ),
        )
        for f in fixed
    ]
    if ref.is_registry:
        product = oci_purl(ref.name, digest, ref.tag, arch)
    else:
        product = oci_purl("", digest, ref.tag, arch, name=Path(ref.path).stem or "image")
    path.write_text(vex_json(build_vex(product, fixed_vulns(pairs))))
