"""Issue #3: `ocipatch patch` against a local signed apt repository, no network beyond loopback.

The image is the real Debian 12 minbase plus one layer with tiny `ocp-*` packages at 1.0
(tests/hermetic.py), in a real registry; apt in it sees only the loopback repository. Each case
runs the CLI (--json) and checks what a user would: skopeo, the patch layer read with tarfile,
and `dpkg-query --admindir` over a rootfs umoci unpacked.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import hermetic as h
from tests.archive import trivy_report
from tests.mtimes import check_layer_times, expected_layer_time
from tests.plugins.aptrepo import scratch_dir
from tests.plugins.images import skopeo, umoci_unpack
from tools.aptrepo import DEFAULT_EPOCH, AptRepo, RepoServer, Signer, build_deb, build_repo

ROOT = Path(__file__).resolve().parents[1]
OCIPATCH = ROOT / ".venv" / "bin" / "ocipatch"
ALL_V1 = {"ocp-lib", "ocp-conf", "ocp-dep", h.HELD, "ocp-badpost", "ocp-zstd"}


@dataclass
class Env:
    ref: str  # the test image in the registry
    repo: str  # registry/repository, for destination references
    layers: list[str]  # its layer digests
    installed: dict[str, str]  # the ocp-* packages in it
    work: Path  # world-traversable (the `nobody` run reads and writes here)
    cache: Path  # ocipatch cache shared by the root runs that use the good tree
    server: RepoServer
    bad_tree: Path  # the repository with ocp-badpost 2.0 (failing postinst)
    zstd_deb: Path  # ocp-zstd 2.0 as the repository serves it
    v1: list[Path]  # the ocp-* 1.0 packages in the image
    apt_repo: AptRepo
    base: Path  # the Debian 12 layout the image is built on

    def report(self, name: str, fixed: dict[str, str]) -> Path:
        path = self.work / f"{name}.json"
        path.write_text(json.dumps(trivy_report(self.installed, fixed)))
        path.chmod(0o644)
        return path

    def dest(self, tag: str) -> str:
        return f"{self.repo}:{tag}"


@pytest.fixture(scope="module")
def env(debian_layout: Path, registry: Any, apt_signer: Signer) -> Iterator[Env]:
    work = Path(tempfile.mkdtemp(prefix="ocipatch-hermetic-", dir=scratch_dir()))
    work.chmod(0o777)
    v1 = [build_deb(s, work / "v1") for s in h.image_specs()]
    good = [build_deb(s, work / "v2", source_date_epoch=h.built_at(s)) for s in h.repo_specs()]
    bad = [
        build_deb(s, work / "v2bad", source_date_epoch=h.built_at(s))
        for s in h.repo_specs(bad_postinst=True)
    ]
    repo = build_repo(work / "repo-good", good, signer=apt_signer)
    build_repo(work / "repo-bad", bad, signer=apt_signer)  # same suite and key, other packages
    server = RepoServer(repo.root).start()
    try:
        (work / "build").mkdir()
        layout = h.build_test_image(
            debian_layout,
            "12",
            work / "layout",
            "1",
            debs=v1,
            repo=repo,
            url=server.url,
            hold=[h.HELD],
            edits={h.CONF: h.CONF_EDITED},
            work=work / "build",
        )
        shutil.rmtree(work / "build")
        repository = f"{registry.host}/hermetic/ocp"
        skopeo(
            "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:1", f"docker://{repository}:1"
        )
        info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{repository}:1"))
        zstd_deb = next(p for p in good if p.name.startswith("ocp-zstd_2.0"))
        yield Env(
            ref=f"{repository}:1",
            repo=repository,
            layers=info["Layers"],
            installed={n: "1.0" for n in ALL_V1},
            work=work,
            cache=work / "cache-root",
            server=server,
            bad_tree=work / "repo-bad",
            zstd_deb=zstd_deb,
            v1=v1,
            apt_repo=repo,
            base=debian_layout,
        )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


# --- running and reading -----------------------------------------------------------------------


def ocipatch(
    env: Env, *args: str, cache: Path | None = None, user: str | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [str(OCIPATCH), "patch", "--json", "-q", "--cache-dir", str(cache or env.cache), *args]
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "DOCKER_"))}
    if user is not None:
        home = env.work / f"home-{user}"
        home.mkdir(mode=0o777, exist_ok=True)
        home.chmod(0o777)
        gid = pwd.getpwnam(user).pw_gid
        cmd = ["setpriv", f"--reuid={user}", f"--regid={gid}", "--clear-groups", *cmd]
        environ["HOME"] = str(home)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=environ, cwd="/")


def patched(env: Env, *args: str, **kw: Any) -> dict[str, Any]:
    r = ocipatch(env, *args, **kw)
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def one_line_error(r: subprocess.CompletedProcess[str], code: int | None) -> str:
    """The one stderr line of a failed run (code None: any non-zero exit)."""
    assert r.returncode != 0 if code is None else r.returncode == code, (r.returncode, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def tag_absent(env: Env, tag: str) -> bool:
    r = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{env.dest(tag)}"],
        capture_output=True,
        text=True,
    )
    return r.returncode != 0 and "manifest unknown" in r.stderr


@dataclass
class Pulled:
    layout: Path
    layers: list[str]
    patch_layer: dict[str, tarfile.TarInfo]
    tar: Path

    def content(self, path: str) -> bytes:
        with tarfile.open(self.tar) as t:
            f = t.extractfile(path.lstrip("/"))
            assert f is not None
            return f.read()

    def member(self, path: str) -> tarfile.TarInfo:
        return self.patch_layer[path.lstrip("/")]


def pull(env: Env, tag: str, name: str) -> Pulled:
    """skopeo-copy the result out of the registry; the patch layer as tarfile reads it."""
    layout = env.work / f"pulled-{name}"
    shutil.rmtree(layout, ignore_errors=True)
    skopeo("copy", "-q", "--src-tls-verify=false", f"docker://{env.dest(tag)}", f"oci:{layout}:p")
    layers = json.loads(skopeo("inspect", f"oci:{layout}:p"))["Layers"]
    tar = layout / "blobs" / "sha256" / layers[-1].split(":")[1]
    with tarfile.open(tar) as t:
        members = {m.name: m for m in t.getmembers()}
    return Pulled(layout, layers, members, tar)


def check_one_patch_layer(env: Env, p: Pulled) -> None:
    assert p.layers[:-1] == env.layers, "the original layers are kept as they were"
    assert len(p.layers) == len(env.layers) + 1, "exactly one layer added"
    for banned in ("var/lib/apt/lists/", "var/cache/apt/", "var/cache/ocipatch", "var/log/"):
        assert not any(n.startswith(banned) for n in p.patch_layer), banned


def dpkg_status(rootfs: Path) -> dict[str, tuple[str, str]]:
    """name -> (want/status abbreviation, version), from the rootfs's dpkg database."""
    out = subprocess.run(
        ["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-W",
         "-f", "${db:Status-Abbrev}\t${Package}\t${Version}\n", "ocp-*"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    rows = [line.split("\t") for line in out.splitlines()]
    return {r[1]: (r[0].strip(), r[2]) for r in rows if r[0].strip() != "un"}


def unpacked(env: Env, p: Pulled, name: str) -> Path:
    return umoci_unpack(p.layout, "p", env.work / f"rootfs-{name}")


def versions(status: dict[str, tuple[str, str]]) -> dict[str, str]:
    return {n: v for n, (_, v) in status.items()}


def updated(out: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {u["name"]: (u["from"], u["to"]) for u in out["updated"]}


def skipped(out: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["reason"] for s in out["skipped"]}


def ar_members(deb: Path) -> list[str]:
    data = deb.read_bytes()
    pos, names = 8, []
    while pos < len(data):
        header = data[pos : pos + 60]
        names.append(header[:16].decode().strip().rstrip("/"))
        size = int(header[48:58].decode().strip())
        pos += 60 + size + (size & 1)
    return names


# --- the cases ---------------------------------------------------------------------------------


def test_newer_version_is_installed_with_the_packages_owners(env: Env) -> None:
    """1. A newer version: patched, new contents, root:shadow 2755 from the .debs (xz and
    zstd), one layer added; as `nobody` the very same layer."""
    assert "data.tar.zst" in ar_members(env.zstd_deb)
    report = env.report("newer", {"ocp-lib": "2.0", "ocp-zstd": "2.0"})
    out = patched(env, "-i", env.ref, "-r", str(report), "-t", "newer")
    assert out["status"] == "patched"
    assert updated(out) == {"ocp-lib": ("1.0", "2.0"), "ocp-zstd": ("1.0", "2.0")}
    assert out["vulnerabilities_fixed"] == ["CVE-2099-0000", "CVE-2099-0001"]

    p = pull(env, "newer", "newer")
    check_one_patch_layer(env, p)
    assert p.content(h.LIB) == b"v2\n"
    assert p.content(h.TOOL) == b"#!/bin/sh\necho ocp-tool 2.0\n"
    for tool in (h.TOOL, h.ZTOOL):
        m = p.member(tool)
        assert (m.uid, m.gid, m.mode) == (0, h.SHADOW_GID, 0o2755), tool
    rootfs = unpacked(env, p, "newer")
    status = dpkg_status(rootfs)
    assert versions(status) == {n: "2.0" if n in ("ocp-lib", "ocp-zstd") else "1.0" for n in ALL_V1}
    # apt marks what it is asked to install as manually installed; the patch keeps the marks.
    assert "var/lib/apt/extended_states" not in p.patch_layer
    st = (rootfs / h.TOOL.lstrip("/")).stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, h.SHADOW_GID, 0o2755)

    user = patched(
        env,
        "-i", env.ref, "-r", str(report), "-t", "newer-nobody",
        cache=env.work / "cache-nobody", user="nobody",
    )  # fmt: skip
    assert updated(user) == updated(out)
    theirs = json.loads(
        skopeo("inspect", "--tls-verify=false", f"docker://{env.dest('newer-nobody')}")
    )
    assert theirs["Layers"][-1] == p.layers[-1], "nobody writes the same patch layer as root"
    assert user["image"]["digest"] == out["image"]["digest"]


def test_only_a_lower_version_available(env: Env) -> None:
    """2. The report wants 3.0, the repository has 2.0: exit 11 with one line saying what and
    why, nothing pushed; --ignore-errors patches the rest and lists it as skipped."""
    report = env.report("lower", {"ocp-lib": "3.0", "ocp-dep": "2.0"})
    r = ocipatch(env, "-i", env.ref, "-r", str(report), "-t", "lower")
    msg = one_line_error(r, 11)
    assert "ocp-lib needs 3.0" in msg and "only 2.0" in msg, msg
    assert "scanner's database is newer" in msg and "mirror" in msg, msg
    assert "--ignore-errors" in msg, msg
    assert tag_absent(env, "lower"), "nothing pushed"

    out = patched(env, "-i", env.ref, "-r", str(report), "-t", "lower", "--ignore-errors")
    assert out["status"] == "patched"
    assert updated(out) == {"ocp-dep": ("1.0", "2.0"), "ocp-newdep": ("", "1.0")}
    reason = skipped(out)["ocp-lib"]
    assert "2.0" in reason and "3.0" in reason, reason
    assert out["vulnerabilities_fixed"] == ["CVE-2099-0000"]  # ocp-dep's, not ocp-lib's
    p = pull(env, "lower", "lower")
    check_one_patch_layer(env, p)
    assert versions(dpkg_status(unpacked(env, p, "lower")))["ocp-lib"] == "1.0"


def test_held_package_is_skipped(env: Env) -> None:
    """3. apt-mark hold is respected: skipped with the reason, the rest patched."""
    report = env.report("held", {h.HELD: "2.0", "ocp-lib": "2.0"})
    out = patched(env, "-i", env.ref, "-r", str(report), "-t", "held")
    assert out["status"] == "patched"
    assert updated(out) == {"ocp-lib": ("1.0", "2.0")}
    assert "held" in skipped(out)[h.HELD]
    assert out["vulnerabilities_fixed"] == ["CVE-2099-0001"]  # ocp-lib's only
    p = pull(env, "held", "held")
    check_one_patch_layer(env, p)
    status = dpkg_status(unpacked(env, p, "held"))
    assert status[h.HELD] == ("hi", "1.0"), "still 1.0, still held"
    assert status["ocp-lib"] == ("ii", "2.0")


def test_update_pulls_a_new_dependency(env: Env) -> None:
    """4. ocp-dep 2.0 depends on a package the image does not have: it is installed and
    reported as updated from nothing."""
    report = env.report("newdep", {"ocp-dep": "2.0"})
    out = patched(env, "-i", env.ref, "-r", str(report), "-t", "newdep")
    assert updated(out) == {"ocp-dep": ("1.0", "2.0"), "ocp-newdep": ("", "1.0")}
    p = pull(env, "newdep", "newdep")
    check_one_patch_layer(env, p)
    assert p.content(h.NEWDEP_MARKER) == b"new dependency\n"
    rootfs = unpacked(env, p, "newdep")
    status = dpkg_status(rootfs)
    assert status["ocp-newdep"] == ("ii", "1.0") and status["ocp-dep"] == ("ii", "2.0")
    # The dependency came in automatically (autoremove may take it with ocp-dep); ocp-dep
    # was and stays manually installed.
    marks = (rootfs / "var/lib/apt/extended_states").read_text()
    assert "Package: ocp-newdep\nArchitecture: amd64\nAuto-Installed: 1\n" in marks
    assert "Package: ocp-dep\n" not in marks


def test_changed_conffile_is_kept(env: Env) -> None:
    """5. The image's edited /etc/ocp.conf stays; the package's new one lands beside it as
    .dpkg-dist, and the notes say so, naming the file."""
    report = env.report("conf", {"ocp-conf": "2.0"})
    out = patched(env, "-i", env.ref, "-r", str(report), "-t", "conf")
    assert updated(out) == {"ocp-conf": ("1.0", "2.0")}
    assert out["notes"], "a note about the kept configuration"
    assert all(h.CONF in n for n in out["notes"]), out["notes"]
    assert any(f"{h.CONF}.dpkg-dist" in n and "kept" in n for n in out["notes"]), out["notes"]
    p = pull(env, "conf", "conf")
    check_one_patch_layer(env, p)
    rootfs = unpacked(env, p, "conf")
    assert (rootfs / "etc/ocp.conf").read_text() == h.CONF_EDITED
    assert (rootfs / "etc/ocp.conf.dpkg-dist").read_text() == h.CONF_V2
    assert dpkg_status(rootfs)["ocp-conf"] == ("ii", "2.0")


def test_failing_postinst(env: Env) -> None:
    """6. A maintainer script that fails: exit 12, one line naming the package, no push."""
    report = env.report("badpost", {"ocp-badpost": "2.0", "ocp-lib": "2.0"})
    with h.serving(env.server, env.bad_tree):
        r = ocipatch(
            env, "-i", env.ref, "-r", str(report), "-t", "badpost", cache=env.work / "cache-bad"
        )
    msg = one_line_error(r, 12)
    assert "ocp-badpost" in msg and "post-installation script" in msg, msg
    assert tag_absent(env, "badpost"), "nothing pushed"


def test_tampered_package_is_refused(env: Env) -> None:
    """7. A .deb whose bytes differ from the signed index: refused, hash mismatch, no push."""
    path = "pool/main/o/ocp-lib/ocp-lib_2.0_all.deb"
    assert (env.server.root / path).is_file()
    report = env.report("tamper", {"ocp-lib": "2.0"})
    # Same size, one byte flipped: only the hash can tell.
    env.server.tamper(path, lambda b: b[:-1] + bytes([b[-1] ^ 0xFF]))
    try:
        r = ocipatch(
            env, "-i", env.ref, "-r", str(report), "-t", "tamper", cache=env.work / "cache-tamper"
        )
    finally:
        env.server.untamper(path)
    msg = one_line_error(r, 7)
    assert "hash sum mismatch" in msg.lower() and "ocp-lib" in msg, msg
    assert "does not match its signed index" in msg and "full log:" in msg, msg
    assert tag_absent(env, "tamper"), "nothing pushed"


def test_no_report_updates_everything_then_up_to_date(env: Env) -> None:
    """8. Without a report every upgradable package is updated (the held one excepted); the
    result patched again is up to date: exit 0, nothing written."""
    out = patched(env, "-i", env.ref, "-t", "all")
    assert out["status"] == "patched"
    assert updated(out) == {
        "ocp-conf": ("1.0", "2.0"),
        "ocp-dep": ("1.0", "2.0"),
        "ocp-lib": ("1.0", "2.0"),
        "ocp-newdep": ("", "1.0"),
        "ocp-zstd": ("1.0", "2.0"),
    }
    assert "held" in skipped(out)[h.HELD]
    p = pull(env, "all", "all")
    check_one_patch_layer(env, p)
    status = dpkg_status(unpacked(env, p, "all"))
    assert versions(status) == {
        "ocp-lib": "2.0",
        "ocp-conf": "2.0",
        "ocp-dep": "2.0",
        "ocp-newdep": "1.0",
        "ocp-zstd": "2.0",
        "ocp-badpost": "1.0",
        h.HELD: "1.0",
    }

    again = patched(env, "-i", env.dest("all"))
    assert again["status"] == "up-to-date"
    assert again["updated"] == []
    assert again["image"]["digest"] == out["image"]["digest"]
    assert tag_absent(env, "all-patched"), "nothing written"
    after = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{env.dest('all')}"))
    assert after["Layers"] == p.layers


def test_apt_pinning_is_honoured(env: Env) -> None:
    """9. An image whose apt pins ocp-lib to 1.0: ocipatch's own resolver does not read pins,
    so the image's apt resolves (after apt-get update) and its answer stands: 2.0 is not a
    candidate, the run stops with exit 11 and pushes nothing; an unpinned package patches."""
    pin = "Package: ocp-lib\nPin: version 1.0\nPin-Priority: 1001\n"
    layout = h.build_test_image(
        env.base,
        "12",
        env.work / "layout-pinned",
        "1",
        debs=env.v1,
        repo=env.apt_repo,
        url=env.server.url,
        edits={"/etc/apt/preferences.d/ocp-lib": pin},
        work=env.work / "build-pinned",
    )
    skopeo(
        "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:1", f"docker://{env.repo}:pinned"
    )
    ref = f"{env.repo}:pinned"
    report = env.report("pinned", {"ocp-lib": "2.0"})
    msg = one_line_error(ocipatch(env, "-i", ref, "-r", str(report), "-t", "pinned-out"), 11)
    assert "ocp-lib needs 2.0 but the repositories offer only 1.0" in msg, msg
    assert tag_absent(env, "pinned-out")
    report = env.report("pinned-other", {"ocp-dep": "2.0"})
    out = patched(env, "-i", ref, "-r", str(report), "-t", "pinned-other")
    assert updated(out) == {"ocp-dep": ("1.0", "2.0"), "ocp-newdep": ("", "1.0")}


# --- times of the patch layer (issue #9) -------------------------------------------------------

TIMES = {"ocp-lib": "2.0", "ocp-zstd": "2.0", "ocp-conf": "2.0"}


def served_debs(env: Env, versions: dict[str, str]) -> list[Path]:
    """The .debs the repository serves for name -> version (what the patch installs)."""
    return [
        next((env.server.root / "pool").rglob(f"{name}_{version}_*.deb"))
        for name, version in versions.items()
    ]


def image_created(env: Env) -> str:
    config = json.loads(skopeo("inspect", "--config", "--tls-verify=false", f"docker://{env.ref}"))
    return str(config["created"])


def test_patch_layer_times(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Package files keep their .deb's mtime, everything else gets one layer time: the newest
    package mtime or the image's `created` (the later), or SOURCE_DATE_EPOCH when set (package
    files newer than it clamped to it). The same for apt in the sandbox and --sandbox none, for
    root and nobody; the result cache tells SOURCE_DATE_EPOCH values apart."""
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    debs = served_debs(env, TIMES)
    layer_time = expected_layer_time(debs, image_created(env))
    assert layer_time == h.BUILT["ocp-zstd"]  # the fixture's newest package, after `created`
    report = env.report("times", TIMES)
    cache = env.work / "cache-times"

    out = patched(env, "-i", env.ref, "-r", str(report), "-t", "times", cache=cache)
    assert set(updated(out)) == set(TIMES)
    p = pull(env, "times", "times")
    dated = check_layer_times(p.tar, debs, layer_time)
    assert dated[h.TOOL.lstrip("/")] == dated[h.LIB.lstrip("/")] == h.V2_BUILT
    assert dated[h.ZTOOL.lstrip("/")] == h.BUILT["ocp-zstd"]
    assert dated[h.CONF.lstrip("/") + ".dpkg-dist"] == h.V2_BUILT
    assert p.member("/var/lib/dpkg/status").mtime == layer_time
    assert p.member("/var/lib/dpkg/info/ocp-lib.md5sums").mtime == layer_time

    # Re-patched (the previous patch layer replayed, one layer again): what the first patch
    # installed and this one left alone keeps its package's time.
    more = {"ocp-dep": "2.0", "ocp-newdep": "1.0"}
    out = patched(
        env, "-i", env.dest("times"), "-r", str(env.report("times-more", {"ocp-dep": "2.0"})),
        "-t", "times-more", cache=cache,
    )  # fmt: skip
    assert set(updated(out)) == set(more)
    r = pull(env, "times-more", "times-more")
    check_one_patch_layer(env, r)
    dated = check_layer_times(r.tar, debs + served_debs(env, more), layer_time)
    assert dated[h.TOOL.lstrip("/")] == h.V2_BUILT
    assert dated[h.ZTOOL.lstrip("/")] == h.BUILT["ocp-zstd"]
    assert dated[h.NEWDEP_MARKER.lstrip("/")] == DEFAULT_EPOCH

    # SOURCE_DATE_EPOCH between the two build times: ocp-lib's files keep theirs, ocp-zstd's
    # and the rest get it. Same cache: the earlier layer must not be taken for this one.
    sde = (h.V2_BUILT + h.BUILT["ocp-zstd"]) // 2
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(sde))
    out = patched(env, "-i", env.ref, "-r", str(report), "-t", "times-sde", cache=cache)
    assert not any("reused" in n for n in out["notes"]), out["notes"]
    q = pull(env, "times-sde", "times-sde")
    dated = check_layer_times(q.tar, debs, sde)
    assert dated[h.TOOL.lstrip("/")] == h.V2_BUILT and dated[h.ZTOOL.lstrip("/")] == sde
    assert q.layers[-1] != p.layers[-1]

    # Again, as nobody with its own cache: the very same layer.
    again = patched(
        env, "-i", env.ref, "-r", str(report), "-t", "times-sde2",
        cache=env.work / "cache-times-nobody", user="nobody",
    )  # fmt: skip
    assert not any("reused" in n for n in again["notes"])
    theirs = json.loads(
        skopeo("inspect", "--tls-verify=false", f"docker://{env.dest('times-sde2')}")
    )
    assert theirs["Layers"][-1] == q.layers[-1], "same input, same layer digest"

    # --sandbox none installs with ocipatch's own unpacker: the same times.
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    direct = patched(
        env, "-i", env.ref, "-r", str(report), "-t", "times-none", "--sandbox", "none",
        cache=env.work / "cache-times-none",
    )  # fmt: skip
    assert set(updated(direct)) == set(TIMES)
    d = pull(env, "times-none", "times-none")
    dated = check_layer_times(d.tar, debs, layer_time)
    assert dated[h.TOOL.lstrip("/")] == h.V2_BUILT
    assert dated[h.ZTOOL.lstrip("/")] == h.BUILT["ocp-zstd"]
