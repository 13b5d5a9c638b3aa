"""apk's state files: the installed DB (byte-exact round-trips of real files), world,
repositories, triggers and scripts.tar; damaged input gives one clear ImageFormatError."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from ocipatch.distro.apk.db import (
    DirEntry,
    FileEntry,
    Package,
    RepositoriesFile,
    ScriptEntry,
    TriggerEntry,
    parse_acl,
    read_installed,
    read_repositories,
    read_scripts_tar,
    read_triggers,
    read_world,
    serialize_installed,
    serialize_repositories,
    serialize_scripts_tar,
    serialize_triggers,
    serialize_world,
    split_script_name,
)
from ocipatch.distro.apk.records import Dependency, checksum_is_valid, q1
from ocipatch.errors import ImageFormatError
from tests.apk_formats import FORMATS, needs_formats, sample_id, samples

INSTALLED = samples("apk-installed", "*/installed")
TRIGGERS = samples("apk-installed", "*/triggers")
SCRIPTS = samples("apk-scripts-tar", "*/scripts.tar")

# Packages and R: records per sample, counted with grep -c '^P:' / '^R:'.
COUNTS = {
    "alpine-2.6.6-snyk": (13, 245),
    "alpine-3.14.0-minirootfs": (14, 88),
    "alpine-3.16-aarch64-apko-root": (14, 105),
    "alpine-3.16-syft-multiple-2": (14, 105),
    "alpine-3.21-x86_64-apk-tools": (39, 3536),
    "alpine-3.7.0-snyk": (11, 72),
    "wolfi-base-apko": (15, 91),
}

SMALL = b"""C:Q1Uq7pr0TahCvC7PPZn3GJKgdsMUY=
P:demo
V:1.0-r0
A:x86_64
S:10
I:20
T:demo
U:https://example.invalid
L:MIT
x:future lower-case field
F:etc
M:0:0:700
R:demo.conf
a:0:0:600
Z:Q1SLkS9hBidUbPwwrw+XR0Whv3ww8=
R:plain
F:usr/bin
R:demo
Z:Q1vfk1apUWI4yLJGhhNRd0kJixfvY=

P:second
V:2
C:Q17OteNVXn9/iSXcJI1Vf8x0TVc9Y=

"""


# --- installed: real samples -------------------------------------------------------------------


@needs_formats
@pytest.mark.parametrize("path", INSTALLED, ids=sample_id)
def test_real_installed_round_trips_byte_for_byte(path: Path) -> None:
    data = path.read_bytes()
    db = read_installed(data, str(path))
    assert serialize_installed(db) == data
    packages, files = COUNTS[path.parent.name]
    assert len(db.packages) == packages
    assert sum(len(p.paths()) for p in db.packages) == files
    for pkg in db.packages:
        assert pkg.name and pkg.version and checksum_is_valid(pkg.checksum)
        for _, entry in pkg.files():
            assert entry.checksum is None or checksum_is_valid(entry.checksum)


@needs_formats
def test_every_sample_is_covered() -> None:
    assert {p.parent.name for p in INSTALLED} == set(COUNTS)


@needs_formats
def test_apko_written_wolfi_db_lists_what_apko_lists() -> None:
    expected = json.loads((FORMATS / "apk-installed/wolfi-base-apko/expected.json").read_text())
    db = read_installed((FORMATS / "apk-installed/wolfi-base-apko/installed").read_bytes())
    assert sorted(p.name for p in db.packages) == expected["package_names"]
    base = db.get("wolfi-baselayout")
    assert base is not None
    assert (base.version, base.arch, base.checksum) == (
        "20230201-r23",
        "x86_64",
        "Q15GKR2cusJFuJW5jYQBxRRQK9xTs=",
    )
    assert base.fields[0] == ("P", "wolfi-baselayout")  # apko's order is kept
    assert base.install_if == []  # apko's `i:[]`
    assert base.get("U") == "" and base.has("U")
    mtab = dict(base.files())["etc/mtab"]
    assert mtab.acl == "0:0:0777" and mtab.owner_mode == (0, 0, 0o777)


@needs_formats
def test_apk_tools_db_fields() -> None:
    db = read_installed(
        (FORMATS / "apk-installed/alpine-3.21-x86_64-apk-tools/installed").read_bytes()
    )
    base = db.get("alpine-baselayout")
    assert base is not None
    assert base.get("q") == "1000"
    assert [str(d) for d in base.depends] == ["alpine-baselayout-data=3.6.8-r1", "/bin/sh"]
    crontab = dict(base.files())["etc/crontabs/root"]
    assert crontab.owner_mode == (0, 0, 0o600)
    assert crontab.checksum == "Q1vfk1apUWI4yLJGhhNRd0kJixfvY="
    assert db.owner_of("/etc/motd") is base
    musl = db.get("musl")
    assert musl is not None
    assert any(p.name.startswith("so:libc.musl") for p in musl.provides)


# --- installed: synthetic edits and unknown letters ---------------------------------------------


def test_unknown_letters_and_extras_survive() -> None:
    db = read_installed(SMALL, "t/installed")
    assert serialize_installed(db) == SMALL
    demo = db.packages[0]
    assert demo.get("x") == "future lower-case field"
    assert [p for p, _ in demo.files()] == ["etc/demo.conf", "etc/plain", "usr/bin/demo"]
    assert demo.dirs[0].owner_mode == (0, 0, 0o700)
    assert demo.dirs[1].owner_mode == (0, 0, 0o755)
    assert dict(demo.files())["etc/plain"].owner_mode == (0, 0, 0o644)
    # a letter after the file records stays where it was
    odd = SMALL.replace(b"R:plain\n", b"R:plain\nY:upper unknown\n")
    assert serialize_installed(read_installed(odd)) == odd


def test_edited_package_is_written_as_apk_tools_writes_it() -> None:
    db = read_installed(SMALL)
    demo = db.packages[0]
    demo.set("V", "1.1-r0")
    demo.set("o", "demo-src")  # a new letter goes where apk-tools puts it: after L
    demo.set("D", "so:libc.musl-x86_64.so.1")
    demo.dirs[1].files[0].checksum = q1(b"new content")
    demo.dirs.append(DirEntry("usr/share/demo", files=[FileEntry("README", acl="0:0:444")]))
    text = serialize_installed(db).decode()
    block = text.split("\n\n")[0].splitlines()
    assert block[:12] == [
        "C:Q1Uq7pr0TahCvC7PPZn3GJKgdsMUY=",
        "P:demo",
        "V:1.1-r0",
        "A:x86_64",
        "S:10",
        "I:20",
        "T:demo",
        "U:https://example.invalid",
        "L:MIT",
        "o:demo-src",
        "D:so:libc.musl-x86_64.so.1",
        "x:future lower-case field",
    ]
    assert block[-3:] == ["F:usr/share/demo", "R:README", "a:0:0:444"]
    assert f"Z:{q1(b'new content')}" in block
    again = read_installed(text.encode())
    assert again.packages[0].paths()[-1] == "usr/share/demo/README"


def test_new_package_appended() -> None:
    db = read_installed(SMALL)
    pkg = Package(fields=[("C", q1(b"x")), ("P", "new"), ("V", "1-r0")])
    db.packages.append(pkg)
    out = serialize_installed(db)
    assert out.endswith(f"C:{q1(b'x')}\nP:new\nV:1-r0\n\n".encode())
    assert [p.name for p in read_installed(out).packages] == ["demo", "second", "new"]


def test_file_without_final_blank_line_round_trips() -> None:
    cut = SMALL.rstrip(b"\n") + b"\n"
    assert serialize_installed(read_installed(cut)) == cut
    no_newline = SMALL.rstrip(b"\n")
    assert serialize_installed(read_installed(no_newline)) == no_newline


def test_leading_and_repeated_blank_lines_are_kept() -> None:
    odd = b"\n\n" + SMALL.replace(
        b"Z:Q1vfk1apUWI4yLJGhhNRd0kJixfvY=\n\n", b"Z:Q1vfk1apUWI4yLJGhhNRd0kJixfvY=\n\n\n"
    )
    db = read_installed(odd)
    assert [p.name for p in db.packages] == ["demo", "second"]
    assert serialize_installed(db) == odd


def test_empty_db() -> None:
    assert read_installed(b"").packages == []
    assert serialize_installed(read_installed(b"")) == b""


# --- installed: damaged input -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "line", "words"),
    [
        (b"\x1f\x8b\x08\x00junk\x00\xff\xfe", 1, "binary"),  # binary junk (a gzip header)
        (b"\x1f\x8b\x08\xffjunk\xff\xfe\n", 1, "X:value"),
        (b"P:a\nV:1\n\x00\x01\x02\n", 3, "binary"),
        (b"P:a\nV:1\nno colon here\n", 3, "X:value"),
        (b"P:a\nV:1\nX\n", 3, "X:value"),
        (b"F:etc\nR:passwd\n", 1, "before the package's P:"),
        (b"P:a\nV:1\nR:passwd\n", 3, "before any F:"),
        (b"P:a\nV:1\nF:etc\nZ:Q1vfk1apUWI4yLJGhhNRd0kJixfvY=\n", 4, "before any R:"),
        (b"P:a\nV:1\nF:etc\nR:x\nZ:Q1vfk1apU\n", 5, "truncated"),
        (b"P:a\nV:1\nC:Q1vfk1\n", 3, "truncated"),
        (b"P:a\nV:1\nF:etc\nM:root:0:755\n", 4, "acl"),
        (b"P:a\nV:1\nS:12kB\n", 3, "not a number"),
        (b"P:a\nT:no version\n\n", 3, "V: version"),
    ],
)
def test_damaged_db_names_file_and_line(data: bytes, line: int, words: str) -> None:
    with pytest.raises(ImageFormatError) as err:
        read_installed(data, "lib/apk/db/installed")
    msg = str(err.value)
    assert msg.startswith(f"lib/apk/db/installed line {line}: ")
    assert words in msg
    assert "\n" not in msg
    assert err.value.exit_code == 8


@needs_formats
@pytest.mark.parametrize("path", INSTALLED[:3], ids=sample_id)
def test_truncated_db_parses_or_fails_cleanly(path: Path) -> None:
    data = path.read_bytes()
    for cut in range(1, len(data), max(1, len(data) // 97)):
        try:
            db = read_installed(data[:cut], "installed")
        except ImageFormatError as e:
            assert "installed line" in str(e)
        else:
            assert serialize_installed(db) == data[:cut]


def test_parse_acl() -> None:
    assert parse_acl("0:0:755") == (0, 0, 0o755, "")
    assert parse_acl("100:101:0644:Q1vfk1apUWI4yLJGhhNRd0kJixfvY=")[:3] == (100, 101, 0o644)
    for bad in ("0:0", "a:0:755", "0:0:789"):
        with pytest.raises(ValueError):
            parse_acl(bad)


# --- world, repositories, triggers ---------------------------------------------------------------


def test_world() -> None:
    deps = read_world(b"alpine-base\nbusybox>=1.36\ncurl@edge\n!bad\nso:libz.so.1\n")
    assert [(d.name, d.op, d.version, d.tag, d.conflict) for d in deps] == [
        ("alpine-base", "", "", "", False),
        ("busybox", ">=", "1.36", "", False),
        ("curl", "", "", "edge", False),
        ("bad", "", "", "", True),
        ("so:libz.so.1", "", "", "", False),
    ]
    assert serialize_world(deps) == b"alpine-base\nbusybox>=1.36\ncurl@edge\n!bad\nso:libz.so.1\n"
    assert read_world(b"a b  c") == [Dependency("a"), Dependency("b"), Dependency("c")]
    with pytest.raises(ImageFormatError, match="etc/apk/world"):
        read_world(b"busybox>=\n")


REPOS = b"""# main repositories
https://mirror.invalid/alpine/v3.21/main

  https://mirror.invalid/alpine/v3.21/community
@edge https://mirror.invalid/alpine/edge/main
@local /srv/packages
#https://commented.invalid/out
"""


def test_repositories() -> None:
    repos = read_repositories(REPOS)
    assert serialize_repositories(repos) == REPOS
    assert [(r.url, r.tag) for r in repos.repositories] == [
        ("https://mirror.invalid/alpine/v3.21/main", ""),
        ("https://mirror.invalid/alpine/v3.21/community", ""),
        ("https://mirror.invalid/alpine/edge/main", "edge"),
        ("/srv/packages", "local"),
    ]
    mirrored = RepositoriesFile(
        lines=[
            line.with_url(line.url.replace("https://mirror.invalid", "http://127.0.0.1:8080"))
            if line.url
            else line
            for line in repos.lines
        ]
    )
    out = serialize_repositories(mirrored).decode()
    assert "@edge http://127.0.0.1:8080/alpine/edge/main\n" in out
    assert out.startswith("# main repositories\n")
    assert "mirror.invalid" not in out and "#https://commented.invalid/out\n" in out
    assert (
        read_repositories(b"https://x.invalid/main").repositories[0].url == "https://x.invalid/main"
    )


@needs_formats
@pytest.mark.parametrize("path", TRIGGERS, ids=sample_id)
def test_real_triggers_round_trip(path: Path) -> None:
    data = path.read_bytes()
    entries = read_triggers(data, str(path))
    assert serialize_triggers(entries) == data
    assert entries[0].globs == ["/bin", "/usr/bin", "/sbin", "/usr/sbin", "/lib/modules/*"]
    db = read_installed((path.parent / "installed").read_bytes())
    busybox = db.get("busybox")
    assert busybox is not None and entries[0].checksum == busybox.checksum


def test_damaged_triggers() -> None:
    assert (
        serialize_triggers([TriggerEntry(q1(b"x"), ["/a", "/b/*"])])
        == f"{q1(b'x')} /a /b/*\n".encode()
    )
    with pytest.raises(ImageFormatError, match="triggers line 2"):
        read_triggers(f"{q1(b'x')} /a\nnot-a-checksum /b\n".encode())


# --- scripts.tar -------------------------------------------------------------------------------


@needs_formats
@pytest.mark.parametrize("path", SCRIPTS, ids=sample_id)
def test_real_scripts_tar(path: Path) -> None:
    data = path.read_bytes()
    entries = read_scripts_tar(data, str(path))
    assert [(e.name, e.action) for e in entries][:3] == [
        ("busybox", "post-install"),
        ("busybox", "post-upgrade"),
        ("busybox", "trigger"),
    ]
    db = read_installed((FORMATS / "apk-installed" / path.parent.name / "installed").read_bytes())
    for e in entries:
        pkg = db.get(e.name)
        assert pkg is not None and (pkg.version, pkg.checksum) == (e.version, e.checksum)
        assert e.data.startswith(b"#!/bin/sh")
    out = serialize_scripts_tar(entries)
    assert serialize_scripts_tar(read_scripts_tar(out)) == out  # deterministic
    assert read_scripts_tar(out) == entries
    if "apko" not in path.parent.name:
        assert out == data  # apk-tools' own header layout, byte for byte
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:  # an independent reader agrees
        assert [m.name for m in tar] == [e.member_name for e in entries]


def test_scripts_tar_names_with_slash_dash_and_length() -> None:
    csum = "Q1PGxwzLd7SQ/SZjUGrncnpjjtpKY="
    assert split_script_name(f"py3-foo-bar-1.2_rc1-r3.{csum}.post-upgrade") == (
        "py3-foo-bar",
        "1.2_rc1-r3",
        csum,
        "post-upgrade",
    )
    assert split_script_name(f"font-misc-1-1.0-r0.{csum}.trigger")[:2] == ("font-misc-1", "1.0-r0")
    with pytest.raises(ValueError):
        split_script_name("not-a-script")
    long = ScriptEntry("x" * 90, "1.0-r0", csum, "post-install", b"#!/bin/sh\ntrue\n", mtime=1)
    out = serialize_scripts_tar([long])
    assert read_scripts_tar(out) == [long]
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        assert tar.getnames() == [long.member_name]
    with pytest.raises(ImageFormatError, match=r"scripts\.tar"):
        read_scripts_tar(b"\x00garbage" * 100)


@needs_formats
def test_put_keeps_apk_order() -> None:
    # apk-tools 2.14 writes packages sorted by name: a new one goes into its place ...
    sorted_db = read_installed(
        (FORMATS / "apk-installed/alpine-3.21-x86_64-apk-tools/installed").read_bytes()
    )
    names = [p.name for p in sorted_db.packages]
    sorted_db.put(Package(fields=[("C", q1(b"n")), ("P", "bbb-new"), ("V", "1-r0")]))
    assert [p.name for p in sorted_db.packages] == sorted(
        [*names, "bbb-new"], key=lambda n: (n.lower(), n)
    )
    # ... and an upgrade replaces the old entry where it was
    upgraded = Package(fields=[("C", q1(b"u")), ("P", "busybox"), ("V", "9.9-r0")])
    at = names.index("busybox") + 1
    sorted_db.put(upgraded)
    assert sorted_db.packages[at] is upgraded and len(sorted_db.packages) == len(names) + 1
    # older apk wrote install order: new packages are appended
    data = (FORMATS / "apk-installed/alpine-3.7.0-snyk/installed").read_bytes()
    old_db = read_installed(data)
    old_db.put(Package(fields=[("C", q1(b"n")), ("P", "aaa"), ("V", "1-r0")]))
    assert old_db.packages[-1].name == "aaa"
    out = serialize_installed(old_db)
    assert out.startswith(data.rstrip(b"\n") + b"\n\nC:")  # a blank line before the new block
    assert old_db.remove("aaa") is not None and serialize_installed(old_db) == data
    assert old_db.remove("not-installed") is None
