"""Issue #9: a killed or interrupted `ocipatch patch` leaves nothing a later run does not clean,
and runs sharing one cache do not disturb each other.

The real hermetic test image (tests/hermetic.py) in the real registry, patched by the CLI in
child processes. Points to kill at are found by watching for what the run makes (its scratch
tree, apt's log, a half-written blob), never by sleeping. Slow cases run in threads.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import tests.test_patch_hermetic as hermetic
from ocipatch import runs
from tests.plugins.aptrepo import scratch_dir
from tests.test_patch_hermetic import OCIPATCH, Env

env = hermetic.env  # the module-scoped fixture: the hermetic image in the registry

FIXES = {"ocp-lib": "2.0", "ocp-dep": "2.0"}
OWNED = re.compile(r"^patch-(\d+)\.\d+\.[0-9a-f]{8}-")


@dataclass
class Clean:
    digest: str  # what a clean run on a cold cache writes for the report
    report: Path


@pytest.fixture(scope="module")
def clean(env: Env) -> Clean:
    report = env.report("faults", FIXES)
    r = Run.start(env, report, "clean", cache=fresh(env, "cache-clean"))
    out = r.finish(0)
    return Clean(out["image"]["digest"], report)


@pytest.fixture
def work(env: Env) -> Iterator[Path]:
    """A scratch base ($OCIPATCH_WORK_DIR) of the test's own: what a run leaves is seen here."""
    d = Path(tempfile.mkdtemp(prefix="ocipatch-faults-", dir=scratch_dir()))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def fresh(env: Env, name: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=env.work))
    return d


def run_env(work: Path | None) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "DOCKER_"))}
    environ.pop("OCIPATCH_WORK_DIR", None)
    if work is not None:
        environ["OCIPATCH_WORK_DIR"] = str(work)
    return environ


@dataclass
class Run:
    proc: subprocess.Popen[str]
    tag: str

    @classmethod
    def start(
        cls, env: Env, report: Path, tag: str, *, cache: Path, work: Path | None = None
    ) -> Run:
        cmd = [str(OCIPATCH), "patch", "--json", "-q", "--cache-dir", str(cache)]
        cmd += ["-i", env.ref, "-r", str(report), "-t", tag]
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=run_env(work),
            cwd="/",
            start_new_session=True,  # signals go to this process only, as `kill PID` sends them
        )
        return cls(proc, tag)

    def finish(self, code: int | None = 0) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=300)
        if code is not None:
            assert self.proc.returncode == code, (self.proc.returncode, err)
        return json.loads(out) if self.proc.returncode == 0 else {"stderr": err}

    def wait_for(
        self, what: str, found: Callable[[], bool], timeout: float = 120, every: float = 0.002
    ) -> None:
        """Poll until found(); fails if the run ends first."""
        end = time.monotonic() + timeout
        while not found():
            assert self.proc.poll() is None, f"the run ended before {what}: {self.proc.stderr}"
            assert time.monotonic() < end, f"no {what} after {timeout} s"
            time.sleep(every)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)


def scratch(work: Path, pid: int | None = None) -> list[Path]:
    """The scratch trees in work (of the run with pid)."""
    out = []
    for p in work.iterdir() if work.is_dir() else []:
        m = OWNED.match(p.name)
        if m and (pid is None or int(m.group(1)) == pid):
            out.append(p)
    return out


def has_rootfs(work: Path) -> Callable[[], bool]:
    # A few entries in: the unpack is under way (the tree exists before the first file lands).
    return lambda: any((d / "rootfs" / "usr").is_dir() for d in scratch(work))


def apt_running(work: Path) -> Callable[[], bool]:
    return lambda: any((d / "apt.log").is_file() for d in scratch(work))


def blob_writing(cache: Path) -> Callable[[], bool]:
    blobs = cache / "blobs" / "sha256"
    return lambda: blobs.is_dir() and any(n.startswith(".tmp-") for n in os.listdir(blobs))


def registry_digest(env: Env, tag: str) -> str | None:
    host, _, repo = env.repo.partition("/")
    req = urllib.request.Request(
        f"http://{host}/v2/{repo}/manifests/{tag}",
        headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json, "
            "application/vnd.docker.distribution.manifest.v2+json, "
            "application/vnd.oci.image.index.v1+json"
        },
        method="HEAD",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return str(resp.headers["Docker-Content-Digest"])
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# --- SIGKILL -----------------------------------------------------------------------------------

KILL_POINTS = {
    "unpacking": lambda work, cache: has_rootfs(work),
    "apt": lambda work, cache: apt_running(work),
    "writing a blob": lambda work, cache: blob_writing(cache),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_leftovers_are_removed_by_the_next_run(
    env: Env, clean: Clean, work: Path, point: str
) -> None:
    """SIGKILL (the OOM killer, `timeout -s KILL`) runs no cleanup: the scratch tree or the
    half-written blob stays; the next patch on the same cache removes it and succeeds."""
    cache = fresh(env, "cache-kill")
    run = Run.start(env, clean.report, "kill-" + point.replace(" ", "-"), cache=cache, work=work)
    run.wait_for(point, KILL_POINTS[point](work, cache))
    run.signal(signal.SIGKILL)
    run.proc.wait()
    pid = run.proc.pid
    left = scratch(work, pid) + [
        p for p in (cache / "blobs" / "sha256").glob(f".tmp-{pid}.*") if point == "writing a blob"
    ]
    assert left, "the killed run left its scratch tree or temporary blob"
    size = sum(f.stat().st_size for p in left for f in [p, *p.rglob("*")] if f.is_file())

    again = Run.start(
        env, clean.report, "kill-" + point.replace(" ", "-"), cache=cache, work=work
    ).finish()
    assert again["image"]["digest"] == clean.digest
    assert not any(p.exists() for p in left), f"leftovers of the killed run: {left}"
    assert scratch(work) == [], "the successful run removed its own tree"
    assert size > 0 or point == "writing a blob"


def test_prune_removes_a_killed_runs_tree_and_says_so(env: Env, clean: Clean, work: Path) -> None:
    cache = fresh(env, "cache-kill-prune")
    run = Run.start(env, clean.report, "kill-prune", cache=cache, work=work)
    run.wait_for("unpacking", has_rootfs(work))
    run.signal(signal.SIGKILL)
    run.proc.wait()
    [left] = scratch(work, run.proc.pid)
    r = subprocess.run(
        [str(OCIPATCH), "cache", "prune", "--json", "--cache-dir", str(cache)],
        capture_output=True, text=True, env=run_env(work), check=True,
    )  # fmt: skip
    doc = json.loads(r.stdout)
    gone = {Path(x["path"]): x["bytes"] for x in doc["leftovers"]}
    assert left in gone and gone[left] > 100_000, doc
    assert all(f"{run.proc.pid}." in p.name for p in gone), "only the killed run's (tree, record)"
    assert doc["bytes_freed"] == sum(gone.values())
    assert doc["removed"] == [], "no limit given: only leftovers go"
    assert not left.exists()


def test_default_scratch_in_dev_shm_is_cleaned_by_any_command(env: Env, clean: Clean) -> None:
    """Without $OCIPATCH_WORK_DIR the tree is in /dev/shm/ocipatch-UID (memory, until
    reboot): a killed run's goes at the start of the next command, here an inspect."""
    base = runs.shm_base()
    cache = fresh(env, "cache-shm")
    run = Run.start(env, clean.report, "kill-shm", cache=cache)
    pid = run.proc.pid
    run.wait_for("unpacking in /dev/shm", lambda: any(
        (d / "rootfs" / "usr").is_dir() for d in scratch(base, pid)))  # fmt: skip
    run.signal(signal.SIGKILL)
    run.proc.wait()
    [left] = scratch(base, pid)
    subprocess.run(
        [str(OCIPATCH), "inspect", "--json", "--cache-dir", str(cache), env.ref],
        capture_output=True, text=True, env=run_env(None), check=True,
    )  # fmt: skip
    assert not left.exists()


def test_a_live_runs_tree_is_never_removed(env: Env, clean: Clean, work: Path) -> None:
    """A run stopped (SIGSTOP) in the middle of its unpack: another patch and a prune on the
    same cache and scratch base leave its tree alone; continued, it ends with the right image."""
    cache = fresh(env, "cache-live")
    a = Run.start(env, clean.report, "live-a", cache=cache, work=work)
    a.wait_for("unpacking", has_rootfs(work))
    a.signal(signal.SIGSTOP)
    try:
        [tree] = scratch(work, a.proc.pid)
        b = Run.start(env, clean.report, "live-b", cache=cache, work=work).finish()
        assert b["image"]["digest"] == clean.digest
        subprocess.run(
            [str(OCIPATCH), "cache", "prune", "--max-size", "0", "--cache-dir", str(cache)],
            capture_output=True, text=True, env=run_env(work), check=True,
        )  # fmt: skip
        assert tree.is_dir() and (tree / "rootfs").is_dir(), "a live run's tree was removed"
    finally:
        a.signal(signal.SIGCONT)
    assert a.finish()["image"]["digest"] == clean.digest
    assert scratch(work) == []


# --- SIGINT ------------------------------------------------------------------------------------


def written(env: Env, tag: str) -> Callable[[], bool]:
    return lambda: registry_digest(env, tag) is not None


@pytest.mark.parametrize(
    "point, group",
    [("unpacking", False), ("apt", False), ("apt", True), ("tag written", False)],
    ids=["unpacking", "apt", "apt, whole group", "tag written"],
)
def test_sigint(env: Env, clean: Clean, work: Path, point: str, group: bool) -> None:
    """Ctrl-C: exit 130 with one line, the scratch tree gone, the destination absent (or
    complete when the tag was already written), the source unchanged. A terminal sends it to
    the whole process group (apt and the sandbox too), `kill -INT` to ocipatch alone."""
    source_before = registry_digest(env, "1")
    tag = "int-" + point.replace(" ", "-") + ("-group" if group else "")
    cache = fresh(env, "cache-int")
    run = Run.start(env, clean.report, tag, cache=cache, work=work)
    found = {
        "unpacking": has_rootfs(work),
        "apt": apt_running(work),
        "tag written": written(env, tag),
    }
    run.wait_for(point, found[point], timeout=180, every=0.02 if point == "tag written" else 0.002)
    if group:
        os.killpg(run.proc.pid, signal.SIGINT)
    else:
        run.signal(signal.SIGINT)
    out, err = run.proc.communicate(timeout=120)
    if point == "tag written":
        assert run.proc.returncode in (0, 130), err
        assert registry_digest(env, tag) == clean.digest, "a written tag is complete"
    else:
        assert run.proc.returncode == 130, err
        assert one_line(err) == "ocipatch: error: interrupted"
        assert out == ""
        assert registry_digest(env, tag) is None, "nothing pushed"
    if run.proc.returncode == 130:
        assert one_line(err) == "ocipatch: error: interrupted"
    assert scratch(work) == [], "the interrupted run removed its scratch tree"
    assert not list((cache / "blobs" / "sha256").glob(".tmp-*"))
    assert not list((cache / "runs").glob(".run-*")), "the run's registration is gone"
    assert registry_digest(env, "1") == source_before


# --- runs sharing one cache --------------------------------------------------------------------


@pytest.mark.parametrize(
    "tags",
    [("conc-a", "conc-b", "conc-c"), ("conc-2", "conc-2"), ("conc-3", "conc-3", "conc-3")],
    ids=["3 tags", "2 same tag", "3 same tag"],
)
def test_concurrent_patches_share_one_cache(
    env: Env, clean: Clean, work: Path, tags: tuple[str, ...]
) -> None:
    """Two or three patches at once on one cold cache (racing to fetch, index, unpack, plan,
    run apt and write): all succeed with the very image a clean run writes."""
    cache = fresh(env, "cache-conc")
    runs = [Run.start(env, clean.report, t, cache=cache, work=work) for t in tags]
    with ThreadPoolExecutor(len(runs)) as pool:
        outs = list(pool.map(lambda r: r.finish(), runs))
    assert [o["image"]["digest"] for o in outs] == [clean.digest] * len(tags)
    for t in set(tags):
        assert registry_digest(env, t) == clean.digest
    assert scratch(work) == []
    assert not list(cache.rglob(".tmp-*")), "no temporary file left"
