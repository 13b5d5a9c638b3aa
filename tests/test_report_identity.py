"""Which image a report was made from (reports/identity.py), and which of its vulnerabilities a
patch layer fixes (reports/fixes.py): real Trivy reports and every branch of the rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ocipatch.distro.deb.rules import compare_deb
from ocipatch.errors import ReportError
from ocipatch.oci.reference import parse_reference
from ocipatch.reports.fixes import after_patch, fixed_by_patch, fixed_ids, lowest_versions
from ocipatch.reports.identity import (
    BASE_DIGEST_LABEL,
    BASE_LAYERS_LABEL,
    ReportIdentity,
    SourceIdentity,
    Verdict,
    assess,
    looks_like_path,
    match,
    source_identity,
    trivy_identity,
)
from ocipatch.reports.load import load_report, parse_report
from ocipatch.reports.model import PackageUpdate, UpdateManifest

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout (/work/main), or two levels up from a worktree (/work/wt/NAME).
REAL = next(
    (p / "shared" / "scanner-reports" for p in ROOT.parents[:2] if (p / "shared").is_dir()),
    ROOT.parent / "shared" / "scanner-reports",
)
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} (shared reports) is absent")


def d(n: int) -> str:
    return f"sha256:{n:064x}"


MANIFEST, INDEX, CONFIG = d(1), d(2), d(3)
LAYERS = (d(10), d(11))
PATCH_LAYER = d(12)


def source(
    text: str = "localhost:5000/team/app:1.0",
    *,
    digests: tuple[str, str | None, str] = (MANIFEST, INDEX, CONFIG),
    layers: tuple[str, ...] = LAYERS,
    keep: int | None = None,
    labels: dict[str, Any] | None = None,
) -> SourceIdentity:
    manifest, index, config = digests
    return source_identity(
        parse_reference(text),
        manifest,
        index,
        config,
        list(layers),
        len(layers) if keep is None else keep,
        labels or {},
    )


def patched_source(text: str = "localhost:5000/team/app:1.0-patched") -> SourceIdentity:
    """An image ocipatch made from the one above: its labels name the original's manifest."""
    return source(
        text,
        digests=(d(21), None, d(23)),
        layers=(*LAYERS, PATCH_LAYER),
        keep=len(LAYERS),
        labels={BASE_DIGEST_LABEL: MANIFEST, BASE_LAYERS_LABEL: str(len(LAYERS))},
    )


def trivy(**meta: Any) -> ReportIdentity:
    doc: dict[str, Any] = {"SchemaVersion": 2, "Metadata": {}}
    if "ArtifactName" in meta:
        doc["ArtifactName"] = meta.pop("ArtifactName")
    doc["Metadata"].update(meta)
    return trivy_identity(doc)


def verdict(report: ReportIdentity | None, src: SourceIdentity) -> Verdict:
    return match(report, src).verdict


# --- reading the identity of real reports -----------------------------------------------------


@needs_real
def test_real_trivy_reports() -> None:
    alpine = load_report(REAL / "copa_alpine-report.json").identity
    assert alpine is not None
    # ArtifactName, ImageID, RepoTags and RepoDigests all name one digest (containerd store).
    assert alpine.digests == {
        "sha256:21dc6063fd678b478f57c0e13f47560d0ea4eeba26dfc947b2a4f81f686b9f45"
    }
    assert alpine.name.startswith("alpine:3.21.0@")
    assert "alpine:3.21.0" in alpine.references

    mariner = load_report(REAL / "copa_mariner.json").identity
    assert mariner is not None
    assert mariner.digests == {
        "sha256:2aeded7c94c8b5d29f734dae5a9300f4f728b7d69a918be0d155d9ea1b57fb02",  # ImageID
        "sha256:f550c5428df17b145851ad75983aca6d613ad4b51ca7983b2a83e67d0ac91a5d",  # RepoDigests
    }
    assert mariner.references == ("mcr.microsoft.com/cbl-mariner/distroless/base:2.0.20220527",)
    assert len(mariner.diff_ids) == 1

    buster = load_report(REAL / "trivy_debian-buster.json.golden").identity
    assert buster is not None
    # A scanned tar: ArtifactName is a path, not a reference.
    assert buster.paths == ("testdata/fixtures/images/debian-buster.tar.gz",)
    assert buster.references == ("ghcr.io/aquasecurity/trivy-test-images:debian-buster",)
    assert buster.digests == {
        "sha256:c2c03a296d2329a4f3ab72a7bf38b78a8a80108204d326b0139d6af700e152d1"
    }


@needs_real
def test_real_report_against_its_own_image_and_another() -> None:
    mariner = load_report(REAL / "copa_mariner.json").identity
    own = source(
        "mcr.microsoft.com/cbl-mariner/distroless/base:2.0.20220527",
        digests=(
            "sha256:f550c5428df17b145851ad75983aca6d613ad4b51ca7983b2a83e67d0ac91a5d",
            None,
            d(99),
        ),
    )
    assert verdict(mariner, own) is Verdict.SAME
    # The same repository and tag at another digest (the tag moved on): another image.
    moved = source("mcr.microsoft.com/cbl-mariner/distroless/base:2.0.20220527")
    assert verdict(mariner, moved) is Verdict.OTHER


def test_native_reports_name_no_image(tmp_path: Path) -> None:
    doc = {
        "apiVersion": "v1alpha2",
        "metadata": {"os": {"type": "debian", "version": "12"}, "config": {"arch": "amd64"}},
        "osupdates": [],
    }
    manifest = parse_report(doc)
    assert manifest.identity is None
    assert verdict(manifest.identity, source()) is Verdict.UNKNOWN


def test_malformed_identity_fields_are_no_evidence() -> None:
    ident = trivy(
        ImageID=5,
        RepoDigests="not-a-digest",
        RepoTags=[None, 3],
        DiffIDs={"a": 1},
        ImageConfig={"config": {"Labels": ["x"]}},
    )
    assert ident.empty
    assert verdict(ident, source()) is Verdict.UNKNOWN
    assert verdict(trivy(), source()) is Verdict.UNKNOWN


def test_paths_and_references_told_apart() -> None:
    for p in ("/tmp/a.tar", "./img", "../x/y", "app.tar", "app.tar.gz", "oci:dir:tag", "~/i"):
        assert looks_like_path(p), p
    for r in ("debian:12", "localhost:5000/app", "ghcr.io/a/b:1"):
        assert not looks_like_path(r), r


# --- digests ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "meta",
    [
        {"ImageID": CONFIG},  # the config digest (docker, podman, a tar, a layout)
        {"ImageID": MANIFEST},  # the manifest digest (Docker's containerd store)
        {"RepoDigests": [f"localhost:5000/team/app@{MANIFEST}"]},
        {"RepoDigests": [f"127.0.0.1:5000/team/app@{INDEX}"]},  # the tag's index
        {"ArtifactName": f"localhost:5000/team/app:1.0@{MANIFEST.upper().replace('SHA', 'sha')}"},
        {"ImageID": d(77), "RepoDigests": [f"other/app@{INDEX}"]},  # any one digest suffices
    ],
)
def test_a_shared_digest_is_the_same_image(meta: dict[str, Any]) -> None:
    assert verdict(trivy(**meta), source()) is Verdict.SAME


def test_digests_that_differ_are_another_image_whatever_the_name() -> None:
    report = trivy(
        ArtifactName="localhost:5000/team/app:1.0",
        ImageID=d(50),
        RepoDigests=[f"localhost:5000/team/app@{d(51)}"],
        RepoTags=["localhost:5000/team/app:1.0"],
    )
    found = match(report, source())
    assert found.verdict is Verdict.OTHER and "digests differ" in found.why


def test_same_layers_are_the_same_packages() -> None:
    # A config-only change (a label) keeps every layer: the same files, the same packages.
    report = trivy(ImageID=d(50), DiffIDs=list(LAYERS))
    assert verdict(report, source()) is Verdict.SAME
    assert verdict(trivy(ImageID=d(50), DiffIDs=[LAYERS[0]]), source()) is Verdict.OTHER


# --- the same product line --------------------------------------------------------------------


def test_report_of_the_original_for_its_patched_image() -> None:
    # Trivy on the original: its manifest digest, which the patched image's label names.
    by_label = trivy(RepoDigests=[f"localhost:5000/team/app@{MANIFEST}"])
    assert verdict(by_label, patched_source()) is Verdict.SAME_LINE
    # Only the config digest (a tar scan): the layers below the patch layer tell.
    by_layers = trivy(ImageID=d(60), DiffIDs=list(LAYERS))
    found = match(by_layers, patched_source())
    assert found.verdict is Verdict.SAME_LINE and "base layers" in found.why


def test_report_of_a_patched_image_for_its_original_and_siblings() -> None:
    labels = {"config": {"Labels": {BASE_DIGEST_LABEL: MANIFEST, BASE_LAYERS_LABEL: "2"}}}
    report = trivy(ImageID=d(70), DiffIDs=[*LAYERS, d(71)], ImageConfig=labels)
    assert report.base_digest == MANIFEST and report.base_diff_ids == LAYERS
    assert verdict(report, source()) is Verdict.SAME_LINE  # its original
    assert verdict(report, patched_source()) is Verdict.SAME_LINE  # another patch of it
    # The labels alone (no layers listed) say it too.
    assert verdict(trivy(ImageID=d(70), ImageConfig=labels), source()) is Verdict.SAME_LINE
    # A patch of some other original is another image.
    other = {"config": {"Labels": {BASE_DIGEST_LABEL: d(80), BASE_LAYERS_LABEL: "2"}}}
    report = trivy(ImageID=d(70), DiffIDs=[d(81), d(82), d(71)], ImageConfig=other)
    assert verdict(report, source()) is Verdict.OTHER


# --- references, when no digest is given ------------------------------------------------------


@pytest.mark.parametrize(
    ("report_name", "image", "expected"),
    [
        ("127.0.0.1:5000/team/app:1.0", "localhost:5000/team/app:1.0", Verdict.SAME),
        ("localhost:5000/team/app:1.0", "[::1]:5000/team/app:1.0", Verdict.SAME),
        ("debian:12", "docker.io/library/debian:12", Verdict.SAME),
        ("index.docker.io/library/debian:12", "debian:12", Verdict.SAME),
        ("docker.io/debian", "registry-1.docker.io/library/debian:latest", Verdict.SAME),
        ("debian:12", "debian:11", Verdict.OTHER),
        ("debian:12", "ubuntu:12", Verdict.OTHER),
        ("localhost:5000/team/app:1.0", "localhost:5001/team/app:1.0", Verdict.OTHER),
        ("localhost:5000/team/app:1.0", f"localhost:5000/team/app@{MANIFEST}", Verdict.SAME),
        ("localhost:5000/team/app:1.0", "oci:/tmp/layout:1.0", Verdict.UNKNOWN),
        ("/tmp/app.tar", "localhost:5000/team/app:1.0", Verdict.UNKNOWN),
    ],
)
def test_references(report_name: str, image: str, expected: Verdict) -> None:
    assert (
        verdict(trivy(ArtifactName=report_name), source(image, digests=(d(90), None, d(91))))
        is expected
    )


def test_repo_tags_count_as_references() -> None:
    report = trivy(ArtifactName="/scans/app.tar", RepoTags=["localhost:5000/team/app:2.0"])
    assert verdict(report, source()) is Verdict.OTHER
    report = trivy(ArtifactName="/scans/app.tar", RepoTags=["127.0.0.1:5000/team/app:1.0"])
    assert verdict(report, source()) is Verdict.SAME


def test_a_patched_tag_of_the_reported_tag_is_the_same_line() -> None:
    report = trivy(ArtifactName="localhost:5000/team/app:1.0")
    assert verdict(report, patched_source()) is Verdict.SAME_LINE
    # The same tag name on an image ocipatch did not make is only a name: another image.
    assert verdict(report, source("localhost:5000/team/app:1.0-patched")) is Verdict.OTHER


def test_a_scanned_layout_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = tmp_path / "layout"
    layout.mkdir()
    monkeypatch.chdir(tmp_path)
    report = trivy(ArtifactName="./layout")
    assert verdict(report, source(f"oci:{layout}:1")) is Verdict.SAME
    assert verdict(report, source(f"oci:{tmp_path / 'other'}:1")) is Verdict.UNKNOWN
    spelled = trivy(ArtifactName=f"oci:{layout}:1")
    assert verdict(spelled, source(f"oci:{layout}/.:2")) is Verdict.SAME


def test_a_bare_image_id_is_a_sha256_digest() -> None:
    assert verdict(trivy(ImageID=CONFIG.split(":")[1].upper()), source()) is Verdict.SAME


# --- what a patch does with it ----------------------------------------------------------------


def test_assess() -> None:
    other = trivy(ArtifactName="localhost:5000/team/other:3", ImageID=d(50))
    src = source()
    said = assess(other, src, report_path="r.json", vex=False, force=False)
    assert said.note is None and said.warning is not None
    assert "localhost:5000/team/other:3" in said.warning and str(src.ref) in said.warning
    with pytest.raises(ReportError) as e:
        assess(other, src, report_path="r.json", vex=True, force=False)
    msg = str(e.value)
    assert "\n" not in msg and "r.json" in msg and "--force-report" in msg, msg
    assert "another image" in msg and "wrong product" in msg, msg
    forced = assess(other, src, report_path="r.json", vex=True, force=True)
    assert forced.warning == said.warning

    line = trivy(RepoDigests=[f"localhost:5000/team/app@{MANIFEST}"])
    said = assess(line, patched_source(), report_path="r.json", vex=True, force=False)
    assert said.warning is None and said.note is not None
    assert "original" in said.note, said.note

    same = trivy(ImageID=CONFIG)
    assert assess(same, src, report_path="r.json", vex=True, force=False).warning is None
    assert assess(None, src, report_path="r.json", vex=True, force=False).note is None


# --- which vulnerabilities a patch layer fixes ------------------------------------------------


def _manifest(*updates: tuple[str, str, tuple[str, ...]]) -> UpdateManifest:
    return UpdateManifest(
        "debian",
        "12",
        "amd64",
        None,
        [PackageUpdate(n, "0", fixed, ids) for n, fixed, ids in updates],
    )


def test_fixed_by_patch_compares_the_original_with_the_result() -> None:
    report = _manifest(
        ("openssl", "3.0.15-1~deb12u1", ("CVE-1",)),  # fixed by round 1
        ("libc6", "2.36-9+deb12u9", ("CVE-2", "CVE-3")),  # fixed by round 2
        ("curl", "7.88.1-10+deb12u8", ("CVE-4",)),  # already fixed in the original
        ("zlib1g", "1:1.2.13.dfsg-1+b1", ("CVE-5",)),  # not reached
        ("gone", "1.0", ("CVE-6",)),  # not installed
        ("odd", "1.0", ("CVE-7",)),  # a version the ordering cannot read
    )
    base = {
        "openssl": "3.0.11-1~deb12u2",
        "libc6": "2.36-9+deb12u4",
        "curl": "7.88.1-10+deb12u8",
        "zlib1g": "1:1.2.13.dfsg-1",
        "odd": "not a version!",
    }
    round1 = {**base, "openssl": "3.0.15-1~deb12u1"}  # the source: patched once
    updated = [("libc6", "2.36-9+deb12u4", "2.36-9+deb12u9"), ("libnew", "", "1.0")]
    final = after_patch(round1, updated)
    assert final["libc6"] == "2.36-9+deb12u9" and final["libnew"] == "1.0"
    fixed = fixed_by_patch(report, base, final, compare_deb)
    assert [(f.update.name, f.version) for f in fixed] == [
        ("openssl", "3.0.15-1~deb12u1"),
        ("libc6", "2.36-9+deb12u9"),
    ]
    assert fixed_ids(fixed) == ["CVE-1", "CVE-2", "CVE-3"]
    # Up to date, nothing new this round: the earlier round's fix is still the layer's.
    assert fixed_ids(fixed_by_patch(report, base, round1, compare_deb)) == ["CVE-1"]
    # An image nobody patched fixes nothing.
    assert fixed_by_patch(report, base, base, compare_deb) == []
    assert fixed_by_patch(None, base, final, compare_deb) == []


def test_lowest_versions() -> None:
    pairs = [("libc6", "2.36-9+deb12u9"), ("libc6", "2.36-9+deb12u4"), ("a", "1"), ("a", "!")]
    assert lowest_versions(pairs, compare_deb) == {"libc6": "2.36-9+deb12u4", "a": "1"}


def test_report_identity_survives_loading(tmp_path: Path) -> None:
    doc = {
        "SchemaVersion": 2,
        "ArtifactName": "localhost:5000/team/app:1.0",
        "Metadata": {
            "OS": {"Family": "debian", "Name": "12.5"},
            "ImageID": CONFIG,
            "ImageConfig": {"architecture": "amd64"},
        },
        "Results": [],
    }
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    ident = load_report(path).identity
    assert ident is not None and ident.digests == {CONFIG}
    assert verdict(ident, source()) is Verdict.SAME
