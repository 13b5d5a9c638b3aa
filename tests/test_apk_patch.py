"""ApkPatcher end to end over unpacked apk fixture images (tools/build_apk_image.py) and their
signed repository served on loopback: Alpine-shaped (busybox /bin/sh), Wolfi-shaped (usr-merged,
usr/lib/apk/db), apk-less (no shell), distroless Alpine and multi-layer; with the sandbox and
with none, privileged and not.

What a user would check afterwards: trivy lists the fixed versions; the installed DB lists
exactly the package files on disk with the right Z: checksums and owners; the updated files are
the packages' files byte for byte; files the new versions dropped are gone; scripts ran (their
marker lines are in /var/log/apk-scripts.log) or are named; the DB files re-serialise to the same
bytes; a second plan finds nothing to do.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ocipatch.distro.apk import inroot
from ocipatch.distro.apk.db import (
    read_installed,
    read_scripts_tar,
    read_triggers,
    serialize_installed,
    serialize_scripts_tar,
)
from ocipatch.distro.apk.install import ApkPatcher, db_dir, excluded, file_meta, read_db
from ocipatch.distro.apk.package import read_apk, recorded_member
from ocipatch.distro.apk.records import q1
from ocipatch.distro.base import ApplyOutcome, InstalledPackage, Plan, Requirement
from ocipatch.errors import OcipatchError, SandboxError
from ocipatch.fs.changes import diff, snapshot
from ocipatch.fs.unpack import OwnershipMap, unpack
from ocipatch.oci.cache import BlobCache
from ocipatch.oci.reference import parse_reference
from ocipatch.oci.remote import RegistryOptions
from ocipatch.oci.transport import open_image
from ocipatch.sandbox.base import Sandbox
from ocipatch.sandbox.select import select_sandbox
from tests.plugins.images import TRIVY
from tools.aptrepo import RepoServer
from tools.build_apk_image import MIRROR_BASE, ApkImage

MakeImage = Callable[..., ApkImage]
LOG = "var/log/apk-scripts.log"


@dataclass
class Config:
    cache_dir: Path
    mirrors: list[tuple[str, str]] = field(default_factory=list)
    insecure: bool = False


@dataclass
class Run:
    img: ApkImage
    rootfs: Path
    own: OwnershipMap
    patcher: ApkPatcher
    plan: Plan
    outcome: ApplyOutcome
    unowned_before: set[str]
    changed: list[str]
    config: Config


def sandbox_or_skip() -> Sandbox:
    try:
        return select_sandbox()
    except SandboxError as e:
        pytest.skip(str(e))


def unpacked(img: ApkImage, dest: Path, privileged: bool) -> OwnershipMap:
    image = open_image(
        parse_reference(f"oci:{img.layout}:{img.tag}"), RegistryOptions(), BlobCache(dest / "b")
    )
    return unpack(image.layers, dest / "rootfs", privileged=privileged)


def on_disk(rootfs: Path) -> set[str]:
    """Real paths of every non-directory below rootfs."""
    out = set()
    for top, dirs, files in os.walk(rootfs):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
            out.add(os.path.relpath(os.path.join(top, name), rootfs))
    return out


def db_paths(rootfs: Path) -> dict[str, tuple[str, str | None, tuple[int, int, int]]]:
    """real path -> (package, Z:, acl) of every R: record."""
    out = {}
    for pkg in read_db(rootfs).packages:
        for path, f in pkg.files():
            real = inroot.real_path(rootfs, path, follow_final=False)
            assert real is not None, f"{pkg.name}: /{path} has no parent directory on disk"
            out[real] = (pkg.name, f.checksum, f.owner_mode)
    return out


def do_patch(
    img: ApkImage,
    server: RepoServer,
    tmp: Path,
    sandbox: Sandbox | None,
    *,
    privileged: bool | None = None,
    before: Callable[[Path], None] | None = None,
) -> Run:
    own = unpacked(img, tmp, os.geteuid() == 0 if privileged is None else privileged)
    rootfs = tmp / "rootfs"
    if before is not None:
        before(rootfs)
    unowned = on_disk(rootfs) - set(db_paths(rootfs))
    snap = snapshot(rootfs, own, exclude=excluded)
    config = Config(tmp / "cache", [(MIRROR_BASE, server.url)])
    patcher = ApkPatcher(rootfs, own, config, sandbox)
    installed = [InstalledPackage(n, v, "") for n, v in img.installed.items()]
    reqs = [Requirement(n, v) for n, v in img.fixed.items()]
    plan = patcher.plan(installed, reqs)
    outcome = patcher.apply(plan)
    assert patcher.verify(plan) == []
    changed = [c.path for c in diff(snap, rootfs, excluded, ownership=own)]
    return Run(img, rootfs, own, patcher, plan, outcome, unowned, changed, config)


def check_db_is_the_disk(
    run: Run, new_unowned: frozenset[str] = frozenset(), kept: frozenset[str] = frozenset()
) -> None:
    rootfs, own = run.rootfs, run.own
    listed = db_paths(rootfs)
    for real, (pkg, z, acl) in listed.items():
        path = rootfs / real
        assert os.path.lexists(path), f"{pkg}: /{real} is in the DB but not on disk"
        if real in kept:
            continue
        data = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
        assert q1(data) == z, f"{pkg}: /{real} does not match its Z: line"
        meta = own[real]
        if meta.type == "file":
            assert (meta.uid, meta.gid, meta.mode) == acl, f"{pkg}: /{real} owner/mode"
    unowned = on_disk(rootfs) - set(listed)
    # busybox's trigger runs `busybox --install -s`: applet links appear (e.g. /linuxrc).
    applets = {p for p in unowned if os.path.islink(rootfs / p)
               and os.readlink(rootfs / p) == "/bin/busybox"}  # fmt: skip
    assert unowned - applets == (run.unowned_before | new_unowned) - applets


def check_package_files(run: Run, kept: frozenset[str] = frozenset()) -> None:
    """Every updated file equals the package's byte for byte and is recorded with its owner."""
    assert run.outcome.packages and all(p.suffix == ".apk" for p in run.outcome.packages)
    for path in run.outcome.packages:
        apk = read_apk(path.read_bytes(), str(path))
        with apk.open_data() as tar:
            for m in tar:
                if not m.isfile() or not recorded_member(m.name):
                    continue
                real = inroot.real_path(run.rootfs, m.name, follow_final=False)
                assert real is not None
                if real in kept:
                    continue
                src = tar.extractfile(m)
                assert src is not None
                assert (run.rootfs / real).read_bytes() == src.read(), real
                assert run.own[real].mtime == int(m.mtime)


def check_db_files_stable(run: Run) -> None:
    d = db_dir(run.rootfs)
    data = (run.rootfs / d / "installed").read_bytes()
    assert serialize_installed(read_installed(data)) == data
    scripts = run.rootfs / d / "scripts.tar"
    if scripts.exists():
        entries = read_scripts_tar(scripts.read_bytes())
        assert serialize_scripts_tar(entries) == scripts.read_bytes()
        # GNU tar reads it too
        listed = subprocess.run(
            ["tar", "-tf", str(scripts)], check=True, capture_output=True, text=True
        ).stdout.split()
        assert listed == [e.member_name for e in entries]
        db = read_installed(data)
        for e in entries:
            pkg = db.get(e.name)
            assert pkg is not None and (pkg.version, pkg.checksum) == (e.version, e.checksum)


def check_nothing_left(run: Run) -> None:
    again = ApkPatcher(run.rootfs, run.own, run.config, None)
    plan = again.plan([], [Requirement(n, v) for n, v in run.img.fixed.items()])
    assert plan.updates == [] and plan.skipped == []


def trivy_rootfs(rootfs: Path, cache: Path) -> dict[str, str]:
    out = cache / "cdx.json"
    subprocess.run(
        [str(TRIVY), "rootfs", "--format", "cyclonedx", "--quiet", "--cache-dir",
         str(cache / "trivy"), "--skip-db-update", "--offline-scan", "-o", str(out), str(rootfs)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    doc = json.loads(out.read_text())
    return {
        c["name"]: c["version"]
        for c in doc.get("components", [])
        if c.get("purl", "").startswith("pkg:apk/")
    }


# -- Alpine-shaped ---------------------------------------------------------------------------------


def test_alpine_with_sandbox(
    apk_image: MakeImage, apk_repo_server: RepoServer, tmp_path: Path
) -> None:
    sandbox = sandbox_or_skip()
    run = do_patch(apk_image("alpine"), apk_repo_server, tmp_path, sandbox)
    updated = {n: v for n, _, v in run.outcome.updated}
    assert updated == {**run.img.fixed, "zlib": "1.3.1-r1"}  # zlib: libcrypto3's new so:libz
    assert ("zlib", "", "1.3.1-r1") in run.outcome.updated
    assert not (run.rootfs / "usr/lib/engines-3/afalg.so").exists()  # dropped by libcrypto3 r1
    log = (run.rootfs / LOG).read_text().splitlines()
    assert log == ["busybox post-upgrade 1.36.1-r29 1.36.1-r28", "busybox trigger /bin /usr/bin"]
    assert os.readlink(run.rootfs / "linuxrc") == "/bin/busybox"  # the trigger ran busybox
    assert run.outcome.notes == []
    check_db_is_the_disk(run, new_unowned=frozenset({LOG}))
    check_package_files(run)
    check_db_files_stable(run)
    triggers = read_triggers((run.rootfs / "lib/apk/db/triggers").read_bytes())
    busybox = read_db(run.rootfs).get("busybox")
    assert busybox is not None and [t.checksum for t in triggers] == [busybox.checksum]
    found = trivy_rootfs(run.rootfs, tmp_path)
    assert {n: found[n] for n in run.img.fixed} == run.img.fixed and found["zlib"] == "1.3.1-r1"
    check_nothing_left(run)


def test_alpine_without_sandbox_unprivileged(
    apk_image: MakeImage, apk_repo_server: RepoServer, tmp_path: Path
) -> None:
    run = do_patch(apk_image("alpine"), apk_repo_server, tmp_path, None, privileged=False)
    assert {n for n, _, _ in run.outcome.updated} == {*run.img.fixed, "zlib"}
    assert not (run.rootfs / LOG).exists()
    (note,) = run.outcome.notes
    assert note.startswith("--sandbox none: these apk scripts did not run")
    assert "busybox post-upgrade" in note and "busybox trigger" in note
    check_db_is_the_disk(run)
    check_package_files(run)
    check_db_files_stable(run)
    # What the layer writer gets: package files with the packages' owners, the DB files.
    assert "usr/lib/libcrypto.so.3" in run.changed and "lib/apk/db/installed" in run.changed
    assert "bin/busybox" not in run.changed  # the same bytes in both releases
    assert "usr/lib/engines-3" in run.changed  # deleted: no package owns it any more
    assert not any(excluded(p) for p in run.changed)
    meta = file_meta(run.outcome.packages)
    assert meta["bin/busybox"][:3] == (0, 0, 0o755)
    assert run.own["bin/busybox"].mode == 0o755
    check_nothing_left(run)


def test_changed_config_file_is_kept_as_apk_does(
    apk_image: MakeImage, apk_repo_server: RepoServer, tmp_path: Path
) -> None:
    def edit(rootfs: Path) -> None:
        (rootfs / "etc/ssl/openssl.cnf").write_text("# mine\n")

    run = do_patch(apk_image("alpine"), apk_repo_server, tmp_path, None, before=edit)
    assert (run.rootfs / "etc/ssl/openssl.cnf").read_text() == "# mine\n"
    new = run.rootfs / "etc/ssl/openssl.cnf.apk-new"
    assert "/etc/ssl/openssl.cnf: changed in the image" in " ".join(run.outcome.notes)
    pkg = read_db(run.rootfs).get("libcrypto3")
    assert pkg is not None
    z = next(f.checksum for p, f in pkg.files() if p == "etc/ssl/openssl.cnf")
    assert q1(new.read_bytes()) == z  # the DB records the package's file, as apk does
    kept = frozenset({"etc/ssl/openssl.cnf"})
    check_db_is_the_disk(run, new_unowned=frozenset({"etc/ssl/openssl.cnf.apk-new"}), kept=kept)
    check_package_files(run, kept=kept)


# -- other shapes ----------------------------------------------------------------------------------


def test_wolfi_usr_merged(
    apk_image: MakeImage, apk_repo_server: RepoServer, tmp_path: Path
) -> None:
    sandbox = sandbox_or_skip()
    run = do_patch(apk_image("wolfi"), apk_repo_server, tmp_path, sandbox)
    assert db_dir(run.rootfs) == "usr/lib/apk/db"
    assert (run.rootfs / "lib").is_symlink() and os.readlink(run.rootfs / "lib") == "usr/lib"
    assert {n: v for n, _, v in run.outcome.updated} == run.img.fixed
    check_db_is_the_disk(run, new_unowned=frozenset({LOG} if (run.rootfs / LOG).exists() else ()))
    check_package_files(run)
    check_db_files_stable(run)
    check_nothing_left(run)


@pytest.mark.parametrize("kind", ["static", "static-arm64", "alpine-static"])
def test_apk_less_image_without_a_shell(
    kind: str, apk_image: MakeImage, apk_repo_server: RepoServer, tmp_path: Path
) -> None:
    sandbox = sandbox_or_skip()  # given, but there is no /bin/sh to run anything with
    run = do_patch(apk_image(kind), apk_repo_server, tmp_path, sandbox)
    assert not os.path.lexists(run.rootfs / "bin/sh")
    fixed = {n: v for n, _, v in run.outcome.updated if n in run.img.fixed}
    assert fixed == run.img.fixed
    assert all("no /bin/sh" in n for n in run.outcome.notes if "scripts did not run" in n)
    check_db_is_the_disk(run)
    check_package_files(run)
    check_db_files_stable(run)


def test_multilayer_with_whiteout(
    apk_image: MakeImage, apk_repo_server: RepoServer, tmp_path: Path
) -> None:
    run = do_patch(apk_image("alpine-multilayer"), apk_repo_server, tmp_path, None)
    assert {n: v for n, _, v in run.outcome.updated} == run.img.fixed  # zlib already there
    assert not (run.rootfs / "etc/motd").exists()
    check_db_is_the_disk(run)
    check_package_files(run)
    check_db_files_stable(run)


def test_tampered_package_stops_before_anything_is_written(
    apk_image: MakeImage, apk_repo_server: RepoServer, tmp_path: Path
) -> None:
    from tools.apkrepo import flip_byte

    flip_byte(apk_repo_server.root / "alpine/v3.20/main/x86_64/busybox-1.36.1-r29.apk", "data")
    img = apk_image("alpine")
    own = unpacked(img, tmp_path, os.geteuid() == 0)
    rootfs = tmp_path / "rootfs"
    snap = snapshot(rootfs, own)
    patcher = ApkPatcher(
        rootfs, own, Config(tmp_path / "cache", [(MIRROR_BASE, apk_repo_server.url)]), None
    )
    plan = patcher.plan([], [Requirement("busybox", "1.36.1-r29")])
    with pytest.raises(OcipatchError) as e:
        patcher.apply(plan)
    assert e.value.exit_code == 7 and "busybox-1.36.1-r29.apk" in str(e.value)
    assert diff(snap, rootfs, ownership=own) == []


def test_excluded_paths() -> None:
    assert excluded("var/cache/apk/APKINDEX.x.tar.gz") and excluded("/lib/apk/db/lock")
    assert excluded("usr/lib/apk/db/lock") and not excluded("lib/apk/db/installed")
    assert not excluded("var/cache/apkx")


def test_file_meta_from_data_tars(tmp_path: Path, apk_repo_server: RepoServer) -> None:
    apk = apk_repo_server.root / "alpine/v3.20/main/x86_64/busybox-1.36.1-r29.apk"
    meta = file_meta([apk])
    assert meta["bin/busybox"] == (0, 0, 0o755, meta["bin/busybox"][3])
    assert all(not p.startswith(".") for p in meta)


def test_pinned_repository_is_used_only_for_the_pinned_package(
    apk_image: MakeImage, apk_repo_server: RepoServer, tmp_path: Path
) -> None:
    run = do_patch(apk_image("alpine-pinned"), apk_repo_server, tmp_path, None)
    updated = {n: v for n, _, v in run.outcome.updated}
    assert updated["ca-certificates-bundle"] == "20250101-r0"  # world: ca-certificates-bundle@edge
    assert updated["libcrypto3"] == "3.3.2-r1" and updated["libssl3"] == "3.3.2-r1"  # not edge's
    ca = next(i for i in run.plan.updates if i.name == "ca-certificates-bundle")
    assert ca.required is not None and ca.available == "20250101-r0"
    check_db_is_the_disk(run)
    check_package_files(run)
    check_db_files_stable(run)
