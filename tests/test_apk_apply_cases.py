"""ApkPatcher.apply over small rootfs trees built from package specs (tools/apkrepo.py), for the
cases the fixture images do not have: a failing script, a file another package owns (refused,
or taken over through `replaces`), a member that climbs out of the root, a symlinked parent
that points outside the root, a pinned repository."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ocipatch.distro.apk.install import ApkPatcher, installed_packages, read_db
from ocipatch.distro.apk.writer import member_path
from ocipatch.distro.base import InstalledPackage, Requirement
from ocipatch.errors import ApplyError, ImageFormatError, SandboxError, UnsafeArchiveError
from ocipatch.fs.unpack import OwnershipMap
from ocipatch.sandbox.base import Sandbox
from ocipatch.sandbox.select import select_sandbox
from tools.apkrepo import ApkFile, ApkKey, ApkSpec, BuiltApk, build_repo, installed_db

KEY = ApkKey.from_seed("cases.rsa.pub", "ocipatch-apk-cases")


@dataclass
class Config:
    cache_dir: Path
    mirrors: list[tuple[str, str]] = field(default_factory=list)
    insecure: bool = False


def make(
    tmp: Path,
    installed: Sequence[ApkSpec],
    offered: Sequence[ApkSpec],
    *,
    shell: bool = False,
    world: str = "",
    repos: str = "",
) -> Path:
    """A rootfs with `installed` in place and a file:// repository offering both sets."""
    repo = build_repo(tmp / "repo", "main", [*installed, *offered], [KEY])
    root = tmp / "rootfs"
    built: list[BuiltApk] = [p for p in repo.packages if p.spec in installed]
    for spec in installed:
        for f in spec.files:
            dest = root / f.rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if f.kind == "dir":
                dest.mkdir(exist_ok=True)
            elif f.kind == "symlink":
                dest.symlink_to(f.target)
            else:
                dest.write_bytes(f.data())
    (root / "lib/apk/db").mkdir(parents=True, exist_ok=True)
    (root / "lib/apk/db/installed").write_bytes(installed_db(built))
    (root / "etc/apk/keys").mkdir(parents=True, exist_ok=True)
    KEY.write_public(root / "etc/apk/keys")
    (root / "etc/apk/arch").write_text("x86_64\n")
    (root / "etc/apk/world").write_text(world or " ".join(s.name for s in installed) + "\n")
    (root / "etc/apk/repositories").write_text(repos or repo.file_url() + "\n")
    if shell:
        from tools.build_apk_image import busybox_deb, load_busybox

        try:
            binary = load_busybox(busybox_deb()).binary
        except Exception as e:
            pytest.skip(f"no busybox: {e}")
        (root / "bin").mkdir(exist_ok=True)
        (root / "bin/busybox").write_bytes(binary)
        (root / "bin/busybox").chmod(0o755)
        (root / "bin/sh").symlink_to("busybox")
    return root


def patcher(root: Path, sandbox: Sandbox | None = None) -> ApkPatcher:
    return ApkPatcher(root, OwnershipMap(), Config(root.parent / "cache"), sandbox)


def patch(root: Path, sandbox: Sandbox | None = None, reqs: list[Requirement] | None = None):  # type: ignore[no-untyped-def]
    p = patcher(root, sandbox)
    plan = p.plan([], reqs)
    return p.apply(plan)


def test_failing_script_is_reported_and_the_package_stays_updated(tmp_path: Path) -> None:
    try:
        sandbox = select_sandbox()
    except SandboxError as e:
        pytest.skip(str(e))
    failing = {"post-upgrade": "#!/bin/sh\necho broken >&2\nexit 3\n"}
    root = make(
        tmp_path,
        [ApkSpec("a", "1-r0", files=[ApkFile("/usr/share/a", "1")])],
        [ApkSpec("a", "1-r1", files=[ApkFile("/usr/share/a", "2")], scripts=failing)],
        shell=True,
    )
    out = patch(root, sandbox)
    assert out.updated == [("a", "1-r0", "1-r1")]
    assert any("a post-upgrade (exit 3)" in n for n in out.notes)
    assert "broken" in out.output
    assert (root / "usr/share/a").read_text() == "2"


def test_file_owned_by_another_package_is_refused(tmp_path: Path) -> None:
    root = make(
        tmp_path,
        [
            ApkSpec("a", "1-r0", files=[ApkFile("/usr/bin/a", "a1")]),
            ApkSpec("b", "1-r0", files=[ApkFile("/usr/bin/tool", "b's")]),
        ],
        [
            ApkSpec(
                "a", "1-r1", files=[ApkFile("/usr/bin/a", "a2"), ApkFile("/usr/bin/tool", "a's")]
            )
        ],
    )
    with pytest.raises(ApplyError) as e:
        patch(root)
    assert e.value.exit_code == 12
    assert "a 1-r1 would overwrite /usr/bin/tool, which b 1-r0 owns" in str(e.value)


def test_replaces_takes_the_file_over(tmp_path: Path) -> None:
    root = make(
        tmp_path,
        [
            ApkSpec("a", "1-r0", files=[ApkFile("/usr/bin/a", "a1")]),
            ApkSpec("b", "1-r0", files=[ApkFile("/usr/bin/tool", "b's")]),
        ],
        [
            ApkSpec(
                "a",
                "1-r1",
                replaces=["b"],
                files=[ApkFile("/usr/bin/a", "a2"), ApkFile("/usr/bin/tool", "a's")],
            )
        ],
    )
    patch(root)
    db = read_db(root)
    a, b = db.get("a"), db.get("b")
    assert a is not None and b is not None
    assert "usr/bin/tool" in a.paths() and "usr/bin/tool" not in b.paths()
    assert a.get("r") == "b"
    assert (root / "usr/bin/tool").read_text() == "a's"


@pytest.mark.parametrize("name", ["../../escaped", "usr/../../x", "./a/../../b", "a/.wh.b"])
def test_member_names_that_leave_the_root_are_refused(name: str) -> None:
    # (tools/apkrepo refuses to build such a package; the check is the writer's own)
    with pytest.raises(UnsafeArchiveError) as e:
        member_path("evil", name)
    assert e.value.exit_code == 7 and "package evil" in str(e.value)
    assert member_path("ok", "./usr//bin/x") == "usr/bin/x"


def test_symlinked_parent_is_followed_inside_the_root(tmp_path: Path) -> None:
    host = tmp_path / "host-dir"
    host.mkdir()
    root = make(
        tmp_path,
        [ApkSpec("a", "1-r0", files=[ApkFile("/usr/share/a", "1")])],
        [ApkSpec("a", "1-r1", files=[ApkFile("/usr/share/a", "2"), ApkFile("/opt/app/conf", "c")])],
    )
    (root / "opt").symlink_to(str(host))  # absolute: means <root>/<host path> in the image
    (root / str(host).lstrip("/")).mkdir(parents=True)
    patch(root)
    assert list(host.iterdir()) == []
    inside = root / str(host).lstrip("/") / "app/conf"
    assert inside.read_text() == "c"


def test_obsolete_files_go_but_modified_protected_ones_stay(tmp_path: Path) -> None:
    root = make(
        tmp_path,
        [
            ApkSpec(
                "a",
                "1-r0",
                files=[ApkFile("/etc/a.conf", "default\n"), ApkFile("/usr/lib/a/old.so", "old")],
            )
        ],
        [ApkSpec("a", "1-r1", files=[ApkFile("/usr/lib/a/new.so", "new")])],
    )
    (root / "etc/a.conf").write_text("mine\n")
    patch(root)
    assert (root / "etc/a.conf").read_text() == "mine\n"  # changed in the image: kept
    assert not (root / "usr/lib/a/old.so").exists()
    assert (root / "usr/lib/a/new.so").read_text() == "new"
    a = read_db(root).get("a")
    assert a is not None and a.paths() == ["usr/lib/a/new.so"]


def test_pinned_repository_over_file_urls(tmp_path: Path) -> None:
    edge = build_repo(
        tmp_path / "edge", "edge",
        [ApkSpec("a", "2-r0", files=[ApkFile("/usr/share/a", "edge")])], [KEY],
    )  # fmt: skip
    specs = [ApkSpec("a", "1-r0", files=[ApkFile("/usr/share/a", "1")])]
    main = tmp_path / "repo/main"
    root = make(
        tmp_path, specs, [ApkSpec("a", "1-r1", files=[ApkFile("/usr/share/a", "main")])],
        repos=f"{main.resolve().as_uri()}\n@edge {edge.file_url()}\n",
    )  # fmt: skip
    assert patch(root).updated == [("a", "1-r0", "1-r1")]
    root2 = tmp_path / "second"
    os.rename(root, root2)
    (root2 / "etc/apk/world").write_text("a@edge\n")
    # The first patch left a 1-r1 DB entry; the pin now takes the edge build.
    assert patch(root2).updated == [("a", "1-r1", "2-r0")]
    assert (root2 / "usr/share/a").read_text() == "edge"


def test_damaged_installed_db_is_exit_8(tmp_path: Path) -> None:
    root = make(tmp_path, [ApkSpec("a", "1-r0")], [ApkSpec("a", "1-r1")])
    db = root / "lib/apk/db/installed"
    db.write_bytes(db.read_bytes().replace(b"\nV:1-r0\n", b"\nV1-r0\n"))
    with pytest.raises(ImageFormatError) as e:
        patch(root)
    assert e.value.exit_code == 8 and "lib/apk/db/installed" in str(e.value)


def test_no_installed_db_is_exit_8(tmp_path: Path) -> None:
    root = make(tmp_path, [ApkSpec("a", "1-r0")], [ApkSpec("a", "1-r1")])
    (root / "lib/apk/db/installed").unlink()
    with pytest.raises(ImageFormatError, match="no apk installed DB"):
        patch(root)


def test_installed_packages_for_the_orchestrator(tmp_path: Path) -> None:
    root = make(tmp_path, [ApkSpec("a", "1-r0", origin="a-src")], [])
    assert installed_packages(root) == [InstalledPackage("a", "1-r0", "x86_64", "a-src")]
