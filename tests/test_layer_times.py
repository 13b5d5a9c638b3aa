"""The times of a patch layer: the layer time (SOURCE_DATE_EPOCH, else the newest package mtime or
the image's `created`), and which entries keep their package's data.tar mtime. Real .debs built
by dpkg-deb (tools/aptrepo.py), read back independently with `dpkg-deb --fsys-tarfile`."""

from __future__ import annotations

import calendar
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from ocipatch.distro.deb.debmeta import (
    DebMetaMemo,
    FileMeta,
    by_real_path,
    newest_mtime,
    newest_time,
    packaged_paths,
    replayed_meta,
    with_package_metadata,
)
from ocipatch.errors import UsageError
from ocipatch.fs.changes import Change, diff, snapshot
from ocipatch.fs.layertime import LayerClock, created_epoch, source_date_epoch
from ocipatch.fs.merged import MergedView
from ocipatch.fs.unpack import unpack
from tests import synth
from tests.test_cli import run
from tests.test_fs_merged import D, F, M, MemLayer, tar_of
from tests.test_image import debianish_layers
from tests.test_patch_cli import GOOD, error_lines, report
from tools.aptrepo import DebFile, DebSpec, build_deb

OLD, NEW = 1_600_000_000, 1_650_000_000


# -- SOURCE_DATE_EPOCH and created -------------------------------------------------------------
def test_source_date_epoch() -> None:
    assert source_date_epoch({}) is None
    assert source_date_epoch({"SOURCE_DATE_EPOCH": ""}) is None
    assert source_date_epoch({"SOURCE_DATE_EPOCH": " 1700000000\n"}) == 1_700_000_000
    assert source_date_epoch({"SOURCE_DATE_EPOCH": "0"}) == 0


@pytest.mark.parametrize("raw", ["yesterday", "-5", "1.5", "1e9", "１２", "0x10", "12 34"])
def test_malformed_source_date_epoch_is_refused(raw: str) -> None:
    with pytest.raises(UsageError, match=r"SOURCE_DATE_EPOCH=.* is not a whole number"):
        source_date_epoch({"SOURCE_DATE_EPOCH": raw})


def _utc(*t: int) -> int:
    return calendar.timegm((*t, 0, 0, 0))


@pytest.mark.parametrize(
    ("created", "want"),
    [
        ("2024-06-10T12:34:56Z", _utc(2024, 6, 10, 12, 34, 56)),
        ("2024-06-10t12:34:56z", _utc(2024, 6, 10, 12, 34, 56)),
        ("2024-06-10T12:34:56.000Z", _utc(2024, 6, 10, 12, 34, 56)),
        # Within a second: rounded up, not older than a file dated in that second.
        ("2024-06-10T12:34:56.123456789Z", _utc(2024, 6, 10, 12, 34, 57)),
        ("2024-06-10T14:34:56+02:00", _utc(2024, 6, 10, 12, 34, 56)),
        ("2024-06-10T07:04:56-05:30", _utc(2024, 6, 10, 12, 34, 56)),
        ("1970-01-01T00:00:00Z", 0),
        ("1969-12-31T23:59:59Z", 0),
        ("2024-06-10", None),
        ("2024-13-40T00:00:00Z", None),
        ("not a date", None),
        (1718022896, None),
        (None, None),
    ],
)
def test_created_epoch(created: object, want: int | None) -> None:
    assert created_epoch(created) == want


def test_layer_clock() -> None:
    """SOURCE_DATE_EPOCH wins, even below the packages' times; otherwise the later of the newest
    package mtime and `created`; the run's clock never enters."""
    assert LayerClock(None, None).time(NEW) == NEW
    assert LayerClock(None, OLD).time(NEW) == NEW
    assert LayerClock(None, NEW + 7).time(NEW) == NEW + 7
    assert LayerClock(None, None).time(0) == 0
    assert LayerClock(OLD - 1, NEW + 7).time(NEW) == OLD - 1
    assert LayerClock(0, None).time(NEW) == 0
    assert LayerClock(5, 6).key() == {"source_date_epoch": 5, "created": 6}


def test_layer_clock_of_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert LayerClock.of({"created": "2024-06-10T12:34:56Z"}) == LayerClock(
        None, _utc(2024, 6, 10, 12, 34, 56)
    )
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "42")
    assert LayerClock.of({}) == LayerClock(42, None)


def test_patch_refuses_a_malformed_source_date_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = synth.write_layout(tmp_path / "layout", debianish_layers(), tag="v1")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "last tuesday")
    r = run(
        "patch", "-i", f"oci:{layout.layout}:v1", "-r", str(report(tmp_path, "r.json", GOOD)),
        "--cache-dir", str(tmp_path / "c"),
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    errors = error_lines(r.stderr)
    assert len(errors) == 1 and "SOURCE_DATE_EPOCH='last tuesday'" in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    index = json.loads((layout.layout / "index.json").read_text())
    assert len(index["manifests"]) == 1, "nothing written"


# -- package times -----------------------------------------------------------------------------
def _debs(tmp_path: Path) -> tuple[Path, Path]:
    a = build_deb(
        DebSpec(
            "ocp-a",
            "1.0",
            files=[
                DebFile("/usr/bin/a", "#!/bin/sh\necho a\n", mode=0o2755, gid=42),
                DebFile("/usr/bin/a-link", kind="symlink", target="a"),
                DebFile("/etc/a.conf", "level = 1\n"),
                DebFile("/usr/share/a", kind="dir"),
                DebFile("/usr/share/a/data", "as shipped\n"),
            ],
            conffiles=["/etc/a.conf"],
        ),
        tmp_path / "a",
        source_date_epoch=OLD,
    )
    b = build_deb(
        DebSpec("ocp-b", "1.0", files=[DebFile("/usr/lib/b.so", "b" * 100)], compression="zstd"),
        tmp_path / "b",
        source_date_epoch=NEW,
    )
    return a, b


def _header_times(deb: Path) -> dict[str, int]:
    """path -> mtime, read with dpkg-deb, not with ocipatch's reader."""
    raw = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(raw.stdout)) as tf:
        return {m.name.removeprefix("./").rstrip("/"): int(m.mtime) for m in tf.getmembers()}


def test_newest_mtime_over_the_packages(tmp_path: Path) -> None:
    a, b = _debs(tmp_path)
    assert newest_mtime([a]) == max(_header_times(a).values()) == OLD
    assert newest_mtime([a, b], DebMetaMemo()) == NEW
    assert newest_mtime([]) == 0


def test_package_files_keep_their_header_time(tmp_path: Path) -> None:
    """A file or symlink still as the package shipped it gets the data.tar time, whatever the
    disk said; anything else (rewritten, not the package's, a directory) has no time of its own
    and so gets the layer time."""
    a, b = _debs(tmp_path)
    times = _header_times(a) | _header_times(b)
    disk = 1_999_999_999  # what an install run's clock would have left
    root = tmp_path / "root"
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/a").write_text("#!/bin/sh\necho a\n")
    (root / "usr/bin/a-changed").write_text("#!/bin/sh\necho a, rewritten by a postinst\n")
    changes = [
        Change.file("usr/bin/a", root / "usr/bin/a", mtime=disk),
        Change.symlink("usr/bin/a-link", "a", mtime=disk),
        Change.file("usr/lib/b.so", b"b" * 100, mtime=disk),
        Change.file("etc/a.conf.dpkg-dist", b"level = 1\n", mtime=disk),  # the new conffile
        Change.dir("usr/share/a", mtime=disk),
        Change.file("etc/ssl/certs/ca.crt", b"made by a script", mtime=disk),
        Change.file("etc/a.conf", b"level = 99, the image's edit\n", mtime=disk),
        Change.symlink("usr/bin/a-link2", "elsewhere", mtime=disk),
        Change.delete("usr/bin/old"),
    ]
    # A postinst rewrote the package's file: its content is not the package's any more.
    changes.append(Change.file("usr/share/a/data", root / "usr/bin/a-changed", mtime=disk))
    dated = {c.path: c for c in with_package_metadata(changes, root, [a, b])}
    assert dated["usr/bin/a"].mtime == times["usr/bin/a"] == OLD
    assert (dated["usr/bin/a"].gid, dated["usr/bin/a"].mode) == (42, 0o2755)
    assert dated["usr/bin/a-link"].mtime == times["usr/bin/a-link"] == OLD
    assert dated["usr/lib/b.so"].mtime == times["usr/lib/b.so"] == NEW
    assert dated["etc/a.conf.dpkg-dist"].mtime == times["etc/a.conf"] == OLD
    for path in ("usr/share/a", "etc/ssl/certs/ca.crt", "etc/a.conf", "usr/bin/old"):
        assert dated[path].mtime is None, path
    assert dated["usr/bin/a-link2"].mtime is None
    assert dated["usr/share/a/data"].mtime is None


def test_statoverride_sets_owners_not_times(tmp_path: Path) -> None:
    a, _ = _debs(tmp_path)
    root = tmp_path / "root"
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nsvc:x:7:7::/:/bin/false\n")
    (root / "etc/group").write_text("root:x:0:\nsvc:x:7:\n")
    (root / "var/lib/dpkg/statoverride").write_text("svc svc 4750 /usr/bin/a\n")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/a").write_text("#!/bin/sh\necho a\n")
    [c] = with_package_metadata([Change.file("usr/bin/a", root / "usr/bin/a")], root, [a])
    assert (c.uid, c.gid, c.mode, c.mtime) == (7, 7, 0o4750, OLD)


def test_repatch_keeps_the_previous_patch_layers_times(tmp_path: Path) -> None:
    """A re-patch replays the previous patch layer over the base and diffs against the base:
    what that layer wrote and this run left alone keeps its time (the time the previous patch
    gave it: a package's), what this run rewrote gets the layer time; the layer time is not
    older than the kept times."""
    base = MemLayer(tar_of(D("usr"), D("usr/lib"), F("usr/lib/a.so", "a1"), D("etc")))
    previous = MemLayer(
        tar_of(
            M("usr/lib/a.so", data=b"a2", mtime=NEW),  # a package file of the previous patch
            M("usr/lib/b.so", data=b"b2", mtime=OLD),
            M("usr/lib/b-link", tarfile.SYMTYPE, mode=0o777, linkname="b.so", mtime=OLD),
            M("etc/made", data=b"by a script", mtime=NEW),
            M("etc/x.conf.dpkg-dist", data=b"new default", mtime=OLD),  # a kept conffile's
        )
    )
    root = tmp_path / "root"
    own = unpack([base], root, privileged=False)
    snap = snapshot(root, own, exclude=None)
    unpack([previous], root, ownership=own)
    (root / "etc/made").write_text("by the script again, now")  # this run rewrites it
    changes = diff(snap, root, ownership=own)
    view = MergedView([base, previous])
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "var/lib/dpkg/info/ocp-a.list").write_text(
        "/.\n/usr\n/usr/lib\n/usr/lib/a.so\n/usr/lib/b-link\n/usr/lib/b.so\n/etc/x.conf\n"
    )
    packaged = packaged_paths(root)
    assert packaged == {
        "usr", "usr/lib", "usr/lib/a.so", "usr/lib/b.so", "usr/lib/b-link", "etc/x.conf"
    }  # fmt: skip
    # Only package files: etc/made, a script's, gets the new layer time even if left alone.
    replayed = replayed_meta(view, 1, packaged)
    assert set(replayed) == {
        "usr/lib/a.so", "usr/lib/b.so", "usr/lib/b-link", "etc/x.conf.dpkg-dist"
    }  # fmt: skip
    dated = {c.path: c.mtime for c in with_package_metadata(changes, root, [], replayed=replayed)}
    assert dated == {
        "usr/lib/a.so": NEW,
        "usr/lib/b.so": OLD,
        "usr/lib/b-link": OLD,
        "etc/x.conf.dpkg-dist": OLD,
        "etc/made": None,
    }
    dated_changes = with_package_metadata(changes, root, [], replayed=replayed)
    assert newest_time(dated_changes, []) == NEW
    assert replayed_meta(view, 2, packaged) == {}, "no previous patch layer: nothing replayed"


def test_merged_usr_paths_are_found_where_dpkg_put_them(tmp_path: Path) -> None:
    """A merged-/usr image (lib -> usr/lib): what a package ships under /lib is in the layer
    under usr/lib, and keeps its owners and time there."""
    deb = build_deb(
        DebSpec("ocp-m", "1.0", files=[DebFile("/lib/ocp/x.so", "x" * 10, mode=0o755, gid=42)]),
        tmp_path / "m",
        source_date_epoch=OLD,
    )
    root = tmp_path / "root"
    (root / "usr/lib/ocp").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "bin").symlink_to("/usr/bin")  # absolute: resolved inside the root
    (root / "usr/lib/ocp/x.so").write_text("x" * 10)
    [c] = with_package_metadata(
        [Change.file("usr/lib/ocp/x.so", root / "usr/lib/ocp/x.so", mtime=1_999_999_999)],
        root,
        [deb],
    )
    assert (c.mtime, c.gid, c.mode) == (OLD, 42, 0o755)

    def meta(t: int) -> FileMeta:
        return FileMeta(0, 0, 0o644, t, "file", 1)

    (root / "usr/bin").mkdir()
    got = by_real_path(
        {"lib/z": meta(1), "usr/lib/z": meta(2), "lib/y": meta(3), "bin/sh": meta(4),
         "gone/w": meta(5), "top": meta(6)},
        root,
    )  # fmt: skip
    assert got == {
        "usr/lib/z": meta(2),  # shipped under its real name: wins
        "usr/lib/y": meta(3),
        "usr/bin/sh": meta(4),
        "gone/w": meta(5),  # no such directory: kept as named
        "top": meta(6),
    }


def test_packaged_paths_dpkg_and_distroless(tmp_path: Path) -> None:
    """The files the package database lists, where they are (merged-/usr resolved)."""
    root = tmp_path / "root"
    (root / "usr/lib").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "var/lib/dpkg/info/libc6:amd64.list").write_text("/.\n/lib\n/lib/libc.so.6\n")
    (root / "var/lib/dpkg/status.d").mkdir()
    (root / "var/lib/dpkg/status.d/tzdata.md5sums").write_text(
        "0123  usr/share/zoneinfo/UTC\n4567  usr/share/doc/with space\n"
    )
    assert packaged_paths(root) == {
        "lib",
        "usr/lib/libc.so.6",
        "usr/share/zoneinfo/UTC",
        "usr/share/doc/with space",
    }
    assert packaged_paths(tmp_path / "empty") == set()
