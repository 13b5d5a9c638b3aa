"""Issue #9: `ocipatch cache prune` and `cache info`, and the start-of-run sweep of what killed
runs left (ocipatch/runs.py).

The first cases build small caches by hand (owner tags of live and dead processes, locks held
by another process); the rest use a real cache filled by patching the hermetic image
(tests/hermetic.py) from the real registry, aged with os.utime.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import tests.test_faults_kill as kill
from ocipatch import runs
from tests.test_faults_kill import OCIPATCH, Clean, Env, Run, fresh, has_rootfs, run_env

env = kill.env  # the hermetic image in the registry (module-scoped fixture)
clean = kill.clean  # the digest a clean run writes for FIXES
work = kill.work
DAY = 86400.0


def cli(*args: str, work: Path | None = None, code: int = 0) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [str(OCIPATCH), *args], capture_output=True, text=True, env=run_env(work), timeout=300
    )
    assert r.returncode == code, (r.returncode, r.stderr)
    return r


def prune(cache: Path, *args: str, work: Path | None = None) -> dict[str, Any]:
    out = cli("cache", "prune", "--json", "--cache-dir", str(cache), *args, work=work).stdout
    doc: dict[str, Any] = json.loads(out)
    return doc


def dead_tag() -> str:
    """The owner tag of a process that has exited (its pid is free)."""
    p = subprocess.Popen(["true"])
    p.wait()
    return f"{p.pid}.12345.{runs.boot_id()}"


def age(path: Path, days: float) -> None:
    t = time.time() - days * DAY
    os.utime(path, (t, t), follow_symlinks=False)


# --- the sweep, on hand-made entries -----------------------------------------------------------


def test_sweep_removes_only_dead_owners(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    blobs = cache / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (cache / "work").mkdir()
    dead = dead_tag()
    me = runs.tag()
    dead_file = blobs / f".tmp-{dead}-aaaa"
    dead_tree = cache / "work" / f"patch-{dead}-bbbb"
    mine = blobs / f".tmp-{me}-cccc"
    legacy_new = blobs / ".tmp-dddd"
    legacy_old = blobs / ".tmp-eeee"
    reboot = blobs / ".tmp-1.1.ffffffff-gggg"  # another boot: judged by age
    for f in (dead_file, mine, legacy_new, legacy_old, reboot):
        f.write_bytes(b"x" * 100)
    (dead_tree / "rootfs").mkdir(parents=True)
    (dead_tree / "rootfs" / "big").write_bytes(b"y" * 5000)
    age(legacy_old, 2)
    age(reboot, 0.5)
    # A dead tag whose lock is held (a process in another pid namespace): kept.
    locked = blobs / f".tmp-{dead}-hhhh"
    locked.write_bytes(b"z")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl,sys,time; f=open(sys.argv[1]); "
         "fcntl.flock(f, fcntl.LOCK_EX); print(1, flush=True); time.sleep(60)", str(locked)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "1\n"
        t0 = time.monotonic()
        removed = runs.sweep_all(cache, measure=True)
        took = time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait()
    mine_only = {r.path for r in removed if r.path.is_relative_to(tmp_path)}  # not /dev/shm's
    assert mine_only == {dead_file, dead_tree, legacy_old}
    assert {r.path: r.size for r in removed}[dead_tree] >= 5000
    for kept in (mine, legacy_new, reboot, locked):
        assert kept.exists(), kept
    assert took < 0.5, took


def test_user_work_dir_loses_only_owned_entries(tmp_path: Path, monkeypatch: Any) -> None:
    """$OCIPATCH_WORK_DIR is the user's: an old `patch-*` there that ocipatch did not name is
    not ocipatch's to remove."""
    monkeypatch.setenv("OCIPATCH_WORK_DIR", str(tmp_path / "w"))
    (tmp_path / "w").mkdir()
    theirs = tmp_path / "w" / "patch-notes"
    theirs.mkdir()
    age(theirs, 30)
    ours = tmp_path / "w" / f"patch-{dead_tag()}-x1"
    ours.mkdir()
    runs.sweep_all(tmp_path / "cache")
    assert theirs.exists() and not ours.exists()


def test_a_live_owner_with_a_reused_pid_looks_alive_and_a_stale_start_time_dead() -> None:
    me = os.getpid()
    ticks = runs.start_ticks(me)
    assert ticks is not None
    boot = runs.boot_id()
    assert runs.owner_alive(f".tmp-{me}.{ticks}.{boot}-a", 10 * DAY)
    assert not runs.owner_alive(f".tmp-{me}.{ticks + 1}.{boot}-a", 0), "same pid, another process"


def test_ctrl_c_during_a_cleanup_waits_for_it() -> None:
    """The tree is removed whole, then the interrupt takes effect."""
    done = []
    with pytest.raises(KeyboardInterrupt), runs.interrupt_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs here; without the deferral it would raise
        done.append(True)
    assert done == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_shm_leftover_removed_by_prune(tmp_path: Path) -> None:
    base = runs.shm_base()
    if not os.access("/dev/shm", os.W_OK):
        pytest.skip("no writable /dev/shm")
    base.mkdir(mode=0o700, exist_ok=True)
    tree = base / f"patch-{dead_tag()}-shm"
    (tree / "rootfs").mkdir(parents=True)
    doc = prune(tmp_path / "cache")
    assert str(tree) in [x["path"] for x in doc["leftovers"]]
    assert not tree.exists()


def test_destinations_lose_what_killed_writers_left(tmp_path: Path) -> None:
    """A killed write to an oci: layout leaves `.tmp-` blobs, one to an oci-archive: a whole
    `.ocipatch-` layout beside the file: the next write there removes the dead ones only."""
    from tests.plugins.registry import make_oci_layout

    make_oci_layout(tmp_path / "src", "1")
    dst = tmp_path / "dst"
    (dst / "blobs" / "sha256").mkdir(parents=True)
    dead_blob = dst / "blobs" / "sha256" / f".tmp-{dead_tag()}-aaaa"
    live_blob = dst / "blobs" / "sha256" / f".tmp-{runs.tag()}-bbbb"
    dead_layout = tmp_path / f".ocipatch-{dead_tag()}-cccc"
    user_dir = tmp_path / ".ocipatch-mine"  # not named by ocipatch: never touched
    for f in (dead_blob, live_blob):
        f.write_bytes(b"partial")
    for d in (dead_layout, user_dir):
        (d / "blobs").mkdir(parents=True)
        age(d, 30)
    cache = ["--cache-dir", str(tmp_path / "cache")]
    cli("copy", *cache, f"oci:{tmp_path / 'src'}:1", f"oci:{dst}:1")
    cli("copy", *cache, f"oci:{tmp_path / 'src'}:1", f"oci-archive:{tmp_path / 'img.tar'}:1")
    assert not dead_blob.exists() and not dead_layout.exists()
    assert live_blob.exists() and user_dir.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ocipatch-")] == [
        user_dir.name
    ]


def _fake_cache(cache: Path) -> dict[str, list[Path]]:
    """One entry of every kind, by kind: what each is made of on disk."""
    h = "ab" * 32
    made = {
        "blob": [cache / "blobs" / "sha256" / h],
        "layer index": [cache / "index" / f"sha256-{h}.index.json", cache / "index" / "files" / f"sha256-{h}"],
        "result": [cache / "results" / ("cd" * 32 + ".json")],
        "repository file": [cache / "repos" / "apt-repos" / "blobs" / "sha256" / h,
                            cache / "repos" / "apt-repos" / "release-state" / "x.json"],
        "package": [cache / "apt" / "debs" / "ocp-lib_2.0_amd64.deb"],
        "apt lists": [cache / "apt" / "apt-lists" / "6c59dda7a34cd4f6"],
        "apt sources": [cache / "apt" / "apt-sources" / "6c59dda7a34cd4f6"],
        "log": [cache / "apt" / "logs" / "apt-20261202T000000-1.log"],
        "tooling tree": [cache / "tooling" / h],
    }  # fmt: skip
    for paths in made.values():
        for p in paths:
            p.parent.mkdir(parents=True, exist_ok=True)
            if p.suffix or p.parent.name in ("sha256", "logs"):
                p.write_bytes(b"x" * 5000)
            else:
                (p / "partial").mkdir(parents=True)
                (p / "data").write_bytes(b"y" * 5000)
    made["result"][0].write_text(json.dumps({"layer_digest": f"sha256:{h}"}))
    (made["tooling tree"][0] / ".ocipatch-complete").write_text("debian:12-slim\n")
    return made


def test_every_kind_is_an_entry_and_goes_when_old(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    made = _fake_cache(cache)
    info = json.loads(cli("cache", "info", "--json", "--cache-dir", str(cache)).stdout)
    assert {k: v["entries"] for k, v in info["kinds"].items()} == {
        k: len(v) if k == "repository file" else 1 for k, v in made.items()
    }
    for p in all_paths(cache):
        age(p, 3)
    old = ["package", "apt lists", "log", "tooling tree", "layer index", "blob"]
    for kind in old:
        marker = made[kind][0]
        age(marker / ".ocipatch-complete" if kind == "tooling tree" else marker, 10)
    doc = prune(cache, "--older-than", "1w")
    gone = sorted(e["kind"] for e in doc["removed"])
    assert gone == sorted([*old, "result"]), "and the result naming the removed blob"
    for kind, paths in made.items():
        for p in paths:
            assert p.exists() == (kind not in gone), (kind, p)
    assert doc["bytes_freed"] >= 6 * 4096


@pytest.mark.parametrize(
    "args, says",
    [
        (["--max-size", "10X"], "invalid --max-size '10X'"),
        (["--max-size", "-1G"], "invalid --max-size"),
        (["--older-than", "7"], "invalid --older-than '7'"),
        (["--older-than", "soon"], "invalid --older-than"),
    ],
)
def test_bad_sizes_and_ages(tmp_path: Path, args: list[str], says: str) -> None:
    r = cli("cache", "prune", "--cache-dir", str(tmp_path), *args, code=2)
    assert r.stdout == ""
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f"ocipatch: error: {says}"), line


def test_sizes_and_ages_in_every_spelling(tmp_path: Path) -> None:
    from ocipatch.cacheprune import parse_age, parse_size

    assert parse_size("500M") == parse_size("500MiB") == parse_size("500mb") == 500 << 20
    assert parse_size("10G") == 10 << 30 and parse_size("1.5g") == 3 << 29
    assert parse_size("4096") == 4096 and parse_size("0") == 0
    assert (
        parse_age("7d") == 7 * DAY and parse_age("12h") == 12 * 3600 and parse_age("2w") == 14 * DAY
    )
    assert parse_age("30m") == 1800 and parse_age("1.5h") == 5400


# --- a real cache ------------------------------------------------------------------------------


def patch_into(env: Env, report: Path, tag: str, cache: Path) -> dict[str, Any]:
    return Run.start(env, report, tag, cache=cache).finish()


def all_paths(cache: Path) -> list[Path]:
    return [cache, *cache.rglob("*")]


def age_all(cache: Path, days: float) -> None:
    for p in all_paths(cache):
        if not p.is_symlink():
            age(p, days)


def usage(p: Path) -> int:
    return p.lstat().st_blocks * 512


def layer_of_result(cache: Path) -> Path:
    [result] = (cache / "results").glob("*.json")
    alg, _, hexpart = json.loads(result.read_text())["layer_digest"].partition(":")
    return cache / "blobs" / alg / hexpart


@pytest.fixture(scope="module")
def warm(env: Env, clean: Clean) -> dict[str, Any]:
    """One cache filled by a patch, and the clean digest of a second report (ocp-lib only)."""
    lib_only = env.report("lib-only", {"ocp-lib": "2.0"})
    warm_cache, clean2 = fresh(env, "cache-warm"), fresh(env, "cache-clean2")
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(patch_into, env, clean.report, "warm", warm_cache)
        b = pool.submit(patch_into, env, lib_only, "clean2", clean2)
        a.result()
        digest2 = b.result()["image"]["digest"]
    return {"cache": warm_cache, "lib_only": lib_only, "digest2": digest2}


def copy_cache(warm: dict[str, Any], env: Env, name: str) -> Path:
    dest = fresh(env, name)
    subprocess.run(["cp", "-a", f"{warm['cache']}/.", str(dest)], check=True)
    return dest


def test_info_covers_every_kind(env: Env, warm: dict[str, Any]) -> None:
    cache = warm["cache"]
    doc = json.loads(cli("cache", "info", "--json", "--cache-dir", str(cache)).stdout)
    kinds = doc["kinds"]
    for kind in ("blob", "layer index", "result", "repository file", "apt lists", "package"):
        assert kinds.get(kind, {}).get("entries", 0) > 0, (kind, kinds)
    du = int(subprocess.run(["du", "-s", "-B1", str(cache)], capture_output=True, text=True,
                            check=True).stdout.split()[0])  # fmt: skip
    assert 0.9 * du <= doc["bytes"] <= du, (doc["bytes"], du)
    assert doc["live_runs"] == 0
    text = cli("cache", "info", "--cache-dir", str(cache)).stdout
    assert "blob" in text and "live runs: 0" in text


def test_older_than_removes_exactly_the_old_entries(env: Env, warm: dict[str, Any]) -> None:
    cache = copy_cache(warm, env, "cache-old")
    age_all(cache, 3)
    patch_layer = layer_of_result(cache)
    debs = sorted((cache / "apt" / "debs").glob("*.deb"))
    old = [patch_layer, *debs[:2]]
    for p in old:
        age(p, 10)
    # The old .debs are hard links of repository files: one file, one last use.
    inodes = {p.stat().st_ino for p in old}
    same = {p for p in cache.rglob("*") if p.is_file() and p.stat().st_ino in inodes}
    dry = prune(cache, "--older-than", "7d", "--dry-run")
    assert all(p.exists() for p in old), "--dry-run removes nothing"
    doc = prune(cache, "--older-than", "7d")
    assert doc["removed"] == dry["removed"]
    removed = {cache / e["path"] for e in doc["removed"]}
    assert {p for p in removed if p.suffix != ".json"} == same
    assert [e["kind"] for e in doc["removed"] if e["kind"] == "result"] == ["result"], (
        "the result naming the pruned layer goes with it"
    )
    assert not any(p.exists() for p in removed)
    assert doc["bytes_freed"] == sum(e["bytes"] for e in doc["removed"]) > 0
    again = prune(cache, "--older-than", "7d")
    assert again["removed"] == [] and again["bytes_freed"] == 0


def test_max_size_removes_least_recently_used_first(env: Env, warm: dict[str, Any]) -> None:
    cache = copy_cache(warm, env, "cache-lru")
    age_all(cache, 5)
    patch_layer = layer_of_result(cache)
    blobs = sorted(
        (p for p in (cache / "blobs" / "sha256").iterdir() if p != patch_layer),
        key=usage,
        reverse=True,
    )
    for i, p in enumerate(blobs):  # the biggest blob the least recently used
        age(p, 30 - i)
    before = json.loads(cli("cache", "info", "--json", "--cache-dir", str(cache)).stdout)["bytes"]
    limit = before - usage(blobs[0]) - usage(blobs[1])
    doc = prune(cache, "--max-size", str(limit))
    assert [cache / e["path"] for e in doc["removed"]] == blobs[:2]
    assert not blobs[0].exists() and not blobs[1].exists() and blobs[2].exists()
    after = json.loads(cli("cache", "info", "--json", "--cache-dir", str(cache)).stdout)["bytes"]
    assert after <= limit and doc["bytes_after"] == after
    # Text output: what went and what it freed.
    text = cli("cache", "prune", "--max-size", "1K", "--dry-run", "--cache-dir", str(cache)).stdout
    assert text.splitlines()[-1].startswith("would free ") and "would remove blob " in text


def test_a_result_whose_layer_was_pruned_is_a_miss(
    env: Env, clean: Clean, warm: dict[str, Any]
) -> None:
    """The patch is made again, with the same digest, whether prune removed the layer (and its
    result) or the layer alone vanished."""
    by_prune = copy_cache(warm, env, "cache-hit-pruned")
    age(layer_of_result(by_prune), 30)
    doc = prune(by_prune, "--older-than", "7d")
    assert {e["kind"] for e in doc["removed"]} == {"blob", "result"}
    by_hand = copy_cache(warm, env, "cache-hit-gone")
    layer_of_result(by_hand).unlink()
    with ThreadPoolExecutor(2) as pool:
        outs = list(
            pool.map(
                lambda c: patch_into(env, clean.report, c.name.split("-")[2], c),
                [by_prune, by_hand],
            )
        )
    for out in outs:
        assert out["image"]["digest"] == clean.digest
        assert not any("reused" in n for n in out["notes"]), out["notes"]
    assert layer_of_result(by_hand).is_file(), "the layer is cached again"
    # And with the layer back, the next run is a hit again.
    hit = patch_into(env, clean.report, "hit-again", by_hand)
    assert hit["image"]["digest"] == clean.digest
    assert any("reused" in n for n in hit["notes"]), hit["notes"]


def test_prune_while_a_patch_runs(env: Env, clean: Clean, warm: dict[str, Any], work: Path) -> None:
    """An old cache (every entry 10 days unused); a patch stopped mid-unpack; `prune
    --max-size 0` removes everything the run has not used; the run, continued, still writes
    the image a clean run writes."""
    cache = copy_cache(warm, env, "cache-busy")
    age_all(cache, 10)
    run = Run.start(env, warm["lib_only"], "busy", cache=cache, work=work)
    run.wait_for("unpacking", has_rootfs(work))
    run.signal(signal.SIGSTOP)
    try:
        doc = prune(cache, "--max-size", "0", work=work)
    finally:
        run.signal(signal.SIGCONT)
    removed = {e["kind"] for e in doc["removed"]}
    assert {"result", "package", "apt lists"} <= removed, removed
    assert doc["kept_in_use"] > 0, "the run's image layers and index are kept"
    assert doc["leftovers"] == [], "the live run's tree is not a leftover"
    assert run.finish()["image"]["digest"] == warm["digest2"]


def test_prune_waits_for_nothing_and_takes_little_time(env: Env, warm: dict[str, Any]) -> None:
    cache = warm["cache"]
    t0 = time.monotonic()
    runs.sweep_all(cache)
    took = time.monotonic() - t0
    assert took < 0.05, f"the start-of-run sweep took {took * 1000:.1f} ms"
    fd = os.open(cache / "runs" / "prune.lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # nobody holds it once prune is done
    finally:
        os.close(fd)
