"""Issue #9, "nothing lost": `patch -t` naming the source, in any spelling, is refused (exit 2,
one line, before any work) unless --overwrite; with --overwrite the source is replaced only
once the new image is complete, keeps its file mode, and the output names the old digest.

Refusals need no patchable image (the check comes first); the --overwrite cases patch a tiny
synthetic Debian-like image with `--sandbox none` from a signed loopback apt repository (about
two seconds each). Registry state is read back with skopeo, files byte for byte.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import synth
from tests.archive import trivy_report
from tests.plugins.registry import skopeo_copy, skopeo_raw
from tests.test_image import debianish_layers
from tools.aptrepo import DebFile, DebSpec, host_arch

# Anything that escapes the refusal and tries the network hits a closed loopback port.
NO_NETWORK = {
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "",
    "no_proxy": "",
}


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "ocipatch", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1", **(env or {})},
        cwd=cwd,
        timeout=300,
    )


def assert_refused(r: Any, needle: str = "--overwrite") -> None:
    """Exit 2 and nothing on stderr but the one error line: no step of the run started."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ocipatch: error: "), r.stderr
    assert needle in lines[0], lines[0]
    assert r.stdout == ""


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tree(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under root (or root itself): content digest and mode."""
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {
        str(p.relative_to(root) if p != root else p.name): (
            sha(p.read_bytes()),
            stat.S_IMODE(p.stat().st_mode),
        )
        for p in paths
    }


def temp_files(directory: Path) -> list[Path]:
    """What a write leaves beside its target while it runs (a file or an archive's layout)."""
    return [*directory.rglob(".tmp-*"), *directory.rglob(".ocipatch-*")]


def new_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o644 & ~mask


# ------------------------------------------------------------------------ refusals: registry


@dataclass
class Pushed:
    host: str
    port: str
    app: str  # registry/repository of a one-platform image, tag 1.2
    digest: str  # its manifest digest
    multi: str  # registry/repository of an index, tag 1
    index_digest: str
    child_digest: str


@pytest.fixture(scope="module")
def pushed(registry: Any, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    work = tmp_path_factory.mktemp("pushed")
    one = synth.write_layout(work / "one", debianish_layers(), tag="v1")
    multi = synth.write_multiarch_layout(
        work / "multi", {"amd64": debianish_layers(), "arm64": debianish_layers()}, tag="v1"
    )
    host = registry.host
    skopeo_copy(f"oci:{one.layout}:v1", f"docker://{host}/ow/app:1.2", "--dest-tls-verify=false")
    skopeo_copy(
        f"oci:{multi.layout}:v1", f"docker://{host}/ow/multi:1", "--all", "--dest-tls-verify=false"
    )
    return Pushed(
        host,
        host.rsplit(":", 1)[1],
        f"{host}/ow/app",
        sha(skopeo_raw(f"docker://{host}/ow/app:1.2")),
        f"{host}/ow/multi",
        sha(skopeo_raw(f"docker://{host}/ow/multi:1")),
        multi.manifest_digest,
    )


REGISTRY_CASES = [
    # (source, destination, GETs of the destination tag the check may make)
    ("{app}:1.2", "1.2", 0),
    ("{app}:1.2", "{app}:1.2", 0),
    ("{app}:1.2", "localhost:{port}/ow/app:1.2", 0),
    ("{app}:1.2", "[::1]:{port}/ow/app:1.2", 0),
    ("{app}:1.2", "docker://{app}:1.2", 0),
    ("docker://localhost:{port}/ow/app:1.2", "{app}:1.2", 0),
    ("{app}@{digest}", "1.2", 1),
    ("{app}@{digest}", "{app}:1.2", 1),
    ("{app}@{digest}", "[::1]:{port}/ow/app:1.2", 1),
    ("{app}:1.2@{digest}", "1.2", 1),
    ("{multi}@{child_digest}", "1", 1),  # tag 1 names the index holding the source
    ("{multi}@{index_digest}", "{multi}:1", 1),
]


@pytest.mark.parametrize(("src", "dest", "gets"), REGISTRY_CASES)
def test_registry_spellings_refused(
    pushed: Pushed, registry: Any, tmp_path: Path, src: str, dest: str, gets: int
) -> None:
    fields = vars(pushed)
    registry.proxy.clear()
    r = run(
        "patch",
        "-i",
        src.format(**fields),
        "-t",
        dest.format(**fields),
        "--cache-dir",
        str(tmp_path),
    )
    assert_refused(r)
    requests = registry.requests()
    assert len(requests) == gets and all(q.method == "GET" for q in requests), requests
    assert sha(skopeo_raw(f"docker://{pushed.app}:1.2")) == pushed.digest
    assert sha(skopeo_raw(f"docker://{pushed.multi}:1")) == pushed.index_digest
    assert not (tmp_path / "blobs").exists()


def test_host_name_of_loopback_refused(pushed: Pushed, registry: Any, tmp_path: Path) -> None:
    """The host's own name, when it resolves only to loopback, reaches this registry too."""
    name = socket.gethostname()
    try:
        found = {i[4][0].split("%")[0] for i in socket.getaddrinfo(name, int(pushed.port))}
    except OSError:
        pytest.skip("the host name does not resolve")
    if not all(ipaddress.ip_address(a).is_loopback for a in found):
        pytest.skip(f"{name} resolves to {found}, not only loopback")
    for src in (f"{pushed.app}:1.2", f"{pushed.app}@{pushed.digest}"):
        r = run(
            "patch",
            "-i",
            src,
            "-t",
            f"{name}:{pushed.port}/ow/app:1.2",
            "--cache-dir",
            str(tmp_path),
        )
        assert_refused(r)
    assert sha(skopeo_raw(f"docker://{pushed.app}:1.2")) == pushed.digest


def test_digest_source_to_another_tag_is_allowed_by_the_check(
    pushed: Pushed, registry: Any, tmp_path: Path
) -> None:
    """A tag that names something else is no clash: the run goes on (and here stops at the
    report, which has nothing to fix), after one GET of that tag."""
    report = tmp_path / "nofix.json"
    report.write_text(json.dumps(trivy_report({}, {})))
    registry.proxy.clear()
    r = run(
        "patch",
        "-i",
        f"{pushed.multi}@{pushed.child_digest}",
        "-t",
        "2",
        "-r",
        str(report),
        "--cache-dir",
        str(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    assert registry.count("GET", r"/v2/ow/multi/manifests/2$") == 1


@pytest.mark.parametrize(
    ("src", "dest"),
    [
        ("debian", "docker.io/library/debian:latest"),
        ("debian:12", "12"),
        ("docker.io/library/debian:12", "index.docker.io/debian:12"),
        ("library/debian:12", "registry-1.docker.io/library/debian:12"),
        ("docker://debian:12", "docker://docker.io/debian:12"),
    ],
)
def test_docker_hub_spellings_refused_offline(tmp_path: Path, src: str, dest: str) -> None:
    r = run("patch", "-i", src, "-t", dest, "--cache-dir", str(tmp_path), env=NO_NETWORK)
    assert_refused(r)


# ------------------------------------------------------------------------ refusals: files


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    built = synth.write_layout(tmp_path / "layout", debianish_layers(), tag="v1")
    (built.layout / "index.json").chmod(0o640)
    (tmp_path / "link").symlink_to(built.layout)
    return built.layout


@pytest.mark.parametrize(
    ("src", "dest"),
    [
        ("oci:layout:v1", "v1"),
        ("oci:layout:v1", "oci:{abs}:v1"),
        ("oci:{abs}:v1", "oci:layout:v1"),
        ("oci:layout:v1", "oci:./layout/:v1"),
        ("oci:layout:v1", "oci:{abs}/../layout:v1"),
        ("oci:layout:v1", "oci:link:v1"),
        ("oci:layout:v1", "oci:layout"),  # the layout's only image
        ("oci:link", "oci:layout:v1"),
        ("oci:layout:v1", "docker-archive:layout/index.json"),
    ],
)
def test_layout_spellings_refused(layout: Path, tmp_path: Path, src: str, dest: str) -> None:
    before = tree(layout)
    cache = tmp_path / "cache"
    r = run(
        "patch",
        "-i",
        src.format(abs=layout),
        "-t",
        dest.format(abs=layout),
        "--cache-dir",
        str(cache),
        cwd=tmp_path,
    )
    assert_refused(r)
    assert tree(layout) == before
    assert not (cache / "blobs").exists()


@pytest.fixture
def archives(layout: Path, tmp_path: Path) -> dict[str, Path]:
    docker = tmp_path / "a.tar"
    oci = tmp_path / "o.tar"
    skopeo_copy(f"oci:{layout}:v1", f"docker-archive:{docker}:ow/app:v1")
    skopeo_copy(f"oci:{layout}:v1", f"oci-archive:{oci}:v1")
    for p in (docker, oci):
        p.chmod(0o640)
    (tmp_path / "a-link.tar").symlink_to(docker)
    return {"docker": docker, "oci": oci}


@pytest.mark.parametrize(
    ("src", "dest"),
    [
        ("docker-archive:a.tar", "docker-archive:a.tar"),
        ("docker-archive:a.tar", "docker-archive:{tmp}/a.tar"),
        ("docker-archive:a.tar", "docker-archive:a-link.tar"),
        ("docker-archive:a.tar", "docker-archive:./a.tar:ow/app:v2"),  # another tag, same file
        ("docker-archive:a.tar:ow/app:v1", "v2"),
        ("docker-archive:a.tar", "oci-archive:a.tar:v1"),
        ("oci-archive:o.tar:v1", None),  # the default destination, o.tar:v1-patched
        ("oci-archive:o.tar:v1", "v1"),
        ("oci-archive:{tmp}/o.tar:v1", "oci-archive:./o.tar:v1"),
        ("oci-archive:o.tar:v1", "docker-archive:o.tar"),
    ],
)
def test_archive_spellings_refused(
    archives: dict[str, Path], tmp_path: Path, src: str, dest: str | None
) -> None:
    before = {k: tree(p) for k, p in archives.items()}
    dest_args = ["-t", dest.format(tmp=tmp_path)] if dest is not None else []
    r = run(
        "patch",
        "-i",
        src.format(tmp=tmp_path),
        *dest_args,
        "--cache-dir",
        str(tmp_path / "cache"),
        cwd=tmp_path,
    )
    assert_refused(r)
    assert {k: tree(p) for k, p in archives.items()} == before


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-t", ""], "-t is empty"),
        (["-t", "   "], "-t is empty"),
        (["--tag-suffix", ""], "--tag-suffix is empty"),
        (["--tag-suffix", " "], "--tag-suffix is empty"),
        (["--tag-suffix", "a/b"], "invalid --tag-suffix"),
        (["-t", "bad tag"], "invalid tag"),
        (["-t", ".hidden"], "invalid tag"),
        (["-t", "-dash"], "invalid tag"),
        (["-t", "caf\u00e9"], "invalid tag"),
        (["-t", "v1\n"], "invalid tag"),
        (["-t", "a" * 129], "invalid tag"),
        (["-t", "oci:elsewhere:-x"], "invalid destination tag"),
        (["-t", "127.0.0.1:9/app@sha256:" + "a" * 64], "a destination is a tag"),
    ],
)
def test_bad_destination_tags(layout: Path, tmp_path: Path, args: list[str], needle: str) -> None:
    before = tree(layout)
    r = run("patch", "-i", f"oci:{layout}:v1", *args, "--cache-dir", str(tmp_path / "c"))
    assert_refused(r, needle)
    assert tree(layout) == before


# ------------------------------------------------------------------------ --overwrite


@dataclass
class Tiny:
    layout: Path
    digest: str
    report: Path


@pytest.fixture
def tiny(apt_repo_factory: Any, tmp_path: Path) -> Tiny:
    """A one-layer image with ocp-tiny 1.0 and a signed loopback repository offering 2.0."""
    return make_tiny(apt_repo_factory, tmp_path)


def make_tiny(apt_repo_factory: Any, tmp_path: Path, padding: int = 0) -> Tiny:
    served = apt_repo_factory(
        [DebSpec("ocp-tiny", "2.0", files=[DebFile("/usr/share/ocp-tiny/version", "2.0\n")])]
    )
    arch = host_arch()
    status = (
        "Package: base-files\nStatus: install ok installed\nPriority: required\n"
        f"Architecture: {arch}\nVersion: 12.4\nMaintainer: t <t@t.invalid>\nDescription: base\n\n"
        "Package: ocp-tiny\nStatus: install ok installed\nPriority: optional\n"
        "Architecture: all\nVersion: 1.0\nMaintainer: t <t@t.invalid>\nDescription: tiny\n"
    )
    files = ["/usr", "/usr/share", "/usr/share/ocp-tiny", "/usr/share/ocp-tiny/version"]
    layer = [
        synth.d("etc"),
        synth.f("etc/os-release", 'ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n'),
        synth.d("etc/apt"),
        synth.d("etc/apt/keyrings"),
        synth.d("etc/apt/sources.list.d"),
        synth.f("etc/apt/keyrings/t.gpg", served.keyring.read_bytes()),
        synth.f(
            "etc/apt/sources.list.d/t.sources",
            served.repo.sources_text(served.url, "/etc/apt/keyrings/t.gpg"),
        ),
        synth.d("usr"),
        synth.d("usr/share"),
        synth.d("usr/share/ocp-tiny"),
        synth.f("usr/share/ocp-tiny/version", "1.0\n"),
        synth.d("var"),
        synth.d("var/lib"),
        synth.d("var/lib/dpkg"),
        synth.d("var/lib/dpkg/info"),
        synth.f("var/lib/dpkg/status", status),
        synth.f("var/lib/dpkg/info/ocp-tiny.list", "\n".join(files) + "\n"),
    ]
    layers = [layer]
    if padding:
        layers.append([synth.d("srv"), synth.f("srv/padding", os.urandom(padding))])
    built = synth.write_layout(tmp_path / "tiny", layers, tag="v1", arch=arch)
    report = tmp_path / "report.json"
    report.write_text(json.dumps(trivy_report({"ocp-tiny": "1.0"}, {"ocp-tiny": "2.0"}, arch=arch)))
    return Tiny(built.layout, built.manifest_digest, report)


def patch(tiny: Tiny, src: str, *args: str, cache: Path, cwd: Path | None = None) -> Any:
    return run(
        "patch",
        "-i",
        src,
        "-r",
        str(tiny.report),
        "--sandbox",
        "none",
        "--cache-dir",
        str(cache),
        *args,
        cwd=cwd,
    )


def index_tags(layout: Path) -> dict[str, str]:
    index = json.loads((layout / "index.json").read_text())
    return {
        m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
        for m in index["manifests"]
        if "annotations" in m
    }


def layer_count(ref: str) -> int:
    out = subprocess.run(["skopeo", "inspect", ref], capture_output=True, text=True, check=True)
    return len(json.loads(out.stdout)["Layers"])


def test_overwrite_layout_tag(tiny: Tiny, tmp_path: Path) -> None:
    (tiny.layout / "index.json").chmod(0o640)
    r = patch(
        tiny, f"oci:{tiny.layout}:v1", "-t", "v1", "--overwrite", "--json", cache=tmp_path / "c"
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    ref = f"oci:{tiny.layout}:v1"
    assert out["status"] == "patched"
    assert out["replaced"] == {"reference": ref, "digest": tiny.digest}
    assert any(tiny.digest in n and "replaced" in n for n in out["notes"])
    assert index_tags(tiny.layout) == {"v1": out["image"]["digest"]}
    assert out["image"]["digest"] != tiny.digest
    assert (tiny.layout / "blobs" / "sha256" / tiny.digest.split(":")[1]).is_file()  # kept
    assert stat.S_IMODE((tiny.layout / "index.json").stat().st_mode) == 0o640
    assert layer_count(f"oci:{tiny.layout}:v1") == 2
    assert not temp_files(tiny.layout)


def test_overwrite_untagged_layout_replaces_its_only_image(tiny: Tiny, tmp_path: Path) -> None:
    r = patch(
        tiny, f"oci:{tiny.layout}", "-t", f"oci:{tiny.layout}", "--overwrite", cache=tmp_path / "c"
    )
    assert r.returncode == 0, r.stderr
    assert f"which named {tiny.digest}" in r.stdout
    tags = index_tags(tiny.layout)
    assert list(tags) == ["v1"] and tags["v1"] != tiny.digest
    assert layer_count(f"oci:{tiny.layout}") == 2  # still the layout's only image


@pytest.mark.parametrize("transport", ["docker-archive", "oci-archive"])
def test_overwrite_archive_keeps_mode(tiny: Tiny, tmp_path: Path, transport: str) -> None:
    archive = tmp_path / "image.tar"
    tag = ":ow/tiny:v1" if transport == "docker-archive" else ":v1"
    skopeo_copy(f"oci:{tiny.layout}:v1", f"{transport}:{archive}{tag}")
    archive.chmod(0o640)
    owner = (65534, 65534) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    os.chown(archive, *owner)  # as root: someone else's file stays theirs
    src = f"{transport}:{archive}"
    r = patch(tiny, src, "-t", f"{transport}:{archive}{tag}", "--overwrite", cache=tmp_path / "c")
    assert r.returncode == 0, r.stderr
    assert "replaced" in r.stdout and "which named sha256:" in r.stdout
    st = archive.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640 and (st.st_uid, st.st_gid) == owner
    assert layer_count(src) == 2
    assert not temp_files(tmp_path)


def test_new_files_get_the_usual_mode(tiny: Tiny, tmp_path: Path) -> None:
    """Not 0600 from mkstemp: 0644 less the umask, for archives, index.json and blobs."""
    cache = tmp_path / "c"
    out = tmp_path / "out"
    r = patch(tiny, f"oci:{tiny.layout}:v1", "-t", f"docker-archive:{out}.tar", cache=cache)
    assert r.returncode == 0, r.stderr
    r = patch(tiny, f"oci:{tiny.layout}:v1", "-t", f"oci:{out}:v2", cache=cache)
    assert r.returncode == 0, r.stderr
    modes = {
        stat.S_IMODE(p.stat().st_mode) for p in [Path(f"{out}.tar"), *out.rglob("*")] if p.is_file()
    }
    assert modes == {new_file_mode()}


def test_overwrite_registry_names_the_old_digest(tiny: Tiny, registry: Any, tmp_path: Path) -> None:
    repo = f"{registry.host}/ow/tiny"
    for tag in ("1", "2"):
        skopeo_copy(f"oci:{tiny.layout}:v1", f"docker://{repo}:{tag}", "--dest-tls-verify=false")
    old = sha(skopeo_raw(f"docker://{repo}:1"))
    cache = tmp_path / "c"
    r = patch(tiny, f"{repo}:1", "-t", "1", "--overwrite", "--json", cache=cache)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["replaced"] == {"reference": f"{repo}:1", "digest": old}
    assert sha(skopeo_raw(f"docker://{repo}:1")) == out["image"]["digest"] != old
    # a digest source onto the tag that names it
    r = patch(tiny, f"{repo}@{old}", "-t", "2", "--overwrite", "--json", cache=cache)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["replaced"] == {"reference": f"{repo}:2", "digest": old}
    assert sha(skopeo_raw(f"docker://{repo}:2")) == out["image"]["digest"]


# ------------------------------------------------------------------------ failures while writing


def _corrupt_cached_patch_layer(tiny: Tiny, tmp_path: Path, cache: Path) -> None:
    """Patch once elsewhere (the layer lands in the result cache), then flip bytes of that
    cached layer: the next run reuses it and its digest check fails while writing."""
    first = tmp_path / "first"
    r = patch(tiny, f"oci:{tiny.layout}:v1", "-t", f"oci:{first}:v1", cache=cache)
    assert r.returncode == 0, r.stderr
    index = json.loads((first / "index.json").read_text())
    manifest_blob = first / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":")[1]
    layer = json.loads(manifest_blob.read_bytes())["layers"][-1]["digest"]
    cached = cache / "blobs" / "sha256" / layer.split(":")[1]
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cached.write_bytes(bytes(data))


def test_failed_overwrite_leaves_the_layout(tiny: Tiny, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    _corrupt_cached_patch_layer(tiny, tmp_path, cache)
    before = tree(tiny.layout)
    r = patch(tiny, f"oci:{tiny.layout}:v1", "-t", "v1", "--overwrite", cache=cache)
    assert r.returncode == 7, r.stderr
    assert "reusing its layer" in r.stderr  # the corrupted layer was the one written
    assert tree(tiny.layout) == before
    assert not temp_files(tiny.layout)


@pytest.mark.parametrize("transport", ["docker-archive", "oci-archive"])
def test_failed_overwrite_leaves_the_archive(tiny: Tiny, tmp_path: Path, transport: str) -> None:
    cache = tmp_path / "c"
    _corrupt_cached_patch_layer(tiny, tmp_path, cache)
    archive = tmp_path / "image.tar"
    tag = ":ow/tiny:v1" if transport == "docker-archive" else ":v1"
    skopeo_copy(f"oci:{tiny.layout}:v1", f"{transport}:{archive}{tag}")
    archive.chmod(0o640)
    before = tree(archive)
    src = f"{transport}:{archive}{tag}"
    r = patch(tiny, src, "-t", src, "--overwrite", cache=cache)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert tree(archive) == before
    assert not temp_files(tmp_path)


@pytest.fixture
def padded(apt_repo_factory: Any, tmp_path: Path) -> Iterator[Tiny]:
    yield make_tiny(apt_repo_factory, tmp_path, padding=24 << 20)


def test_killed_overwrite_leaves_the_archive(padded: Tiny, tmp_path: Path) -> None:
    """SIGKILL while the new archive is being written (its temporary file exists): the
    archive is the old one, byte for byte, with its mode."""
    archive = tmp_path / "image.tar"
    skopeo_copy(f"oci:{padded.layout}:v1", f"docker-archive:{archive}:ow/tiny:v1")
    archive.chmod(0o640)
    before = tree(archive)
    src = f"docker-archive:{archive}"
    args = ["-i", src, "-t", src, "--overwrite", "-r", str(padded.report), "--sandbox", "none"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ocipatch", "patch", *args, "--cache-dir", str(tmp_path / "c")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed = False
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if any(p.name.startswith(".tmp-") for p in tmp_path.iterdir()):
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
    proc.wait()
    assert killed, "the run ended before its write could be interrupted"
    assert tree(archive) == before


def test_copy_onto_its_source_archive(archives: dict[str, Path], tmp_path: Path) -> None:
    """copy writes a one-image archive: another tag in the same file would drop the source."""
    oci = archives["oci"]
    before = tree(oci)
    r = run(
        "copy", f"oci-archive:{oci}:v1", f"oci-archive:{oci}:v2", "--cache-dir", str(tmp_path / "c")
    )
    assert_refused(r)
    assert tree(oci) == before
    r = run(
        "copy",
        f"oci-archive:{oci}:v1",
        f"oci-archive:{oci}:v2",
        "--overwrite",
        "--cache-dir",
        str(tmp_path / "c"),
    )
    assert r.returncode == 0, r.stderr
    assert layer_count(f"oci-archive:{oci}:v2") == 2
    assert stat.S_IMODE(oci.stat().st_mode) == 0o640


@pytest.mark.parametrize(
    ("src", "dest", "vex"),
    [
        ("docker-archive:a.tar", "docker-archive:out.tar", "a.tar"),
        ("docker-archive:a.tar", "docker-archive:out.tar", "out.tar"),
        ("oci:layout:v1", "v2", "layout/index.json"),
        ("oci:layout:v1", "oci:elsewhere:v1", "link/oci-layout"),
    ],
)
def test_vex_never_lands_on_an_image(
    archives: dict[str, Path], layout: Path, tmp_path: Path, src: str, dest: str, vex: str
) -> None:
    before = {"layout": tree(layout), **{k: tree(p) for k, p in archives.items()}}
    args = ["-i", src, "-t", dest, "--vex", vex, "--cache-dir", str(tmp_path / "c")]
    r = run("patch", *args, cwd=tmp_path)
    assert_refused(r, "--vex")
    assert {"layout": tree(layout), **{k: tree(p) for k, p in archives.items()}} == before


def test_repatch_in_place_needs_overwrite(tiny: Tiny, tmp_path: Path) -> None:
    """No -t on a tag already ending in -patched derives the source itself: refused like any
    other spelling; with --overwrite that tag moves and the output names what it named."""
    skopeo_copy(f"oci:{tiny.layout}:v1", f"oci:{tiny.layout}:v1-patched")
    src = f"oci:{tiny.layout}:v1-patched"
    cache = tmp_path / "c"
    assert_refused(patch(tiny, src, "-t", "v1-patched", cache=cache))
    assert_refused(patch(tiny, src, cache=cache))
    r = patch(tiny, src, "--json", "--overwrite", cache=cache)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "patched"
    assert out["replaced"] == {"reference": src, "digest": tiny.digest}
    assert index_tags(tiny.layout) == {"v1": tiny.digest, "v1-patched": out["image"]["digest"]}
