"""End to end: a real two-layer Debian 12 image in a real registry, patched from a Trivy report
whose fixed versions come from the archive's indices today, checked with skopeo, umoci, trivy
and the image's own dpkg. Also as an unprivileged user, and patched twice."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.archive import pending_updates, trivy_report
from tests.mtimes import check_layer_times, expected_layer_time, top_symlinks
from tests.plugins.images import skopeo, trivy_packages, umoci_unpack

ROOT = Path(__file__).resolve().parents[1]
OCIPATCH = ROOT / ".venv" / "bin" / "ocipatch"
# ../shared beside the checkout, or two levels up from a worktree (/work/wt/NAME).
SCHEMA = next(
    (
        p / "shared" / "schemas" / "openvex_json_schema_0.2.0.json"
        for p in ROOT.parents[:2]
        if (p / "shared" / "schemas").is_dir()
    ),
    ROOT.parent / "shared" / "schemas" / "openvex_json_schema_0.2.0.json",
)
FIRST = ("openssl", "libssl3")  # the first patch fixes these; the second, everything


def ocipatch(
    *args: str, user: str | None = None, home: Path | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [str(OCIPATCH), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "DOCKER_"))}
    if user is not None:
        cmd = [
            "setpriv",
            f"--reuid={user}",
            f"--regid={pwd.getpwnam(user).pw_gid}",
            "--clear-groups",
            *cmd,
        ]
        env["HOME"] = str(home)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env)


def patch_json(*args: str, **kw: Any) -> dict[str, Any]:
    r = ocipatch("patch", "--json", *args, **kw)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def image(debian_two_layer_layout: Path, registry: Any) -> dict[str, Any]:
    ref = f"{registry.host}/e2e/debian:12"
    skopeo(
        "copy",
        "-q",
        "--dest-tls-verify=false",
        f"oci:{debian_two_layer_layout}:12",
        f"docker://{ref}",
    )
    raw = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{ref}"))
    r = ocipatch(
        "inspect",
        "--json",
        ref,
        "--cache-dir",
        str(debian_two_layer_layout.parent / "inspect-cache"),
    )
    assert r.returncode == 0, r.stderr
    installed = {p["name"]: p["version"] for p in json.loads(r.stdout)["packages"]}
    needed = pending_updates(installed)
    assert set(FIRST) <= set(needed), "bookworm main lags bookworm-security for openssl today"
    return {
        "ref": ref,
        "host": registry.host,
        "layers": raw["Layers"],
        "installed": installed,
        "needed": needed,
    }


@pytest.fixture(scope="module")
def work() -> Iterator[Path]:
    # Outside pytest's 0700 base directory, so that the unprivileged run can reach it.
    d = Path(tempfile.mkdtemp(prefix="ocipatch-e2e-"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def write_report(path: Path, image: dict[str, Any], names: tuple[str, ...] | None) -> Path:
    fixed = {n: v for n, v in image["needed"].items() if names is None or n in names}
    path.write_text(json.dumps(trivy_report(image["installed"], fixed)))
    path.chmod(0o644)
    return path


def layer_members(layout: Path, digest: str) -> list[tarfile.TarInfo]:
    with tarfile.open(layout / "blobs" / "sha256" / digest.split(":")[1]) as t:
        return t.getmembers()


def check_patched(
    image: dict[str, Any], ref: str, expect: dict[str, str], tmp: Path
) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    layout = tmp / "layout"
    skopeo("copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:p")
    info = json.loads(skopeo("inspect", f"oci:{layout}:p"))
    assert info["Layers"][:-1] == image["layers"], "original layers are kept byte for byte"
    assert len(info["Layers"]) == len(image["layers"]) + 1, "exactly one patch layer"
    names = {m.name for m in layer_members(layout, info["Layers"][-1])}
    for banned in (
        "var/cache/apt/",
        "var/lib/apt/lists/",
        "var/log/",
        "tmp/",
        "var/cache/ocipatch",
    ):
        assert not any(n.startswith(banned) for n in names), banned
    assert not any(n.endswith(("-old", ".dpkg-old")) for n in names)
    seen = trivy_packages(layout, tmp)
    for name, version in expect.items():
        assert seen[name] == version, name
    if os.geteuid() == 0:
        root = umoci_unpack(layout, "p", tmp / "bundle")
        audit = subprocess.run(
            ["chroot", str(root), "dpkg", "--audit"], capture_output=True, text=True
        )
        assert audit.returncode == 0 and audit.stdout == "", audit.stdout
        verify = subprocess.run(
            ["chroot", str(root), "dpkg", "-V", *sorted(expect)], capture_output=True, text=True
        )
        assert verify.returncode == 0 and verify.stdout == "", verify.stdout
        ver = subprocess.run(
            ["chroot", str(root), "openssl", "version"], capture_output=True, text=True, check=True
        )
        assert expect["openssl"].split("-")[0] in ver.stdout
        shadow = (root / "etc/shadow").stat()
        assert (shadow.st_uid, shadow.st_gid) == (0, 42)
    return info


def check_times(layout: Path, info: dict[str, Any], cache: Path, *runs: dict[str, Any]) -> None:
    """The patch layer's times against the .debs the runs installed (apt's archive in the
    cache, read with dpkg-deb): package files keep their .deb's time, the rest the layer time."""
    archive = cache / "apt" / "debs"
    debs = [
        next(archive.glob(f"{u['name']}_{u['to'].replace(':', '%3a')}_*.deb"))
        for out in runs
        for u in out["updated"]
    ]
    config = json.loads(skopeo("inspect", "--config", f"oci:{layout}:p"))
    layer_time = expected_layer_time(debs, config.get("created"))
    blobs = layout / "blobs" / "sha256"
    aliases = top_symlinks(blobs / info["Layers"][0].split(":")[1])  # merged-/usr: lib -> usr/lib
    dated = check_layer_times(blobs / info["Layers"][-1].split(":")[1], debs, layer_time, aliases)
    assert any(n.endswith(".so.3") for n in dated), "libssl3's libraries keep their .deb's time"


def test_patch_then_repatch(image: dict[str, Any], work: Path) -> None:
    cache = work / "cache-root"
    first = write_report(work / "first.json", image, FIRST)
    vex = work / "first.vex.json"
    out = patch_json(
        "-i", image["ref"], "-r", str(first), "--vex", str(vex), "--cache-dir", str(cache)
    )
    assert out["status"] == "patched"
    assert out["image"]["reference"] == f"{image['host']}/e2e/debian:12-patched"
    assert {u["name"] for u in out["updated"]} >= set(FIRST)
    assert len(out["vulnerabilities_fixed"]) == len(FIRST)
    doc = json.loads(vex.read_text())
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()))
    assert {s["vulnerability"]["name"] for s in doc["statements"]} == set(
        out["vulnerabilities_fixed"]
    )
    assert out["image"]["digest"] in doc["statements"][0]["products"][0]["@id"]
    info = check_patched(
        image, out["image"]["reference"], {n: image["needed"][n] for n in FIRST}, work / "check1"
    )
    check_times(work / "check1" / "layout", info, cache, out)

    # Patch the patched image with the whole report: still one patch layer, now with all fixes.
    full = write_report(work / "full.json", image, None)
    # The derived destination is the source itself: refused unless --overwrite moves that tag.
    refused = ocipatch("patch", "-i", out["image"]["reference"], "-r", str(full),
                       "--cache-dir", str(cache))  # fmt: skip
    assert refused.returncode == 2 and "--overwrite" in refused.stderr, refused.stderr
    again = patch_json("-i", out["image"]["reference"], "-r", str(full), "--overwrite",
                       "--cache-dir", str(cache))  # fmt: skip
    assert again["status"] == "patched"
    assert again["image"]["reference"] == out["image"]["reference"]
    info = check_patched(image, again["image"]["reference"], image["needed"], work / "check2")
    check_times(work / "check2" / "layout", info, cache, out, again)

    # The same patch again is up to date: exit 0, nothing new written.
    same = patch_json("-i", again["image"]["reference"], "-r", str(full), "-t", "12-same",
                      "--cache-dir", str(cache))  # fmt: skip
    assert same["status"] == "up-to-date"


def test_unprivileged_run_gives_the_same_layer(image: dict[str, Any], work: Path) -> None:
    """As nobody (no subuid ranges): the layer carries the packages' owners, byte-identical to
    what a root run writes."""
    report = write_report(work / "first-user.json", image, FIRST)
    home = work / "home"
    home.mkdir(mode=0o777, exist_ok=True)
    user = patch_json(
        "-i",
        image["ref"],
        "-r",
        str(report),
        "-t",
        "12-user",
        "--cache-dir",
        str(work / "cache-user"),
        user="nobody",
        home=home,
    )
    root = patch_json(
        "-i",
        image["ref"],
        "-r",
        str(report),
        "-t",
        "12-root",
        "--cache-dir",
        str(work / "cache-root2"),
    )
    a = json.loads(
        skopeo("inspect", "--tls-verify=false", f"docker://{image['host']}/e2e/debian:12-user")
    )
    b = json.loads(
        skopeo("inspect", "--tls-verify=false", f"docker://{image['host']}/e2e/debian:12-root")
    )
    assert a["Layers"][-1] == b["Layers"][-1], "same patch layer digest as root, whoever runs it"
    assert user["image"]["digest"] == root["image"]["digest"], "same manifest digest: deterministic"


def test_dry_run_changes_nothing(image: dict[str, Any], work: Path) -> None:
    report = write_report(work / "dry.json", image, FIRST)
    out = patch_json(
        "-i",
        image["ref"],
        "-r",
        str(report),
        "--dry-run",
        "-t",
        "12-dry",
        "--cache-dir",
        str(work / "cache-root"),
    )
    assert out["status"] == "dry-run"
    plan = {p["name"]: p for p in out["plan"]}
    for n in FIRST:
        assert (
            plan[n]["required"] == image["needed"][n] and plan[n]["available"] == image["needed"][n]
        )
        assert plan[n]["installed"] == image["installed"][n] and plan[n]["action"] == "update"
    r = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{image['host']}/e2e/debian:12-dry"],
        capture_output=True,
    )
    assert r.returncode != 0, "a dry run pushes nothing"


def test_identical_patch_reuses_its_layer(image: dict[str, Any], work: Path) -> None:
    """The same patch again (same base, same package versions today): the layer of the earlier
    run is reused, giving the same digests, and the output says so."""
    report = write_report(work / "again.json", image, FIRST)
    cache = work / "cache-again"
    first = patch_json(
        "-i", image["ref"], "-r", str(report), "-t", "12-a1", "--cache-dir", str(cache)
    )
    again = patch_json(
        "-i", image["ref"], "-r", str(report), "-t", "12-a2", "--cache-dir", str(cache)
    )
    assert any("reused the patch layer" in n for n in again["notes"])
    assert again["image"]["digest"] == first["image"]["digest"]
    assert again["updated"] == first["updated"]
    assert again["vulnerabilities_fixed"] == first["vulnerabilities_fixed"]
