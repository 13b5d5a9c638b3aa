"""An image's apk repositories (ocipatch.distro.apk.repos) over the project's signed fixture
repository (tools/apkrepo.py) served on loopback or read as file://: mirror rewriting, pins,
keys read inside the image, tampered / unsigned / wrongly signed indexes and packages."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ocipatch.distro.apk.records import Record
from ocipatch.distro.apk.repos import ApkRepositories, image_arch, image_repositories
from ocipatch.distro.apk.resolve import Candidate
from ocipatch.distro.fetch import Fetcher
from ocipatch.errors import ImageFormatError, IntegrityError, UnsupportedError
from tools.apkrepo import ApkKey, flip_byte, resign, strip_signature
from tools.aptrepo import RepoServer
from tools.build_apk_image import ALPINE_KEY, MIRROR_BASE, copy_repo

ALPINE = "alpine/v3.20/main"
IMAGE_URL = f"{MIRROR_BASE}/{ALPINE}"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    try:
        return copy_repo(tmp_path / "repo")
    except Exception as e:
        pytest.skip(f"apk fixtures unavailable: {e}")


def make_root(tmp: Path, repo: Path, lines: str = f"{IMAGE_URL}\n") -> Path:
    root = tmp / "rootfs"
    (root / "etc/apk/keys").mkdir(parents=True)
    (root / "etc/apk/repositories").write_text(lines)
    (root / "etc/apk/arch").write_text("x86_64\n")
    shutil.copy(repo / "keys" / f"{ALPINE_KEY}.rsa.pub", root / "etc/apk/keys")
    return root


def repos(root: Path, tmp: Path, to: str, **kw: object) -> ApkRepositories:
    return ApkRepositories(
        root,
        tmp / "cache",
        mirrors=[(MIRROR_BASE, to)],
        fetcher=Fetcher(retries=1),
        **kw,  # type: ignore[arg-type]
    )


def index_path(repo: Path) -> Path:
    return repo / ALPINE / "x86_64" / "APKINDEX.tar.gz"


# -- which repositories ------------------------------------------------------------------------


def test_repositories_pins_comments_mirrors_and_paths(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "etc/apk/repositories.d").mkdir(parents=True)
    (root / "etc/apk/repositories").write_text(
        "# comment\n\nhttps://a.example/alpine/v3.20/main\n"
        "@edge https://a.example/alpine/edge/testing\n"
        "/media/cdrom/apks\nhttps://a.example/alpine-extra/x\n"
    )
    (root / "etc/apk/repositories.d/extra.list").write_text("@local file:///srv/local\n")
    (root / "etc/apk/repositories.d/ignored.txt").write_text("https://never.example/\n")
    mirrors = [
        ("https://a.example/alpine", "http://127.0.0.1:9/m"),
        ("https://a.example", "http://x"),
    ]
    got = [(r.url, r.fetch_url, r.tag) for r in image_repositories(root, mirrors)]
    assert got == [
        ("https://a.example/alpine/v3.20/main", "http://127.0.0.1:9/m/v3.20/main", ""),
        ("https://a.example/alpine/edge/testing", "http://127.0.0.1:9/m/edge/testing", "edge"),
        ("/media/cdrom/apks", "file:///media/cdrom/apks", ""),
        # a prefix matches at a path boundary only
        ("https://a.example/alpine-extra/x", "http://x/alpine-extra/x", ""),
        ("file:///srv/local", "file:///srv/local", "local"),
    ]


def test_unsupported_scheme_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "etc/apk").mkdir(parents=True)
    (root / "etc/apk/repositories").write_text("ftp://old.example/alpine\n")
    with pytest.raises(UnsupportedError, match="--repo-mirror"):
        image_repositories(root, [])


def test_arch_from_file_or_installed_db(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "lib/apk/db").mkdir(parents=True)
    (root / "lib/apk/db/installed").write_text(
        "P:a\nV:1-r0\nA:aarch64\n\nP:b\nV:1-r0\nA:noarch\n\n"
    )
    assert image_arch(root) == "aarch64"
    (root / "etc/apk").mkdir(parents=True)
    (root / "etc/apk/arch").write_text("armv7\n")
    assert image_arch(root) == "armv7"
    (root / "lib/apk/db/installed").unlink()
    (root / "etc/apk/arch").unlink()
    with pytest.raises(ImageFormatError, match="architecture"):
        image_arch(root)


# -- indexes -------------------------------------------------------------------------------------


def test_index_over_http_is_verified_with_the_images_key(tmp_path: Path, repo: Path) -> None:
    root = make_root(tmp_path, repo)
    with RepoServer(repo) as server:
        r = repos(root, tmp_path, server.url)
        cands = r.update()
        assert r.index(r.repositories[0]).verified_by == f"{ALPINE_KEY}.rsa.pub"
    names = {(c.name, c.version) for c in cands}
    assert ("busybox", "1.36.1-r29") in names and ("zlib", "1.3.1-r1") in names
    c = next(c for c in cands if c.name == "zlib")
    assert c.url == f"{server.url}/{ALPINE}/x86_64/zlib-1.3.1-r1.apk"
    assert c.repo == IMAGE_URL and r.notes == []


def test_file_mirror(tmp_path: Path, repo: Path) -> None:
    root = make_root(tmp_path, repo)
    r = repos(root, tmp_path, repo.resolve().as_uri())
    cands = r.update()
    path, apk = r.download(next(c for c in cands if c.name == "zlib"))
    assert apk.name == "zlib" and path.is_file()


def test_key_symlink_is_resolved_inside_the_image(tmp_path: Path, repo: Path) -> None:
    root = make_root(tmp_path, repo)
    key = root / "etc/apk/keys" / f"{ALPINE_KEY}.rsa.pub"
    (root / "usr/share/apk/keys").mkdir(parents=True)
    key.rename(root / "usr/share/apk/keys" / key.name)
    key.symlink_to(f"/usr/share/apk/keys/{key.name}")  # absolute: inside the image
    r = repos(root, tmp_path, repo.resolve().as_uri())
    assert r.update()
    # A link that would reach the host's copy of the key stays in the image and finds nothing.
    host_key = tmp_path / "host.pub"
    shutil.copy(root / "usr/share/apk/keys" / key.name, host_key)
    key.unlink()
    key.symlink_to(str(host_key))
    r = repos(root, tmp_path, repo.resolve().as_uri())
    with pytest.raises(IntegrityError, match="none of which is a trusted key"):
        r.update()


def test_tampered_index_is_exit_7_naming_the_url(tmp_path: Path, repo: Path) -> None:
    root = make_root(tmp_path, repo)
    flip_byte(index_path(repo), "index")
    with RepoServer(repo) as server, pytest.raises(IntegrityError) as e:
        repos(root, tmp_path, server.url).update()
    assert e.value.exit_code == 7
    assert f"{server.url}/{ALPINE}/x86_64/APKINDEX.tar.gz" in str(e.value)
    assert "does not verify" in str(e.value)


def test_corrupt_index_gzip_is_exit_7(tmp_path: Path, repo: Path) -> None:
    root = make_root(tmp_path, repo)
    flip_byte(index_path(repo), "index", raw=True)
    with pytest.raises(IntegrityError, match=r"APKINDEX.tar.gz"):
        repos(root, tmp_path, repo.resolve().as_uri()).update()


def test_unsigned_index_is_refused_unless_insecure(tmp_path: Path, repo: Path) -> None:
    root = make_root(tmp_path, repo)
    strip_signature(index_path(repo))
    with pytest.raises(IntegrityError, match=r"is not signed.*--insecure-repos"):
        repos(root, tmp_path, repo.resolve().as_uri()).update()
    r = repos(root, tmp_path, repo.resolve().as_uri(), insecure=True)
    assert r.update()
    assert any("NOT checked" in n for n in r.notes)


def test_index_signed_by_an_untrusted_key(tmp_path: Path, repo: Path) -> None:
    root = make_root(tmp_path, repo)
    resign(index_path(repo), [ApkKey.from_seed("stranger.rsa.pub", "stranger")])
    with pytest.raises(IntegrityError) as e:
        repos(root, tmp_path, repo.resolve().as_uri()).update()
    assert "signed by stranger.rsa.pub, none of which is a trusted key" in str(e.value)
    assert f"{ALPINE_KEY}.rsa.pub" in str(e.value)


def test_cached_index_is_used_when_the_repository_is_gone(tmp_path: Path, repo: Path) -> None:
    root = make_root(tmp_path, repo)
    with RepoServer(repo) as server:
        url = server.url
        first = repos(root, tmp_path, url).update()
    r = repos(root, tmp_path, url)  # the server is down now
    assert [c.entry.checksum for c in r.update()] == [c.entry.checksum for c in first]
    assert any("unreachable, using the cached copy" in n for n in r.notes)


# -- packages ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("part", "message"),
    [
        ("data", "datahash"),
        ("control", "does not match the index"),
        ("signature", "does not verify"),
    ],
)
def test_tampered_package_is_exit_7_naming_the_url(
    tmp_path: Path, repo: Path, part: str, message: str
) -> None:
    root = make_root(tmp_path, repo)
    apk = repo / ALPINE / "x86_64" / "zlib-1.3.1-r1.apk"
    flip_byte(apk, part)  # type: ignore[arg-type]
    with RepoServer(repo) as server:
        r = repos(root, tmp_path, server.url)
        cand = next(c for c in r.update() if c.name == "zlib")
        with pytest.raises(IntegrityError) as e:
            r.download(cand)
    assert e.value.exit_code == 7 and cand.url in str(e.value)
    # The same bytes with an index that gives their size: the deeper check names the fault.
    entry = Record(list(cand.entry.fields))
    entry.set("S", str(apk.stat().st_size))
    with pytest.raises(IntegrityError) as e:
        r.verify_package(Candidate(entry, url=cand.url), apk.read_bytes())
    assert cand.url in str(e.value) and message in str(e.value)


def test_package_of_the_wrong_size_is_refused(tmp_path: Path, repo: Path) -> None:
    root = make_root(tmp_path, repo)
    apk = repo / ALPINE / "x86_64" / "zlib-1.3.1-r1.apk"
    with apk.open("ab") as f:
        f.write(b"\0" * 10)
    r = repos(root, tmp_path, repo.resolve().as_uri())
    cand = next(c for c in r.update() if c.name == "zlib")
    with pytest.raises(IntegrityError, match=r"larger than the .* bytes its signed index says"):
        r.download(cand)


def test_download_is_cached_and_verified_again(tmp_path: Path, repo: Path) -> None:
    root = make_root(tmp_path, repo)
    r = repos(root, tmp_path, repo.resolve().as_uri())
    cand = next(c for c in r.update() if c.name == "zlib")
    path, _ = r.download(cand)
    good = path.read_bytes()
    source = repo / ALPINE / "x86_64" / "zlib-1.3.1-r1.apk"
    source.rename(source.with_suffix(".gone"))
    assert r.download(cand)[0] == path  # from the cache
    source.with_suffix(".gone").rename(source)
    flip_byte(path, "data")  # a damaged cache entry is not trusted: fetched again
    assert r.download(cand)[0] == path and path.read_bytes() == good
