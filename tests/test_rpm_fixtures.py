"""The rpm fixtures (tools/rpmrepo.py, tools/build_rpm_image.py) checked by independent readers:
skopeo, umoci, the real rpm (-qa, -V, -K, -qp), gpgv, trivy, dnf, and the real samples.

Nothing here uses ocipatch's rpm reader or tools.rpmrepo's helpers to read: primaries are
decompressed by the gzip/xz/zstd tools and parsed as XML, checksums recomputed from files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.plugins.images import skopeo, trivy_packages, umoci_unpack
from tools.aptrepo import RepoServer
from tools.build_rpm_image import DISTROS, KINDS, MIRROR_BASE, RpmImage
from tools.rpmrepo import (
    GpgKey,
    RpmFile,
    RpmSpec,
    build_repo,
    build_rpm,
    flip_byte,
    flip_file_byte,
    rewrite_primary,
    serve,
    strip_signature,
)

FORMATS = Path("/work/shared/formats")
SCANNER_REPORTS = Path("/work/shared/scanner-reports")
MakeImage = Callable[..., RpmImage]
RPMDB_KINDS = [k for k in KINDS if k != "azurelinux"]
NS = {"c": "http://linux.duke.edu/metadata/common", "r": "http://linux.duke.edu/metadata/repo",
      "rpm": "http://linux.duke.edu/metadata/rpm"}  # fmt: skip
QF = "%{NAME}\\t%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\\n"


# --- independent readers ------------------------------------------------------------------------


def rpm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rpm", *args], capture_output=True, text=True, check=check)


def dbpath_of(img: RpmImage) -> str:
    return "/" + img.db_path.rpartition("/")[0]


def rpm_qa(root: Path, img: RpmImage) -> dict[str, str]:
    """name -> [epoch:]version-release as the real rpm lists the unpacked image's db."""
    backend = "bdb_ro" if img.db_path.endswith("/Packages") else "sqlite"
    out = rpm("--root", str(root), "--dbpath", dbpath_of(img), "--define",
              f"_db_backend {backend}", "-qa", "--qf", QF).stdout  # fmt: skip
    return dict(line.split("\t") for line in out.splitlines())


def decompress(path: Path) -> bytes:
    tool = {".gz": ["gzip"], ".xz": ["xz"], ".zst": ["zstd", "-q"]}[path.suffix]
    return subprocess.run([*tool, "-d", "-c", str(path)], capture_output=True, check=True).stdout


def repomd(repo_dir: Path) -> dict[str, ET.Element]:
    root = ET.parse(repo_dir / "repodata/repomd.xml").getroot()
    return {d.get("type", ""): d for d in root.findall("r:data", NS)}


def primary(repo_dir: Path) -> list[dict[str, str]]:
    href = repomd(repo_dir)["primary"].find("r:location", NS).get("href")  # type: ignore[union-attr]
    doc = ET.fromstring(decompress(repo_dir / str(href)))
    out = []
    for p in doc.findall("c:package", NS):
        v = p.find("c:version", NS)
        assert v is not None
        out.append({
            "name": p.findtext("c:name", "", NS), "arch": p.findtext("c:arch", "", NS),
            "epoch": v.get("epoch", ""), "ver": v.get("ver", ""), "rel": v.get("rel", ""),
            "href": p.find("c:location", NS).get("href", ""),  # type: ignore[union-attr]
            "sha256": p.findtext("c:checksum", "", NS),
            "requires": " ".join(e.get("name", "") for e in p.findall(
                "c:format/rpm:requires/rpm:entry", NS)),
            "obsoletes": " ".join(e.get("name", "") for e in p.findall(
                "c:format/rpm:obsoletes/rpm:entry", NS)),
        })  # fmt: skip
    return out


def key_db(img: RpmImage, tmp: Path) -> Path:
    """A temp rpmdb holding only the fixture's public key (for rpm -K)."""
    db = tmp / "keydb"
    rpm("--dbpath", str(db), "--initdb")
    rpm("--dbpath", str(db), "--import", str(img.key_file))
    return db


def unpack(img: RpmImage, dest: Path) -> Path:
    return umoci_unpack(img.layout, img.tag, dest)


# --- layouts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_layout_opens_with_skopeo_and_umoci(kind: str, rpm_image: MakeImage, tmp_path: Path):
    img = rpm_image(kind, "t1")
    info = json.loads(skopeo("inspect", f"oci:{img.layout}:t1"))
    layers = 2 if kind == "rocky-multilayer" else 1
    assert (info["Architecture"], info["Os"], len(info["Layers"])) == ("amd64", "linux", layers)
    root = unpack(img, tmp_path / "u")
    d = DISTROS[img.kind]
    assert f'ID="{d.os_id}"\n' in (root / "etc/os-release").read_text()
    assert f'VERSION_ID="{d.version_id}"\n' in (root / "etc/os-release").read_text()
    assert (root / img.db_path).is_file()
    has_sh = (root / "bin/sh").exists()
    assert has_sh == d.shell
    if has_sh:
        out = subprocess.run([str(root / "usr/bin/busybox"), "echo", "ok"], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
        assert out == "ok\n"
    if d.pkg_manager:
        assert subprocess.run([str(root / "usr/bin/busybox"), "sh",
                               str(root / "usr/bin" / d.pkg_manager)],
                              capture_output=True, check=False).returncode == 99  # fmt: skip
    else:
        assert not any((root / "usr/bin" / pm).exists() for pm in ("dnf", "yum", "microdnf"))


@pytest.mark.parametrize("kind", RPMDB_KINDS)
def test_real_rpm_lists_and_verifies_the_db(kind: str, rpm_image: MakeImage, tmp_path: Path):
    img = rpm_image(kind)
    root = unpack(img, tmp_path / "u")
    listed = rpm_qa(root, img)
    pubkeys = [n for n in listed if n == "gpg-pubkey"]
    assert pubkeys == ["gpg-pubkey"]  # imported with rpm --import
    listed.pop("gpg-pubkey")
    assert listed == img.installed
    backend = "bdb_ro" if img.db_path.endswith("/Packages") else "sqlite"
    db = ["--root", str(root), "--dbpath", dbpath_of(img), "--define", f"_db_backend {backend}"]
    # every file's digest, mode, owner and link target as the header records them
    proc = rpm(*db, "-Va", check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", ""), proc.stdout + proc.stderr
    # the index tables: by name, by file, by provide, by require
    assert rpm(*db, "-q", "openssl-libs").stdout.startswith("openssl-libs-3.0.7-24.")
    assert rpm(*db, "-qf", "/usr/lib64/libcrypto.so.3").stdout.startswith("openssl-libs-")
    assert rpm(*db, "-q", "--whatprovides", "libc.so.6()(64bit)").stdout.startswith("glibc-")
    requirers = rpm(*db, "-q", "--whatrequires", "libc.so.6()(64bit)").stdout
    assert "libxml2-2.9.13-5." in requirers


@pytest.mark.parametrize("kind", ["fedora", "sles"])
def test_sysimage_db_with_var_lib_rpm_link(kind: str, rpm_image: MakeImage, tmp_path: Path):
    img = rpm_image(kind)
    assert img.db_path == "usr/lib/sysimage/rpm/rpmdb.sqlite"
    root = unpack(img, tmp_path / "u")
    assert os.readlink(root / "var/lib/rpm") == "../../usr/lib/sysimage/rpm"


def test_multilayer_upper_layer_rewrites_the_db_and_whiteouts(rpm_image: MakeImage, tmp_path: Path):
    img = rpm_image("rocky-multilayer")
    root = unpack(img, tmp_path / "u")
    assert not (root / "etc/hostname").exists()  # the upper layer's whiteout
    assert img.installed["zlib"] == "1.2.11-40.el9"
    assert os.readlink(root / "usr/lib64/libz.so.1") == "libz.so.1.2.11"
    index = json.loads((img.layout / "index.json").read_text())
    manifest = json.loads((img.layout / "blobs/sha256" /
                           index["manifests"][0]["digest"].split(":")[1]).read_text())  # fmt: skip
    upper = img.layout / "blobs/sha256" / manifest["layers"][1]["digest"].split(":")[1]
    with tarfile.open(upper) as tar:
        names = tar.getnames()
    assert "etc/.wh.hostname" in names and "var/lib/rpm/rpmdb.sqlite" in names
    assert "usr/lib64/libz.so.1.2.11" in names and "usr/bin/busybox" not in names


def test_centos7_db_is_berkeley_db_hash(rpm_image: MakeImage, tmp_path: Path):
    img = rpm_image("centos7")
    root = unpack(img, tmp_path / "u")
    db = root / "var/lib/rpm/Packages"
    # Berkeley DB hash magic 0x061561 at offset 12 (little-endian, as written here)
    assert db.read_bytes()[12:16] == bytes.fromhex("61150600")
    # the indexes are btrees (magic 0x053162)
    for index in ("Name", "Basenames", "Providename", "Requirename", "Sigmd5", "Installtid"):
        assert (root / "var/lib/rpm" / index).read_bytes()[12:16] == bytes.fromhex("62310500")
    if shutil.which("db5.3_dump"):
        dump = subprocess.run(["db5.3_dump", str(db)], capture_output=True, text=True,
                              check=True).stdout  # fmt: skip
        assert "type=hash" in dump
    assert not (root / "var/lib/rpm/rpmdb.sqlite").exists()


def test_azurelinux_distroless_has_only_the_manifests(rpm_image: MakeImage, tmp_path: Path):
    img = rpm_image("azurelinux")
    root = unpack(img, tmp_path / "u")
    assert not (root / "var/lib/rpm").exists() and not (root / "usr/lib/sysimage/rpm").exists()
    lines = (root / "var/lib/rpmmanifest/container-manifest-2").read_text().splitlines()
    got = {}
    for ln in lines:
        f = ln.split("\t")
        assert len(f) == 10, ln
        epoch = "" if f[5] == "(none)" else f[5]
        assert f[8] == (epoch or "0")  # EPOCHNUM
        assert f[4] == "Microsoft Corporation" and f[9].endswith(".src.rpm")
        got[f[0]] = (f"{epoch}:" if epoch else "") + f[1]
    assert got == img.installed
    assert got["openssl-libs"].startswith("1:")
    one = (root / "var/lib/rpmmanifest/container-manifest-1").read_text().splitlines()
    assert sorted(one) == sorted(
        f"{f.split(chr(9))[0]}-{f.split(chr(9))[1]}.{f.split(chr(9))[7]}" for f in lines
    )
    sample = FORMATS / "rpm-container-manifest/cbl-mariner-2.0-distroless-syft/container-manifest-2"
    if sample.is_file():
        real = sample.read_text().splitlines()[0].split("\t")
        assert len(real) == 10 and real[5] == "(none)" and real[8] == "0"


@pytest.mark.parametrize("kind", KINDS)
def test_trivy_lists_exactly_the_installed_packages(
    kind: str, rpm_image: MakeImage, tmp_path: Path
):
    img = rpm_image(kind)
    found = trivy_packages(img.layout, tmp_path, purl_type="rpm")
    if kind != "azurelinux":  # trivy keeps the gpg-pubkey entry of an rpmdb
        assert found.pop("gpg-pubkey").count("-") == 1
    assert found == img.installed
    doc = json.loads((tmp_path / "cdx.json").read_text())
    os_names = [c["name"] for c in doc["components"] if c.get("type") == "operating-system"]
    assert os_names == [img.family]  # trivy names the family: redhat for ID=rhel
    report = json.loads(img.report.read_text())
    cdx_purls = {c["name"]: c["purl"] for c in doc["components"] if "purl" in c}
    for v in report["Results"][0]["Vulnerabilities"]:  # the report's PURLs are trivy's
        assert v["PkgIdentifier"]["PURL"] == cdx_purls[v["PkgName"]]


@pytest.mark.parametrize("kind", KINDS)
def test_repo_files_point_at_the_fake_url(kind: str, rpm_image: MakeImage, tmp_path: Path):
    img = rpm_image(kind)
    root = unpack(img, tmp_path / "u")
    d = DISTROS[img.kind]
    files = [*root.glob("etc/yum.repos.d/*.repo"), *root.glob("etc/zypp/repos.d/*.repo")]
    if not d.repo_style:
        assert files == []
        return
    (repo,) = files
    text = repo.read_text()
    assert f"baseurl={MIRROR_BASE}/{d.repo_path}/\n" in text and "$basearch" in text
    for line in ("gpgcheck=1", "repo_gpgcheck=1", "enabled=1"):
        assert line + "\n" in text
    key_path = text.split("gpgkey=file://", 1)[1].split("\n", 1)[0]
    assert (root / key_path.lstrip("/")).read_bytes() == img.key_file.read_bytes()
    assert img.repo_url == f"{MIRROR_BASE}/{d.repo_path.replace('$basearch', 'x86_64')}/"


# --- packages and repositories ------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_package_checks_with_rpm_k(kind: str, rpm_image: MakeImage, tmp_path: Path):
    img = rpm_image(kind)
    db = key_db(img, tmp_path)
    rpms = sorted(img.repo_dir.glob("Packages/*/*.rpm"))
    assert len(rpms) == len(primary(img.repo_dir)) >= 12
    proc = rpm("--dbpath", str(db), "-K", *map(str, rpms))
    assert proc.stdout.count(": digests signatures OK\n") == len(rpms)
    payload = DISTROS[img.kind].payload
    compressors = rpm("-qp", "--nosignature", "--qf", "%{PAYLOADCOMPRESSOR}\\n", str(rpms[0]))
    assert compressors.stdout.strip() == {"gz": "gzip", "xz": "xz", "zstd": "zstd"}[payload]


@pytest.mark.parametrize("part", ["header", "payload", "signature"])
def test_tampered_package_fails_rpm_k(part: str, rpm_image: MakeImage, tmp_path: Path):
    img = rpm_image("rocky")
    db = key_db(img, tmp_path)
    pkg = tmp_path / "p.rpm"
    shutil.copyfile(next(img.repo_dir.glob("Packages/o/openssl-libs-*-25.el9.x86_64.rpm")), pkg)
    assert rpm("--dbpath", str(db), "-K", str(pkg)).returncode == 0
    flip_byte(pkg, part)  # type: ignore[arg-type]
    proc = rpm("--dbpath", str(db), "-K", str(pkg), check=False)
    assert proc.returncode == 1 and "NOT OK" in proc.stdout
    if part == "header":  # still a parseable header, with one letter changed
        out = rpm("-qp", "--nodigest", "--nosignature", "--qf", "%{SUMMARY}", str(pkg)).stdout
        assert out != "ocipatch test package" and len(out) == len("ocipatch test package")


def test_stripped_and_foreign_signatures(rpm_image: MakeImage, tmp_path: Path):
    img = rpm_image("rocky")
    db = key_db(img, tmp_path)
    pkg = tmp_path / "p.rpm"
    shutil.copyfile(next(img.repo_dir.glob("Packages/t/tzdata-2024b-*.rpm")), pkg)
    strip_signature(pkg)
    assert rpm("--dbpath", str(db), "-K", str(pkg)).stdout.endswith(": digests OK\n")
    strict = rpm("--dbpath", str(db), "--define", "_pkgverify_level signature", "-K", str(pkg),
                 check=False)  # fmt: skip
    assert strict.returncode == 1
    # a key the image does not trust
    other = GpgKey.generate(tmp_path / "other-gnupg", "RPM-GPG-KEY-other")
    foreign = build_rpm(RpmSpec("x", "1", "1", arch="noarch"), tmp_path / "f", other)
    proc = rpm("--dbpath", str(db), "-K", str(foreign.path), check=False)
    assert proc.returncode == 1 and "SIGNATURES NOT OK" in proc.stdout


@pytest.mark.parametrize("kind", KINDS)
def test_repomd_signature_and_checksums(kind: str, rpm_image: MakeImage, tmp_path: Path):
    img = rpm_image(kind)
    repo = img.repo_dir / "repodata"
    gpgv = ["gpgv", "--keyring", str(img.keyring), str(repo / "repomd.xml.asc")]
    assert subprocess.run([*gpgv, str(repo / "repomd.xml")], capture_output=True).returncode == 0
    ext = {"gz": ".gz", "xz": ".xz", "zstd": ".zst"}[DISTROS[img.kind].compress]
    for kind_, data in repomd(img.repo_dir).items():
        href = str(data.find("r:location", NS).get("href"))  # type: ignore[union-attr]
        blob = (img.repo_dir / href).read_bytes()
        assert href.endswith(ext), href
        assert data.findtext("r:checksum", "", NS) == hashlib.sha256(blob).hexdigest(), kind_
        assert data.findtext("r:size", "", NS) == str(len(blob))
        opened = decompress(img.repo_dir / href)
        assert data.findtext("r:open-checksum", "", NS) == hashlib.sha256(opened).hexdigest()
    for p in primary(img.repo_dir):
        assert p["sha256"] == hashlib.sha256((img.repo_dir / p["href"]).read_bytes()).hexdigest()


def test_primary_lists_the_packages_and_their_relations(rpm_image: MakeImage):
    img = rpm_image("rocky")
    pkgs = primary(img.repo_dir)
    evrs = {(p["name"], p["epoch"], p["ver"], p["rel"], p["arch"]) for p in pkgs}
    for name, evr in img.installed.items():
        epoch, _, vr = evr.rpartition(":")
        ver, rel = vr.rsplit("-", 1)
        assert any(e[:4] == (name, epoch or "0", ver, rel) for e in evrs), name
    by = {(p["name"], p["rel"]): p for p in pkgs}
    ssl2 = by[("openssl-libs", "25.el9")]
    assert ssl2["epoch"] == "1" and "libz.so.1()(64bit)" in ssl2["requires"].split()
    assert "libz.so.1()(64bit)" not in by[("openssl-libs", "24.el9")]["requires"].split()
    assert by[("libcurl", "30.el9")]["obsoletes"] == "libcurl-minimal"
    assert (by[("libxml2", "5.el9")]["epoch"], by[("libxml2", "6.el9")]["epoch"]) == ("0", "1")
    assert by[("tzdata", "1.el9")]["arch"] == "noarch"
    assert any(p["name"] == "zlib" for p in pkgs) and "zlib" not in img.installed


def test_package_headers_carry_what_the_spec_says(rpm_image: MakeImage):
    img = rpm_image("rocky")
    pkgs = img.repo_dir / "Packages"
    qf = "%{NAME}|%{EPOCH}|%{SOURCERPM}|%{VENDOR}|%{BUILDHOST}|%{BUILDTIME}\\n"
    ssl = rpm("-qp", "--nosignature", "--qf", qf, str(next(pkgs.glob("o/openssl-libs-*-24*"))))
    assert ssl.stdout == ("openssl-libs|1|openssl-3.0.7-24.el9.src.rpm|Rocky Enterprise Software"
                          " Foundation|build.ocipatch.invalid|1700000000\n")  # fmt: skip
    libxml = rpm("-qp", "--nosignature", "--qf", "%{EPOCH}", str(next(pkgs.glob("l/libxml2-*5*"))))
    assert libxml.stdout == "(none)"  # absent, not 0
    setup = str(next(pkgs.glob("s/setup-*")))
    assert "/etc/passwd" in rpm("-qpc", "--nosignature", setup).stdout.split()
    modes = rpm("-qp", "--nosignature", "--qf", "[%{FILENAMES} %{FILEMODES:octal} "
                "%{FILEUSERNAME} %{FILEGROUPNAME} %{FILEFLAGS:fflags}\\n]", setup).stdout  # fmt: skip
    assert "/etc/shadow 100000 root root cn\n" in modes
    scripts = rpm("-qp", "--nosignature", "--scripts", str(next(pkgs.glob("o/openssl-libs-*24*"))))
    assert "postinstall program: /sbin/ldconfig" in scripts.stdout


def _dnf(img: RpmImage, tmp: Path, base_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """dnf (Debian's, an independent repo reader) with only the fixture's repository, its
    signature checks on (gpgcheck, repo_gpgcheck) and the fixture's key."""
    reposdir = tmp / "repos.d"
    reposdir.mkdir(exist_ok=True)
    (reposdir / "t.repo").write_text(
        f"[t]\nname=t\nbaseurl={img.repo_url.replace(MIRROR_BASE, base_url)}\nenabled=1\n"
        f"gpgcheck=1\nrepo_gpgcheck=1\ngpgkey={img.key_file.as_uri()}\n"
        "skip_if_unavailable=0\n"  # a bad repository is an error, not a warning
    )
    cmd = ["dnf", "-y", "-q", f"--installroot={tmp / 'root'}", f"--setopt=reposdir={reposdir}",
           f"--setopt=cachedir={tmp / 'cache'}", "--releasever=9", "--forcearch=x86_64", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300)


needs_dnf = pytest.mark.skipif(shutil.which("dnf") is None, reason="dnf not installed")


@needs_dnf
def test_dnf_reads_the_served_repository(rpm_image: MakeImage, tmp_path: Path):
    img = rpm_image("rocky")
    with serve(img.repo_root) as server:
        assert _dnf(img, tmp_path, server.url, "makecache").returncode == 0
        listing = _dnf(img, tmp_path, server.url, "repoquery", "--qf", "%{name}-%{evr}")
        obsoleters = _dnf(img, tmp_path, server.url, "repoquery", "--qf", "%{name}",
                          "--whatobsoletes", "libcurl-minimal")  # fmt: skip
    names = listing.stdout.split()
    assert "openssl-libs-1:3.0.7-25.el9" in names and "libxml2-1:2.9.13-6.el9" in names
    assert "zlib-1.2.11-40.el9" in names
    assert obsoleters.stdout.split() == ["libcurl"]


@needs_dnf
def test_dnf_rejects_a_tampered_repomd(rpm_image: MakeImage, tmp_path: Path):
    img = rpm_image("rocky")
    root = tmp_path / "tree"
    shutil.copytree(img.repo_root, root)
    rel = img.repo_dir.relative_to(img.repo_root)
    flip_file_byte(root / rel / "repodata/repomd.xml", 60)
    with serve(root) as server:
        proc = _dnf(img, tmp_path, server.url, "makecache")
    assert proc.returncode != 0  # repomd.xml.asc no longer verifies
    assert "GPG signature verification error" in proc.stderr


def test_tampered_repository_metadata_is_detectable(rpm_image: MakeImage, tmp_path: Path):
    img = rpm_image("fedora")  # zstd primary
    repo = tmp_path / "r"
    shutil.copytree(img.repo_dir, repo)
    gpgv = ["gpgv", "--keyring", str(img.keyring), str(repo / "repodata/repomd.xml.asc"),
            str(repo / "repodata/repomd.xml")]  # fmt: skip
    rewrite_primary(repo, "<name>tzdata</name>", "<name>tzdatb</name>")
    href = str(repomd(repo)["primary"].find("r:location", NS).get("href"))  # type: ignore[union-attr]
    assert href.endswith(".zst")
    assert "tzdatb" in decompress(repo / href).decode()  # well-formed, content changed
    want = repomd(repo)["primary"].findtext("r:open-checksum", "", NS)
    assert hashlib.sha256(decompress(repo / href)).hexdigest() != want
    assert subprocess.run(gpgv, capture_output=True).returncode == 0  # repomd untouched
    flip_file_byte(repo / "repodata/repomd.xml", 40)
    assert subprocess.run(gpgv, capture_output=True).returncode != 0


# --- the tools themselves -----------------------------------------------------------------------


def test_same_spec_gives_the_same_unsigned_bytes(tmp_path: Path):
    spec = RpmSpec("det", "1.0", "1", epoch=2, files=[
        RpmFile("/usr/bin/det", "#!/bin/sh\n", mode=0o755),
        RpmFile("/etc/det.conf", "a=1\n", config="noreplace", group="daemon", mode=0o640),
        RpmFile("/usr/share/det", kind="dir"),
        RpmFile("/usr/bin/det2", kind="symlink", target="det"),
    ], requires=["/bin/sh"], provides=["libdet.so.1()(64bit)"], scripts={"post": "true"},
        source="detsrc")  # fmt: skip
    for payload in ("gz", "xz", "zstd"):
        a = build_rpm(spec, tmp_path / f"a-{payload}", None, payload=payload)  # type: ignore[arg-type]
        b = build_rpm(spec, tmp_path / f"b-{payload}", None, payload=payload)  # type: ignore[arg-type]
        assert a.path.read_bytes() == b.path.read_bytes(), payload
    out = rpm("-qp", "--qf", "%{SOURCERPM} %{EPOCH}", str(a.path)).stdout
    assert out == "detsrc-1.0-1.src.rpm 2"


def test_small_repo_with_each_metadata_compression(tmp_path: Path):
    key = GpgKey.generate(tmp_path / "gnupg")
    spec = RpmSpec("one", "1", "1", arch="noarch", files=[RpmFile("/etc/one", "1\n")])
    for compress in ("gz", "xz", "zstd"):
        repo = build_repo(tmp_path / compress, [spec], key, compress=compress)  # type: ignore[arg-type]
        assert [p["name"] for p in primary(repo.root)] == ["one"]
        assert (repo.root / "RPM-GPG-KEY-test").read_bytes().startswith(b"-----BEGIN PGP")
        assert (repo.root / "repodata/repomd.xml.asc").read_text().startswith("-----BEGIN PGP")


def test_served_repository_answers_on_loopback(rpm_repo_server: RepoServer, rpm_image: MakeImage):
    img = rpm_image("sles")
    rel = img.repo_dir.relative_to(img.repo_root) / "repodata/repomd.xml"
    assert rpm_repo_server.url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(f"{rpm_repo_server.url}/{rel}", timeout=10) as r:
        assert r.read() == (img.repo_root / rel).read_bytes()
    with urllib.request.urlopen((img.repo_root / rel).as_uri(), timeout=10) as r:
        assert r.read().startswith(b"<?xml")
    assert img.file_mirror_arg() == f"{MIRROR_BASE}={img.repo_root.resolve().as_uri()}"


# --- the Trivy-format reports -------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_report_has_trivys_shape(kind: str, rpm_image: MakeImage):
    img = rpm_image(kind)
    report = json.loads(img.report.read_text())
    d = DISTROS[img.kind]
    assert report["Metadata"]["OS"]["Family"] == d.family
    (result,) = report["Results"]
    assert (result["Class"], result["Type"]) == ("os-pkgs", d.family)
    in_repo = {(p["name"], (f"{p['epoch']}:" if p["epoch"] != "0" else "") + f"{p['ver']}-{p['rel']}")
               for p in primary(img.repo_dir)}  # fmt: skip
    assert {v["PkgName"] for v in result["Vulnerabilities"]} == {
        "openssl-libs", "ca-certificates", "tzdata", "libxml2", "libcurl-minimal",
    }  # fmt: skip
    for v in result["Vulnerabilities"]:
        assert img.installed[v["PkgName"]] == v["InstalledVersion"]
        if v["PkgName"] == "libcurl-minimal":  # fixed by libcurl, which obsoletes it
            assert ("libcurl", v["FixedVersion"]) in in_repo
        else:
            assert (v["PkgName"], v["FixedVersion"]) in in_repo
        assert v["PkgIdentifier"]["PURL"].startswith("pkg:rpm/")
    fixed_ssl = next(v for v in result["Vulnerabilities"] if v["PkgName"] == "openssl-libs")
    assert fixed_ssl["FixedVersion"].startswith("1:") and "&epoch=1" in fixed_ssl[
        "PkgIdentifier"]["PURL"]  # fmt: skip
    real = SCANNER_REPORTS / "trivy_rockylinux-8.json.golden"
    if real.is_file():
        doc = json.loads(real.read_text())
        real_keys = set(doc["Results"][0]["Vulnerabilities"][0]) | {"SeveritySource"}
        assert set(result["Vulnerabilities"][0]) <= real_keys
        assert set(report) <= set(doc) | {"CreatedAt"}


def test_cli_writes_a_layout_and_report(tmp_path: Path):
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [str(root / ".venv/bin/python"), "-m", "tools.build_rpm_image", "ubi-micro",
         f"{tmp_path / 'u'}:9.4", "--report", str(tmp_path / "r.json")],
        cwd=root, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert json.loads(out)["repo_url"] == "https://rpm.invalid/ubi9/9/x86_64/baseos/os/"
    assert json.loads(skopeo("inspect", f"oci:{tmp_path / 'u'}:9.4"))["Os"] == "linux"
    assert json.loads((tmp_path / "r.json").read_text())["Results"][0]["Type"] == "redhat"
