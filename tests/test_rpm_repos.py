"""An image's rpm repositories (ocipatch.distro.rpm.repos/repomd/verify) over signed fixture
repositories made here with rpmbuild, rpmsign, gpg and createrepo_c (tools/rpmrepo.py), served
on loopback or read as file://: configuration and variables, signed repomd, checksummed
primary in gz/xz/zst, package checksums, digests and signatures, keys from the image."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ocipatch.distro.deb.repos.signature import Keyrings, verify_detached
from ocipatch.distro.fetch import Fetcher
from ocipatch.distro.rpm.db import RootDir, read_installed
from ocipatch.distro.rpm.repomd import check_checksum, decompress, parse_primary, parse_repomd
from ocipatch.distro.rpm.repos import RpmRepositories, image_repos, image_vars
from ocipatch.distro.rpm.verify import verify_rpm
from ocipatch.errors import ImageFormatError, IntegrityError, ResolveError, UnsupportedError
from tests.rpm_formats import FORMATS, needs_formats, sample_dirs
from tools.rpmrepo import (
    GpgKey,
    RpmFile,
    RpmRepo,
    RpmSpec,
    build_repo,
    createrepo,
    flip_byte,
    flip_file_byte,
    rewrite_primary,
    serve,
    strip_signature,
)

pytestmark = pytest.mark.skipif(
    shutil.which("rpmsign") is None or shutil.which("createrepo_c") is None,
    reason="rpmsign / createrepo_c not installed",
)
IMAGE_BASE = "http://rpm.repo.invalid/el"  # what the image names; always rewritten in tests
KEY_PATH = "/etc/pki/rpm-gpg/RPM-GPG-KEY-test"


@dataclass
class Fixture:
    repo: RpmRepo
    key: GpgKey
    other: GpgKey  # a key the image does not trust


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    tmp = tmp_path_factory.mktemp("rpmrepo")
    key = GpgKey.generate(tmp / "gnupg")
    other = GpgKey.generate(tmp / "gnupg-other", uid="other <other@ocipatch.invalid>")
    specs = [
        RpmSpec(
            "hello",
            "1.1",
            "1.el9",
            files=[RpmFile("/usr/bin/hello", "#!/bin/sh\n", 0o755)],
            requires=["libfoo.so.1()(64bit)", "/bin/sh"],
        ),
        RpmSpec(
            "libfoo",
            "2.0",
            "1.el9",
            epoch=1,
            provides=["libfoo.so.1()(64bit)"],
            files=[RpmFile("/usr/lib64/libfoo.so.1", "elf")],
        ),
        RpmSpec(
            "tzdata",
            "2024a",
            "1.el9",
            arch="noarch",
            files=[RpmFile("/usr/share/zoneinfo/UTC", "TZif")],
        ),
    ]
    return Fixture(build_repo(tmp / "repo", specs, key), key, other)


def copy_repo(fx: Fixture, dest: Path, compress: str | None = None) -> Path:
    shutil.copytree(fx.repo.root, dest)
    if compress:
        createrepo(dest, compress, fx.key)  # type: ignore[arg-type]
    return dest


def make_root(
    tmp: Path,
    fx: Fixture,
    repo_text: str | None = None,
    *,
    key: bool = True,
    version_id: str = "9.4",
) -> Path:
    root = tmp / "rootfs"
    (root / "etc/yum.repos.d").mkdir(parents=True)
    (root / "etc/os-release").write_text(
        f'NAME="Rocky Linux"\nID=rocky\nID_LIKE="rhel centos fedora"\nVERSION_ID="{version_id}"\n'
    )
    if key:
        fx.key.write_public(root / KEY_PATH.lstrip("/").rsplit("/", 1)[0])
    (root / "etc/yum.repos.d/test.repo").write_text(
        repo_text
        or (
            "[baseos]\nname=Test $releasever - BaseOS\n"
            f"baseurl={IMAGE_BASE}/$releasever/BaseOS/$basearch/os/\n"
            f"enabled=1\ngpgcheck=1\nrepo_gpgcheck=1\ngpgkey=file://{KEY_PATH}\n"
        )
    )
    return root


def repos(root: Path, tmp: Path, to: str, **kw: object) -> RpmRepositories:
    return RpmRepositories(
        root,
        tmp / "cache",
        "x86_64",
        mirrors=[(f"{IMAGE_BASE}/9/BaseOS/x86_64/os", to)],
        fetcher=Fetcher(retries=1),
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def served(signed: Fixture, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = copy_repo(signed, tmp_path / "served")
    with serve(root) as server:
        yield root, server.url


# -- configuration -------------------------------------------------------------------------------


def test_repo_files_variables_mirrors_and_defaults(tmp_path: Path) -> None:
    root = tmp_path / "r"
    for d in ("etc/yum.repos.d", "etc/dnf/vars", "etc/yum/vars", "etc/zypp/repos.d"):
        (root / d).mkdir(parents=True)
    (root / "etc/os-release").write_text('ID="centos"\nVERSION_ID="8.10"\n')
    (root / "etc/dnf/vars/contentdir").write_text("centos\n")
    (root / "etc/yum/vars/stream").write_text("8-stream\n")
    (root / "etc/dnf/dnf.conf").write_text("[main]\ngpgcheck=1\ninstallonly_limit=3\n")
    (root / "etc/yum.repos.d/a.repo").write_text(
        "[main]\ngpgcheck=0\n"  # a [main] in a .repo file is not a repository
        "[appstream]\nname=AppStream\n"
        "baseurl=http://m1.invalid/${contentdir}/$releasever/AppStream/$basearch/os/\n"
        "        http://m2.invalid/$contentdir/$stream/AppStream/$basearch/os/\n"
        "gpgkey=file:///etc/pki/rpm-gpg/A, file:///etc/pki/rpm-gpg/B\npriority=10\n"
        "[extras]\nmetalink=https://mirrors.invalid/metalink?repo=extras-$releasever\n"
        "enabled=0\n"
        "[crb]\nmirrorlist=https://mirrors.invalid/?repo=crb&arch=$basearch\ngpgcheck=0\n"
        "repo_gpgcheck=yes\n"
    )
    (root / "etc/zypp/repos.d/oss.repo").write_text(
        "[repo-oss]\nname=Main\nenabled=1\nautorefresh=1\n"
        "baseurl=http://download.invalid/distribution/leap/$releasever/repo/oss/\n"
        "type=rpm-md\ngpgcheck=1\nrepo_gpgcheck=0\n"
        "[repo-src]\nbaseurl=http://download.invalid/source/\ntype=yast2\nenabled=0\n"
    )
    variables = image_vars(root, "aarch64")
    assert variables["releasever"] == "8" and variables["basearch"] == "aarch64"
    assert variables["contentdir"] == "centos" and variables["stream"] == "8-stream"
    got = image_repos(root, variables, [("http://m1.invalid/centos", "file:///srv/mirror")])
    by_id = {r.id: r for r in got}
    assert [r.id for r in got] == ["appstream", "extras", "crb", "repo-oss", "repo-src"]
    app = by_id["appstream"]
    assert app.baseurls == (
        "http://m1.invalid/centos/8/AppStream/aarch64/os/",
        "http://m2.invalid/centos/8-stream/AppStream/aarch64/os/",
    )
    assert app.fetch_urls[0] == "file:///srv/mirror/8/AppStream/aarch64/os/"
    assert app.gpgcheck and not app.repo_gpgcheck  # from /etc/dnf/dnf.conf [main]
    assert app.priority == 10 and by_id["crb"].priority == 99
    assert app.gpgkeys == ("file:///etc/pki/rpm-gpg/A", "file:///etc/pki/rpm-gpg/B")
    assert not by_id["extras"].enabled
    assert (
        "metalink" in by_id["extras"].unsupported and "--repo-mirror" in by_id["extras"].unsupported
    )
    crb = by_id["crb"]
    assert "mirrorlist" in crb.unsupported and not crb.gpgcheck and crb.repo_gpgcheck
    oss = by_id["repo-oss"]
    assert oss.baseurls == ("http://download.invalid/distribution/leap/8/repo/oss/",)
    assert oss.gpgcheck and not oss.repo_gpgcheck
    assert "yast2" in by_id["repo-src"].unsupported


def test_releasever_from_os_release_db_and_var_files(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "etc/dnf/vars").mkdir(parents=True)
    assert "releasever" not in image_vars(root, "x86_64")
    cases = [
        ('ID="rhel"\nVERSION_ID="9.4"\n', "9"),
        ('ID="almalinux"\nID_LIKE="rhel centos fedora"\nVERSION_ID="8.10"\n', "8"),
        ("ID=fedora\nVERSION_ID=40\n", "40"),
        ('ID=azurelinux\nVERSION_ID="3.0"\n', "3.0"),  # packages.microsoft.com/azurelinux/3.0
        ('ID=mariner\nVERSION_ID="2.0"\n', "2.0"),
        ('ID="opensuse-leap"\nID_LIKE="suse opensuse"\nVERSION_ID="15.5"\n', "15.5"),
    ]
    for text, want in cases:
        (root / "etc/os-release").write_text(text)
        got = image_vars(root, "x86_64")
        assert got["releasever"] == want, text
        assert got["releasever_major"] == want.split(".")[0]
    (root / "etc/dnf/vars/releasever").write_text("2023.6.20241010\n")  # Amazon Linux 2023
    assert image_vars(root, "x86_64")["releasever"] == "2023.6.20241010"
    assert image_vars(root, "amd64")["basearch"] == "x86_64"
    assert image_vars(root, "i686")["basearch"] == "i386"


@pytest.mark.skipif(shutil.which("rpm") is None, reason="rpm not installed")
def test_releasever_from_system_release_provide(tmp_path: Path) -> None:
    """As dnf: the rpmdb's `system-release(releasever)` provide wins over os-release."""
    from tests.rpm_formats import install_justdb
    from tools.rpmrepo import build_rpm

    spec = RpmSpec("rocky-release", "9.4", "1.7.el9", arch="noarch",
                   provides=["system-release", "system-release(releasever) = 9"])  # fmt: skip
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text('ID=unknown\nVERSION_ID="9.4"\n')
    install_justdb(root, [build_rpm(spec, tmp_path / "out", None).path])
    installed = read_installed(RootDir(root))
    assert image_vars(root, "x86_64", installed)["releasever"] == "9"


def test_metalink_only_repository_is_one_clear_error(signed: Fixture, tmp_path: Path) -> None:
    root = make_root(
        tmp_path, signed, "[fedora]\nmetalink=https://mirrors.invalid/metalink?repo=fedora\n"
    )
    with pytest.raises(UnsupportedError, match=r"metalink.*baseurl=.*--repo-mirror"):
        repos(root, tmp_path, "file:///nowhere").update()


def test_metalink_repository_taken_by_repo_id_mirror(signed: Fixture, tmp_path: Path) -> None:
    root = make_root(
        tmp_path,
        signed,
        "[fedora]\nmetalink=https://mirrors.invalid/metalink?repo=fedora\ngpgcheck=1\n"
        f"gpgkey=file://{KEY_PATH}\n",
    )
    got = RpmRepositories(
        root, tmp_path / "c", "x86_64", mirrors=[("fedora", signed.repo.file_url())]
    ).update()
    assert {c.name for c in got} == {"hello", "libfoo", "tzdata"}


def test_bad_repo_file_and_bad_scheme(signed: Fixture, tmp_path: Path) -> None:
    root = make_root(tmp_path, signed, "baseurl=http://x/\n[ok]\n")
    with pytest.raises(ImageFormatError, match=r"test\.repo"):
        repos(root, tmp_path, "file:///x")
    # a disabled repository may name any transport (zypper's cd:// and dir://)
    root3 = make_root(tmp_path / "c", signed, "[cd]\nbaseurl=cd:///?devices=/dev/sr0\nenabled=0\n")
    assert not repos(root3, tmp_path, "file:///x").all_repos[0].enabled
    root2 = make_root(tmp_path / "b", signed, "[r]\nbaseurl=ftp://x.invalid/repo/\n")
    with pytest.raises(UnsupportedError, match=r"ftp://.*--repo-mirror"):
        repos(root2, tmp_path, "file:///x")


def test_no_enabled_repository(signed: Fixture, tmp_path: Path) -> None:
    root = make_root(tmp_path, signed, "[r]\nbaseurl=http://x.invalid/\nenabled=0\n")
    with pytest.raises(ResolveError, match="no enabled rpm repository"):
        repos(root, tmp_path, "file:///x").update()


# -- metadata ------------------------------------------------------------------------------------


def test_update_over_http_with_signed_repomd(
    signed: Fixture, served: tuple[Path, str], tmp_path: Path
) -> None:
    root = make_root(tmp_path, signed)
    got = repos(root, tmp_path, served[1]).update()
    assert sorted(c.entry.nevra for c in got) == [
        "hello-1.1-1.el9.x86_64",
        "libfoo-1:2.0-1.el9.x86_64",
        "tzdata-2024a-1.el9.noarch",
    ]
    hello = next(c for c in got if c.name == "hello")
    assert hello.url == f"{served[1]}/Packages/h/hello-1.1-1.el9.x86_64.rpm"
    assert {str(d) for d in hello.entry.requires} == {"libfoo.so.1()(64bit)", "/bin/sh"}
    assert "/usr/bin/hello" in hello.entry.files  # primary lists /usr/bin files
    libfoo = next(c for c in got if c.name == "libfoo")
    assert libfoo.entry.epoch == 1
    assert any(p.name == "libfoo.so.1()(64bit)" for p in libfoo.entry.provides)


@pytest.mark.parametrize("compress", ["gz", "xz", "zstd"])
def test_primary_compressions_over_file_url(signed: Fixture, tmp_path: Path, compress: str) -> None:
    repo = copy_repo(signed, tmp_path / "repo", compress)
    primary = next((repo / "repodata").glob("*-primary.xml*"))
    assert primary.suffix == {"gz": ".gz", "xz": ".xz", "zstd": ".zst"}[compress]
    root = make_root(tmp_path, signed)
    got = repos(root, tmp_path, repo.resolve().as_uri()).update()
    assert len(got) == 3


def test_second_baseurl_used_when_first_unreachable(signed: Fixture, tmp_path: Path) -> None:
    root = make_root(
        tmp_path,
        signed,
        "[r]\nbaseurl=http://127.0.0.1:9/none/\n"
        f"        {signed.repo.file_url()}\ngpgcheck=1\ngpgkey=file://{KEY_PATH}\n",
    )
    got = RpmRepositories(root, tmp_path / "c", "x86_64", fetcher=Fetcher(retries=1)).update()
    assert len(got) == 3


def test_tampered_repomd_is_refused(
    signed: Fixture, served: tuple[Path, str], tmp_path: Path
) -> None:
    repo, url = served
    text = (repo / "repodata/repomd.xml").read_text()
    (repo / "repodata/repomd.xml").write_text(text.replace("<revision>", "<revision>1"))
    root = make_root(tmp_path, signed)
    with pytest.raises(IntegrityError, match=r"repomd.xml.*BAD signature"):
        repos(root, tmp_path, url).update()


def test_repomd_signed_by_untrusted_key_or_unsigned(
    signed: Fixture, served: tuple[Path, str], tmp_path: Path
) -> None:
    repo, url = served
    signed.other.detach_sign(repo / "repodata/repomd.xml")
    root = make_root(tmp_path, signed)
    with pytest.raises(IntegrityError, match=r"repomd.xml.*does not verify.*RPM-GPG-KEY-test"):
        repos(root, tmp_path, url).update()
    (repo / "repodata/repomd.xml.asc").unlink()
    with pytest.raises(IntegrityError, match=r"repomd.xml.asc is missing.*repo_gpgcheck=1"):
        repos(root, tmp_path, url).update()
    # --insecure-repos turns the check off, loudly
    r = repos(root, tmp_path, url, insecure=True)
    assert len(r.update()) == 3 and any("NOT checked" in n for n in r.notes)


def test_tampered_primary_is_refused(
    signed: Fixture, served: tuple[Path, str], tmp_path: Path
) -> None:
    repo, url = served
    rewrite_primary(repo, "<name>hello</name>", "<name>hellO</name>")
    root = make_root(tmp_path, signed)
    with pytest.raises(
        IntegrityError, match=rf"{url}/repodata/.*-primary.xml.gz: checksum mismatch"
    ):
        repos(root, tmp_path, url).update()


def test_open_checksum_is_checked(signed: Fixture, tmp_path: Path) -> None:
    repo = copy_repo(signed, tmp_path / "repo")
    md = parse_repomd((repo / "repodata/repomd.xml").read_bytes(), "repomd.xml")
    info = md.files["primary"]
    raw = gzip.decompress((repo / info.href).read_bytes())
    bad = raw.replace(b"<name>hello</name>", b"<name>hellO</name>")
    with pytest.raises(IntegrityError, match="open-checksum"):
        assert info.open_checksum is not None
        check_checksum(bad, info.open_checksum, "u", "open-checksum (decompressed)")
    check_checksum(raw, info.open_checksum, "u")


def test_doctype_and_entities_refused() -> None:
    bomb = (
        b'<?xml version="1.0"?>\n<!DOCTYPE m [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>\n'
        b'<metadata xmlns="http://linux.duke.edu/metadata/common" packages="0">&b;</metadata>'
    )
    with pytest.raises(IntegrityError, match="DOCTYPE"):
        list(parse_primary(bomb, "http://x/primary.xml"))
    with pytest.raises(IntegrityError, match="DOCTYPE"):
        parse_repomd(bomb.replace(b"metadata", b"repomd"), "http://x/repomd.xml")
    with pytest.raises(IntegrityError, match="not well-formed"):
        list(parse_primary(b"<metadata xmlns='http://linux.duke.edu/metadata/common'><pack", "u"))


def test_cut_compressed_primary_is_integrity_error() -> None:
    data = gzip.compress(b"<metadata/>" * 100)[:-10]
    with pytest.raises(IntegrityError, match="cannot decompress"):
        decompress(data, "x-primary.xml.gz", "http://x/p.gz")


@needs_formats
@pytest.mark.parametrize("sample", sample_dirs("rpm-repodata"), ids=lambda p: p.name)
def test_every_shared_primary_parses(sample: Path) -> None:
    md = parse_repomd((sample / "repomd.xml").read_bytes(), str(sample / "repomd.xml"))
    assert md.files
    info = md.files.get("primary")
    if info is None or not (sample / info.href.rsplit("/", 1)[-1]).is_file():
        assert "primary_db" in md.files or info is not None
        return
    path = sample / info.href.rsplit("/", 1)[-1]
    data = path.read_bytes()
    if sample.name == "createrepo_c-repo_01":  # its stored checksum deliberately mismatches
        with pytest.raises(IntegrityError, match=rf"{path.name}: checksum mismatch"):
            check_checksum(data, info.checksum, str(path))
    else:
        check_checksum(data, info.checksum, str(path))
    raw = decompress(data, path.name, str(path))
    assert info.open_checksum is not None
    check_checksum(raw, info.open_checksum, str(path))
    entries = list(parse_primary(raw, str(path)))
    assert entries and all(e.name and e.arch and e.version and e.checksum[1] for e in entries)
    assert all(e.href.endswith(".rpm") for e in entries)


@needs_formats
def test_shared_mismatching_repo_refused_end_to_end(tmp_path: Path) -> None:
    sample = FORMATS / "rpm-repodata" / "createrepo_c-repo_01"
    repo = tmp_path / "repo"
    (repo / "repodata").mkdir(parents=True)
    for f in sample.iterdir():
        shutil.copy(f, repo / "repodata" / f.name)
    root = tmp_path / "rootfs"
    (root / "etc/yum.repos.d").mkdir(parents=True)
    (root / "etc/yum.repos.d/a.repo").write_text(f"[a]\nbaseurl={repo.as_uri()}\ngpgcheck=0\n")
    with pytest.raises(IntegrityError, match=r"primary.xml.gz: checksum mismatch"):
        RpmRepositories(root, tmp_path / "c", "x86_64").update()


# -- packages ------------------------------------------------------------------------------------


def test_download_verifies_and_caches(
    signed: Fixture, served: tuple[Path, str], tmp_path: Path
) -> None:
    root = make_root(tmp_path, signed)
    r = repos(root, tmp_path, served[1])
    hello = next(c for c in r.update() if c.name == "hello")
    path, rpm = r.download(hello)
    assert rpm.package.nevra == "hello-1.1-1.el9.x86_64" and path.is_file()
    assert path.read_bytes() == (served[0] / "Packages/h/hello-1.1-1.el9.x86_64.rpm").read_bytes()
    # from the cache: the server's copy is not read again
    (served[0] / "Packages/h/hello-1.1-1.el9.x86_64.rpm").unlink()
    assert r.download(hello)[0] == path


@pytest.mark.parametrize("part", ["header", "payload"])
def test_tampered_package_refused(
    signed: Fixture, served: tuple[Path, str], tmp_path: Path, part: str
) -> None:
    root = make_root(tmp_path, signed)
    r = repos(root, tmp_path, served[1])
    hello = next(c for c in r.update() if c.name == "hello")
    flip_byte(served[0] / "Packages/h/hello-1.1-1.el9.x86_64.rpm", part)  # type: ignore[arg-type]
    with pytest.raises(IntegrityError, match=r"hello-1.1-1.el9.x86_64.rpm: package checksum"):
        r.download(hello)


@pytest.mark.parametrize("part", ["header", "payload"])
def test_signature_and_digests_catch_tampering(signed: Fixture, tmp_path: Path, part: str) -> None:
    """The repository checksum aside (a mirror that re-ran createrepo over an altered file)."""
    path = tmp_path / "p.rpm"
    shutil.copy(signed.repo.package("hello").path, path)
    rings = Keyrings((("test", signed.key.keyring(tmp_path / "k.gpg").read_bytes()),))
    assert verify_rpm(path.read_bytes(), "p.rpm", rings).package.name == "hello"
    flip_byte(path, part)  # type: ignore[arg-type]
    with pytest.raises(IntegrityError, match=r"p.rpm.*(digest mismatch|BAD signature)"):
        verify_rpm(path.read_bytes(), "p.rpm", rings)
    with pytest.raises(IntegrityError, match="digest mismatch"):
        verify_rpm(path.read_bytes(), "p.rpm", None)  # even without keys


def test_unsigned_and_wrongly_signed_packages(signed: Fixture, tmp_path: Path) -> None:
    path = tmp_path / "p.rpm"
    shutil.copy(signed.repo.package("libfoo").path, path)
    rings = Keyrings(
        (("/etc/pki/rpm-gpg/X", signed.other.keyring(tmp_path / "o.gpg").read_bytes()),)
    )
    with pytest.raises(IntegrityError, match=r"p.rpm \(header signature\).*does not verify"):
        verify_rpm(path.read_bytes(), "p.rpm", rings)
    strip_signature(path)
    with pytest.raises(IntegrityError, match=r"not signed.*gpgcheck=1.*--insecure-repos"):
        verify_rpm(path.read_bytes(), "p.rpm", rings)
    assert verify_rpm(path.read_bytes(), "p.rpm", None).package.name == "libfoo"


def test_unsigned_repository_package_gpgcheck(signed: Fixture, tmp_path: Path) -> None:
    repo = copy_repo(signed, tmp_path / "repo")
    strip_signature(repo / "Packages/t/tzdata-2024a-1.el9.noarch.rpm")
    createrepo(repo, "gz", signed.key)
    root = make_root(tmp_path, signed)
    r = repos(root, tmp_path, repo.as_uri())
    tz = next(c for c in r.update() if c.name == "tzdata")
    with pytest.raises(IntegrityError, match="not signed"):
        r.download(tz)
    r2 = repos(root, tmp_path / "2", repo.as_uri(), insecure=True)
    assert (
        r2.download(next(c for c in r2.update() if c.name == "tzdata"))[1].package.name == "tzdata"
    )


@pytest.mark.skipif(shutil.which("rpm") is None, reason="rpm not installed")
def test_key_from_rpmdb_gpg_pubkey(signed: Fixture, tmp_path: Path) -> None:
    """No gpgkey file in the image: the key rpm imported (gpg-pubkey) verifies the package."""
    root = make_root(
        tmp_path, signed, f"[r]\nbaseurl={signed.repo.file_url()}\ngpgcheck=1\n", key=False
    )
    asc = signed.key.write_public(tmp_path / "k")
    rpm = ["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm",
           "--define", "_db_backend sqlite"]  # fmt: skip
    subprocess.run([*rpm, "--initdb"], check=True, capture_output=True)
    subprocess.run([*rpm, "--import", str(asc)], check=True, capture_output=True)
    installed = read_installed(RootDir(root))
    assert installed is not None and installed.gpg_pubkeys
    r = RpmRepositories(root, tmp_path / "c", "x86_64")
    hello = next(c for c in r.update() if c.name == "hello")
    assert r.download(hello)[1].package.name == "hello"
    # without any key: one clear line
    root2 = make_root(
        tmp_path / "b", signed, f"[r]\nbaseurl={signed.repo.file_url()}\ngpgcheck=1\n", key=False
    )
    r2 = RpmRepositories(root2, tmp_path / "c2", "x86_64")
    with pytest.raises(IntegrityError, match=r"no key to check with.*--insecure-repos"):
        r2.download(next(c for c in r2.update() if c.name == "hello"))


def test_gpgkey_file_missing_in_image(signed: Fixture, tmp_path: Path) -> None:
    root = make_root(tmp_path, signed, key=False)
    with pytest.raises(IntegrityError, match=rf"gpgkey file://{KEY_PATH} is not in the image"):
        repos(root, tmp_path, signed.repo.file_url()).update()


def test_repomd_tampered_byte_flip_file_url(signed: Fixture, tmp_path: Path) -> None:
    repo = copy_repo(signed, tmp_path / "repo")
    flip_file_byte(repo / "repodata/repomd.xml", -3)
    root = make_root(tmp_path, signed)
    with pytest.raises(IntegrityError):
        repos(root, tmp_path, repo.as_uri()).update()


def test_legacy_header_and_payload_signature(signed: Fixture, tmp_path: Path) -> None:
    """`rpmsign --rpmv3` adds the v3 signature over header+payload (tag 1002): checked too."""
    from ocipatch.distro.rpm.header import read_rpm
    from ocipatch.distro.rpm.verify import SIG_PGP, SIG_RSA_HEADER, signed_parts
    from tools.rpmrepo import GPG_TIME

    path = tmp_path / "p.rpm"
    shutil.copy(signed.repo.package("tzdata").path, path)
    strip_signature(path)
    key = signed.key
    subprocess.run(
        ["rpmsign", "--addsign", "--rpmv3", "--define", f"_gpg_name {key.fingerprint}",
         "--define", f"_gpg_path {key.home}", "--define", "__gpg /usr/bin/gpg",
         "--define", f"_gpg_sign_cmd_extra_args --faked-system-time {GPG_TIME}", str(path)],
        check=True, capture_output=True, env={**os.environ, "GNUPGHOME": str(key.home)},
    )  # fmt: skip
    sig = read_rpm(path.read_bytes(), "p").signature
    assert sig.binary(SIG_PGP) and sig.binary(SIG_RSA_HEADER)
    rings = Keyrings((("test", key.keyring(tmp_path / "k.gpg").read_bytes()),))
    assert verify_rpm(path.read_bytes(), "p.rpm", rings).package.name == "tzdata"
    # the v3 signature alone: good over header+payload, BAD once one payload byte changes
    parts = signed_parts(path.read_bytes(), "p.rpm")
    assert parts.header_and_payload == parts.header + parts.payload
    v3 = sig.binary(SIG_PGP)
    assert v3 is not None
    verify_detached(parts.header_and_payload, v3, rings, "v3")
    flip_byte(path, "payload")
    altered = signed_parts(path.read_bytes(), "p.rpm").header_and_payload
    with pytest.raises(IntegrityError, match="BAD signature"):
        verify_detached(altered, v3, rings, "v3")
    with pytest.raises(IntegrityError, match=r"p.rpm: (MD5|payload sha256) digest mismatch"):
        verify_rpm(path.read_bytes(), "p.rpm", rings)


def test_header_signature_covers_header_from_magic(signed: Fixture, tmp_path: Path) -> None:
    from ocipatch.distro.rpm.verify import SIG_RSA_HEADER, signed_parts

    path = tmp_path / "p.rpm"
    shutil.copy(signed.repo.package("hello").path, path)
    rings = Keyrings((("test", signed.key.keyring(tmp_path / "k.gpg").read_bytes()),))
    parts = signed_parts(path.read_bytes(), "p.rpm")
    assert parts.header[:3] == b"\x8e\xad\xe8"
    packet = parts.rpm.signature.binary(SIG_RSA_HEADER)
    assert packet is not None
    verify_detached(parts.header, packet, rings, "hdr")
    with pytest.raises(IntegrityError, match="BAD signature"):
        verify_detached(parts.header[8:], packet, rings, "hdr")  # without the magic: not it
    flip_byte(path, "header")
    with pytest.raises(IntegrityError, match="BAD signature"):
        verify_detached(signed_parts(path.read_bytes(), "p").header, packet, rings, "hdr")


def test_location_xml_base_and_absolute_href(signed: Fixture, tmp_path: Path) -> None:
    repo = copy_repo(signed, tmp_path / "repo")
    moved = tmp_path / "pool"
    shutil.move(repo / "Packages", moved / "Packages")
    rewrite = f'<location xml:base="{moved.as_uri()}/" href="Packages/h/'
    md = parse_repomd((repo / "repodata/repomd.xml").read_bytes(), "r")
    path = repo / md.files["primary"].href
    raw = gzip.decompress(path.read_bytes()).replace(
        b'<location href="Packages/h/', rewrite.encode()
    )
    path.write_bytes(gzip.compress(raw))
    text = (repo / "repodata/repomd.xml").read_text()
    new_sum = hashlib.sha256(path.read_bytes()).hexdigest()
    open_sum = hashlib.sha256(raw).hexdigest()
    text = re.sub(
        r'(<data type="primary">\s*<checksum type="sha256">)[0-9a-f]+',
        rf"\g<1>{new_sum}",
        text,
    )
    text = re.sub(
        r'(<data type="primary">.*?<open-checksum type="sha256">)[0-9a-f]+',
        rf"\g<1>{open_sum}",
        text,
        flags=re.S,
    )
    (repo / "repodata/repomd.xml").write_text(text)
    root = make_root(
        tmp_path, signed, f"[r]\nbaseurl={repo.as_uri()}\ngpgcheck=1\ngpgkey=file://{KEY_PATH}\n"
    )
    r = RpmRepositories(root, tmp_path / "c", "x86_64")
    hello = next(c for c in r.update() if c.name == "hello")
    assert hello.url == f"{moved.as_uri()}/Packages/h/hello-1.1-1.el9.x86_64.rpm"
    assert r.download(hello)[1].package.name == "hello"


def test_unreachable_repository_uses_verified_cache(signed: Fixture, tmp_path: Path) -> None:
    """An air-gapped re-run: repomd and primary from the cache, the signature checked again."""
    repo = copy_repo(signed, tmp_path / "repo")
    root = make_root(tmp_path, signed)
    with serve(repo) as server:
        url = server.url
        assert len(repos(root, tmp_path, url).update()) == 3
    again = repos(root, tmp_path, url)  # same cache, server gone
    assert len(again.update()) == 3
    assert any("unreachable, using the cached copy" in n for n in again.notes)
    for f in (tmp_path / "cache/rpm/repomd").iterdir():
        if f.read_bytes().startswith(b"<?xml"):
            f.write_bytes(f.read_bytes().replace(b"<revision>", b"<revision>9"))
    with pytest.raises(IntegrityError, match="BAD signature"):
        repos(root, tmp_path, url).update()
    with pytest.raises(ResolveError, match=r"cannot fetch .*--repo-mirror"):
        repos(root, tmp_path / "fresh", url).update()  # nothing cached: one clear line


@pytest.mark.skipif(shutil.which("rpm") is None, reason="rpm not installed")
def test_zypper_repository_checked_with_rpmdb_keys(signed: Fixture, tmp_path: Path) -> None:
    """SUSE: no gpgkey= line; zypper's gpgcheck (on by default) covers repomd.xml.asc and the
    packages, with the keys imported into the rpmdb (/usr/lib/sysimage/rpm)."""
    root = tmp_path / "rootfs"
    (root / "etc/zypp/repos.d").mkdir(parents=True)
    (root / "etc/os-release").write_text('ID="opensuse-leap"\nVERSION_ID="15.5"\n')
    (root / "etc/zypp/repos.d/repo-oss.repo").write_text(
        "[repo-oss]\nname=Main\nenabled=1\nautorefresh=1\n"
        "baseurl=http://download.invalid/distribution/leap/$releasever/repo/oss/\ntype=rpm-md\n"
    )
    rpm = ["rpm", "--root", str(root), "--dbpath", "/usr/lib/sysimage/rpm",
           "--define", "_db_backend sqlite"]  # fmt: skip
    subprocess.run([*rpm, "--initdb"], check=True, capture_output=True)
    subprocess.run(
        [*rpm, "--import", str(signed.key.write_public(tmp_path / "k"))],
        check=True,
        capture_output=True,
    )
    mirrors = [("http://download.invalid/distribution/leap/15.5/repo/oss", signed.repo.file_url())]
    r = RpmRepositories(root, tmp_path / "c", "x86_64", mirrors=mirrors)
    assert r.repos[0].repo_gpgcheck and r.repos[0].gpgcheck
    hello = next(c for c in r.update() if c.name == "hello")
    assert r.download(hello)[1].package.name == "hello"
    # the key is the only one trusted: a repomd signed by another is refused
    repo = copy_repo(signed, tmp_path / "other")
    signed.other.detach_sign(repo / "repodata/repomd.xml")
    mirrors2 = [(mirrors[0][0], repo.as_uri())]
    with pytest.raises(IntegrityError, match=r"repomd.xml.*does not verify.*rpmdb gpg-pubkey"):
        RpmRepositories(root, tmp_path / "c2", "x86_64", mirrors=mirrors2).update()


def test_skip_if_unavailable(signed: Fixture, tmp_path: Path) -> None:
    text = (
        f"[ok]\nbaseurl={signed.repo.file_url()}\ngpgcheck=1\ngpgkey=file://{KEY_PATH}\n"
        "[gone]\nbaseurl=http://127.0.0.1:9/none/\nskip_if_unavailable=1\n"
        "[fedora-cisco]\nmetalink=https://mirrors.invalid/?repo=x\nskip_if_unavailable=True\n"
    )
    root = make_root(tmp_path, signed, text)
    r = RpmRepositories(root, tmp_path / "c", "x86_64", fetcher=Fetcher(retries=1))
    assert len(r.update()) == 3
    assert [n.split(" skipped")[0] for n in r.notes] == [
        "/etc/yum.repos.d/test.repo [gone]",
        "/etc/yum.repos.d/test.repo [fedora-cisco]",
    ]
    root2 = make_root(tmp_path / "b", signed, text.replace("skip_if_unavailable=1\n", ""))
    with pytest.raises(ResolveError, match=r"cannot fetch http://127.0.0.1:9/none/repodata"):
        RpmRepositories(root2, tmp_path / "c", "x86_64", fetcher=Fetcher(retries=1)).update()


def test_exclude_and_includepkgs(signed: Fixture, tmp_path: Path) -> None:
    root = make_root(
        tmp_path,
        signed,
        f"[r]\nbaseurl={signed.repo.file_url()}\ngpgcheck=1\ngpgkey=file://{KEY_PATH}\n"
        "exclude=tz* libfoo-9*\n",
    )
    (root / "etc/dnf").mkdir()
    (root / "etc/dnf/dnf.conf").write_text("[main]\nexcludepkgs=hello.x86_64\n")
    assert [c.name for c in repos(root, tmp_path, "file:///x").update()] == ["libfoo"]
    root2 = make_root(
        tmp_path / "b",
        signed,
        f"[r]\nbaseurl={signed.repo.file_url()}\ngpgcheck=0\nincludepkgs=hello,tzdata-2024a\n",
    )
    got = repos(root2, tmp_path, "file:///x").update()
    assert sorted(c.name for c in got) == ["hello", "tzdata"]
