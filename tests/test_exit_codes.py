"""Exit codes are the documented ones (docs/cli.md) in every mode.

Each case runs the installed `ocipatch` as a user would and checks what a script sees: the exit
code, exactly one `ocipatch: error:` line, no traceback; and with --debug the same code, the
same last line and a traceback before it. Images are small synthetic layouts (tests/synth.py);
every case fails before a package manager would run.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import synth
from tests.archive import trivy_report
from tests.test_image import debianish_layers

OCIPATCH = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "ocipatch"

pytestmark = pytest.mark.skipif(
    not OCIPATCH.is_file(), reason="tools/setup makes .venv/bin/ocipatch"
)


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(OCIPATCH), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1", **(env or {})},
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("ocipatch: error:")]


def assert_one_line(r: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """The exit code, one error line holding every needle, no traceback; the line."""
    assert r.returncode == code, (r.returncode, r.stderr)
    errors = error_lines(r.stderr)
    assert len(errors) == 1, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def assert_debug_same(
    args: list[str], code: int, line: str, env: dict[str, str] | None = None
) -> None:
    """--debug adds a traceback and changes neither the code nor the error line."""
    r = run(*args, "--debug", env=env)
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback (most recent call last)" in r.stderr, r.stderr
    assert error_lines(r.stderr) == [line], r.stderr
    assert r.stderr.rstrip("\n").splitlines()[-1] == line


@dataclass
class Case:
    """A command line built in tmp_path, its documented code and words its line must hold."""

    make: Callable[[Path], list[str]]
    code: int
    needles: tuple[str, ...]
    env: Callable[[Path], dict[str, str]] | None = None
    debug: bool = True  # also run with --debug (off where a run waits out a timeout)


def _layout(tmp: Path) -> Path:
    if not (tmp / "layout").exists():
        synth.write_layout(tmp / "layout", debianish_layers(), tag="v1")
    return tmp / "layout"


def _copy(tmp: Path, dest: str) -> None:
    r = run("copy", f"oci:{_layout(tmp)}:v1", dest, "--cache-dir", str(tmp / "c"))
    assert r.returncode == 0, r.stderr


def _docker_archive(tmp: Path) -> Path:
    if not (tmp / "d.tar").exists():
        _copy(tmp, f"docker-archive:{tmp / 'd.tar'}:app:v1")
    return tmp / "d.tar"


def _oci_archive(tmp: Path) -> Path:
    if not (tmp / "o.tar").exists():
        _copy(tmp, f"oci-archive:{tmp / 'o.tar'}:v1")
    return tmp / "o.tar"


def _cut(src: Path, dst: Path, keep: int) -> Path:
    dst.write_bytes(src.read_bytes()[:keep])
    return dst


def _inspect(ref: Callable[[Path], str]) -> Callable[[Path], list[str]]:
    return lambda tmp: ["inspect", ref(tmp), "--cache-dir", str(tmp / "c")]


def _patch(report: Callable[[Path], Path], *extra: str) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        return [
            "patch",
            "-q",
            "-i",
            f"oci:{_layout(tmp)}:v1",
            "-r",
            str(report(tmp)),
            "--cache-dir",
            str(tmp / "c"),
            *extra,
        ]

    return make


def _file(name: str, content: bytes) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        (tmp / name).write_bytes(content)
        return tmp / name

    return make


def _sparse(tmp: Path) -> Path:
    p = tmp / "huge.json"
    with p.open("wb") as f:
        f.truncate(3 << 30)  # 3 GiB, no blocks used
    return p


def _fifo(tmp: Path) -> Path:
    p = tmp / "fifo.json"
    os.mkfifo(p)
    return p


def _index_json(tmp: Path, data: bytes) -> str:
    d = tmp / "broken"
    synth.write_layout(d, debianish_layers(), tag="v1")
    (d / "index.json").write_bytes(data)
    return f"oci:{d}"


def _bad_digest_layout(tmp: Path) -> str:
    d = tmp / "traversal"
    built = synth.write_layout(d, debianish_layers(), tag="v1")
    blob = d / "blobs" / "sha256" / built.manifest_digest.split(":")[1]
    manifest = json.loads(blob.read_bytes())
    manifest["layers"][0]["digest"] = "sha256:../../../../etc/passwd"
    data = json.dumps(manifest).encode()
    digest = synth.sha(data)
    (d / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
    index = json.loads((d / "index.json").read_text())
    index["manifests"][0].update(digest=digest, size=len(data))
    (d / "index.json").write_text(json.dumps(index))
    return f"oci:{d}:v1"


def _short_layer_blob(tmp: Path) -> str:
    d = tmp / "short"
    built = synth.write_layout(d, debianish_layers(), tag="v1")
    blob = d / "blobs" / "sha256" / built.layer_digests[0].split(":")[1]
    blob.write_bytes(blob.read_bytes()[:40])
    return f"oci:{d}:v1"


ALPINE_REPORT = {
    "apiVersion": "v1alpha1",
    "metadata": {"os": {"type": "alpine", "version": "3.19.1"}, "config": {"arch": "amd64"}},
    "updates": [
        {
            "name": "musl",
            "installedVersion": "1.2.4-r2",
            "fixedVersion": "1.2.4-r3",
            "vulnerabilityID": "CVE-2099-0001",
        }
    ],
}


def _trivy_of(family: str, name: str) -> bytes:
    doc = trivy_report({"openssl": "3.0.7-1"}, {"openssl": "3.0.7-2"})
    doc["Metadata"]["OS"] = {"Family": family, "Name": name}  # type: ignore[index]
    return json.dumps(doc).encode()


CASES: dict[str, Case] = {
    # Archives and layouts that are not whole images: the bad-image code, naming the file.
    "docker-archive cut inside a member": Case(
        _inspect(lambda t: f"docker-archive:{_cut(_docker_archive(t), t / 'cut.tar', 3000)}"),
        8,
        ("cut.tar is truncated",),
    ),
    "docker-archive cut between members": Case(
        _inspect(lambda t: f"docker-archive:{_cut(_docker_archive(t), t / 'cut.tar', 2560)}"),
        8,
        ("cut.tar", "truncated"),
    ),
    "oci-archive cut between members": Case(
        _inspect(lambda t: f"oci-archive:{_cut(_oci_archive(t), t / 'cut.tar', 2560)}"),
        8,
        ("cut.tar", "missing from the archive", "looks truncated"),
    ),
    "oci-archive cut inside a member": Case(
        _inspect(lambda t: f"oci-archive:{_cut(_oci_archive(t), t / 'cut.tar', 3000)}"),
        8,
        ("cut.tar",),
    ),
    "an archive that is not a tar": Case(
        _inspect(lambda t: f"docker-archive:{_file('text.tar', b'hello, world')(t)}"),
        8,
        ("text.tar is not a complete tar archive",),
    ),
    "a compressed docker-archive": Case(
        _inspect(
            lambda t: (
                "docker-archive:"
                + str(_file("d.tar.gz", gzip.compress(_docker_archive(t).read_bytes()))(t))
            )
        ),
        8,
        ("d.tar.gz is gzip-compressed",),
    ),
    "index.json nested too deeply": Case(
        _inspect(lambda t: _index_json(t, b"[" * 100_000)), 8, ("index.json", "nested too deeply")
    ),
    "index.json with a 5000-digit number": Case(
        _inspect(lambda t: _index_json(t, b'{"schemaVersion": ' + b"9" * 5000 + b"}")),
        8,
        ("index.json", "number longer than"),
    ),
    "index.json not UTF-8": Case(
        _inspect(lambda t: _index_json(t, b'{"a": "\xff"}')), 8, ("index.json", "not UTF-8")
    ),
    "a layer digest that is a path": Case(
        _inspect(_bad_digest_layout), 8, ("malformed layer descriptor", "etc/passwd")
    ),
    # A layout's blob shorter than its descriptor says: content not matching its digest/size.
    "a short layer blob in a layout": Case(
        _inspect(_short_layer_blob), 7, ("has 40 bytes, expected",)
    ),
    # Reports past what the reader takes: the report code, size ones naming the limit.
    "report with a 5000-digit number": Case(
        _patch(_file("big-int.json", b'{"SchemaVersion": ' + b"1" * 5000 + b"}")),
        10,
        ("big-int.json", "number longer than 4300 digits"),
    ),
    "report nested too deeply": Case(
        _patch(_file("deep.json", b"[" * 100_000)), 10, ("deep.json", "nested too deeply")
    ),
    "report of non-UTF-8 bytes": Case(
        _patch(_file("latin1.json", b'{"SchemaVersion": 2, "x": "caf\xe9"}')),
        10,
        ("latin1.json", "not UTF-8", "0xe9"),
    ),
    "report larger than the limit": Case(
        _patch(_sparse), 10, ("huge.json", "larger than the 256 MiB limit")
    ),
    "report is /dev/zero": Case(
        _patch(lambda t: Path("/dev/zero")), 10, ("/dev/zero is a character device", "256 MiB")
    ),
    "report is a FIFO nobody writes to": Case(
        _patch(_fifo),
        10,
        ("fifo.json is a named pipe nobody opened for writing within 10 s",),
        debug=False,
    ),
    "report does not exist": Case(
        _patch(lambda t: t / "absent.json"), 10, ("absent.json does not exist",)
    ),
    "report is a directory": Case(_patch(lambda t: t), 10, ("is a directory",)),
    # Another image's report is the report code whatever its package manager.
    "alpine report on a debian image": Case(
        _patch(_file("alpine.json", json.dumps(ALPINE_REPORT).encode())),
        10,
        ("the report is for an alpine 3.19.1 image", "layout:v1 is debian 12", "scan this image"),
    ),
    # (Every ecosystem a report can name is patched now: a report for another distro is
    # checked once the tree is unpacked, in one pass over the layers.)
    "rocky report on a debian image": Case(
        _patch(_file("rocky.json", _trivy_of("rocky", "8.5"))),
        10,
        ("the report is for a rocky 8.5 image", "is debian 12"),
    ),
    "ubuntu report on a debian image": Case(
        _patch(_file("ubuntu.json", _trivy_of("ubuntu", "22.04"))),
        10,
        ("the report is for an ubuntu 22.04 image",),
    ),
    # Flag values checked by ocipatch: the usage code.
    "bad --platform": Case(
        lambda t: ["inspect", f"oci:{_layout(t)}:v1", "--platform", "linux", "--cache-dir", str(t)],
        2,
        ("invalid platform 'linux'",),
    ),
    "negative --timeout": Case(
        lambda t: [
            "patch",
            "-i",
            f"oci:{_layout(t)}:v1",
            "--timeout",
            "-5m",
            "--cache-dir",
            str(t),
        ],
        2,
        ("invalid --timeout '-5m'",),
    ),
    "nan --timeout": Case(
        lambda t: [
            "patch",
            "-i",
            f"oci:{_layout(t)}:v1",
            "--timeout",
            "nan",
            "--cache-dir",
            str(t),
        ],
        2,
        ("invalid --timeout 'nan'",),
    ),
    "a registry port out of range": Case(
        lambda t: ["inspect", "localhost:99999/app:1", "--cache-dir", str(t)],
        2,
        ("invalid registry host 'localhost:99999'",),
    ),
    "a cache dir that cannot be made": Case(
        lambda t: ["inspect", f"oci:{_layout(t)}:v1", "--cache-dir", str(_file("f", b"")(t) / "c")],
        2,
        ("--cache-dir", "not a usable directory"),
    ),
    "OCIPATCH_WORK_DIR that cannot be made": Case(
        lambda t: ["patch", "-q", "-i", f"oci:{_layout(t)}:v1", "--cache-dir", str(t / "c")],
        2,
        ("OCIPATCH_WORK_DIR", "not a usable directory"),
        env=lambda t: {"OCIPATCH_WORK_DIR": str(_file("f", b"")(t) / "w")},
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_documented_code_one_line(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    args = case.make(tmp_path)
    env = case.env(tmp_path) if case.env else None
    line = assert_one_line(run(*args, env=env), case.code, *case.needles)
    if case.debug:
        assert_debug_same(args, case.code, line, env)


def test_debug_before_the_command_name(tmp_path: Path) -> None:
    args = ["inspect", f"oci:{tmp_path / 'absent'}", "--cache-dir", str(tmp_path / "c")]
    line = assert_one_line(run(*args), 5, "no such directory")
    r = run("--debug", *args)
    assert r.returncode == 5 and "Traceback" in r.stderr and error_lines(r.stderr) == [line]


# --- click's own usage errors: one line, its hint kept, exit 2, no usage block ----------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["patch", "-i", "x", "--reprot", "r.json"], ("No such option", "--reprot", "--report")),
        (["patch", "-r", "r.json"], ("Missing option", "--image")),
        (["patch", "-i", "x", "--compression", "xz"], ("'xz' is not one of", "gzip")),
        (["inspect"], ("Missing argument 'IMAGE'",)),
        (["inspct", "x"], ("No such command 'inspct'", "Did you mean 'inspect'")),
        (["--bogus", "inspect", "x"], ("No such option", "--bogus")),
        (["patch", "-i"], ("'-i' requires an argument",)),
    ],
)
def test_click_usage_errors_are_one_line(args: list[str], needles: tuple[str, ...]) -> None:
    r = run(*args)
    assert_one_line(r, 2, *needles)
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert "Usage:" not in r.stderr and r.stdout == ""


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["patch", "--help"], ["inspect", "-h"]])
def test_help_still_works(args: list[str]) -> None:
    r = run(*args)
    assert r.returncode == 0 and r.stdout.startswith("Usage: ocipatch") and r.stderr == ""


def test_version() -> None:
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("ocipatch, version")


# --- interrupts and internal errors ----------------------------------------------------------


def _wait_for_reader(fifo: Path, proc: subprocess.Popen[str]) -> int:
    """Open fifo's write end once ocipatch has opened its read end (ENXIO until then)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"ocipatch never opened the report: {proc.communicate()}")


@pytest.mark.parametrize("debug", [False, True])
def test_interrupt_is_130(tmp_path: Path, debug: bool) -> None:
    """Ctrl-C while ocipatch waits for a report on a pipe: 'interrupted', exit 130."""
    fifo = _fifo(tmp_path)
    args = _patch(lambda t: fifo)(tmp_path) + (["--debug"] if debug else [])
    proc = subprocess.Popen(
        [str(OCIPATCH), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    fd = _wait_for_reader(fifo, proc)
    try:
        time.sleep(0.3)  # into the wait for the first byte
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        os.close(fd)
    assert proc.returncode == 130, stderr
    assert error_lines(stderr) == ["ocipatch: error: interrupted"], stderr
    assert ("Traceback" in stderr) is debug, stderr


INTERNAL = """
import sys
import ocipatch.inspect
def bug(*args, **kwargs):
    raise ZeroDivisionError("a bug")
ocipatch.inspect.inspect_image = bug
from ocipatch.cli import main
sys.argv = ["ocipatch", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("debug", [False, True])
def test_internal_error_is_70(tmp_path: Path, debug: bool) -> None:
    """A bug (no real input reaches one on purpose, so one is planted in a copy of the entry
    point): exit 70 with one line, a traceback only with --debug."""
    args = ["inspect", f"oci:{_layout(tmp_path)}:v1", "--cache-dir", str(tmp_path / "c")]
    r = subprocess.run(
        [str(OCIPATCH.parent / "python"), "-c", INTERNAL, *args, *(["--debug"] if debug else [])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 70, r.stderr
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and "internal error: ZeroDivisionError: a bug" in lines[0], r.stderr
    assert ("Traceback" in r.stderr) is debug, r.stderr


# --- out of space: the directory that filled, and what to set --------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (needs root to mount)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr!r}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _big_layout(tmp: Path, data: bytes) -> str:
    layers = debianish_layers()
    layers[0].append(synth.f("usr/lib/big", data))
    synth.write_layout(tmp / "big", layers, tag="v1")
    return f"oci:{tmp / 'big'}:v1"


def test_scratch_full_names_ocipatch_work_dir(tmp_path: Path, small_fs: Path) -> None:
    """4 MiB of zeros (a tiny gzip layer) do not unpack into 2 MiB of scratch."""
    args = ["patch", "-q", "-i", _big_layout(tmp_path, bytes(4 << 20))]
    args += ["--cache-dir", str(tmp_path / "c"), "--sandbox", "none"]
    env = {"OCIPATCH_WORK_DIR": str(small_fs)}
    line = assert_one_line(
        run(*args, env=env), 15, f"the scratch directory {small_fs}", "is full", "OCIPATCH_WORK_DIR"
    )
    assert_debug_same(args, 15, line, env)
    assert list(small_fs.iterdir()) == [], "the half-unpacked tree is removed"


def test_cache_full_names_cache_dir(tmp_path: Path, small_fs: Path) -> None:
    """A 3 MiB incompressible layer read from an archive goes through the cache: it does not fit."""
    archive = tmp_path / "big.tar"
    r = run("copy", _big_layout(tmp_path, os.urandom(3 << 20)), f"docker-archive:{archive}:big:v1")
    assert r.returncode == 0, r.stderr
    args = ["inspect", f"docker-archive:{archive}", "--cache-dir", str(small_fs / "cache")]
    line = assert_one_line(
        run(*args), 15, f"the cache directory {small_fs / 'cache'}", "--cache-dir"
    )
    assert_debug_same(args, 15, line)


def test_destination_full_names_it(tmp_path: Path, small_fs: Path) -> None:
    src = _big_layout(tmp_path, os.urandom(3 << 20))
    args = ["copy", src, f"oci:{small_fs / 'out'}:v1", "--cache-dir", str(tmp_path / "c")]
    assert_one_line(run(*args), 15, f"the destination directory {small_fs / 'out'}", "is full")


def test_report_from_a_pipe_is_read(tmp_path: Path) -> None:
    """`-r /dev/stdin` reads what the pipe carries (here another image's report: exit 10)."""
    args = _patch(lambda t: Path("/dev/stdin"))(tmp_path)
    r = subprocess.run(
        [str(OCIPATCH), *args],
        input=json.dumps(ALPINE_REPORT),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line(r, 10, "the report is for an alpine 3.19.1 image")
