"""Issue #9: the VEX after a re-patch carries the fixes of every round, and a report about another
image is warned about (and refused with --vex unless --force-report).

The hermetic set-up of tests/test_patch_hermetic.py (a Debian 12 image with tiny `ocp-*`
packages at 1.0, a signed loopback apt repository with 2.0) in a real registry. The reports
carry the identity Trivy itself reads from the images (trivy, offline, license scanner only:
no vulnerability database needed), with the CVE entries added; the VEX is checked against the
OpenVEX schema and its product against skopeo's digest of the image.
"""

# The hermetic module's `env` fixture is imported and taken as a parameter by the tests.
# ruff: noqa: F811

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jsonschema
import pytest

from tests.archive import trivy_report
from tests.plugins.images import TRIVY, skopeo
from tests.test_patch_hermetic import (  # the module fixture `env` is shared from there
    Env,
    env,  # noqa: F401
    ocipatch,
    one_line_error,
    patched,
    tag_absent,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = next(
    (
        p / "shared" / "schemas" / "openvex_json_schema_0.2.0.json"
        for p in ROOT.parents[:2]
        if (p / "shared" / "schemas").is_dir()
    ),
    ROOT.parent / "shared" / "schemas" / "openvex_json_schema_0.2.0.json",
)
FULL = {"ocp-dep": "2.0", "ocp-lib": "2.0", "ocp-zstd": "2.0"}
# trivy_report numbers the CVEs by sorted package name: the full report's IDs.
CVE = {"ocp-dep": "CVE-2099-0000", "ocp-lib": "CVE-2099-0001", "ocp-zstd": "CVE-2099-0002"}
IDENTITY_FIELDS = ("ImageID", "RepoDigests", "RepoTags", "DiffIDs", "ImageConfig")


def trivy_identity(target: list[str], work: Path) -> dict[str, Any]:
    """ArtifactName and the identity fields of Metadata, as Trivy reports them for `target`."""
    out = work / "trivy-identity.json"
    subprocess.run(
        [
            str(TRIVY), "image", "--format", "json", "--quiet", "--scanners", "license",
            "--skip-db-update", "--offline-scan", "--cache-dir", str(work / "trivy-cache"),
            "-o", str(out), *target,
        ],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    doc = json.loads(out.read_text())
    meta = {k: v for k, v in doc["Metadata"].items() if k in IDENTITY_FIELDS and v}
    return {"ArtifactName": doc["ArtifactName"], "Metadata": meta}


def identity_of_registry_image(env: Env, tag: str) -> dict[str, Any]:
    """Trivy pulling the image from the (plain-HTTP) registry: RepoDigests, ImageID, DiffIDs."""
    ident = trivy_identity(
        ["--image-src", "remote", "--insecure", env.dest(tag)], env.work / f"trivy-{tag}"
    )
    assert ident["Metadata"].get("ImageID"), ident
    return ident


def identity_of_layout(layout: Path, tag: str, work: Path) -> dict[str, Any]:
    ident = trivy_identity(["--input", f"{layout}"], work)
    assert ident["Metadata"].get("ImageID") and ident["Metadata"].get("DiffIDs"), ident
    return ident


def write_report(
    env: Env, name: str, ident: dict[str, Any] | None, only: tuple[str, ...] | None = None
) -> Path:
    """A Trivy report of the full fix set (one CVE per package), its entries cut to `only`."""
    doc = trivy_report(
        env.installed,
        FULL,
        artifact=ident["ArtifactName"] if ident else None,
        metadata=ident["Metadata"] if ident else None,
    )
    if only is not None:
        vulns = doc["Results"][0]["Vulnerabilities"]  # type: ignore[index]
        vulns[:] = [v for v in vulns if v["PkgName"] in only]
    path = env.work / f"{name}.json"
    path.write_text(json.dumps(doc))
    path.chmod(0o644)
    return path


def digest_of(env: Env, tag: str) -> str:
    info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{env.dest(tag)}"))
    return str(info["Digest"])


def layers_of(env: Env, tag: str) -> list[str]:
    info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{env.dest(tag)}"))
    return list(info["Layers"])


def product(env: Env, tag: str) -> str:
    """The purl a VEX must name for the image at env.dest(tag), from skopeo's digest."""
    repo_url = quote(env.repo, safe=":")
    name = env.repo.rsplit("/", 1)[-1]
    return f"pkg:oci/{name}@{digest_of(env, tag)}?arch=amd64&repository_url={repo_url}&tag={tag}"


def read_vex(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    assert SCHEMA.is_file(), f"{SCHEMA}: the OpenVEX schema (../shared/schemas) is missing"
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()))
    return doc


def statements(doc: dict[str, Any]) -> dict[str, list[str]]:
    """vulnerability -> subcomponent purls; every statement `fixed`, one product."""
    out = {}
    for st in doc["statements"]:
        assert st["status"] == "fixed"
        assert len(st["products"]) == 1
        out[st["vulnerability"]["name"]] = [s["@id"] for s in st["products"][0]["subcomponents"]]
    return out


def products(doc: dict[str, Any]) -> set[str]:
    return {p["@id"] for st in doc["statements"] for p in st["products"]}


def deb(name: str, version: str) -> str:
    return f"pkg:deb/debian/{name}@{version}?arch=amd64&distro=debian-12"


@pytest.fixture(scope="module")
def original(env: Env) -> dict[str, Any]:
    return identity_of_registry_image(env, "1")


def test_vex_after_a_repatch_lists_every_round(env: Env, original: dict[str, Any]) -> None:
    """Round 1 fixes ocp-lib; round 2 (the patched image, the full report) the rest: its VEX
    states all three fixed, for the new image; a cache hit and an up-to-date run say the same."""
    assert any(d.endswith("@" + digest_of(env, "1")) for d in original["Metadata"]["RepoDigests"])
    cache = env.work / "cache-vex"
    part = write_report(env, "vex-part", original, only=("ocp-lib",))
    full = write_report(env, "vex-full", original)
    vex1, vex2, vex2b, vex3 = (env.work / f"vex{n}.json" for n in ("1", "2", "2b", "3"))

    first = patched(
        env, "-i", env.ref, "-r", str(part), "--vex", str(vex1), "-t", "vex-r1", cache=cache
    )
    assert first["vulnerabilities_fixed"] == [CVE["ocp-lib"]]
    assert first["notes"] == [], "the report is of this very image: nothing to say"
    assert statements(read_vex(vex1)) == {CVE["ocp-lib"]: [deb("ocp-lib", "2.0")]}
    assert products(read_vex(vex1)) == {product(env, "vex-r1")}

    r = ocipatch(
        env,
        "-i",
        env.dest("vex-r1"),
        "-r",
        str(full),
        "--vex",
        str(vex2),
        "-t",
        "vex-r2",
        cache=cache,
    )
    assert r.returncode == 0, r.stderr
    assert "WARNING" not in r.stderr
    second = json.loads(r.stdout)
    assert second["status"] == "patched"
    assert {u["name"] for u in second["updated"]} == {"ocp-dep", "ocp-newdep", "ocp-zstd"}
    assert second["vulnerabilities_fixed"] == sorted(CVE.values()), "both rounds' CVEs"
    assert any("original" in n for n in second["notes"]), second["notes"]
    doc = read_vex(vex2)
    assert statements(doc) == {
        CVE["ocp-dep"]: [deb("ocp-dep", "2.0")],
        CVE["ocp-lib"]: [deb("ocp-lib", "2.0")],
        CVE["ocp-zstd"]: [deb("ocp-zstd", "2.0")],
    }
    assert products(doc) == {product(env, "vex-r2")}
    assert second["image"]["digest"] in next(iter(products(doc)))
    layers = layers_of(env, "vex-r2")
    assert layers[:-1] == env.layers and len(layers) == len(env.layers) + 1, "one patch layer"

    # The same patch again reuses its layer (result cache): the same VEX.
    again = patched(
        env,
        "-i",
        env.dest("vex-r1"),
        "-r",
        str(full),
        "--vex",
        str(vex2b),
        "-t",
        "vex-r2b",
        cache=cache,
    )
    assert any("reused the patch layer" in n for n in again["notes"]), again["notes"]
    assert again["vulnerabilities_fixed"] == second["vulnerabilities_fixed"]
    assert again["image"]["digest"] == second["image"]["digest"]
    assert statements(read_vex(vex2b)) == statements(doc)
    assert products(read_vex(vex2b)) == {product(env, "vex-r2b")}

    # Nothing left to do: up to date, nothing written, and the VEX states what the image's
    # patch layer carries, for the image itself.
    done = patched(env, "-i", env.dest("vex-r2"), "-r", str(full), "--vex", str(vex3), cache=cache)
    assert done["status"] == "up-to-date"
    assert done["vulnerabilities_fixed"] == sorted(CVE.values())
    assert any("wrote the VEX for" in n for n in done["notes"]), done["notes"]
    assert statements(read_vex(vex3)) == statements(doc)
    assert products(read_vex(vex3)) == {product(env, "vex-r2")}
    assert tag_absent(env, "vex-r2-patched"), "nothing written"

    # Trivy's report of the patched image, used for its original: the same product line (the
    # label names the original), so a note, and the VEX is written for the new image.
    of_patched = write_report(env, "vex-of-patched", identity_of_registry_image(env, "vex-r1"))
    vex4 = env.work / "vex4.json"
    r = ocipatch(
        env, "-i", env.ref, "-r", str(of_patched), "--vex", str(vex4), "-t", "vex-o", cache=cache
    )
    assert r.returncode == 0 and "WARNING" not in r.stderr, r.stderr
    out = json.loads(r.stdout)
    assert any("patched from this one" in n for n in out["notes"]), out["notes"]
    assert statements(read_vex(vex4)) == statements(doc)
    assert products(read_vex(vex4)) == {product(env, "vex-o")}


def test_report_about_another_image(env: Env, original: dict[str, Any]) -> None:
    """A real Trivy identity of another image (the Debian base the test image is built on):
    a warning and a notes entry; with --vex exit 10 and nothing written; --force-report
    proceeds."""
    other = identity_of_layout(env.base, "12", env.work / "trivy-base")
    assert other["Metadata"]["ImageID"] != original["Metadata"]["ImageID"]
    report = write_report(env, "other", other)
    cache = env.work / "cache-other"
    before = digest_of(env, "1")

    vex = env.work / "other.vex.json"
    r = ocipatch(
        env, "-i", env.ref, "-r", str(report), "--vex", str(vex), "-t", "other-vex", cache=cache
    )
    msg = one_line_error(r, 10)
    assert "another image" in msg and env.ref in msg and "--force-report" in msg, msg
    assert str(report) in msg, msg
    assert not vex.exists(), "no VEX written"
    assert tag_absent(env, "other-vex"), "nothing pushed"
    assert digest_of(env, "1") == before, "the source is untouched"

    # A report naming another repository, no digest at all (hand-made): refused just the same.
    named = write_report(env, "named", {"ArtifactName": f"{env.repo}-other:1", "Metadata": {}})
    r = ocipatch(
        env, "-i", env.ref, "-r", str(named), "--vex", str(vex), "-t", "other-vex", cache=cache
    )
    assert "another image" in one_line_error(r, 10)

    r = ocipatch(env, "-i", env.ref, "-r", str(report), "-t", "other-warn", cache=cache)
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("WARNING:")]
    assert len(warnings) == 1 and "the report is about" in warnings[0], r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "patched"
    assert out["notes"][0] == warnings[0].removeprefix("WARNING: "), out["notes"]

    r = ocipatch(
        env, "-i", env.ref, "-r", str(report), "--vex", str(vex), "--force-report",
        "-t", "other-forced", cache=cache,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert sum(ln.startswith("WARNING:") for ln in r.stderr.splitlines()) == 1, r.stderr
    forced = json.loads(r.stdout)
    assert forced["vulnerabilities_fixed"] == sorted(CVE.values())
    assert products(read_vex(vex)) == {product(env, "other-forced")}
    shutil.rmtree(env.work / "trivy-base", ignore_errors=True)
