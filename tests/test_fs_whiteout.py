"""Whiteout naming rules and path normalization (ocipatch.fs.whiteout)."""

from __future__ import annotations

import pytest

from ocipatch.fs import whiteout as wh


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("./usr/bin", "usr/bin"),
        ("/usr/bin/", "usr/bin"),
        ("usr//bin/./x", "usr/bin/x"),
        ("./", ""),
        ("/", ""),
        ("", ""),
        ("//etc", "etc"),
        ("/../etc/passwd", "etc/passwd"),
        ("a/b/../c", "a/c"),
        ("../../x", "x"),
    ],
)
def test_normalize(raw: str, norm: str) -> None:
    assert wh.normalize(raw) == norm


@pytest.mark.parametrize(
    ("name", "escapes"),
    [
        ("../x", True),
        ("a/../../x", True),
        ("./../x", True),
        ("/../x", True),
        ("a/../x", False),
        ("/etc/passwd", False),
        ("a/b/../../c", False),
        ("..foo/x", False),
        ("x/..", False),
    ],
)
def test_escapes_root(name: str, escapes: bool) -> None:
    assert wh.escapes_root(name) is escapes


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("usr/bin/ls", "entry"),
        ("usr/bin/.wh.ls", "whiteout"),
        ("./usr/bin/.wh.ls", "whiteout"),
        (".wh.etc", "whiteout"),
        ("usr/.wh..wh..opq", "opaque"),
        (".wh..wh..opq", "opaque"),
        ("usr/.wh..wh.plnk", "meta"),
        ("usr/.wh..wh.aufs", "meta"),
        ("usr/.wh.", "meta"),
        ("usr/.wh..", "meta"),
        ("usr/.wh...", "meta"),
        ("usr/.whx", "entry"),
        ("usr/x.wh.y", "entry"),
    ],
)
def test_classify(name: str, kind: str) -> None:
    assert wh.classify(wh.normalize(name)) == kind


def test_helpers() -> None:
    assert wh.OPAQUE == ".wh..wh..opq"
    assert wh.is_whiteout("./usr/.wh.foo")
    assert not wh.is_whiteout("usr/.wh..wh..opq")
    assert wh.is_opaque("/usr/share/.wh..wh..opq")
    assert not wh.is_opaque("usr/share/.wh.x")
    assert wh.whiteout_target("./usr/bin/.wh.foo") == "usr/bin/foo"
    assert wh.whiteout_target(".wh.etc") == "etc"
    assert wh.opaque_dir("usr/share/.wh..wh..opq") == "usr/share"
    assert wh.opaque_dir(".wh..wh..opq") == ""
    assert wh.whiteout_name_for("/usr/bin/foo") == "usr/bin/.wh.foo"
    assert wh.whiteout_name_for("etc") == ".wh.etc"
    assert wh.opaque_name_for("/usr/share/") == "usr/share/.wh..wh..opq"
    assert wh.is_special("a/.wh..wh.plnk") and wh.is_special("a/.wh.b")
    assert not wh.is_special("a/b")
    assert wh.ancestors("a/b/c") == ["a/b", "a"]
    assert wh.ancestors("a") == []
    with pytest.raises(ValueError):
        wh.whiteout_target("usr/bin/foo")
    with pytest.raises(ValueError):
        wh.whiteout_name_for("/")
    with pytest.raises(ValueError):
        wh.opaque_dir("usr/.wh.x")


def test_roundtrip_names() -> None:
    for path in ["a", "a/b", "usr/lib/x86_64-linux-gnu/libc.so.6", "dir with space/é"]:
        assert wh.whiteout_target(wh.whiteout_name_for(path)) == path
        assert wh.opaque_dir(wh.opaque_name_for(path)) == path


def test_sort_key_parents_first_whiteouts_before_siblings() -> None:
    names = ["a-c", "a/b", "a", "a/.wh.x", "b", ".wh.z", "a/.wh..wh..opq", "a/b/c", "a/a"]
    ordered = sorted(names, key=wh.sort_key)
    assert ordered == [".wh.z", "a", "a/.wh..wh..opq", "a/.wh.x", "a/a", "a/b", "a/b/c", "a-c", "b"]
