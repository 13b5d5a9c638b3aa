"""`ocipatch patch` input errors: each a single clear line and its documented exit code, and
nothing written. These fail before any package manager runs, so a synthetic image suffices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import synth
from tests.archive import trivy_report
from tests.test_cli import run
from tests.test_image import debianish_layers

SHARED = Path(__file__).resolve().parents[2] / "shared" / "scanner-reports"


@pytest.fixture
def layout(tmp_path: Path) -> synth.Built:
    return synth.write_layout(tmp_path / "layout", debianish_layers(), tag="v1")


def error_lines(stderr: str) -> list[str]:
    """The error lines (progress lines may come before them)."""
    return [ln for ln in stderr.splitlines() if ln.startswith("ocipatch: error:")]


def report(tmp_path: Path, name: str, content: object) -> Path:
    p = tmp_path / name
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    return p


GOOD = trivy_report({"libssl3": "3.0.11-1~deb12u2"}, {"libssl3": "3.0.99-1~deb12u1"})


def _variant(**meta: object) -> dict[str, object]:
    doc = json.loads(json.dumps(GOOD))
    doc["Metadata"].update(meta)  # type: ignore[union-attr]
    return doc


@pytest.mark.parametrize(
    ("name", "content", "code", "needle"),
    [
        ("empty.json", "", 10, "is empty"),
        ("notjson.json", "this is not json", 10, "is not JSON"),
        ("schema.json", {"SchemaVersion": 99, "Results": []}, 10, "SchemaVersion"),
        ("list.json", [1, 2, 3], 10, "report"),
        (
            "ubuntu.json",
            _variant(OS={"Family": "ubuntu", "Name": "22.04"}),
            10,
            "the report is for an ubuntu 22.04 image",
        ),
        ("debian11.json", _variant(OS={"Family": "debian", "Name": "11.2"}), 10, "debian 11"),
        ("arm.json", _variant(ImageConfig={"architecture": "arm64", "os": "linux"}), 10, "arm64"),
    ],
)
def test_bad_reports(
    layout: synth.Built, tmp_path: Path, name: str, content: object, code: int, needle: str
) -> None:
    r = run(
        "patch",
        "-i",
        f"oci:{layout.layout}:v1",
        "-r",
        str(report(tmp_path, name, content)),
        "--cache-dir",
        str(tmp_path / "c"),
    )
    assert r.returncode == code, r.stderr
    errors = error_lines(r.stderr)
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in r.stderr, r.stderr
    assert json.loads((layout.layout / "index.json").read_text())["manifests"][0][
        "annotations"
    ] == {"org.opencontainers.image.ref.name": "v1"}, "nothing written next to the source"


def test_missing_report_and_directory(layout: synth.Built, tmp_path: Path) -> None:
    r = run(
        "patch",
        "-i",
        f"oci:{layout.layout}:v1",
        "-r",
        str(tmp_path / "nope.json"),
        "--cache-dir",
        str(tmp_path / "c"),
    )
    assert r.returncode == 10 and "does not exist" in r.stderr
    r = run(
        "patch",
        "-i",
        f"oci:{layout.layout}:v1",
        "-r",
        str(tmp_path),
        "--cache-dir",
        str(tmp_path / "c"),
    )
    assert r.returncode == 10 and "multi-platform" in r.stderr


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared scanner reports not present")
@pytest.mark.parametrize("name", ["copa_alpine-report.json", "trivy_rockylinux-8.json.golden"])
def test_reports_of_other_distributions_are_a_mismatch(
    layout: synth.Built, tmp_path: Path, name: str
) -> None:
    r = run(
        "patch",
        "-i",
        f"oci:{layout.layout}:v1",
        "-r",
        str(SHARED / name),
        "--cache-dir",
        str(tmp_path / "c"),
    )
    assert r.returncode == 10 and "scan this image" in r.stderr, r.stderr
    assert len(error_lines(r.stderr)) == 1 and "Traceback" not in r.stderr


def test_apk_image_without_repositories(tmp_path: Path) -> None:
    """An apk image is patched by ocipatch's own installer; with no repository to patch from
    it says where to add one (the resolve code)."""
    layers = [
        [
            synth.d("etc"),
            synth.f("etc/os-release", "ID=alpine\nVERSION_ID=3.19.1\n"),
            synth.d("lib"),
            synth.d("lib/apk"),
            synth.d("lib/apk/db"),
            synth.f("lib/apk/db/installed", "P:musl\nV:1.2.4-r2\n"),
        ]
    ]
    built = synth.write_layout(tmp_path / "alpine", layers, tag="3")
    r = run("patch", "-i", f"oci:{built.layout}:3", "--cache-dir", str(tmp_path / "c"))
    assert r.returncode == 11 and "/etc/apk/repositories" in r.stderr, r.stderr
    assert len(error_lines(r.stderr)) == 1 and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--timeout", "soon"], "invalid --timeout"),
        (["--repo-mirror", "nothing"], "invalid --repo-mirror"),
        (["--sandbox", "docker"], "unknown sandbox"),
    ],
)
def test_bad_flags(layout: synth.Built, tmp_path: Path, args: list[str], needle: str) -> None:
    r = run("patch", "-i", f"oci:{layout.layout}:v1", *args, "--cache-dir", str(tmp_path / "c"))
    assert r.returncode == 2 and needle in r.stderr, r.stderr


def test_digest_only_reference_needs_a_tag(tmp_path: Path) -> None:
    r = run("patch", "-i", "127.0.0.1:9/app@sha256:" + "a" * 64, "--cache-dir", str(tmp_path / "c"))
    assert r.returncode == 2 and "pass -t TAG" in r.stderr


def test_report_without_fixes_reads_no_layer(layout: synth.Built, tmp_path: Path) -> None:
    """A report whose vulnerabilities have no fixed version asks for nothing: the answer is
    "up-to-date" (exit 0) from the manifest alone; no layer is unpacked or indexed."""
    doc = json.loads(json.dumps(GOOD))
    for result in doc["Results"]:
        for v in result.get("Vulnerabilities", []):
            v["FixedVersion"] = ""
    cache = tmp_path / "c"
    r = run(
        "patch",
        "-i",
        f"oci:{layout.layout}:v1",
        "-r",
        str(report(tmp_path, "nofix.json", doc)),
        "--json",
        "--cache-dir",
        str(cache),
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "up-to-date"
    assert "no package with a fixed version" in r.stderr
    assert not list(cache.rglob("*.index.json"))
