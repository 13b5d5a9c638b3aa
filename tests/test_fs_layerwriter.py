"""Compression, the deterministic layer writer, snapshot/diff, and the unpack -> diff -> layer
roundtrip."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from ocipatch.errors import UsageError
from ocipatch.fs.changes import Change, diff, snapshot
from ocipatch.fs.compress import compressor, open_decompressed
from ocipatch.fs.layerwriter import LayerInfo, write_layer
from ocipatch.fs.merged import MergedView
from ocipatch.fs.unpack import unpack
from tests.test_fs_merged import (
    MTIME,
    D,
    F,
    MemLayer,
    NonSeekable,
    S,
    layer,
    three_layers,
)


# -- compress --------------------------------------------------------------------------------------
@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_compress_roundtrip_streaming(compression: str) -> None:
    data = os.urandom(100_000) + b"z" * 500_000
    buf = io.BytesIO()
    w = compressor(compression, buf)
    for i in range(0, len(data), 65536):
        w.write(data[i : i + 65536])
    w.close()
    assert not buf.closed  # the caller keeps out
    r = open_decompressed(NonSeekable(buf.getvalue()), compression)  # type: ignore[arg-type]
    got = b"".join(iter(lambda: r.read(10_000), b""))
    assert got == data


def test_gzip_header_is_deterministic() -> None:
    class Named(io.BytesIO):
        name = "/some/file.tar"

    out = Named()
    w = compressor("gzip", out)
    w.write(b"abc")
    w.close()
    raw = out.getvalue()
    assert raw[:2] == b"\x1f\x8b"
    assert raw[3] & 0x08 == 0  # FNAME flag clear: no file name
    assert raw[4:8] == b"\0\0\0\0"  # mtime 0
    assert gzip.decompress(raw) == b"abc"


def test_multi_member_and_multi_frame() -> None:
    gz = gzip.compress(b"one", mtime=0) + gzip.compress(b"two", mtime=0)
    assert open_decompressed(NonSeekable(gz), "gzip").read() == b"onetwo"  # type: ignore[arg-type]
    c = zstandard.ZstdCompressor()
    zs = c.compress(b"one") + c.compress(b"two")
    assert open_decompressed(NonSeekable(zs), "zstd").read() == b"onetwo"  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        compressor("bzip2", io.BytesIO())


# -- writer ---------------------------------------------------------------------------------------
def _changes(tmp_path: Path) -> list[Change]:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "bin").write_bytes(b"\x7fELF binary")
    (src / "big").write_bytes(b"0123456789" * 50_000)
    if os.geteuid() == 0:  # disk owner differs from what the layer must record
        os.chown(src / "bin", 1234, 5678)
    os.chmod(src / "bin", 0o600)
    return [
        Change.file("usr/bin/tool", src / "bin", mode=0o2755, uid=0, gid=42, mtime=MTIME),
        Change.dir("usr/local/share", mode=0o2755, gid=42, mtime=MTIME),
        Change.dir("usr", mtime=MTIME),
        Change.dir("usr/bin", mtime=MTIME),
        Change.file("usr/share/big", src / "big", mtime=2_000_000_000),
        Change.file("etc/motd", b"hello\n", mtime=MTIME),
        Change.symlink("etc/alt", "/usr/bin/tool", mtime=MTIME),
        Change.hardlink("usr/bin/tool2", "usr/bin/tool"),
        Change.delete("var/cache/old"),
        Change.opaque("opt/app"),
        Change("dev/null", "char", 0o666, devmajor=1, devminor=3),
        Change.file(
            "usr/bin/ping",
            b"PING",
            mode=0o755,
            xattrs={"security.capability": b"\x01\x00\x00\x02\x00 \x00\x00\xff"},
        ),
    ]


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_write_layer_is_deterministic(tmp_path: Path, compression: str) -> None:
    outs = []
    infos = []
    for _ in range(2):
        buf = io.BytesIO()
        infos.append(write_layer(_changes(tmp_path), buf, compression, clamp_mtime=1_800_000_000))
        outs.append(buf.getvalue())
    assert outs[0] == outs[1] and infos[0] == infos[1]
    info = infos[0]
    assert info.digest == "sha256:" + hashlib.sha256(outs[0]).hexdigest()
    assert info.size == len(outs[0])
    plain = open_decompressed(NonSeekable(outs[0]), compression).read()  # type: ignore[arg-type]
    assert info.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
    if compression == "none":
        assert info.digest == info.diff_id
    # Reversed input order gives the same bytes.
    buf = io.BytesIO()
    write_layer(reversed(_changes(tmp_path)), buf, compression, clamp_mtime=1_800_000_000)
    assert buf.getvalue() == outs[0]


def test_written_headers(tmp_path: Path) -> None:
    buf = io.BytesIO()
    write_layer(_changes(tmp_path), buf, "none", clamp_mtime=1_800_000_000)
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue()), mode="r:") as tf:
        members = tf.getmembers()
        names = [m.name for m in members]
        assert names == [
            "dev/null", "etc/alt", "etc/motd", "opt/app/.wh..wh..opq", "usr", "usr/bin",
            "usr/bin/ping", "usr/bin/tool", "usr/bin/tool2", "usr/local/share", "usr/share/big",
            "var/cache/.wh.old",
        ]  # fmt: skip
        by = {m.name: m for m in members}
        tool = by["usr/bin/tool"]
        assert (tool.uid, tool.gid, tool.mode, tool.uname, tool.gname) == (0, 42, 0o2755, "", "")
        assert tf.extractfile(tool).read() == b"\x7fELF binary"  # type: ignore[union-attr]
        assert by["usr/local/share"].isdir() and by["usr/local/share"].mode == 0o2755
        assert by["usr/share/big"].mtime == 1_800_000_000  # clamped
        assert by["usr/bin/tool"].mtime == MTIME  # older: kept
        assert by["usr/bin/tool2"].islnk() and by["usr/bin/tool2"].linkname == "usr/bin/tool"
        assert by["etc/alt"].issym() and by["etc/alt"].linkname == "/usr/bin/tool"
        wh = by["var/cache/.wh.old"]
        assert wh.isreg() and wh.size == 0
        assert by["dev/null"].ischr() and (by["dev/null"].devmajor, by["dev/null"].devminor) == (
            1,
            3,
        )
        cap = by["usr/bin/ping"].pax_headers["SCHILY.xattr.security.capability"]
        assert cap.encode("utf-8", "surrogateescape") == b"\x01\x00\x00\x02\x00 \x00\x00\xff"


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")
@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_gnu_tar_reads_recorded_owners(tmp_path: Path, compression: str) -> None:
    path = tmp_path / f"layer.tar.{compression}"
    with path.open("wb") as out:
        write_layer(_changes(tmp_path), out, compression, clamp_mtime=1_800_000_000)
    if compression == "zstd" and shutil.which("zstd") is None:
        plain = tmp_path / "layer.tar"
        with path.open("rb") as f:
            plain.write_bytes(open_decompressed(f, "zstd").read())
        path, flag = plain, []
    else:
        flag = ["--zstd"] if compression == "zstd" else ["-z"]
    listing = subprocess.run(
        ["tar", "--numeric-owner", "--full-time", *flag, "-tvf", str(path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TZ": "UTC"},
    ).stdout
    lines = {
        line.split()[-1]: line
        for line in listing.splitlines()
        if " -> " not in line and " link to " not in line
    }
    assert lines["usr/bin/tool"].split()[:2] == ["-rwxr-sr-x", "0/42"]
    assert lines["usr/local/share/"].split()[:2] == ["drwxr-sr-x", "0/42"]
    assert "2027-01-15 08:00:00" in lines["usr/share/big"]  # 1_800_000_000: clamped
    assert "2023-11-14 22:13:20" in lines["usr/bin/tool"]  # MTIME: its own


def _times(changes: list[Change], clamp: int) -> dict[str, int]:
    buf = io.BytesIO()
    write_layer(changes, buf, "none", clamp_mtime=clamp)
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        return {m.name: m.mtime for m in tf.getmembers()}


def test_time_rule_own_times_kept_or_clamped_the_rest_get_the_layer_time() -> None:
    """One rule: an entry's own time if not newer than the layer time, else the layer time; an
    entry without a time (what scripts wrote, directories), whiteouts and opaque markers: the
    layer time. Nothing falls back to 0 or to a fixed date."""
    t = 1_750_000_000
    got = _times(
        [
            Change.dir("usr"),  # no time of its own
            Change.file("usr/old", b"o", mtime=MTIME),  # a package's, older: kept
            Change.file("usr/future", b"f", mtime=t + 10),  # newer than the layer time: clamped
            Change.file("usr/same", b"s", mtime=t),
            Change.symlink("usr/link", "old", mtime=MTIME),
            Change.symlink("usr/made", "old"),  # made by a script
            Change.file("etc/made", b"generated"),  # made by a script
            Change.hardlink("usr/old2", "usr/old"),  # its target's time
            Change.hardlink("usr/below", "bin/sh"),  # target below this layer: the layer time
            Change.delete("var/gone"),
            Change.opaque("opt/app"),
            Change("dev/null", "char", 0o666, devmajor=1, devminor=3),
        ],
        t,
    )
    assert got == {
        "dev/null": t,
        "etc/made": t,
        "opt/app/.wh..wh..opq": t,
        "usr": t,
        "usr/below": t,
        "usr/future": t,
        "usr/link": MTIME,
        "usr/made": t,
        "usr/old": MTIME,
        "usr/old2": MTIME,
        "usr/same": t,
        "var/.wh.gone": t,
    }


def test_time_rule_follows_the_layer_time_only() -> None:
    """The layer time is the writer's only clock: two layer times give two layers, the same one
    the same bytes; negative times are 0."""
    changes = [Change.file("a", b"x"), Change.file("b", b"y", mtime=MTIME)]
    assert _times(changes, 1000) == {"a": 1000, "b": 1000}
    assert _times(changes, 2_000_000_000) == {"a": 2_000_000_000, "b": MTIME}
    assert _times([Change.file("a", b"x", mtime=-5)], 10) == {"a": 0}
    assert _times(changes, -1) == {"a": 0, "b": 0}
    one, two = io.BytesIO(), io.BytesIO()
    write_layer(changes, one, "gzip", clamp_mtime=1000)
    write_layer(changes, two, "gzip", clamp_mtime=1000)
    assert one.getvalue() == two.getvalue()


def test_write_layer_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="two changes"):
        write_layer(
            [Change.file("a", b"1"), Change.file("/a", b"2")], io.BytesIO(), "none", clamp_mtime=0
        )
    with pytest.raises(ValueError, match="reserved"):
        Change.file("a/.wh.b", b"")


# -- snapshot / diff -------------------------------------------------------------------------------
def _base_layers() -> list[MemLayer]:
    return [
        layer(
            D("etc"),
            F("etc/shadow", "root:x\n", mode=0o640, uid=0, gid=42),
            F("etc/keep", "keep"),
            F("etc/same", "same"),
            F("etc/chmod", "c", mode=0o644),
            D("usr/bin"),
            F("usr/bin/passwd", "pw1", mode=0o4755),
            D("var/cache/apt"),
            F("var/cache/apt/pkgcache.bin", "cache"),
            D("var/lib/gone"),
            F("var/lib/gone/a", "a"),
            D("var/lib/gone/sub"),
            F("var/lib/gone/sub/b", "b"),
            F("var/lib/oldfile", "o"),
            D("was-dir"),
            F("was-dir/child", "c"),
            S("etc/link", "keep"),
        )
    ]


def _modify(root: Path) -> None:
    (root / "etc/shadow").write_text("root:y\n")  # content changes, owner stays 0:42 0640
    p = root / "usr/bin/passwd"  # replaced like dpkg does: new inode, chmod back to 4755
    tmp = root / "usr/bin/passwd.dpkg-new"
    tmp.write_text("pw2")
    os.chmod(tmp, 0o4755)
    os.rename(tmp, p)
    same = root / "etc/same"  # rewritten with the same content: not a change
    same.unlink()
    same.write_text("same")
    os.chmod(root / "etc/chmod", 0o600)
    shutil.rmtree(root / "var/lib/gone")
    (root / "var/lib/oldfile").unlink()
    (root / "var/cache/apt/pkgcache.bin").write_text("new cache")  # excluded
    (root / "var/cache/apt/srcpkgcache.bin").write_text("new")  # excluded
    (root / "srv/doc/new").mkdir(parents=True)
    (root / "srv/doc/new/copyright").write_text("(c)")
    os.link(root / "srv/doc/new/copyright", root / "srv/doc/new/copyright2")
    os.symlink("/usr/bin/passwd", root / "usr/bin/pw")
    (root / "etc/link").unlink()
    os.symlink("shadow", root / "etc/link")
    shutil.rmtree(root / "was-dir")
    (root / "was-dir").write_text("now a file")


def _exclude(path: str) -> bool:
    return path == "var/cache/apt"


def test_snapshot_diff(tmp_path: Path) -> None:
    root = tmp_path / "root"
    own = unpack(_base_layers(), root, privileged=False)
    snap = snapshot(root, own, exclude=_exclude)
    assert "var/cache/apt" not in snap.entries
    assert diff(snap, root, _exclude) == []
    _modify(root)
    changes = diff(snap, root, _exclude)
    by = {c.path: c for c in changes}
    assert [c.path for c in changes] == [
        "etc/chmod", "etc/link", "etc/shadow", "srv", "srv/doc", "srv/doc/new",
        "srv/doc/new/copyright", "srv/doc/new/copyright2", "usr/bin/passwd", "usr/bin/pw",
        "var/lib/gone", "var/lib/oldfile", "was-dir",
    ]  # fmt: skip
    assert (by["etc/shadow"].uid, by["etc/shadow"].gid, by["etc/shadow"].mode) == (0, 42, 0o640)
    assert by["etc/shadow"].type == "file" and by["etc/shadow"].source == root / "etc/shadow"
    assert by["etc/chmod"].mode == 0o600
    assert by["usr/bin/passwd"].mode == 0o4755
    assert by["usr/bin/pw"].type == "symlink" and by["usr/bin/pw"].linkname == "/usr/bin/passwd"
    assert by["etc/link"].linkname == "shadow"
    assert by["var/lib/gone"].type == "delete" and by["var/lib/oldfile"].type == "delete"
    assert by["was-dir"].type == "file"
    assert by["srv/doc/new/copyright2"].type == "hardlink"
    assert by["srv/doc/new/copyright2"].linkname == "srv/doc/new/copyright"
    # Without content hashes, a same-content rewrite counts as a change.
    snap2 = snapshot(root, own, exclude=_exclude, hash_files=False)
    same = root / "etc/same"
    same.unlink()
    same.write_text("same")
    assert [c.path for c in diff(snap2, root, _exclude)] == ["etc/same"]
    # Save/load keeps everything diff needs.
    snap.save(tmp_path / "snap.json")
    from ocipatch.fs.changes import Snapshot

    assert Snapshot.load(tmp_path / "snap.json").entries == snap.entries


def test_roundtrip_unpack_modify_diff_write_apply(tmp_path: Path) -> None:
    """The patch layer applied over the original layers gives the modified tree."""
    base = _base_layers() + three_layers()
    root = tmp_path / "root"
    own = unpack(base, root, privileged=False)
    snap = snapshot(root, own, exclude=_exclude)
    _modify(root)
    changes = diff(snap, root, _exclude)
    blob = tmp_path / "patch.tar.zst"
    with blob.open("wb") as out:
        info = write_layer(changes, out, "zstd", clamp_mtime=1_800_000_000)
    assert isinstance(info, LayerInfo) and info.size == blob.stat().st_size

    patch = MemLayer(blob.read_bytes(), "zstd")
    applied = tmp_path / "applied"
    own2 = unpack([*base, patch], applied, privileged=False)

    def tree(r: Path) -> dict[str, tuple[str, bytes | str]]:
        out: dict[str, tuple[str, bytes | str]] = {}
        for dirpath, dirs, files in os.walk(r):
            for name in dirs + files:
                full = Path(dirpath, name)
                rel = str(full.relative_to(r))
                if _exclude(rel) or rel.startswith("var/cache/apt/"):
                    continue
                st = os.lstat(full)
                if stat.S_ISLNK(st.st_mode):
                    out[rel] = ("l", os.readlink(full))
                elif stat.S_ISDIR(st.st_mode):
                    out[rel] = ("d", "")
                else:
                    out[rel] = ("f", full.read_bytes())
        return out

    assert tree(applied) == tree(root)
    assert (own2["etc/shadow"].uid, own2["etc/shadow"].gid, own2["etc/shadow"].mode) == (
        0,
        42,
        0o640,
    )
    assert own2["usr/bin/passwd"].mode == 0o4755 and own2["etc/chmod"].mode == 0o600
    # The untouched cache of the base image survives; the run's cache writes were not shipped.
    assert (applied / "var/cache/apt/pkgcache.bin").read_text() == "cache"
    assert not (applied / "var/cache/apt/srcpkgcache.bin").exists()
    # The merged view agrees with the applied tree.
    view = MergedView([*base, patch])
    assert view.read_file("etc/shadow") == b"root:y\n"
    assert view.read_file("was-dir") == b"now a file" and not view.exists("was-dir/child")
    assert not view.exists("var/lib/gone/sub/b")
    assert view.read_file("usr/bin/pw") == b"pw2"
    e = view.entry("srv/doc/new/copyright2")
    assert e is not None and e.type == "hardlink"
    # Same inputs, same layer.
    again = io.BytesIO()
    assert write_layer(diff(snap, root, _exclude), again, "zstd", clamp_mtime=1_800_000_000) == info


def test_diff_new_files_owned_by_root_and_privileged(tmp_path: Path) -> None:
    root = tmp_path / "root"
    own = unpack([layer(D("etc"), F("etc/a", "a", uid=5, gid=6))], root, privileged=False)
    snap = snapshot(root, own)
    (root / "etc/new").write_text("n")
    (root / "etc/a").write_text("a2")
    by = {c.path: c for c in diff(snap, root)}
    assert (by["etc/new"].uid, by["etc/new"].gid) == (0, 0)
    assert (by["etc/a"].uid, by["etc/a"].gid) == (5, 6)
    # A sandbox that knows better passes its own map.
    from ocipatch.fs.unpack import Owner

    own.__setitem__("etc/new", Owner("file", 7, 8, 0o600, 0))
    by = {c.path: c for c in diff(snap, root, ownership=own)}
    assert (by["etc/new"].uid, by["etc/new"].gid, by["etc/new"].mode) == (7, 8, 0o600)
    if os.geteuid() == 0:  # privileged: the disk is the truth
        root2 = tmp_path / "root2"
        own2 = unpack([layer(D("etc"), F("etc/a", "a", uid=5, gid=6))], root2, privileged=True)
        snap2 = snapshot(root2, own2)
        os.chown(root2 / "etc/a", 9, 10)
        by = {c.path: c for c in diff(snap2, root2)}
        assert (by["etc/a"].uid, by["etc/a"].gid) == (9, 10)


def test_hardlink_change_written_before_use() -> None:
    buf = io.BytesIO()
    write_layer(
        [Change.hardlink("a/z-link", "b/target"), Change.file("b/target", b"T")],
        buf,
        "none",
        clamp_mtime=MTIME,
    )
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        assert tf.getnames() == ["b/target", "a/z-link"]  # the target first, whatever the sort
    view = MergedView([MemLayer(buf.getvalue())])
    assert view.read_file("a/z-link") == b"T"


def test_read_ahead_keeps_order_and_raises_where_the_error_is() -> None:
    from ocipatch.fs.compress import ReadAhead

    data = os.urandom(3 << 20) + b"tail"
    r = ReadAhead(io.BytesIO(data))  # type: ignore[arg-type]
    got = b"".join(iter(lambda: r.read(10_240), b""))
    assert got == data and r.read(5) == b""
    r.close()

    class Failing(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            chunk = super().read(n)
            if self.tell() > (2 << 20):
                raise OSError("disk went away")
            return chunk

    r = ReadAhead(Failing(data))  # type: ignore[arg-type]
    first = r.read(1 << 20)
    assert first == data[: 1 << 20]
    with pytest.raises(OSError, match="disk went away"):
        while r.read(1 << 20):
            pass
    r.close()
    # Closing early stops the thread though the queue is full.
    r = ReadAhead(io.BytesIO(os.urandom(32 << 20)))  # type: ignore[arg-type]
    assert len(r.read(100)) == 100
    r.close()


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, (5 << 20) + 12345])
def test_parallel_gzip_is_standard_and_independent_of_threads(size: int) -> None:
    """Blocks compressed on threads make one ordinary gzip member; the bytes do not depend on
    the number of threads (the layer digest is the same on every machine)."""
    from ocipatch.fs.compress import ParallelGzipWriter

    data = (os.urandom(size // 3) + b"layer " * (size // 9 + 1))[:size]
    outs = []
    for workers in (1, 2, 4):
        buf = io.BytesIO()
        w = ParallelGzipWriter(buf, 6, workers=workers)  # type: ignore[arg-type]
        for i in range(0, len(data), 70_000):
            w.write(data[i : i + 70_000])
        w.close()
        outs.append(buf.getvalue())
    assert outs[0] == outs[1] == outs[2]
    assert gzip.decompress(outs[0]) == data
    r = subprocess.run(["gzip", "-t"], input=outs[0], capture_output=True)
    assert r.returncode == 0, r.stderr
    assert subprocess.run(["gzip", "-dc"], input=outs[0], capture_output=True).stdout == data
    if size > (1 << 20):  # close to one zlib stream: the blocks share their window
        assert len(outs[0]) < len(gzip.compress(data, 6, mtime=0)) * 1.01 + 64
