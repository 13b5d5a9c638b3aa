"""unpack: applying layers to disk safely, with an OwnershipMap for what the disk cannot hold."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ocipatch.errors import ImageFormatError, UnsafeArchiveError
from ocipatch.fs.merged import MergedView
from ocipatch.fs.unpack import OWNERSHIP_FILE, OwnershipMap, unpack
from tests.test_fs_merged import (
    MTIME,
    OPQ,
    WH,
    D,
    F,
    H,
    M,
    MemLayer,
    S,
    layer,
    three_layers,
)

IS_ROOT = os.geteuid() == 0
REPO = Path(__file__).resolve().parent.parent


def disk_tree(root: Path) -> dict[str, tuple[str, str | bytes]]:
    """path -> (type, content or link target) of everything under root."""
    out: dict[str, tuple[str, str | bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", "")
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", Path(full).read_bytes())
            else:
                out[rel] = ("special", "")
    return out


def test_unpack_matches_merged_view(tmp_path: Path) -> None:
    root = tmp_path / "root"
    own = unpack(three_layers(), root, privileged=False)
    view = MergedView(three_layers())
    entries = {e.path: e for e in view.walk()}
    disk = disk_tree(root)
    assert set(disk) == set(entries)
    contents = view.read_files(p for p, e in entries.items() if e.type in ("file", "hardlink"))
    for path, e in entries.items():
        kind, data = disk[path]
        if e.type in ("file", "hardlink"):
            assert (kind, data) == ("file", contents[path]), path
        elif e.type == "symlink":
            assert (kind, data) == ("symlink", e.linkname), path
        else:
            assert kind == e.type, path
        rec = own[path]
        assert (rec.uid, rec.gid, rec.mode) == (e.uid, e.gid, e.mode), path
    assert set(own) == set(entries)
    # Hard links are real hard links on disk, including one to a lower layer's file.
    busybox = os.lstat(root / "bin/busybox")
    assert busybox.st_nlink == 3
    assert os.lstat(root / "usr/bin/sh2").st_ino == busybox.st_ino


@pytest.mark.parametrize(
    "upper",
    [
        [F("d/x", "x"), WH("", "d")],  # whiteout after a child written by the same layer
        [WH("", "d"), F("d/x", "x")],
        [F("d/x", "x"), OPQ("d")],
        [OPQ("d"), D("d"), F("d/x", "x")],
    ],
    ids=["child-then-whiteout", "whiteout-then-child", "child-then-opaque", "opaque-then-child"],
)
def test_same_layer_whiteout_order(tmp_path: Path, upper: list[M]) -> None:
    """Whiteouts hide lower content only, whatever their place in the layer (disk == view)."""
    layers = [layer(D("d"), F("d/old", "old"), D("d/sub"), F("d/sub/y", "y")), layer(*upper)]
    unpack(layers, tmp_path / "root", privileged=False)
    assert sorted(disk_tree(tmp_path / "root")) == ["d", "d/x"]
    assert [e.path for e in MergedView(layers).walk()] == ["d", "d/x"]


def test_unprivileged_modes_owners_and_specials(tmp_path: Path) -> None:
    cap = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    base = layer(
        D("ro", mode=0o555, uid=0, gid=0),
        F("ro/old", "old"),
        F("zero", "secret", mode=0o000, uid=1000, gid=42),
        F("suid", "x", mode=0o4755),
        D("sgid", mode=0o2775, gid=50),
        M("dev/null", b"3", mode=0o666, devmajor=1, devminor=3),
        M("fifo", b"6", mode=0o640),
        M(
            "ping",
            data=b"PING",
            mode=0o755,
            pax={"SCHILY.xattr.security.capability": cap.decode("utf-8", "surrogateescape")},
        ),
    )
    upper = layer(F("ro/new", "new"), WH("ro", "old"), H("null2", "dev/null"))
    root = tmp_path / "root"
    own = unpack([base, upper], root, privileged=False)

    def st(p: str) -> os.stat_result:
        return os.lstat(root / p)

    assert stat.S_IMODE(st("ro").st_mode) == 0o755 and own["ro"].mode == 0o555
    assert sorted(os.listdir(root / "ro")) == ["new"]
    assert stat.S_IMODE(st("zero").st_mode) == 0o600 and (root / "zero").read_bytes() == b"secret"
    assert (own["zero"].mode, own["zero"].uid, own["zero"].gid) == (0o000, 1000, 42)
    assert st("zero").st_uid == os.getuid()  # not chowned
    assert stat.S_IMODE(st("suid").st_mode) == 0o755 and own["suid"].mode == 0o4755
    assert stat.S_IMODE(st("sgid").st_mode) == 0o775 and own["sgid"].mode == 0o2775
    assert not (root / "dev/null").exists()
    dev = own["dev/null"]
    assert (dev.type, dev.devmajor, dev.devminor, dev.on_disk) == ("char", 1, 3, False)
    assert own["null2"].type == "char" and not own["null2"].on_disk
    assert stat.S_ISFIFO(st("fifo").st_mode) and own["fifo"].mode == 0o640
    assert own["ping"].xattrs == {"security.capability": cap}
    assert st("zero").st_mtime == MTIME and st("ro").st_mtime == MTIME
    assert own["dev"].type == "dir" and own["dev"].mode == 0o755  # implicit parent
    # JSON roundtrip, binary xattrs included.
    own.save(tmp_path / "state" / OWNERSHIP_FILE)
    back = OwnershipMap.load(tmp_path / "state" / OWNERSHIP_FILE)
    assert list(back.items()) == list(own.items()) and back.privileged is False


@pytest.mark.skipif(not IS_ROOT, reason="needs root")
def test_privileged_applies_owners(tmp_path: Path) -> None:
    base = layer(
        F("suid", "x", mode=0o4755, uid=0, gid=0),
        F("shadow", "s", mode=0o640, uid=0, gid=42),
        D("home", mode=0o700, uid=1000, gid=1000),
        S("home/link", "/nowhere"),
        M("dev/null", b"3", mode=0o666, devmajor=1, devminor=3),
    )
    root = tmp_path / "root"
    own = unpack([base], root)  # privileged by default as root
    assert own.privileged
    assert stat.S_IMODE(os.lstat(root / "suid").st_mode) == 0o4755
    assert os.lstat(root / "shadow").st_gid == 42
    home = os.lstat(root / "home")
    assert (home.st_uid, home.st_gid, stat.S_IMODE(home.st_mode)) == (1000, 1000, 0o700)
    if own["dev/null"].on_disk:  # mknod may be denied inside a container
        assert os.major(os.lstat(root / "dev/null").st_rdev) == 1


# -- malicious layers -----------------------------------------------------------------------------
def _state(path: Path) -> dict[str, tuple[int, int, int, bytes]]:
    out = {}
    for p in [path, *sorted(path.rglob("*"))]:
        st = os.lstat(p)
        data = p.read_bytes() if stat.S_ISREG(st.st_mode) else b""
        out[str(p)] = (st.st_mode, st.st_nlink, st.st_mtime_ns, data)
    return out


def _cases(outside: Path) -> dict[str, tuple[list[list[M]], type[Exception] | None]]:
    o = str(outside)
    secret = str(outside / "secret")
    return {
        "dotdot": ([[F("ok", "1"), F("../pwned", "x")]], UnsafeArchiveError),
        "nested-dotdot": ([[F("a/b/../../../pwned", "x")]], UnsafeArchiveError),
        "dotdot-dir": ([[D("../pwned")]], UnsafeArchiveError),
        "absolute": ([[F("/abs/x", "1"), F(f"{o}/pwned", "x")]], None),
        "parent-symlink-abs": ([[S("evil", o), F("evil/pwned", "x"), F("evil/secret", "w")]], None),
        "parent-symlink-up": ([[S("up", "../../.."), F("up/pwned", "x")]], None),
        "parent-symlink-up-nested": ([[D("a"), S("a/up", "../../.."), F("a/up/pwned", "x")]], None),
        "parent-symlink-chain": ([[S("a", "b/."), S("b", o), D("a/sub"), F("a/sub/x", "x")]], None),
        "parent-symlink-next-layer": ([[S("evil", o)], [D("evil/d"), F("evil/d/x", "x")]], None),
        "hardlink-etc-passwd": ([[H("h", "/etc/passwd")]], ImageFormatError),
        "hardlink-dotdot": ([[H("h", "../outside/secret")]], UnsafeArchiveError),
        "hardlink-deep-dotdot": ([[D("a"), H("a/h", "a/../../outside/x")]], UnsafeArchiveError),
        "hardlink-through-symlink-parent": ([[S("d", o), H("h", "d/secret")]], ImageFormatError),
        "hardlink-to-symlink": ([[S("l", secret), H("h", "l")]], None),
        "file-over-hardlinked-symlink": ([[S("l", secret), H("h", "l")], [F("h", "pwned")]], None),
        "whiteout-through-symlink": ([[S("d", o), WH("d", "secret")]], None),
        "opaque-through-symlink": ([[S("d", o), OPQ("d")]], None),
        "whiteout-symlink-itself": ([[S("d", o)], [WH("", "d")]], None),
        "file-over-symlink": ([[S("f", secret)], [F("f", "pwned")]], None),
        "dir-over-symlink": ([[S("d", o)], [D("d", mode=0o700)]], None),
        "symlink-loop-parent": ([[S("l1", "l2"), S("l2", "l1"), F("l1/x", "x")]], ImageFormatError),
    }  # fmt: skip


CASE_NAMES = list(_cases(Path("/x")))


@pytest.mark.parametrize("case", CASE_NAMES)
def test_malicious_layers_write_nothing_outside(tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("do not touch")
    (outside / "sub").mkdir()
    root = tmp_path / "root"
    passwd = os.stat("/etc/passwd")
    before = _state(outside)
    layers_members, error = _cases(outside)[case]
    layers = [layer(*members) for members in layers_members]
    if error is None:
        unpack(layers, root, privileged=False)
    else:
        with pytest.raises(error):
            unpack(layers, root, privileged=False)
    assert _state(outside) == before
    assert sorted(os.listdir(tmp_path)) == ["outside", "root"]
    assert not (tmp_path.parent / "pwned").exists()
    after_passwd = os.stat("/etc/passwd")
    assert (after_passwd.st_nlink, after_passwd.st_mtime_ns) == (
        passwd.st_nlink,
        passwd.st_mtime_ns,
    )
    # Whatever was written is inside root, at the in-root resolution of the name.
    inside = root / str(outside).lstrip("/")
    if case in ("absolute", "parent-symlink-abs"):
        assert (inside / "pwned").read_text() == "x"
    if case == "parent-symlink-abs":
        assert (inside / "secret").read_text() == "w"
    if case in ("parent-symlink-up", "parent-symlink-up-nested"):
        assert (root / "pwned").read_text() == "x"
    if case == "parent-symlink-chain":
        assert (inside / "sub" / "x").read_text() == "x"
    if case == "hardlink-to-symlink":  # a hard link to the symlink itself
        assert os.readlink(root / "h") == str(outside / "secret")
        assert os.lstat(root / "h").st_ino == os.lstat(root / "l").st_ino
    if case == "file-over-hardlinked-symlink":
        assert (root / "h").read_text() == "pwned" and (root / "l").is_symlink()
    if case in ("file-over-symlink", "dir-over-symlink"):
        assert not (root / case[0]).is_symlink()
    if case == "whiteout-symlink-itself":
        assert not os.path.lexists(root / "d")


# -- as an unprivileged user ----------------------------------------------------------------------
_SCRIPT = """
import json, os, sys
from pathlib import Path
from ocipatch.fs.unpack import unpack, OWNERSHIP_FILE
from tests.test_fs_merged import D, F, WH, layer, three_layers
work = Path(sys.argv[1])
extra = [
    layer(D("ro", mode=0o555), F("ro/old", "old"), F("zero", "z", mode=0), D("locked", mode=0)),
    layer(F("ro/new", "new"), WH("ro", "old"), F("locked/in", "in")),
]
own = unpack(three_layers() + extra, work / "root")
own.save(work / "state" / OWNERSHIP_FILE)
print(json.dumps({"uid": os.getuid(), "privileged": own.privileged}))
"""


@pytest.mark.skipif(not IS_ROOT or shutil.which("setpriv") is None, reason="needs root+setpriv")
def test_unpack_as_nobody() -> None:
    work = Path(tempfile.mkdtemp(prefix="ocipatch-nobody-"))
    try:
        os.chmod(work, 0o777)
        proc = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
             sys.executable, "-c", _SCRIPT, str(work)],
            cwd=REPO, capture_output=True, text=True, timeout=120,
            env={"PATH": os.environ.get("PATH", ""), "PYTHONDONTWRITEBYTECODE": "1",
                 "PYTHONPATH": str(REPO), "HOME": str(work)},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        info = json.loads(proc.stdout)
        assert info["uid"] != 0 and info["privileged"] is False
        root = work / "root"
        assert os.lstat(root / "usr/bin/passwd").st_uid == info["uid"]
        assert stat.S_IMODE(os.lstat(root / "usr/bin/passwd").st_mode) == 0o755
        assert sorted(os.listdir(root / "ro")) == ["new"]
        assert (root / "locked/in").read_text() == "in"
        own = OwnershipMap.load(work / "state" / OWNERSHIP_FILE)
        assert own["usr/bin/passwd"].mode == 0o4755 and own["locked"].mode == 0
        assert (own["etc/shadow"].uid, own["etc/shadow"].gid) == (0, 42)
        assert (
            MergedView(three_layers()).read_file("etc/os-release")
            == (root / "etc/os-release").read_bytes()
        )
    finally:
        shutil.rmtree(work)


def test_layer_stream_is_closed(tmp_path: Path) -> None:
    opened: list[object] = []

    class Tracking(MemLayer):
        def open_tar(self):  # type: ignore[no-untyped-def]
            s = super().open_tar()
            opened.append(s)
            return s

    unpack([Tracking(three_layers()[0].data)], tmp_path / "r", privileged=False)
    assert opened and all(getattr(s, "closed", True) for s in opened)


def test_continue_unpack_with_ownership(tmp_path: Path) -> None:
    """Layers applied in two calls give the same tree and map as in one."""
    layers = three_layers()
    root = tmp_path / "root"
    own = unpack(layers[:1], root, privileged=False)
    assert "data/gonedir/x" in own
    again = unpack(layers[1:], root, ownership=own)
    assert again is own and "data/gonedir/x" not in own  # whiteouts drop records too
    assert own["bin/sh"].mode == 0o755
    whole = unpack(three_layers(), tmp_path / "whole", privileged=False)
    assert list(own.items()) == list(whole.items())
    assert disk_tree(root) == disk_tree(tmp_path / "whole")
    with pytest.raises(ValueError, match="privileged"):
        unpack([], root, privileged=True, ownership=own)


@pytest.mark.parametrize("cached", [False, True])
def test_unpack_indexes_as_it_extracts(tmp_path: Path, cached: bool) -> None:
    """One pass per layer: the index an unpack builds equals the indexing pass's, the dpkg
    database is captured, and the view answers without streaming any layer again."""
    layers = three_layers()
    cache = tmp_path / "idx" if cached else None
    view = MergedView(layers, cache)
    assert not view.indexed()
    unpack(layers, tmp_path / "root", privileged=False, on_index=view.add_index)
    assert [lay.opened for lay in layers] == [1, 1, 1]
    assert view.indexed()
    assert {e.path: e for e in view.walk()} == {
        e.path: e for e in MergedView(three_layers()).walk()
    }
    assert view.read_file("/var/lib/dpkg/status") == b"top status\n"
    assert view.read_file("/etc/os-release") is not None
    assert [lay.opened for lay in layers] == [1, 1, 1]
    if cached:
        again = three_layers()
        later = MergedView(again, cache)
        assert later.indexed()
        assert later.read_file("/var/lib/dpkg/status") == b"top status\n"
        assert set(e.path for e in later.walk()) == set(e.path for e in view.walk())
        assert [lay.opened for lay in again] == [0, 0, 0]
