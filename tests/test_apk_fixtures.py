"""The apk fixtures (tools/apkrepo.py, tools/build_apk_image.py) checked by independent readers:
skopeo, umoci, trivy, openssl, GNU tar, and the real Alpine/Wolfi samples in ../shared/formats.

The checks here do not use tools.apkrepo's own readers: streams are split with zlib, tars read
with tarfile/GNU tar, signatures verified by `openssl dgst`, checksums recomputed from files.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.plugins.images import skopeo, trivy_packages, umoci_unpack
from tools.apkrepo import (
    ApkFile,
    ApkKey,
    ApkSpec,
    build_apk,
    build_repo,
    flip_byte,
    resign,
    serve,
    strip_signature,
)
from tools.aptrepo import RepoServer
from tools.build_apk_image import KINDS, ApkImage, Busybox, build_all, build_repos

FORMATS = Path("/work/shared/formats")
SCANNER_REPORTS = Path("/work/shared/scanner-reports")
FAMILY = {"static": "chainguard", "static-arm64": "chainguard", "wolfi": "wolfi"}
MakeImage = Callable[..., ApkImage]


# --- independent readers ------------------------------------------------------------------------


def gzip_streams(data: bytes) -> list[bytes]:
    """The concatenated gzip streams of a file, each still compressed."""
    out, off = [], 0
    while off < len(data):
        d = zlib.decompressobj(31)
        d.decompress(data[off:])
        assert d.eof, "truncated gzip stream"
        end = len(data) - len(d.unused_data)
        out.append(data[off:end])
        off = end
    return out


def tar_members(stream: bytes) -> list[tarfile.TarInfo]:
    raw = gzip.decompress(stream) + b"\0" * 1024  # cut tars have no end blocks
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        return list(tar)


def tar_files(stream: bytes) -> dict[str, bytes]:
    raw = gzip.decompress(stream) + b"\0" * 1024
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        return {m.name: (tar.extractfile(m) or io.BytesIO()).read() for m in tar if m.isfile()}


def q1(data: bytes) -> str:
    return "Q1" + base64.b64encode(hashlib.sha1(data).digest()).decode()


def parse_db(text: str) -> list[list[tuple[str, str]]]:
    """An installed DB / APKINDEX as blocks of (letter, value) in file order."""
    return [
        [(ln[0], ln[2:]) for ln in block.splitlines()]
        for block in text.split("\n\n")
        if block.strip()
    ]


def field(block: list[tuple[str, str]], letter: str) -> str:
    return next(v for k, v in block if k == letter)


def apkindex(path: Path) -> list[list[tuple[str, str]]]:
    files = tar_files(gzip_streams(path.read_bytes())[-1])
    return parse_db(files["APKINDEX"].decode())


def openssl_verify(pubkey: Path, algo: str, signature: bytes, payload: bytes, tmp: Path) -> bool:
    (tmp / "sig").write_bytes(signature)
    (tmp / "payload").write_bytes(payload)
    proc = subprocess.run(
        ["openssl", "dgst", f"-{algo}", "-verify", str(pubkey), "-signature",
         str(tmp / "sig"), str(tmp / "payload")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return proc.returncode == 0 and "Verified OK" in proc.stdout


def signatures_of(data: bytes) -> list[tuple[str, str, bytes]]:
    """(algo for openssl, key file name, signature) of each member of the first stream."""
    first = gzip_streams(data)[0]
    out = []
    for name, sig in tar_files(first).items():
        m = re.fullmatch(r"\.SIGN\.(RSA|RSA256)\.(.+\.rsa\.pub)", name)
        assert m, name
        out.append(("sha1" if m.group(1) == "RSA" else "sha256", m.group(2), sig))
    return out


def signature_of(data: bytes) -> tuple[str, str, bytes]:
    (only,) = signatures_of(data)
    return only


def unpack(img: ApkImage, dest: Path) -> Path:
    return umoci_unpack(img.layout, img.tag, dest)


# --- layouts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_layout_opens_with_skopeo_and_umoci(kind: str, apk_image: MakeImage, tmp_path: Path):
    img = apk_image(kind, "t1")
    info = json.loads(skopeo("inspect", f"oci:{img.layout}:t1"))
    assert info["Architecture"] == ("arm64" if kind == "static-arm64" else "amd64")
    assert info["Os"] == "linux"
    assert len(info["Layers"]) == (2 if kind == "alpine-multilayer" else 1)
    root = unpack(img, tmp_path / "u")
    db = (root / img.db_path).read_text()
    assert {field(b, "P") for b in parse_db(db)} == set(img.installed)
    keys = list((root / "etc/apk/keys").iterdir())
    assert [k.name for k in keys] and all(k.name.endswith(".rsa.pub") for k in keys)
    assert (root / "etc/apk/repositories").read_text().splitlines()[0] == img.repo_url
    assert img.repo_url.startswith("https://apk.invalid/")


def test_alpine_image_runs_busybox_and_has_the_apk_files(apk_image: MakeImage, tmp_path: Path):
    root = unpack(apk_image("alpine"), tmp_path / "u")
    assert "ID=alpine" in (root / "etc/os-release").read_text()
    assert os.readlink(root / "bin/sh") == "/bin/busybox"
    out = subprocess.run([str(root / "bin/busybox"), "echo", "ok"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    assert out == "ok\n"
    assert os.readlink(root / "bin/ls") == "/bin/busybox"  # applet link, as --install -s makes
    assert (root / "etc/apk/world").read_text().splitlines() == sorted(
        (root / "etc/apk/world").read_text().splitlines()
    )
    assert (root / "lib/apk/db/triggers").read_text().split()[1:] == [
        "/bin", "/usr/bin", "/sbin", "/usr/sbin", "/lib/modules/*",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "os_id"),
    [("static", "chainguard"), ("static-arm64", "chainguard"), ("alpine-static", "alpine")],
)
def test_static_image_has_no_shell_and_no_apk(
    kind: str, os_id: str, apk_image: MakeImage, tmp_path: Path
):
    root = unpack(apk_image(kind), tmp_path / "u")
    assert f"ID={os_id}\n" in (root / "etc/os-release").read_text()
    for absent in ("bin/sh", "sbin/apk", "usr/bin/apk", "bin/busybox", "usr/bin/busybox"):
        assert not (root / absent).exists() and not (root / absent).is_symlink(), absent
    assert (root / "lib/apk/db/installed").is_file()


def test_wolfi_image_is_usr_merged_with_an_apko_db(apk_image: MakeImage, tmp_path: Path):
    root = unpack(apk_image("wolfi"), tmp_path / "u")
    assert os.readlink(root / "lib") == "usr/lib" and os.readlink(root / "bin") == "usr/bin"
    blocks = parse_db((root / "usr/lib/apk/db/installed").read_text())
    for b in blocks:
        assert b[0][0] == "P"  # apko writes P first
        assert ("i", "[]") in b and ("U", "") in b and any(k == "k" for k, _ in b)
    assert [k.name for k in (root / "etc/apk/keys").iterdir()] == ["wolfi-signing.rsa.pub"]
    # the key file belongs to a package (wolfi-keys), as in Wolfi
    owners = [field(b, "P") for b in blocks if ("R", "wolfi-signing.rsa.pub") in b]
    assert owners == ["wolfi-keys"]


def test_pinned_image_has_a_tagged_repository_and_a_pinned_world(
    apk_image: MakeImage, tmp_path: Path
):
    img = apk_image("alpine-pinned")
    root = unpack(img, tmp_path / "u")
    assert (root / "etc/apk/repositories").read_text().splitlines() == [
        "https://apk.invalid/alpine/v3.20/main",
        "@edge https://apk.invalid/alpine/edge/main",
    ]
    assert "ca-certificates-bundle@edge" in (root / "etc/apk/world").read_text().split()
    # the pinned package's fix is edge's; the others come from main, though edge is newer
    assert img.fixed["ca-certificates-bundle"] == "20250101-r0"
    assert img.fixed["libssl3"] == "3.3.2-r1" and img.fixed["libcrypto3"] == "3.3.2-r1"


def test_multilayer_image_whiteout_and_upper_db(apk_image: MakeImage, tmp_path: Path):
    img = apk_image("alpine-multilayer")
    root = unpack(img, tmp_path / "u")
    assert not (root / "etc/motd").exists()  # deleted by the upper layer's whiteout
    assert "zlib" in img.installed
    assert os.readlink(root / "lib/libz.so.1") == "libz.so.1.3.1"
    index = json.loads((img.layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((img.layout / "blobs/sha256" / manifest_digest).read_text())
    upper = img.layout / "blobs/sha256" / manifest["layers"][1]["digest"].split(":")[1]
    with tarfile.open(upper) as tar:
        names = tar.getnames()
    assert "etc/.wh.motd" in names and "lib/apk/db/installed" in names


# --- trivy --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_trivy_lists_exactly_the_installed_db(kind: str, apk_image: MakeImage, tmp_path: Path):
    img = apk_image(kind)
    assert trivy_packages(img.layout, tmp_path, purl_type="apk") == img.installed
    doc = json.loads((tmp_path / "cdx.json").read_text())
    os_names = [c["name"] for c in doc["components"] if c.get("type") == "operating-system"]
    family = FAMILY.get(kind, "alpine")
    assert os_names == [family]


@pytest.mark.parametrize("kind", KINDS)
def test_installed_db_records_the_files_on_disk(kind: str, apk_image: MakeImage, tmp_path: Path):
    img = apk_image(kind)
    root = unpack(img, tmp_path / "u")
    for block in parse_db((root / img.db_path).read_text()):
        assert field(block, "C").startswith("Q1")
        directory = ""
        for i, (k, v) in enumerate(block):
            if k == "F":
                directory = v
                assert (root / v).is_dir(), v
            elif k == "R":
                path = root / directory / v
                content = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
                z = next(val for kk, val in block[i + 1 :] if kk == "Z")
                assert z == q1(content), f"{kind}: {directory}/{v}"


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_busybox_scripts_run_with_the_images_own_shell(apk_image: MakeImage, tmp_path: Path):
    """The trigger re-creates a missing applet link; post-upgrade logs its arguments."""
    root = unpack(apk_image("alpine"), tmp_path / "u")
    with tarfile.open(root / "lib/apk/db/scripts.tar") as tar:
        for m in tar:
            if m.name.startswith("busybox-1.36.1-r28.") and m.name.endswith(("trigger", "upgrade")):
                action = m.name.rsplit(".", 1)[1]
                (root / "tmp" / action).write_bytes((tar.extractfile(m) or io.BytesIO()).read())
    (root / "bin/ls").unlink()
    chroot = ["chroot", str(root), "/bin/sh"]
    subprocess.run([*chroot, "/tmp/trigger", "/bin", "/usr/bin"], check=True, timeout=60)
    assert os.readlink(root / "bin/ls") == "/bin/busybox"
    subprocess.run([*chroot, "/tmp/post-upgrade", "1.36.1-r29", "1.36.1-r28"], check=True,
                   timeout=60)  # fmt: skip
    assert (root / "var/log/apk-scripts.log").read_text().splitlines() == [
        "busybox trigger /bin /usr/bin", "busybox post-upgrade 1.36.1-r29 1.36.1-r28",
    ]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_db_entries_helper_matches_the_image_and_covers_the_fixes(
    kind: str, apk_image: MakeImage, tmp_path: Path
):
    img = apk_image(kind)
    text = (unpack(img, tmp_path / "u") / img.db_path).read_text()
    assert text == "".join(img.db_entries[f"{n}-{v}"] + "\n" for n, v in img.installed.items())
    for name, version in img.fixed.items():
        entry = parse_db(img.db_entries[f"{name}-{version}"])[0]
        assert (field(entry, "P"), field(entry, "V")) == (name, version)


def test_alpine_db_field_order_is_apk_tools(apk_image: MakeImage, tmp_path: Path):
    root = unpack(apk_image("alpine"), tmp_path / "u")
    blocks = parse_db((root / "lib/apk/db/installed").read_text())
    names = [field(b, "P") for b in blocks]
    assert names == sorted(names)  # apk-tools 2.14 writes the DB sorted by name
    order = "CPVASITULomtckDpirq"
    for b in blocks:
        head = [k for k, _ in b if k not in "FMRaZ"]
        assert head[0] == "C"
        assert head == sorted(head, key=order.index)
    shadow = next(b for b in blocks if field(b, "P") == "alpine-baselayout-data")
    assert ("a", "0:42:640") in shadow
    tmp_dir = next(b for b in blocks if field(b, "P") == "alpine-baselayout")
    assert ("M", "0:0:1777") in tmp_dir


@pytest.mark.skipif(not FORMATS.is_dir(), reason="../shared/formats is not here")
def test_db_letters_are_those_of_the_real_samples(apk_image: MakeImage, tmp_path: Path):
    real: set[str] = set()
    for f in (FORMATS / "apk-installed").glob("*/installed"):
        real |= {k for b in parse_db(f.read_text(errors="replace")) for k, _ in b}
    for kind in ("alpine", "wolfi"):
        img = apk_image(kind)
        root = unpack(img, tmp_path / kind)
        ours = {k for b in parse_db((root / img.db_path).read_text()) for k, _ in b}
        assert ours <= real, ours - real


def test_scripts_tar_names_the_installed_checksums(apk_image: MakeImage, tmp_path: Path):
    root = unpack(apk_image("alpine"), tmp_path / "u")
    sums = {
        f"{field(b, 'P')}-{field(b, 'V')}": field(b, "C")
        for b in parse_db((root / "lib/apk/db/installed").read_text())
    }
    listing = subprocess.run(["tar", "tf", str(root / "lib/apk/db/scripts.tar")],
                             capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert "busybox-1.36.1-r28." + sums["busybox-1.36.1-r28"] + ".post-upgrade" in listing
    for name in listing:
        m = re.fullmatch(r"(.+-[^-]+-r\d+)\.(Q1[A-Za-z0-9+/=]{28})\.([a-z-]+)", name)
        assert m and sums[m.group(1)] == m.group(2), name
    trig = (root / "lib/apk/db/triggers").read_text().split()
    assert trig[0] == sums["busybox-1.36.1-r28"]


# --- repository ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("repo", "arch", "algo", "signers"),
    [
        ("alpine/v3.20/main", "x86_64", "sha1", 1),
        ("alpine/edge/main", "x86_64", "sha1", 1),
        ("wolfi/os", "x86_64", "sha256", 2),  # like Wolfi: one signature by a key the image lacks
        ("wolfi/os", "aarch64", "sha256", 2),
    ],
)
def test_index_and_packages_verify_with_openssl(
    repo: str, arch: str, algo: str, signers: int, apk_repo_server: RepoServer, tmp_path: Path
):
    arch_dir = apk_repo_server.root / repo / arch
    keys = apk_repo_server.root / "keys"
    data = (arch_dir / "APKINDEX.tar.gz").read_bytes()
    sigs = signatures_of(data)
    assert len(sigs) == signers
    index_stream = gzip_streams(data)[1]
    for got_algo, key_name, sig in sigs:
        assert got_algo == algo
        assert openssl_verify(keys / key_name, algo, sig, index_stream, tmp_path)
    assert list(tar_files(index_stream)) == ["DESCRIPTION", "APKINDEX"]
    for block in apkindex(arch_dir / "APKINDEX.tar.gz"):
        apk = arch_dir / f"{field(block, 'P')}-{field(block, 'V')}.apk"
        blob = apk.read_bytes()
        _sig_stream, control, data_stream = gzip_streams(blob)
        assert field(block, "C") == q1(control)
        assert int(field(block, "S")) == len(blob)
        p_algo, p_key, p_sig = signature_of(blob)
        assert openssl_verify(keys / p_key, p_algo, p_sig, control, tmp_path)
        pkginfo = tar_files(control)[".PKGINFO"].decode()
        assert f"datahash = {hashlib.sha256(data_stream).hexdigest()}\n" in pkginfo
        assert f"pkgname = {field(block, 'P')}\n" in pkginfo
        assert field(block, "A") == arch and f"arch = {arch}\n" in pkginfo


def test_data_tar_owner_names_match_the_ids(apk_repo_server: RepoServer):
    """apk resolves owners by name through the image's passwd/group: names must match ids."""
    apk = apk_repo_server.root / "alpine/v3.20/main/x86_64/alpine-baselayout-data-3.6.5-r0.apk"
    data = gzip.decompress(gzip_streams(apk.read_bytes())[2])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        shadow = tar.getmember("etc/shadow")
        assert (shadow.uid, shadow.gid, shadow.uname, shadow.gname) == (0, 42, "root", "shadow")
        assert shadow.mode == 0o640


def test_index_carries_provides_and_new_dependency(apk_repo_server: RepoServer):
    blocks = apkindex(apk_repo_server.root / "alpine/v3.20/main/x86_64/APKINDEX.tar.gz")
    by = {(field(b, "P"), field(b, "V")): dict(b) for b in blocks}
    assert by[("libcrypto3", "3.3.2-r0")]["p"] == "so:libcrypto.so.3=3"
    assert "so:libz.so.1" not in by[("libcrypto3", "3.3.2-r0")]["D"]
    assert "so:libz.so.1" in by[("libcrypto3", "3.3.2-r1")]["D"].split()
    assert by[("zlib", "1.3.1-r1")]["p"] == "so:libz.so.1=1.3.1"
    assert by[("ssl_client", "1.36.1-r29")]["i"] == "busybox=1.36.1-r29 libssl3"
    assert "cmd:busybox=1.36.1-r29" in by[("busybox", "1.36.1-r29")]["p"]


def test_served_repository_answers_on_loopback(apk_repo_server: RepoServer):
    rel = "alpine/v3.20/main/x86_64/APKINDEX.tar.gz"
    assert apk_repo_server.url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(f"{apk_repo_server.url}/{rel}", timeout=10) as r:
        assert r.read() == (apk_repo_server.root / rel).read_bytes()
    with urllib.request.urlopen((apk_repo_server.root / rel).as_uri(), timeout=10) as r:
        assert r.read()[:2] == b"\x1f\x8b"


def test_serve_context_manager_uses_a_free_loopback_port(tmp_path: Path):
    (tmp_path / "x").write_bytes(b"hello")
    with serve(tmp_path) as a, serve(tmp_path) as b:
        assert a.url != b.url
        with urllib.request.urlopen(f"{a.url}/x", timeout=10) as r:
            assert r.read() == b"hello"


def test_tamper_helpers_break_what_they_claim(apk_repo_server: RepoServer, tmp_path: Path):
    arch_dir = apk_repo_server.root / "alpine/v3.20/main/x86_64"
    keys = apk_repo_server.root / "keys"
    block = next(b for b in apkindex(arch_dir / "APKINDEX.tar.gz") if field(b, "P") == "libssl3")
    apk = arch_dir / f"libssl3-{field(block, 'V')}.apk"
    original = flip_byte(apk, "data")
    _s, control, data_stream = gzip_streams(apk.read_bytes())
    assert hashlib.sha256(data_stream).hexdigest() not in tar_files(control)[".PKGINFO"].decode()
    apk.write_bytes(original)
    flip_byte(apk, "control")
    algo, key, sig = signature_of(apk.read_bytes())
    control = gzip_streams(apk.read_bytes())[1]
    assert not openssl_verify(keys / key, algo, sig, control, tmp_path)
    assert q1(control) != field(block, "C")
    apk.write_bytes(original)
    flip_byte(apk, "data", raw=True)
    with pytest.raises((zlib.error, AssertionError)):  # bad data check or truncated
        gzip_streams(apk.read_bytes())
    apk.write_bytes(original)
    strip_signature(apk)
    assert len(gzip_streams(apk.read_bytes())) == 2
    assert tar_members(gzip_streams(apk.read_bytes())[0])[0].name == ".PKGINFO"
    index = arch_dir / "APKINDEX.tar.gz"
    flip_byte(index, "index")
    algo, key, sig = signature_of(index.read_bytes())
    assert not openssl_verify(keys / key, algo, sig, gzip_streams(index.read_bytes())[1], tmp_path)
    other = ApkKey.from_seed("untrusted", "untrusted")
    resign(index, [other])
    assert signature_of(index.read_bytes())[1] == "untrusted.rsa.pub"


def test_same_spec_gives_the_same_bytes(tmp_path: Path):
    bb = Busybox(b"#!/bin/sh\n", ["bin/ls", "usr/bin/awk"])
    a = build_repos(tmp_path / "a", bb)
    b = build_repos(tmp_path / "b", bb)
    files_a = sorted(p.relative_to(a.root) for p in a.root.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b.root) for p in b.root.rglob("*") if p.is_file())
    for rel in files_a:
        assert (a.root / rel).read_bytes() == (b.root / rel).read_bytes(), rel


def test_whole_fixture_build_is_reproducible(tmp_path: Path):
    bb = Busybox(b"\x7fELF not really\n", ["bin/ls", "usr/bin/awk", "sbin/ifconfig"])
    build_all(tmp_path / "a", bb)
    build_all(tmp_path / "b", bb)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*"))
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*"))
    for rel in files:
        a, b = tmp_path / "a" / rel, tmp_path / "b" / rel
        if a.is_file():
            assert a.read_bytes() == b.read_bytes(), rel


def test_several_index_signatures_and_unsigned_packages(tmp_path: Path):
    k1, k2 = ApkKey.from_seed("k1", 1), ApkKey.from_seed("k2", 2)
    spec = ApkSpec("hi", "1.0-r0", files=[ApkFile("/usr/bin/hi", "#!/bin/sh\n", mode=0o755)])
    repo = build_repo(tmp_path, "r", [spec], [k1, k2], algo="RSA256")
    first = gzip_streams(repo.index.read_bytes())[0]
    assert [m.name for m in tar_members(first)] == [
        ".SIGN.RSA256.k1.rsa.pub", ".SIGN.RSA256.k2.rsa.pub",
    ]  # fmt: skip
    unsigned = build_apk(spec, tmp_path / "u", None)
    assert len(gzip_streams(unsigned.path.read_bytes())) == 2


# --- against the real formats -------------------------------------------------------------------


def _apk_shape(path: Path) -> dict[str, object]:
    streams = gzip_streams(path.read_bytes())
    sig = [m.name for m in tar_members(streams[0])]
    control = tar_members(streams[1])
    data = gzip.decompress(streams[2])
    raw_sig, raw_control = gzip.decompress(streams[0]), gzip.decompress(streams[1])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        files = [m for m in tar if m.isfile()]
        sums = {m.name: m.pax_headers.get("APK-TOOLS.checksum.SHA1") for m in files}
        contents = {m.name: (tar.extractfile(m) or io.BytesIO()).read() for m in files}
    pkginfo = tar_files(streams[1])[".PKGINFO"].decode()
    keys = {ln.split(" = ")[0] for ln in pkginfo.splitlines() if " = " in ln}
    return {
        "streams": len(streams),
        "sig_ok": len(sig) == 1 and re.fullmatch(r"\.SIGN\.RSA(256)?\..+\.rsa\.pub", sig[0]),
        "control_first": control[0].name,
        "cut": raw_sig[-1024:] != b"\0" * 1024 and raw_control[-1024:] != b"\0" * 1024,
        "sums_ok": all(sums[n] == hashlib.sha1(c).hexdigest() for n, c in contents.items()),
        "datahash_ok": f"datahash = {hashlib.sha256(streams[2]).hexdigest()}" in pkginfo,
        "keys": keys,
    }


@pytest.mark.skipif(not FORMATS.is_dir(), reason="../shared/formats is not here")
def test_our_apk_has_the_structure_of_real_packages(apk_repo_server: RepoServer):
    ours = _apk_shape(apk_repo_server.root / "alpine/v3.20/main/x86_64/libcrypto3-3.3.2-r0.apk")
    real_keys: set[str] = set()
    for sample in sorted((FORMATS / "apk-package").glob("*/*.apk")):
        real = _apk_shape(sample)
        real_keys |= real["keys"]  # type: ignore[arg-type]
        for k in ("streams", "control_first", "cut", "sums_ok", "datahash_ok"):
            assert ours[k] == real[k], (k, sample)
        assert ours["sig_ok"] and real["sig_ok"]
    assert ours["keys"] <= real_keys | {"provider_priority", "replaces", "install_if", "triggers"}
    for required in ("pkgname", "pkgver", "arch", "size", "origin", "builddate", "datahash"):
        assert required in ours["keys"]  # type: ignore[operator]


@pytest.mark.skipif(not FORMATS.is_dir(), reason="../shared/formats is not here")
def test_the_checksum_notion_holds_on_the_real_melange_repository():
    """C: = Q1 + base64(SHA-1 of the control stream), S: = file size: on real files."""
    apk = FORMATS / "apk-package/melange-local-x86_64/pretend-baselayout-1.0.0-r0.apk"
    index = apkindex(FORMATS / "apkindex/melange-local-x86_64/APKINDEX.tar.gz")
    block = next(b for b in index if field(b, "P") == "pretend-baselayout")
    assert field(block, "C") == q1(gzip_streams(apk.read_bytes())[1])
    assert int(field(block, "S")) == apk.stat().st_size


@pytest.mark.skipif(not FORMATS.is_dir(), reason="../shared/formats is not here")
def test_our_apkindex_has_the_structure_of_real_ones(apk_repo_server: RepoServer):
    letters: set[str] = set()
    for sample in (FORMATS / "apkindex").glob("*/APKINDEX.tar.gz"):
        streams = gzip_streams(sample.read_bytes())
        assert all(m.name.startswith(".SIGN.RSA") for m in tar_members(streams[0]))
        assert set(tar_files(streams[1])) == {"DESCRIPTION", "APKINDEX"}
        letters |= {k for b in apkindex(sample) for k, _ in b}
    for repo in ("alpine/v3.20/main", "wolfi/os"):
        ours = {k for b in apkindex(apk_repo_server.root / repo / "x86_64/APKINDEX.tar.gz")
                for k, _ in b}  # fmt: skip
        assert ours <= letters, ours - letters


# --- the Trivy-format reports -------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_report_has_trivys_shape(kind: str, apk_image: MakeImage, apk_repo_server: RepoServer):
    img = apk_image(kind)
    report = json.loads(img.report.read_text())
    family = FAMILY.get(kind, "alpine")
    assert report["Metadata"]["OS"]["Family"] == family
    (result,) = report["Results"]
    assert (result["Class"], result["Type"]) == ("os-pkgs", family)
    repo = "wolfi/os" if family != "alpine" else "alpine/v3.20/main"
    arch = "aarch64" if kind == "static-arm64" else "x86_64"
    index = {(field(b, "P"), field(b, "V"))
             for b in apkindex(apk_repo_server.root / repo / arch / "APKINDEX.tar.gz")}  # fmt: skip
    if kind == "alpine-pinned":
        edge = apk_repo_server.root / "alpine/edge/main/x86_64/APKINDEX.tar.gz"
        index |= {(field(b, "P"), field(b, "V")) for b in apkindex(edge)}
    assert result["Vulnerabilities"], "every fixture has something to fix"
    for v in result["Vulnerabilities"]:
        assert img.installed[v["PkgName"]] == v["InstalledVersion"]
        assert (v["PkgName"], v["FixedVersion"]) in index
        assert v["PkgIdentifier"]["PURL"].startswith(f"pkg:apk/{family}/{v['PkgName']}@")
        assert f"arch={arch}&" in v["PkgIdentifier"]["PURL"]
    if (SCANNER_REPORTS / "copa_alpine-report.json").is_file():
        real = json.loads((SCANNER_REPORTS / "copa_alpine-report.json").read_text())
        real_vuln_keys = set(real["Results"][0]["Vulnerabilities"][0]) | {"SeveritySource"}
        assert set(result["Vulnerabilities"][0]) <= real_vuln_keys
        assert set(report) <= set(real)


def test_cli_writes_a_layout_and_report(tmp_path: Path):
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo missing")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [str(root / ".venv/bin/python"), "-m", "tools.build_apk_image", "wolfi",
         f"{tmp_path / 'w'}:edge", "--report", str(tmp_path / "r.json")],
        cwd=root, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert json.loads(out)["repo_url"] == "https://apk.invalid/wolfi/os"
    assert json.loads(skopeo("inspect", f"oci:{tmp_path / 'w'}:edge"))["Os"] == "linux"
    assert json.loads((tmp_path / "r.json").read_text())["Results"][0]["Type"] == "wolfi"
