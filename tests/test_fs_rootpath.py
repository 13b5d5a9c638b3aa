"""ocipatch.fs.rootpath on real directory trees: chroot-like resolution and the stat type names.

Every tree is built on disk in tmp_path; the same cases also run over an in-memory Tree to show
that resolution depends on nothing but the Tree protocol (MergedView relies on that).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from ocipatch.fs import rootpath
from ocipatch.fs.rootpath import (
    MAX_SYMLINKS,
    DiskTree,
    NotADirectory,
    SymlinkLoop,
    file_type,
    resolve,
    resolve_lenient,
)


def make_tree(root: Path) -> Path:
    """A small image root: merged /usr, links of every kind, a file, a loop."""
    for d in ("usr/lib/x", "usr/bin", "etc/apt", "var"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/os-release").write_text("ID=test\n")
    (root / "lib").symlink_to("usr/lib")  # relative
    (root / "bin").symlink_to("/usr/bin")  # absolute: restarts at the root, not the host's /
    (root / "etc/up").symlink_to("../../../../..")  # climbs far above the root
    (root / "etc/abs-up").symlink_to("/../../usr")
    (root / "etc/self").symlink_to("self")
    (root / "etc/ping").symlink_to("pong")
    (root / "etc/pong").symlink_to("/etc/ping")
    (root / "etc/dangling").symlink_to("/nowhere/file")
    (root / "var/run").symlink_to("../run")  # to a missing directory
    (root / "etc/host-etc").symlink_to("/etc")  # must stay /etc of the root
    return root


class MemTree:
    """The same idea over a dict: path -> (kind, link target)."""

    def __init__(self, nodes: dict[str, tuple[str, str]]) -> None:
        self.nodes = nodes

    def kind(self, rel: str) -> str | None:
        node = self.nodes.get(rel)
        return None if node is None else node[0]

    def readlink(self, rel: str) -> str:
        return self.nodes[rel][1]


def mem_of(root: Path) -> MemTree:
    """root's tree in memory, as DiskTree sees it."""
    disk = DiskTree(root)
    nodes: dict[str, tuple[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            kind = disk.kind(rel)
            assert kind is not None
            nodes[rel] = (kind, disk.readlink(rel) if kind == "symlink" else "")
    return MemTree(nodes)


@pytest.fixture(params=["disk", "memory"])
def tree(request: pytest.FixtureRequest, tmp_path: Path) -> rootpath.Tree:
    root = make_tree(tmp_path / "root")
    return DiskTree(root) if request.param == "disk" else mem_of(root)


@pytest.mark.parametrize(
    ("path", "real"),
    [
        ("", ""),
        ("/", ""),
        ("./usr//lib/./x/", "usr/lib/x"),
        ("/lib/x", "usr/lib/x"),  # relative link
        ("bin", "usr/bin"),  # absolute link, final component followed by default
        ("/etc/up", ""),  # `..` stops at the root
        ("/etc/up/etc/os-release", "etc/os-release"),
        ("/etc/abs-up/lib", "usr/lib"),
        ("/../../etc/./apt/../os-release", "etc/os-release"),
        ("/etc/host-etc/apt", "etc/apt"),
        ("/lib/x/../../bin", "usr/bin"),  # `..` after a link climbs from the link's target
        ("/etc/missing", "etc/missing"),  # the final component need not exist
    ],
)
def test_resolve_follows_links_inside_the_root(tree: rootpath.Tree, path: str, real: str) -> None:
    assert resolve(tree, path) == real
    assert resolve_lenient(tree, path) == real


def test_final_component_not_followed(tree: rootpath.Tree) -> None:
    assert resolve(tree, "/bin", follow_final=False) == "bin"
    assert resolve(tree, "/lib/x/../../../bin", follow_final=False) == "bin"
    assert resolve(tree, "/etc/self", follow_final=False) == "etc/self"  # a loop is not entered
    # Parents are always followed.
    assert resolve(tree, "/lib/x", follow_final=False) == "usr/lib/x"


def test_missing_and_non_directory_components(tree: rootpath.Tree) -> None:
    assert resolve(tree, "/nowhere/file") is None  # a parent is missing
    assert resolve(tree, "/etc/os-release/x") is None  # a parent is a file
    assert resolve(tree, "/etc/os-release") == "etc/os-release"
    assert resolve(tree, "/etc/os-release", need_dir=True) is None
    assert resolve(tree, "/etc/missing", need_dir=True) is None
    assert resolve(tree, "/var/run/x") is None  # a link to a missing directory
    assert resolve(tree, "/etc/apt", need_dir=True) == "etc/apt"


def test_lenient_keeps_what_does_not_exist(tree: rootpath.Tree) -> None:
    assert resolve_lenient(tree, "/nowhere/a/../b") == "nowhere/b"
    assert resolve_lenient(tree, "/var/run/lock") == "run/lock"
    assert resolve_lenient(tree, "/etc/dangling") == "nowhere/file"
    assert resolve(tree, "/etc/dangling") is None
    assert resolve_lenient(tree, "/etc/os-release/x") == "etc/os-release/x"
    assert resolve_lenient(tree, "/nowhere/../../..") == ""
    # Once `..` climbs back out of what is missing, links are followed again.
    assert resolve_lenient(tree, "/nowhere/../bin/sh") == "usr/bin/sh"
    assert resolve_lenient(tree, "/etc/os-release/../../lib") == "usr/lib"


@pytest.mark.parametrize("path", ["/etc/self", "/etc/ping", "/etc/pong/x", "etc/self/../x"])
def test_symlink_loops(tree: rootpath.Tree, path: str) -> None:
    with pytest.raises(SymlinkLoop, match="too many symlinks") as info:
        resolve(tree, path)
    assert info.value.path == path
    with pytest.raises(SymlinkLoop):
        resolve_lenient(tree, path)
    with pytest.raises(SymlinkLoop):
        resolve(tree, path, mkdir=lambda _rel: None)


def test_hop_limit_is_exact(tmp_path: Path) -> None:
    """A chain of MAX_SYMLINKS links resolves; one more is a loop, as in Linux."""
    root = tmp_path / "root"
    (root / "end").mkdir(parents=True)
    (root / "l0").symlink_to("end")
    for i in range(1, MAX_SYMLINKS + 1):
        (root / f"l{i}").symlink_to(f"/l{i - 1}")
    tree = DiskTree(root)
    assert resolve(tree, f"l{MAX_SYMLINKS - 1}") == "end"
    with pytest.raises(SymlinkLoop):
        resolve(tree, f"l{MAX_SYMLINKS}")
    assert resolve(tree, "l2", max_hops=3) == "end"
    with pytest.raises(SymlinkLoop):
        resolve(tree, "l3", max_hops=3)


def test_create_mode_makes_missing_directories_through_links(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "root")
    made: list[str] = []

    def mkdir(rel: str) -> None:
        os.mkdir(root / rel)
        made.append(rel)

    tree = DiskTree(root)
    assert resolve(tree, "/lib/new/deeper", need_dir=True, mkdir=mkdir) == "usr/lib/new/deeper"
    assert resolve(tree, "/var/run/lock", need_dir=True, mkdir=mkdir) == "run/lock"
    assert resolve(tree, "/etc/up/opt", need_dir=True, mkdir=mkdir) == "opt"
    # Real paths, parents first, each once; nothing outside the root.
    assert made == ["usr/lib/new", "usr/lib/new/deeper", "run", "run/lock", "opt"]
    assert (root / "usr/lib/new/deeper").is_dir() and (root / "run/lock").is_dir()
    assert sorted(os.listdir(tmp_path)) == ["root"]
    # Existing directories are not made again.
    assert resolve(tree, "/lib/new/deeper", need_dir=True, mkdir=mkdir) == "usr/lib/new/deeper"
    assert len(made) == 5


def test_create_mode_refuses_a_non_directory(tree: rootpath.Tree) -> None:
    made: list[str] = []
    with pytest.raises(NotADirectory) as info:
        resolve(tree, "/etc/os-release/x", need_dir=True, mkdir=made.append)
    assert (info.value.component, info.value.kind) == ("etc/os-release", "file")
    assert (
        str(info.value)
        == "'etc/os-release' is not a directory, yet '/etc/os-release/x' needs it to be one"
    )
    # The final component must be a directory too.
    with pytest.raises(NotADirectory):
        resolve(tree, "/etc/os-release", need_dir=True, mkdir=made.append)
    assert made == []


def test_create_mode_in_memory() -> None:
    """The callback owns creation: here it adds nodes to an in-memory tree."""
    tree = MemTree({"usr": ("dir", ""), "lib": ("symlink", "usr/lib"), "f": ("file", "")})

    def mkdir(rel: str) -> None:
        tree.nodes[rel] = ("dir", "")

    assert resolve(tree, "/lib/a/b", need_dir=True, mkdir=mkdir) == "usr/lib/a/b"
    assert {p for p, n in tree.nodes.items() if n[0] == "dir"} == {
        "usr",
        "usr/lib",
        "usr/lib/a",
        "usr/lib/a/b",
    }
    with pytest.raises(NotADirectory) as info:
        resolve(tree, "f/x", need_dir=True, mkdir=mkdir)
    assert info.value.kind == "file"


def test_file_type(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    (tmp_path / "d").mkdir()
    (tmp_path / "l").symlink_to("nowhere")
    os.mkfifo(tmp_path / "p")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "s"))
        got = {n: file_type(os.lstat(tmp_path / n).st_mode) for n in "fdlps"}
    finally:
        sock.close()
    assert got == {"f": "file", "d": "dir", "l": "symlink", "p": "fifo", "s": None}
    assert file_type(os.lstat("/dev/null").st_mode) == "char"
    assert DiskTree(tmp_path).kind("s") == "other"
    assert DiskTree(tmp_path).kind("missing") is None
