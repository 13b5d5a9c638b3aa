"""`ocipatch patch` on apk images, end to end through the command line: the Alpine-, Wolfi-,
apk-less (static) and multi-layer fixtures (tools/build_apk_image.py) with their signed
repository served on loopback.

What a user checks: trivy lists every fixed version in the written image; the original layers
are kept and exactly one patch layer is added; the image's installed DB lists exactly the files
on disk with their SHA-1 (read here with a parser of this test's own, not ocipatch's); a
tampered repository is exit 7 and nothing is written; `inspect` lists what trivy lists.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.images import skopeo, trivy_packages, umoci_unpack
from tools.apkrepo import flip_byte
from tools.aptrepo import RepoServer
from tools.build_apk_image import ApkImage

MakeImage = Callable[..., ApkImage]
OCIPATCH = Path(sys.executable).parent / "ocipatch"


def ocipatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ocipatch", *args], capture_output=True, text=True, timeout=600
    )


def patch(img: ApkImage, server: RepoServer, out: Path, *extra: str) -> dict[str, Any]:
    r = ocipatch(
        "patch", "-i", f"oci:{img.layout}:{img.tag}", "-r", str(img.report),
        "-t", f"oci:{out}:patched", "--repo-mirror", img.mirror_arg(server.url),
        "--cache-dir", str(out.parent / "cache"), "--json", *extra,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def db_files(rootfs: Path, db_path: str) -> dict[str, str]:
    """path -> Z: checksum of every file record of an installed DB (F: dir, R: file, Z: sum)."""
    files: dict[str, str] = {}
    folder, name = "", ""
    for line in (rootfs / db_path).read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "F":
            folder = value
        elif key == "R":
            name = f"{folder}/{value}" if folder else value
            files[name] = ""
        elif key == "Z" and name:
            files[name] = value
    return files


def q1_sha1(path: Path) -> str:
    data = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
    return "Q1" + base64.b64encode(hashlib.sha1(data).digest()).decode()


def check_written(img: ApkImage, out: Path, work: Path, expect: dict[str, str]) -> Path:
    """The written image: layers kept plus one; trivy's versions; the DB matches the disk."""
    before = json.loads(skopeo("inspect", f"oci:{img.layout}:{img.tag}"))["Layers"]
    after = json.loads(skopeo("inspect", f"oci:{out}:patched"))["Layers"]
    assert after[:-1] == before and len(after) == len(before) + 1
    seen = trivy_packages(out, work, purl_type="apk")
    for name, version in expect.items():
        assert seen.get(name) == version, (name, seen.get(name))
    root = umoci_unpack(out, "patched", work / "bundle")
    for path, z in db_files(root, img.db_path).items():
        real = root / path
        assert os.path.lexists(real), f"{path} is in the installed DB but not on disk"
        if z and not real.is_dir():
            assert q1_sha1(real) == z, path
    return root


@pytest.mark.parametrize("kind", ["alpine", "wolfi", "static", "alpine-multilayer"])
def test_patch_from_report(
    kind: str, apk_image: MakeImage, apk_repo_server: RepoServer, tmp_path: Path
) -> None:
    img = apk_image(kind)
    out = patch(img, apk_repo_server, tmp_path / "out")
    assert out["status"] == "patched"
    updated = {u["name"]: u["to"] for u in out["updated"]}
    for name, version in img.fixed.items():
        assert updated.get(name) == version, (name, updated)
    check_written(img, tmp_path / "out", tmp_path, img.fixed)
    # Patching the patched image with the same report: nothing left to do.
    again = ocipatch(
        "patch", "-i", f"oci:{tmp_path / 'out'}:patched", "-r", str(img.report), "-t", "again",
        "--repo-mirror", img.mirror_arg(apk_repo_server.url),
        "--cache-dir", str(tmp_path / "cache"), "--json",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["status"] == "up-to-date"


def test_sandbox_none_names_the_scripts(
    apk_image: MakeImage, apk_repo_server: RepoServer, tmp_path: Path
) -> None:
    img = apk_image("alpine")
    out = patch(img, apk_repo_server, tmp_path / "out", "--sandbox", "none")
    assert out["status"] == "patched"
    assert any("not run" in n or "script" in n for n in out["notes"]), out["notes"]
    check_written(img, tmp_path / "out", tmp_path, img.fixed)


def test_vex_names_apk_packages(
    apk_image: MakeImage, apk_repo_server: RepoServer, tmp_path: Path
) -> None:
    img = apk_image("alpine")
    vex = tmp_path / "out.vex.json"
    out = patch(img, apk_repo_server, tmp_path / "out", "--vex", str(vex))
    doc = json.loads(vex.read_text())
    subs = {s["@id"] for st in doc["statements"] for p in st["products"]
            for s in p.get("subcomponents", [])}  # fmt: skip
    assert subs and all(s.startswith("pkg:apk/alpine/") for s in subs), subs
    assert out["image"]["digest"] in doc["statements"][0]["products"][0]["@id"]


def test_tampered_index_writes_nothing(
    apk_image: MakeImage, apk_repo_server: RepoServer, tmp_path: Path
) -> None:
    img = apk_image("alpine")
    for index in apk_repo_server.root.rglob("APKINDEX.tar.gz"):
        flip_byte(index, "index")
    r = ocipatch(
        "patch", "-i", f"oci:{img.layout}:{img.tag}", "-r", str(img.report),
        "-t", f"oci:{tmp_path / 'out'}:patched", "--repo-mirror", img.mirror_arg(apk_repo_server.url),
        "--cache-dir", str(tmp_path / "cache"),
    )  # fmt: skip
    assert r.returncode == 7, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("ocipatch: error: ") and "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "index.json").exists()


def test_inspect_lists_what_trivy_lists(apk_image: MakeImage, tmp_path: Path) -> None:
    for kind in ("alpine", "wolfi"):
        img = apk_image(kind)
        r = ocipatch("inspect", "--json", f"oci:{img.layout}:{img.tag}", "--cache-dir",
                     str(tmp_path / "cache"))  # fmt: skip
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)
        assert info["package_manager"] == "apk"
        listed = {p["name"]: p["version"] for p in info["packages"]}
        assert listed == trivy_packages(img.layout, tmp_path / kind, purl_type="apk")


def test_unprivileged_run_gives_the_same_image(
    apk_image: MakeImage, apk_repo_server: RepoServer, tmp_path: Path, request: Any
) -> None:
    """As nobody: the layer carries the packages' owners, byte-identical to a root run's."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to nobody")
    img = apk_image("alpine")
    root = patch(img, apk_repo_server, tmp_path / "out")
    # pytest's own directories are root's only: nobody works under a directory of its own.
    work = Path(tempfile.mkdtemp(prefix="ocipatch-apk-nobody-"))
    request.addfinalizer(lambda: shutil.rmtree(work, ignore_errors=True))
    layout = work / "layout"
    subprocess.run(["cp", "-a", str(img.layout), str(layout)], check=True)
    report = work / "report.json"
    shutil.copyfile(img.report, report)
    subprocess.run(["chmod", "-R", "a+rwX", str(work)], check=True)
    nobody = pwd.getpwnam("nobody")
    r = subprocess.run(
        [
            "setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
            str(OCIPATCH), "patch", "-i", f"oci:{layout}:{img.tag}", "-r", str(report),
            "-t", f"oci:{work / 'out'}:patched", "--repo-mirror", img.mirror_arg(apk_repo_server.url),
            "--cache-dir", str(work / "cache"), "--json",
        ],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HOME": str(work)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["image"]["digest"] == root["image"]["digest"]
