"""`ocipatch patch` on rpm images, end to end through the command line: the Rocky, Fedora,
ubi-micro, Azure Linux (rpmmanifest only), SLES and CentOS 7 (BerkeleyDB) fixtures
(tools/build_rpm_image.py) with their signed repository served on loopback.

What a user checks: trivy lists every fixed version (epoch included) in the written image; the
original layers are kept and exactly one patch layer is added; the real `rpm --root` on the
unpacked result lists the new versions and `rpm -V` passes for them; a tampered package is
exit 7 with nothing written; a BerkeleyDB rpmdb is exit 9 in one line.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ocipatch.distro.base import Requirement
from ocipatch.distro.rpm.install import RepoConfig, RpmPatcher
from ocipatch.fs.unpack import OwnershipMap
from tests.plugins.aptrepo import UNPRIVILEGED_UID, scratch_dir
from tests.plugins.images import skopeo, trivy_packages, umoci_unpack
from tools.aptrepo import RepoServer
from tools.build_rpm_image import RpmImage
from tools.rpmrepo import flip_file_byte

MakeImage = Callable[..., RpmImage]


def ocipatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ocipatch", *args], capture_output=True, text=True, timeout=600
    )


def patch_args(img: RpmImage, server: RepoServer, out: Path, *extra: str) -> list[str]:
    return patch_args_to(img, img.mirror_arg(server.url), out, *extra)


def patch_args_to(img: RpmImage, mirror: str, out: Path, *extra: str) -> list[str]:
    return [
        "patch", "-i", f"oci:{img.layout}:{img.tag}", "-r", str(img.report),
        "-t", f"oci:{out}:patched", "--repo-mirror", mirror,
        "--cache-dir", str(out.parent / "cache"), "--json", *extra,
    ]  # fmt: skip


def patch(img: RpmImage, server: RepoServer, out: Path, *extra: str) -> dict[str, Any]:
    r = ocipatch(*patch_args(img, server, out, *extra))
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def rpm_q(root: Path, db_path: str, *args: str) -> subprocess.CompletedProcess[str]:
    dbpath = "/" + str(Path(db_path).parent)
    return subprocess.run(
        ["rpm", "--root", str(root), "--dbpath", dbpath, *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def index_tables(db: Path) -> set[tuple[str, str, int, str]]:
    """(table, key, idx, package name) of every index row of an rpmdb.sqlite."""
    con = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
    try:
        names = dict(con.execute("SELECT hnum, key FROM Name").fetchall())
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        out = set()
        for t in tables:
            if t not in ("Packages", "sqlite_sequence", "sqlite_stat1"):
                for key, hnum, idx in con.execute(f"SELECT key, hnum, idx FROM '{t}'"):
                    out.add((t, key.hex() if isinstance(key, bytes) else key, idx, names[hnum]))
        return out
    finally:
        con.close()


def rebuilt_index_tables(root: Path, db_path: str, work: Path) -> set[tuple[str, str, int, str]]:
    copy = work / "rebuilt"
    dbdir = Path(db_path).parent
    shutil.copytree(root / dbdir, copy / dbdir, symlinks=True)
    r = rpm_q(copy, db_path, "--rebuilddb")
    assert r.returncode == 0, r.stderr
    return index_tables(copy / db_path)


def replacement(name: str) -> str:
    """The package that obsoletes `name` in the fixtures' repository (libcurl-minimal)."""
    return name.removesuffix("-minimal")


def check_written(img: RpmImage, out: Path, work: Path) -> Path:
    before = json.loads(skopeo("inspect", f"oci:{img.layout}:{img.tag}"))["Layers"]
    after = json.loads(skopeo("inspect", f"oci:{out}:patched"))["Layers"]
    assert after[:-1] == before and len(after) == len(before) + 1
    seen = trivy_packages(out, work, purl_type="rpm")
    for name, version in img.fixed.items():
        got = seen.get(name) or seen.get(replacement(name))
        assert got == version, (name, got)
    return umoci_unpack(out, "patched", work / "bundle")


@pytest.mark.skipif(shutil.which("rpm") is None, reason="needs the real rpm")
@pytest.mark.parametrize("kind", ["rocky", "fedora", "ubi-micro", "sles", "rocky-multilayer"])
def test_patch_sqlite_rpmdb(
    kind: str, rpm_image: MakeImage, rpm_repo_server: RepoServer, tmp_path: Path
) -> None:
    img = rpm_image(kind)
    out = patch(img, rpm_repo_server, tmp_path / "out")
    assert out["status"] == "patched"
    updated = {u["name"]: u["to"] for u in out["updated"]}
    root = check_written(img, tmp_path / "out", tmp_path)
    qa = rpm_q(root, img.db_path, "-qa", "--qf", "%{NAME} %{EPOCH}:%{VERSION}-%{RELEASE}\n")
    assert qa.returncode == 0, qa.stderr
    listed = {}
    for line in qa.stdout.splitlines():
        name, evr = line.split(" ", 1)
        listed[name] = evr.removeprefix("(none):")
    for name, version in img.fixed.items():
        got = listed.get(name) or listed.get(replacement(name))
        assert got == version, (name, got, listed)
    for name in updated:
        v = rpm_q(root, img.db_path, "-V", "--nodeps", name)
        assert v.returncode == 0, (name, v.stdout, v.stderr)
    # The index tables are those the real rpm rebuilds from the headers.
    assert index_tables(root / img.db_path) == rebuilt_index_tables(root, img.db_path, tmp_path)
    # Patching the patched image with the same report: nothing left to do.
    again = ocipatch(
        "patch", "-i", f"oci:{tmp_path / 'out'}:patched", "-r", str(img.report), "-t", "again",
        "--repo-mirror", img.mirror_arg(rpm_repo_server.url),
        "--cache-dir", str(tmp_path / "cache"), "--json",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["status"] == "up-to-date"


def test_rpmmanifest_image_without_repositories(
    rpm_image: MakeImage, rpm_repo_server: RepoServer, tmp_path: Path
) -> None:
    """Azure Linux distroless names no repository: one line saying so, nothing written."""
    img = rpm_image("azurelinux")
    r = ocipatch(*patch_args(img, rpm_repo_server, tmp_path / "out"))
    assert r.returncode == 11, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ocipatch: error: ") and "repositor" in last, r.stderr
    assert not (tmp_path / "out" / "index.json").exists()


def test_rpmmanifest_rewritten(
    rpm_image: MakeImage, rpm_repo_server: RepoServer, tmp_path: Path
) -> None:
    """The installer on the unpacked distroless root, given a .repo file: the manifests'
    lines are those the real rpm writes for the new versions, in both formats."""
    img = rpm_image("azurelinux")
    root = umoci_unpack(img.layout, img.tag, tmp_path / "bundle")
    (root / "etc/yum.repos.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/pki/rpm-gpg").mkdir(parents=True, exist_ok=True)
    shutil.copy(img.key_file, root / "etc/pki/rpm-gpg/RPM-GPG-KEY-test")
    (root / "etc/yum.repos.d/azl.repo").write_text(
        f"[azl]\nbaseurl={img.repo_url}\nenabled=1\ngpgcheck=1\n"
        "gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-test\n"
    )
    frm, _, to = img.mirror_arg(rpm_repo_server.url).partition("=")
    config = RepoConfig(tmp_path / "cache", [(frm, to)], False, "x86_64")
    patcher = RpmPatcher(root, OwnershipMap(), config, "test")
    reqs = [Requirement(n, v) for n, v in img.fixed.items()]
    plan = patcher.plan([], reqs)
    outcome = patcher.apply(plan)
    assert not patcher.verify(plan)
    assert any("scriptlet" in n for n in outcome.notes) or outcome.notes is not None
    two = (root / "var/lib/rpmmanifest/container-manifest-2").read_text().splitlines()
    one = (root / "var/lib/rpmmanifest/container-manifest-1").read_text().splitlines()
    assert all(len(line.split("\t")) == 10 for line in two) and len(one) == len(two)
    listed = {}
    for line in two:
        f = line.split("\t")
        listed[f[0]] = (f"{f[5]}:" if f[5] != "(none)" else "") + f[1]
    for name, version in img.fixed.items():
        assert (listed.get(name) or listed.get(replacement(name))) == version, (name, listed)
    for name in listed:
        assert any(line.startswith(f"{name}-") for line in one), name


def test_tampered_package_writes_nothing(
    rpm_image: MakeImage, rpm_repo_server: RepoServer, tmp_path: Path
) -> None:
    img = rpm_image("rocky")
    for pkg in rpm_repo_server.root.rglob("openssl-libs-*-25.*.rpm"):
        flip_file_byte(pkg)
    r = ocipatch(*patch_args(img, rpm_repo_server, tmp_path / "out"))
    assert r.returncode == 7, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("ocipatch: error: ")
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "index.json").exists()


def test_berkeleydb_is_refused(
    rpm_image: MakeImage, rpm_repo_server: RepoServer, tmp_path: Path
) -> None:
    img = rpm_image("centos7")
    r = ocipatch(*patch_args(img, rpm_repo_server, tmp_path / "out"))
    assert r.returncode == 9, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ocipatch: error: BerkeleyDB rpmdb"), r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "index.json").exists()


def test_scriptlets_run_in_the_sandbox_or_are_named(
    rpm_image: MakeImage, rpm_repo_server: RepoServer, tmp_path: Path
) -> None:
    img = rpm_image("rocky")
    skipped = patch(img, rpm_repo_server, tmp_path / "none", "--sandbox", "none")["notes"]
    assert any("ca-certificates %post" in n and "did not run" in n for n in skipped), skipped
    ran = patch(img, rpm_repo_server, tmp_path / "ran")
    if ran.get("flavour", "native") == "direct":
        pytest.skip("no sandbox here")
    assert not any("ca-certificates %post" in n for n in ran["notes"]), ran["notes"]


def unpacked_patcher(img: RpmImage, server: RepoServer, work: Path) -> tuple[Path, RpmPatcher]:
    root = umoci_unpack(img.layout, img.tag, work / "bundle")
    frm, _, to = img.mirror_arg(server.url).partition("=")
    config = RepoConfig(work / "cache", [(frm, to)], False, "x86_64")
    return root, RpmPatcher(root, OwnershipMap(), config, "--sandbox none")


def test_changed_config_kept_and_old_files_removed(
    rpm_image: MakeImage, rpm_repo_server: RepoServer, tmp_path: Path
) -> None:
    """%config(noreplace) the image changed: kept, the package's beside it as .rpmnew (rpm's
    rule); an unchanged one replaced; a file release 2 no longer ships removed."""
    img = rpm_image("rocky")
    root, patcher = unpacked_patcher(img, rpm_repo_server, tmp_path)
    cnf = root / "etc/pki/tls/openssl.cnf"
    cnf.write_text("# changed by the image\n")
    assert (root / "usr/lib64/engines-3/afalg.so").exists()
    plan = patcher.plan([], [Requirement(n, v) for n, v in img.fixed.items()])
    outcome = patcher.apply(plan)
    assert not patcher.verify(plan)
    assert cnf.read_text() == "# changed by the image\n"
    assert (root / "etc/pki/tls/openssl.cnf.rpmnew").read_text() == "# openssl.cnf\n[p]\n"
    assert any("openssl.cnf.rpmnew" in n for n in outcome.notes), outcome.notes
    assert "2024.2.69" in (root / "etc/pki/tls/certs/ca-bundle.crt").read_text()
    assert not (root / "usr/lib64/engines-3/afalg.so").exists()
    qf = rpm_q(root, img.db_path, "-qf", "/usr/lib64/libcrypto.so.3")
    assert qf.stdout.strip() == "openssl-libs-3.0.7-25.el9.x86_64", qf


@pytest.mark.parametrize("kind", ["rocky", "ubi-micro", "azurelinux", "sles"])
def test_inspect_lists_what_trivy_lists(kind: str, rpm_image: MakeImage, tmp_path: Path) -> None:
    img = rpm_image(kind)
    r = ocipatch("inspect", "--json", f"oci:{img.layout}:{img.tag}", "--cache-dir",
                 str(tmp_path / "cache"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["package_manager"] == "rpm"
    listed = {p["name"]: p["version"] for p in info["packages"]}
    seen = trivy_packages(img.layout, tmp_path / kind, purl_type="rpm")
    seen.pop("gpg-pubkey", None)  # trivy lists the imported key's pseudo package; not a package
    assert listed == seen


def test_same_input_same_digest(
    rpm_image: MakeImage, rpm_repo_server: RepoServer, tmp_path: Path
) -> None:
    """Nothing of the clock in the layer: two runs write the same image."""
    img = rpm_image("fedora")
    a = patch(img, rpm_repo_server, tmp_path / "a" / "out")
    time.sleep(1.1)  # a clock's second would show
    b = patch(img, rpm_repo_server, tmp_path / "b" / "out")
    assert a["image"]["digest"] == b["image"]["digest"]


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_air_gapped_file_mirror(rpm_image: MakeImage, tmp_path: Path) -> None:
    """No network at all (`unshare -n`), the repository a file:// mirror."""
    img = rpm_image("ubi-micro")
    out = tmp_path / "out"
    args = patch_args_to(img, img.file_mirror_arg(), out)
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("unshare -n is not permitted here")
    r = subprocess.run(["unshare", "-n", sys.executable, "-m", "ocipatch", *args],
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr
    check_written(img, out, tmp_path)


def layer_entries(layout: Path, tag: str) -> dict[str, tarfile.TarInfo]:
    """The last layer's tar entries of an image in an OCI layout."""
    index = json.loads((layout / "index.json").read_text())
    digest = next(
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    )
    manifest = json.loads((layout / "blobs/sha256" / digest["digest"][7:]).read_text())
    blob = layout / "blobs/sha256" / manifest["layers"][-1]["digest"][7:]
    raw = blob.read_bytes()
    if raw[:4] == b"\x28\xb5\x2f\xfd":
        raw = subprocess.run(["zstd", "-dc"], input=raw, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return {m.name: m for m in tar.getmembers()}


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root")
def test_rootless_layer_keeps_header_owners_and_modes(rpm_image: MakeImage, tmp_path: Path) -> None:
    """Run as `nobody`: the layer still carries the owners and modes the headers record."""
    img = rpm_image("rocky")
    work = Path(tempfile.mkdtemp(prefix="ocipatch-rpm-rootless-", dir=scratch_dir()))
    try:
        os.chmod(work, 0o777)
        layout = work / "img"
        shutil.copytree(img.layout, layout)
        repo = work / "repo"
        shutil.copytree(img.repo_root, repo)
        report = work / "report.json"
        shutil.copy(img.report, report)
        subprocess.run(["chmod", "-R", "a+rwX", str(work)], check=True)
        out = work / "out"
        args = ["patch", "-i", f"oci:{layout}:{img.tag}", "-r", str(report),
                "-t", f"oci:{out}:patched", "--repo-mirror", img.mirror_arg(repo.as_uri()),
                "--cache-dir", str(work / "cache"), "--sandbox", "none", "--json"]  # fmt: skip
        r = subprocess.run(
            ["setpriv", f"--reuid={UNPRIVILEGED_UID}", f"--regid={UNPRIVILEGED_UID}",
             "--clear-groups", sys.executable, "-m", "ocipatch", *args],
            capture_output=True, text=True, timeout=600, env={**os.environ, "HOME": str(work)},
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        entries = layer_entries(out, "patched")
        lib = entries["usr/lib64/libcrypto.so.3"]
        assert (lib.uid, lib.gid, lib.mode) == (0, 0, 0o755), (lib.uid, lib.gid, oct(lib.mode))
        cnf = entries["etc/pki/tls/openssl.cnf"]
        assert (cnf.uid, cnf.gid, cnf.mode) == (0, 0, 0o644)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_vex_names_rpm_packages(
    rpm_image: MakeImage, rpm_repo_server: RepoServer, tmp_path: Path
) -> None:
    img = rpm_image("rocky")
    vex = tmp_path / "out.vex.json"
    patch(img, rpm_repo_server, tmp_path / "out", "--vex", str(vex))
    doc = json.loads(vex.read_text())
    subs = {s["@id"] for st in doc["statements"] for p in st["products"]
            for s in p.get("subcomponents", [])}  # fmt: skip
    assert subs and all(s.startswith("pkg:rpm/rocky/") for s in subs), subs
    ssl = [s for s in subs if s.startswith("pkg:rpm/rocky/openssl-libs@")]
    assert ssl and all("epoch=1" in s and "@3.0.7-25.el9" in s for s in ssl), ssl
