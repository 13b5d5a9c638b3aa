"""ocipatch.distro.deb.repos: apt sources, signed indices, resolution and verified downloads, without apt.

Against a local signed repository (tools/aptrepo.py, served on loopback) and, in one test, the
real Debian archive named by this machine's own apt sources.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ocipatch.distro.base import Requirement
from ocipatch.distro.deb.repos.archive import AptRepositories, suite_base
from ocipatch.distro.deb.repos.index import parse_relations
from ocipatch.distro.deb.repos.resolve import (
    Installed,
    Resolver,
    by_source_default,
    installed_from_rootfs,
)
from ocipatch.distro.deb.repos.signature import dearmor
from ocipatch.distro.deb.repos.sources import (
    AptSource,
    image_path,
    parse_deb822_sources,
    parse_one_line_sources,
    read_sources,
)
from ocipatch.distro.deb.rules import compare_deb
from ocipatch.distro.fetch import Fetcher, rewrite
from ocipatch.errors import IntegrityError, ResolveError, UnsupportedError
from tests.plugins.aptrepo import ServedRepo
from tools.aptrepo import (
    DEFAULT_EPOCH,
    AptRepo,
    DebSpec,
    RepoServer,
    Signer,
    build_deb,
    build_repo,
    host_arch,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "repos"
ARCH = host_arch()
SUITE = "ocipatch-test"
PACKAGES_XZ = f"dists/{SUITE}/main/binary-{ARCH}/Packages.xz"
FAKE_ARCHIVE = "http://archive.invalid/debian"  # never resolved: always rewritten to a mirror


# --- helpers ---------------------------------------------------------------------------------


def write_status(rootfs: Path, packages: Sequence[tuple[str, str, dict[str, str]]]) -> None:
    """A dpkg status file with the given (name, version, extra fields) stanzas."""
    stanzas = []
    for name, version, extra in packages:
        fields = {"Package": name, "Status": "install ok installed", "Version": version}
        fields["Architecture"] = "all"
        fields.update(extra)
        stanzas.append("".join(f"{k}: {v}\n" for k, v in fields.items()))
    path = rootfs / "var/lib/dpkg/status"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(stanzas))


def make_rootfs(
    tmp_path: Path,
    sources: str = "",
    *,
    name: str = "test.sources",
    status: Sequence[tuple[str, str, dict[str, str]]] = (),
) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc/apt/sources.list.d").mkdir(parents=True, exist_ok=True)
    if sources:
        (root / "etc/apt/sources.list.d" / name).write_text(sources)
    write_status(root, status)
    return root


def install_key(rootfs: Path, keyring: Path, dest: str = "/etc/apt/keyrings/test.gpg") -> str:
    target = rootfs / dest.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(keyring, target)
    return dest


def armored_key(signer: Signer) -> str:
    env = {**os.environ, "GNUPGHOME": str(signer.home)}
    return subprocess.run(
        ["gpg", "--batch", "--armor", "--export", signer.fingerprint],
        capture_output=True, text=True, env=env, check=True,
    ).stdout  # fmt: skip


def deb822(uri: str, signed_by: str, suite: str = SUITE, extra: str = "") -> str:
    return f"Types: deb\nURIs: {uri}\nSuites: {suite}\nComponents: main\nSigned-By: {signed_by}\n{extra}"


def repos_for(rootfs: Path, cache: Path, **kw: Any) -> AptRepositories:
    return AptRepositories(rootfs, cache, arch=ARCH, **kw)


def served_rootfs(tmp_path: Path, served: ServedRepo, **kw: Any) -> Path:
    root = make_rootfs(tmp_path, **kw)
    served.write_sources(root)
    return root


def resign(repo_root: Path, suite: str, signer: Signer, extra_fields: str) -> None:
    """Add fields to a built Release (e.g. NotAutomatic) and sign it again."""
    base = repo_root / "dists" / suite
    text = (base / "Release").read_text()
    head, sep, rest = text.partition("Description:")
    (base / "Release").write_text(head + extra_fields + sep + rest)
    for f in ("InRelease", "Release.gpg"):
        (base / f).unlink()
    signer.clearsign(base / "Release", base / "InRelease")
    signer.detach_sign(base / "Release", base / "Release.gpg")


# --- sources -------------------------------------------------------------------------------

DEB822_CASES = [
    pytest.param(
        "Types: deb deb-src\nURIs: http://a.invalid/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main contrib\nSigned-By: /usr/share/keyrings/k.gpg\n",
        [AptSource(("deb", "deb-src"), ("http://a.invalid/debian",), ("bookworm", "bookworm-updates"),
                   ("main", "contrib"), "/usr/share/keyrings/k.gpg", where="f:1")],
        id="basic",
    ),
    pytest.param(
        "# comment\nTypes: deb\nURIs: http://a.invalid/d\n  http://b.invalid/d\nSuites: s\n"
        "Components: main\nArchitectures: amd64 arm64\nEnabled: no\n\n\n"
        "types: deb\nuris: file:/srv/m\nsuites: ./\ncheck-valid-until: no\ntrusted: yes\n",
        [AptSource(("deb",), ("http://a.invalid/d", "http://b.invalid/d"), ("s",), ("main",),
                   architectures=("amd64", "arm64"), enabled=False, where="f:2"),
         AptSource(("deb",), ("file:/srv/m",), ("./",), (), trusted=True,
                   check_valid_until=False, where="f:11")],
        id="disabled-multiline-flat-lowercase",
    ),
    pytest.param(
        "Types: deb\nURIs: http://a.invalid/d\nSuites: s\nComponents: main\nSigned-By:\n"
        " -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n QUJD\n# a comment inside\n =abcd\n"
        " -----END PGP PUBLIC KEY BLOCK-----\n",
        [AptSource(("deb",), ("http://a.invalid/d",), ("s",), ("main",),
                   "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nQUJD\n=abcd\n"
                   "-----END PGP PUBLIC KEY BLOCK-----", where="f:1")],
        id="inline-key",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), DEB822_CASES)
def test_parse_deb822_sources(text: str, expected: list[AptSource]) -> None:
    assert parse_deb822_sources(text, "f") == expected


ONE_LINE_CASES = [
    pytest.param(
        "deb http://a.invalid/debian bookworm main contrib\n",
        [AptSource(("deb",), ("http://a.invalid/debian",), ("bookworm",), ("main", "contrib"),
                   where="f:1")],
        id="plain",
    ),
    pytest.param(
        "# old\n\ndeb [ signed-by=/etc/apt/keyrings/x.gpg arch=amd64,arm64 ] "
        "http://a.invalid/d bookworm-security main # trailing\n"
        "deb-src http://a.invalid/d bookworm main\n",
        [AptSource(("deb",), ("http://a.invalid/d",), ("bookworm-security",), ("main",),
                   "/etc/apt/keyrings/x.gpg", ("amd64", "arm64"), where="f:3"),
         AptSource(("deb-src",), ("http://a.invalid/d",), ("bookworm",), ("main",), where="f:4")],
        id="options-comments-src",
    ),
    pytest.param(
        "deb\t[trusted=yes check-valid-until=no arch+=i386] file:///srv/repo ./\n",
        [AptSource(("deb",), ("file:///srv/repo",), ("./",), (), trusted=True,
                   check_valid_until=False, where="f:1")],
        id="flat-trusted-tab",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), ONE_LINE_CASES)
def test_parse_one_line_sources(text: str, expected: list[AptSource]) -> None:
    assert parse_one_line_sources(text, "f") == expected


def test_parse_errors_name_the_line() -> None:
    with pytest.raises(UnsupportedError, match=r"f:2: expected 'URI SUITE"):
        parse_one_line_sources("deb http://a.invalid/d s main\ndeb http://a.invalid/d\n", "f")
    with pytest.raises(UnsupportedError, match=r"f:1: unclosed"):
        parse_one_line_sources("deb [arch=amd64 http://a.invalid/d s\n", "f")


def test_read_sources_order_and_filtering(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path)
    (root / "etc/apt/sources.list").write_text("deb http://one.invalid/d s1 main\n")
    d = root / "etc/apt/sources.list.d"
    (d / "b.sources").write_text(
        "Types: deb\nURIs: http://three.invalid/d\nSuites: s3\nComponents: main\n\n"
        "Types: deb-src\nURIs: http://src.invalid/d\nSuites: s\nComponents: main\n\n"
        "Types: deb\nURIs: http://off.invalid/d\nSuites: s\nComponents: main\nEnabled: no\n"
    )
    (d / "a.list").write_text("deb http://two.invalid/d s2 main\n")
    (d / "ignored.list.disabled").write_text("deb http://no.invalid/d s main\n")
    (d / "bad name.list").write_text("deb http://no.invalid/d s main\n")
    # A symlink that escapes the rootfs stays inside it.
    (d / "c.list").symlink_to("/../../etc/apt/fake.list")
    (root / "etc/apt/fake.list").write_text("deb http://four.invalid/d s4 main\n")
    got = [(s.uris[0], s.suites[0], s.where) for s in read_sources(root)]
    assert got == [
        ("http://one.invalid/d", "s1", "/etc/apt/sources.list:1"),
        ("http://two.invalid/d", "s2", "/etc/apt/sources.list.d/a.list:1"),
        ("http://three.invalid/d", "s3", "/etc/apt/sources.list.d/b.sources:1"),
        ("http://four.invalid/d", "s4", "/etc/apt/sources.list.d/c.list:1"),
    ]


def test_image_path_never_leaves_the_root(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "usr/share/keyrings").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/k.gpg").symlink_to("/usr/share/keyrings/k.gpg")
    (root / "etc/up").symlink_to("../../../../..")
    assert image_path(root, "/etc/k.gpg") == root / "usr/share/keyrings/k.gpg"
    assert image_path(root, "/etc/up/etc/passwd") == root / "etc/passwd"
    (root / "loop").symlink_to("loop")
    with pytest.raises(UnsupportedError, match="too many levels"):
        image_path(root, "/loop/x")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://archive.invalid/debian/dists/x", "http://127.0.0.1:8080/debian/dists/x"),
        ("http://archive.invalid/debian", "http://127.0.0.1:8080/debian"),
        ("http://archive.invalid/debian-security/dists/x", "file:///srv/sec/dists/x"),
        ("http://archive.invalid/debianx", "http://archive.invalid/debianx"),
        ("http://other.invalid/debian", "http://other.invalid/debian"),
    ],
)
def test_rewrite(url: str, expected: str) -> None:
    mirrors = [
        ("http://archive.invalid/", "http://wrong.invalid/"),
        ("http://archive.invalid/debian/", "http://127.0.0.1:8080/debian"),
        ("http://archive.invalid/debian-security", "file:///srv/sec/"),
    ]
    assert rewrite(url, mirrors if "debianx" not in url else mirrors[1:]) == expected


def test_relations_and_armor_fixtures() -> None:
    rel = parse_relations("a (>= 1) | b:any (<< 2), c (> 3), d (<4)")
    assert [[(r.name, r.op, r.version, r.archqual) for r in g] for g in rel] == [
        [("a", ">=", "1", None), ("b", "<<", "2", "any")],
        [("c", ">=", "3", None)],
        [("d", "<=", "4", None)],
    ]
    text = (FIXTURES / "armored-key.asc").read_text()
    assert dearmor(text, "fixture") == b"ocipatch fixture bytes\n"
    with pytest.raises(IntegrityError, match="no PGP public key block"):
        dearmor("nothing here", "fixture")


# --- signed indices --------------------------------------------------------------------------


@pytest.fixture
def hello(apt_repo_factory: Callable[..., ServedRepo]) -> ServedRepo:
    return apt_repo_factory(
        [DebSpec("hello", "1.0"), DebSpec("hello", "2.0", scripts={"postinst": "#!/bin/sh\n"})],
        by_hash=True,
    )


def test_update_verifies_and_warm_cache_costs_one_request(
    tmp_path: Path, hello: ServedRepo
) -> None:
    root = served_rootfs(tmp_path, hello)
    repos = repos_for(root, tmp_path / "cache")
    universe = repos.update()
    assert [r.version for r in universe.versions("hello")] == ["2.0", "1.0"]
    by_hash = [r for r in hello.server.requests if "/by-hash/SHA256/" in r]
    assert len(by_hash) == 1 and "binary-" in by_hash[0]  # Acquire-By-Hash used
    assert repos.describe()[0]["suite"] == SUITE
    hello.server.requests.clear()
    again = repos_for(root, tmp_path / "cache")
    assert [r.version for r in again.update().versions("hello")] == ["2.0", "1.0"]
    assert hello.server.requests == [f"GET /dists/{SUITE}/InRelease"]


def test_release_gpg_fallback_and_tampering(tmp_path: Path, hello: ServedRepo) -> None:
    root = served_rootfs(tmp_path, hello)
    (hello.root / "dists" / SUITE / "InRelease").unlink()
    assert len(repos_for(root, tmp_path / "c1").update().versions("hello")) == 2
    hello.tamper(f"dists/{SUITE}/Release", lambda b: b.replace(b"test repository", b"evil"))
    with pytest.raises(IntegrityError, match=r"Release .*/Release: BAD signature"):
        repos_for(root, tmp_path / "c2").update()
    hello.server.untamper()
    (hello.root / "dists" / SUITE / "Release.gpg").unlink()
    with pytest.raises(IntegrityError, match="is not signed"):
        repos_for(root, tmp_path / "c3").update()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.replace(b"test repository", b"evil repository"), "BAD signature"),
        (lambda b: b"Origin: evil\n" + b, "not a single clearsigned message"),
        (lambda b: b.split(b"-----BEGIN PGP SIGNATURE-----")[0], "not a single clearsigned"),
    ],
    ids=["altered", "text-before", "no-signature"],
)
def test_tampered_inrelease(
    tmp_path: Path, hello: ServedRepo, change: Callable[[bytes], bytes], message: str
) -> None:
    root = served_rootfs(tmp_path, hello)
    hello.tamper(f"dists/{SUITE}/InRelease", change)
    with pytest.raises(IntegrityError, match=message) as e:
        repos_for(root, tmp_path / "cache").update()
    assert f"{hello.url}/dists/{SUITE}/InRelease" in str(e.value)
    assert not list((tmp_path / "cache").rglob("InRelease*"))


def test_wrong_key_and_missing_keyring(tmp_path: Path, hello: ServedRepo) -> None:
    root = make_rootfs(tmp_path)
    with Signer("other <other@ocipatch.invalid>") as other:
        signed_by = install_key(root, other.keyring)
    (root / "etc/apt/sources.list.d/t.sources").write_text(deb822(hello.url, signed_by))
    with pytest.raises(
        IntegrityError, match=r"signed by key \w+, which is not in /etc/apt/keyrings"
    ):
        repos_for(root, tmp_path / "cache").update()
    (root / "etc/apt/sources.list.d/t.sources").write_text(deb822(hello.url, "/nope.gpg"))
    with pytest.raises(
        IntegrityError, match=r"keyring /nope.gpg \(Signed-By\) is not in the image"
    ):
        repos_for(root, tmp_path / "cache").update()


def test_inline_key_asc_keyring_and_trusted_gpg_d(
    tmp_path: Path, hello: ServedRepo, apt_signer: Signer
) -> None:
    armored = armored_key(apt_signer)
    inline = "\n" + "\n".join(" " + (ln or ".") for ln in armored.strip().splitlines())
    root = make_rootfs(tmp_path, deb822(hello.url, inline))
    assert read_sources(root)[0].inline_key
    assert len(repos_for(root, tmp_path / "cache").update().versions("hello")) == 2
    # An armored .asc named by Signed-By, and the same file found without Signed-By.
    (root / "etc/apt/keyrings").mkdir(parents=True)
    (root / "etc/apt/keyrings/k.asc").write_text(armored)
    (root / "etc/apt/sources.list.d/test.sources").write_text(
        deb822(hello.url, "/etc/apt/keyrings/k.asc")
    )
    assert len(repos_for(root, tmp_path / "c2").update().versions("hello")) == 2
    (root / "etc/apt/sources.list.d/test.sources").unlink()
    (root / "etc/apt/sources.list").write_text(f"deb {hello.url} {SUITE} main\n")
    with pytest.raises(IntegrityError, match="no key to check"):
        repos_for(root, tmp_path / "c3").update()
    (root / "etc/apt/trusted.gpg.d").mkdir()
    (root / "etc/apt/trusted.gpg.d/test.asc").symlink_to("/etc/apt/keyrings/k.asc")
    assert len(repos_for(root, tmp_path / "c3").update().versions("hello")) == 2


@pytest.mark.parametrize("by_hash", [True, False])
def test_tampered_packages_index(
    tmp_path: Path, apt_repo_factory: Callable[..., ServedRepo], by_hash: bool
) -> None:
    served = apt_repo_factory([DebSpec("hello", "1.0")], by_hash=by_hash)
    root = served_rootfs(tmp_path, served)
    data = (served.root / PACKAGES_XZ).read_bytes()
    path = PACKAGES_XZ
    if by_hash:
        path = path.rsplit("/", 1)[0] + "/by-hash/SHA256/" + hashlib.sha256(data).hexdigest()
    served.tamper(path, data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(IntegrityError, match="does not match its signed Release") as e:
        repos_for(root, tmp_path / "cache").update()
    assert f"{served.url}/{path}" in str(e.value)
    blobs = tmp_path / "cache/apt-repos/blobs/sha256"
    assert not (blobs / hashlib.sha256(data).hexdigest()).exists()
    assert not list(blobs.glob(".tmp-*"))


def test_expired_and_future_release(
    tmp_path: Path, apt_repo_factory: Callable[..., ServedRepo]
) -> None:
    expired = apt_repo_factory([DebSpec("hello", "1.0")], valid_until_epoch=DEFAULT_EPOCH + 86400)
    root = served_rootfs(tmp_path, expired)
    with pytest.raises(
        IntegrityError, match=r"Release file .*/InRelease is expired \(invalid since"
    ):
        repos_for(root, tmp_path / "cache").update()
    sources = root / "etc/apt/sources.list.d/ocipatch-test.sources"
    sources.write_text(sources.read_text() + "Check-Valid-Until: no\n")
    repos_for(root, tmp_path / "cache").update()
    future = apt_repo_factory([DebSpec("hello", "1.0")], date_epoch=int(time.time()) + 7 * 86400)
    root2 = served_rootfs(tmp_path / "f", future)
    with pytest.raises(IntegrityError, match=r"is not valid yet .* ahead of this machine's clock"):
        repos_for(root2, tmp_path / "cache").update()


def test_mirror_rewrite_http_and_file(tmp_path: Path, hello: ServedRepo) -> None:
    root = make_rootfs(tmp_path)
    signed_by = install_key(root, hello.keyring)
    (root / "etc/apt/sources.list").write_text(
        f"deb [signed-by={signed_by}] {FAKE_ARCHIVE} {SUITE} main\n"
    )
    repos = repos_for(root, tmp_path / "c1", mirrors=[(FAKE_ARCHIVE, hello.url)])
    plan = repos.resolve([Requirement("hello", None)])
    assert plan.items[0].url == f"{hello.url}/pool/main/h/hello/hello_2.0_all.deb"
    hello.server.requests.clear()
    repos = repos_for(root, tmp_path / "c2", mirrors=[(FAKE_ARCHIVE + "/", f"file://{hello.root}")])
    plan = repos.resolve([Requirement("hello", "2.0")])
    (item,) = repos.download(plan.items)
    assert (
        item.path is not None
        and item.path.read_bytes()
        == (hello.root / "pool/main/h/hello/hello_2.0_all.deb").read_bytes()
    )
    assert item.maintainer_scripts == ("postinst",) and item.has_maintainer_scripts
    assert hello.server.requests == []  # everything came from disk
    # Without a mirror the made-up host is never reachable: a clear fetch error.
    with pytest.raises(ResolveError, match=r"cannot fetch http://archive.invalid/debian/dists/"):
        repos_for(root, tmp_path / "c3", fetcher=Fetcher(retries=1)).update()


def test_flat_repository_one_line(
    tmp_path: Path, apt_repo_factory: Callable[..., ServedRepo]
) -> None:
    served = apt_repo_factory([DebSpec("flatpkg", "1.0")], flat=True)
    root = make_rootfs(tmp_path)
    signed_by = install_key(root, served.keyring)
    (root / "etc/apt/sources.list").write_text(f"deb [signed-by={signed_by}] {served.url} ./\n")
    assert suite_base(served.url, "./") == served.url
    repos = repos_for(root, tmp_path / "cache")
    (item,) = repos.download(repos.resolve([Requirement("flatpkg", None)]).items)
    assert item.url == f"{served.url}/flatpkg_1.0_all.deb" and item.path is not None
    # The same repository named by a file: URI in the image's own sources.
    (root / "etc/apt/sources.list").write_text(
        f"deb [signed-by={signed_by}] file:{served.root} ./\n"
    )
    repos = repos_for(root, tmp_path / "cache2")
    (item,) = repos.download(repos.resolve([Requirement("flatpkg", None)]).items)
    assert item.url == f"file:{served.root}/flatpkg_1.0_all.deb" and item.path is not None


def test_trusted_source_skips_only_the_signature(tmp_path: Path, hello: ServedRepo) -> None:
    root = make_rootfs(tmp_path)
    (root / "etc/apt/sources.list").write_text(f"deb [trusted=yes] {hello.url} {SUITE} main\n")
    hello.tamper(f"dists/{SUITE}/InRelease", lambda b: b.replace(b"test repository", b"changed"))
    repos = repos_for(root, tmp_path / "cache")
    assert len(repos.update().versions("hello")) == 2
    assert any("signature not checked" in n for n in repos.notes)
    by_hash = hashlib.sha256((hello.root / PACKAGES_XZ).read_bytes()).hexdigest()
    hello.tamper(PACKAGES_XZ.rsplit("/", 1)[0] + f"/by-hash/SHA256/{by_hash}", b"not it")
    with pytest.raises(IntegrityError, match="does not match its signed Release"):
        repos_for(root, tmp_path / "cache2").update()


def test_older_release_than_cached_is_not_taken(
    tmp_path: Path, apt_repo_factory: Callable[..., ServedRepo], apt_signer: Signer
) -> None:
    served = apt_repo_factory([DebSpec("hello", "2.0")], date_epoch=DEFAULT_EPOCH + 3600)
    root = served_rootfs(tmp_path, served)
    assert [r.version for r in repos_for(root, tmp_path / "cache").update().versions("hello")] == [
        "2.0"
    ]
    # The mirror goes back in time (a replay, or a lagging mirror): the newer copy stays.
    old = build_deb(DebSpec("hello", "1.0"), tmp_path / "debs")
    build_repo(served.root, [old], signer=apt_signer, date_epoch=DEFAULT_EPOCH)
    later = time.time() + 60
    os.utime(served.root / "dists" / SUITE / "InRelease", (later, later))
    repos = repos_for(root, tmp_path / "cache")
    assert [r.version for r in repos.update().versions("hello")] == ["2.0"]
    assert any("older than the copy accepted before" in n for n in repos.notes)


def test_tampered_deb_is_never_kept(tmp_path: Path, hello: ServedRepo) -> None:
    root = served_rootfs(tmp_path, hello)
    repos = repos_for(root, tmp_path / "cache")
    plan = repos.resolve([Requirement("hello", None)])
    deb = "pool/main/h/hello/hello_2.0_all.deb"
    good = (hello.root / deb).read_bytes()
    for bad in (good[:-1] + bytes([good[-1] ^ 1]), good + b"x", good[:100]):
        hello.tamper(deb, bad)
        with pytest.raises(
            IntegrityError, match=r"package hello 2\.0 from http://.*hello_2\.0_all\.deb"
        ):
            repos.download(plan.items)
        blobs = tmp_path / "cache/apt-repos/blobs/sha256"
        assert not list(blobs.glob(".tmp-*"))
        assert not (blobs / plan.items[0].sha256).exists()
    hello.server.untamper()
    (item,) = repos.download(plan.items)
    assert item.path == blobs / item.sha256


def test_two_processes_share_the_cache(tmp_path: Path, hello: ServedRepo) -> None:
    root = served_rootfs(tmp_path, hello)
    script = (
        "import sys; from pathlib import Path\n"
        "from ocipatch.distro.base import Requirement\n"
        "from ocipatch.distro.deb.repos.archive import AptRepositories\n"
        "r = AptRepositories(Path(sys.argv[1]), Path(sys.argv[2]), arch=sys.argv[3])\n"
        "(i,) = r.download(r.resolve([Requirement('hello', None)]).items)\n"
        "print(i.path)\n"
    )
    argv = [sys.executable, "-c", script, str(root), str(tmp_path / "cache"), ARCH]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] == outs[1] and Path(outs[0]).is_file()
    assert not list((tmp_path / "cache").rglob(".tmp-*"))


# --- resolution ------------------------------------------------------------------------------


@dataclass
class World:
    root: Path
    repo: AptRepo
    server: RepoServer
    signer: Signer

    def repos(self, tmp_path: Path) -> AptRepositories:
        return repos_for(self.root, tmp_path / "cache")


def _deb(name: str, version: str, depends: Sequence[str] = (), **fields: str) -> DebSpec:
    return DebSpec(name, version, depends=depends, extra_fields=fields)


WORLD_PACKAGES = [
    _deb("app", "1.0"),
    _deb("app", "2.0", ["libnew (>> 1.0)", "libx (>= 2.0)"],
         **{"Pre-Depends": "prelib (>= 1.0), prelib (<= 1.0), prelib (<< 5)"}),
    _deb("libnew", "1.0"), _deb("libnew", "1.2"), _deb("libnew", "1.1"),
    _deb("libx", "1.0"), _deb("libx", "2.1"),
    _deb("prelib", "1.0"),
    _deb("mailer", "1.0", ["alt-a (>= 9) | alt-b"]),
    _deb("alt-a", "1.0"), _deb("alt-b", "1.0"),
    _deb("webapp", "1.0", ["virtual-httpd", "logger (>= 2)"]),
    _deb("strict", "1.0", ["old-api (<< 2)"]),
    _deb("tinyhttpd", "1.0", Provides="virtual-httpd"),
    _deb("syslogd", "1.0", Provides="logger (= 2.5)"),
    _deb("oldlogger", "1.0", Provides="logger"),
    _deb("old-api", "1.5"), _deb("old-api", "3.0"),
    _deb("libcore", "1.0"), _deb("libcore", "2.0"),
    _deb("tool", "1.0", ["libcore (= 1.0)"]), _deb("tool", "2.0", ["libcore (= 2.0)"]),
    _deb("host", "2.0", Breaks="plugin (<< 2.0)"),
    _deb("plugin", "2.0"),
    _deb("pinned", "2.0"),
    _deb("broken", "1.0", ["nonexistent (>= 1)"]),
    _deb("libfoo1", "2.0", Source="foo"), _deb("foo-bin", "2.0", Source="foo"),
    _deb("foo-extra", "2.0", ["nonexistent"], Source="foo"),
    _deb("foo-other", "2.1", Source="foo (2.1)"),
]  # fmt: skip

WORLD_INSTALLED: list[tuple[str, str, dict[str, str]]] = [
    ("app", "1.0", {}),
    ("prelib", "1.0", {}),
    ("libx", "1.0", {}),
    ("libcore", "1.0", {}),
    ("tool", "1.0", {"Depends": "libcore (= 1.0)"}),
    ("host", "1.0", {}),
    ("plugin", "1.0", {}),
    ("pinned", "1.0", {}),
    ("frozen", "1.0", {"Depends": "pinned (= 1.0)"}),
    ("dpkg", "1.21", {"Architecture": ARCH}),
    *[(n, "1.0", {"Source": "foo"}) for n in ("libfoo1", "foo-bin", "foo-extra", "foo-other")],
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, apt_signer: Signer) -> Iterator[World]:
    base = tmp_path_factory.mktemp("world")
    debs = [
        build_deb(spec, base / "debs" / f"{spec.name}-{spec.version}") for spec in WORLD_PACKAGES
    ]
    repo = build_repo(base / "repo", debs, signer=apt_signer)
    with RepoServer(repo.root) as server:
        root = make_rootfs(base, status=WORLD_INSTALLED)
        repo.write_sources(root, server.url)
        yield World(root, repo, server, apt_signer)


def plan_of(
    world: World, tmp_path: Path, *reqs: tuple[str, str | None]
) -> dict[str, tuple[str, str | None, str]]:
    plan = world.repos(tmp_path).resolve([Requirement(n, m) for n, m in reqs])
    return {i.name: (i.version, i.installed, i.reason) for i in plan.items}


def test_resolve_new_and_versioned_dependencies(tmp_path: Path, world: World) -> None:
    assert plan_of(world, tmp_path, ("app", None)) == {
        "app": ("2.0", "1.0", "required"),
        "libnew": ("1.2", None, "dependency of app 2.0"),  # highest of 1.0, 1.1, 1.2
        "libx": ("2.1", "1.0", "dependency of app 2.0"),  # installed 1.0 < 2.0: upgraded
    }  # prelib 1.0 (Pre-Depends) is already satisfied
    assert plan_of(world, tmp_path, ("app", "2.0"), ("libx", "1.0")) == plan_of(
        world, tmp_path, ("app", "2.0")
    )


def test_resolve_alternatives_and_provides(tmp_path: Path, world: World) -> None:
    assert plan_of(world, tmp_path, ("mailer", None)) == {
        "mailer": ("1.0", None, "required"),
        "alt-b": ("1.0", None, "dependency of mailer 1.0"),  # alt-a 1.0 is too old for >= 9
    }
    assert plan_of(world, tmp_path, ("webapp", None)) == {
        "webapp": ("1.0", None, "required"),
        "tinyhttpd": ("1.0", None, "dependency of webapp 1.0"),  # Provides: virtual-httpd
        "syslogd": ("1.0", None, "dependency of webapp 1.0"),  # logger (= 2.5); not oldlogger
    }
    # old-api's candidate is 3.0: apt does not go looking for an older version either.
    with pytest.raises(ResolveError, match=r"strict 1\.0 depends on old-api \(<< 2\).*offer 3\.0"):
        plan_of(world, tmp_path, ("strict", None))


def test_resolve_keeps_installed_packages_working(tmp_path: Path, world: World) -> None:
    # tool 1.0 needs libcore (= 1.0): upgrading libcore upgrades tool too.
    assert plan_of(world, tmp_path, ("libcore", None)) == {
        "libcore": ("2.0", "1.0", "required"),
        "tool": ("2.0", "1.0", "keeps working with libcore 2.0"),
    }
    # host 2.0 Breaks plugin (<< 2.0): plugin is upgraded with it.
    assert plan_of(world, tmp_path, ("host", None)) == {
        "host": ("2.0", "1.0", "required"),
        "plugin": ("2.0", "1.0", "keeps working with host 2.0"),
    }
    with pytest.raises(
        ResolveError,
        match=r"frozen 1\.0 needs pinned \(= 1\.0\) but would get pinned 2\.0.*no newer frozen",
    ):
        plan_of(world, tmp_path, ("pinned", None))


def test_resolve_upgrades_same_source_binaries_like_apt(tmp_path: Path, world: World) -> None:
    # apt >= 2.6 upgrades foo-bin with libfoo1 (same source version); not foo-extra (its new
    # version cannot be installed) nor foo-other (another source version).
    assert plan_of(world, tmp_path, ("libfoo1", None)) == {
        "libfoo1": ("2.0", "1.0", "required"),
        "foo-bin": ("2.0", "1.0", "built from the same source as libfoo1"),
    }
    repos = world.repos(tmp_path)
    plan = Resolver(repos.universe, repos.installed, by_source=False).resolve(
        [Requirement("libfoo1", None)]
    )
    assert [i.name for i in plan.items] == ["libfoo1"]
    old_apt = {**repos.installed, "apt": Installed("apt", "2.4.8", ARCH)}
    assert not by_source_default(old_apt)
    assert by_source_default({**old_apt, "apt": Installed("apt", "2.6.1", ARCH)})


def test_resolve_errors(tmp_path: Path, world: World) -> None:
    with pytest.raises(
        ResolveError,
        match=r"app needs 3\.0 but the repositories \(ocipatch-test\) offer only 2\.0: the scanner's database is newer",
    ):
        plan_of(world, tmp_path, ("app", "3.0"))
    with pytest.raises(
        ResolveError,
        match=r"broken 1\.0 depends on nonexistent \(>= 1\).*nonexistent: not installed, repositories offer nothing",
    ):
        plan_of(world, tmp_path, ("broken", None))
    with pytest.raises(
        ResolveError,
        match=r"no-such-package is not offered by the repositories \(ocipatch-test\): check",
    ):
        plan_of(world, tmp_path, ("no-such-package", None))
    plan = world.repos(tmp_path).resolve(
        [Requirement("app", "3.0"), Requirement("libx", None)], ignore_errors=True
    )
    assert [i.name for i in plan.items] == ["libx"] and plan.skipped[0][0] == "app"
    # A held package is left alone, and is not upgraded to satisfy another either.
    repos = world.repos(tmp_path)
    held = {**repos.installed, "libx": Installed("libx", "1.0", "all", held=True)}
    plan = Resolver(repos.universe, held).resolve([Requirement("libx", None)])
    assert plan.items == [] and plan.skipped == [("libx", "held (apt-mark hold)")]
    with pytest.raises(ResolveError, match=r"libx: installed 1\.0 \(held\)"):
        Resolver(repos.universe, held).resolve([Requirement("app", None)])
    # Already new enough, or already the newest: nothing to do.
    assert plan_of(world, tmp_path, ("prelib", None), ("app", "0.9")) == {}


def test_resolve_suites_priorities(tmp_path: Path, apt_signer: Signer) -> None:
    """bookworm + -security + NotAutomatic backports: apt's choices."""
    debs = tmp_path / "debs"
    main = [build_deb(_deb("pkg", "1.0"), debs / "a"), build_deb(_deb("other", "1.0"), debs / "a")]
    security = [build_deb(_deb("pkg", "1.1"), debs / "b")]
    bpo = [build_deb(_deb("pkg", "1.5"), debs / "c"), build_deb(_deb("other", "3.0"), debs / "c")]
    root = tmp_path / "repo"
    for suite, suite_debs in (("main", main), ("security", security), ("bpo", bpo)):
        build_repo(root, suite_debs, signer=apt_signer, suite=suite)
    resign(root, "bpo", apt_signer, "NotAutomatic: yes\nButAutomaticUpgrades: yes\n")
    with RepoServer(root) as server:

        def plan(installed: str | None, *reqs: tuple[str, str | None]) -> dict[str, str]:
            status: list[tuple[str, str, dict[str, str]]] = (
                [("pkg", installed, {})] if installed else []
            )
            rootfs = make_rootfs(tmp_path / f"r-{installed}", status=status)
            signed_by = install_key(rootfs, apt_signer.keyring)
            (rootfs / "etc/apt/sources.list.d/t.sources").write_text(
                deb822(server.url, signed_by, "main security bpo")
            )
            r = repos_for(rootfs, tmp_path / "cache")
            return {
                i.name: i.version for i in r.resolve([Requirement(n, m) for n, m in reqs]).items
            }

        assert plan("1.0", ("pkg", None)) == {"pkg": "1.1"}  # security, not backports
        assert plan("1.4~bpo", ("pkg", None)) == {"pkg": "1.5"}  # installed from backports
        assert plan(None, ("pkg", None), ("other", None)) == {"pkg": "1.1", "other": "1.0"}
        with pytest.raises(
            ResolveError, match=r"pkg needs 1\.5 .* offer only 1\.1 \(1\.5 is in bpo"
        ):
            plan("1.0", ("pkg", "1.5"))


def test_installed_from_rootfs(tmp_path: Path) -> None:
    root = make_rootfs(
        tmp_path, status=[("a", "1:2.0-1", {"Depends": "b (>= 1) | c", "Provides": "v (= 2)"})]
    )
    (root / "var/lib/dpkg/status").write_text(
        (root / "var/lib/dpkg/status").read_text()
        + "\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n"
        + "\nPackage: held\nStatus: hold ok installed\nVersion: 1\nArchitecture: all\n"
    )
    got = installed_from_rootfs(root)
    assert sorted(got) == ["a", "held"]
    assert got["a"].provides == (("v", "2"),) and got["held"].held
    assert got["a"] == Installed(
        "a",
        "1:2.0-1",
        "all",
        depends=parse_relations("b (>= 1) | c"),
        provides=(("v", "2"),),
        source="a",
    )


# --- the real archive ------------------------------------------------------------------------


def test_real_debian_security_openssl(tmp_path: Path) -> None:
    """This machine's bookworm-security source: InRelease checked with the archive keyring,
    Packages.xz checked against it, openssl resolved, libssl3's .deb downloaded and checked."""
    if shutil.which("gpgv") is None:
        pytest.skip("gpgv is not installed")
    host = [s for s in read_sources(Path("/")) if "bookworm-security" in s.suites]
    if not host or not host[0].signed_by.startswith("/"):
        pytest.skip("no bookworm-security source with a Signed-By keyring on this machine")
    src = host[0]
    status = [
        ("libc6", "2.36-9", {"Architecture": ARCH}),
        ("libssl3", "3.0.8-1", {"Architecture": ARCH, "Depends": "libc6 (>= 2.34)"}),
        ("openssl", "3.0.8-1",
         {"Architecture": ARCH, "Depends": "libc6 (>= 2.34), libssl3 (>= 3.0.8)"}),
    ]  # fmt: skip
    root = make_rootfs(
        tmp_path,
        f"Types: deb\nURIs: {src.uris[0]}\nSuites: bookworm-security\nComponents: main\n"
        f"Signed-By: {src.signed_by}\n",
        status=status,
    )
    install_key(root, image_path(Path("/"), src.signed_by), src.signed_by)
    t0 = time.monotonic()
    repos = AptRepositories(root, tmp_path / "cache")  # arch from the dpkg status
    repos.update()
    plan = repos.resolve([Requirement("openssl", None)]).by_name()
    assert compare_deb(plan["openssl"].version, "3.0.8-1") > 0
    libssl3 = plan["libssl3"]  # openssl's new version needs a newer libssl3
    assert libssl3.reason.startswith("dependency of openssl")
    (item,) = repos.download([libssl3])
    assert item.path is not None
    assert hashlib.sha256(item.path.read_bytes()).hexdigest() == libssl3.sha256
    control = subprocess.run(
        ["dpkg-deb", "--field", str(item.path), "Package", "Version"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert control == f"Package: libssl3\nVersion: {libssl3.version}\n"
    assert item.maintainer_scripts is not None
    assert time.monotonic() - t0 < 60
