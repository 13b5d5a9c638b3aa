"""The sandboxes for real: bwrap and proot over a tiny rootfs (host /usr bound read-only) and
over a real Debian bookworm minbase rootfs, as root and as an unprivileged user (nobody)."""

from __future__ import annotations

import errno
import http.server
import json
import os
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyseccomp
import pytest

from ocipatch.distro.deb.aptrun import APT_NO_PRIVILEGE_DROP, apt_env
from ocipatch.errors import SandboxError, UsageError
from ocipatch.sandbox.base import (
    CommandTimeout,
    RunSpec,
    Sandbox,
    default_env,
    descendants,
    mount_point,
)
from ocipatch.sandbox.bwrap import BwrapSandbox
from ocipatch.sandbox.proot import ProotSandbox
from ocipatch.sandbox.seccomp import build_chown_filter, build_proot_filter, chown_filter
from ocipatch.sandbox.select import select_sandbox
from tests.plugins.aptrepo import UNPRIVILEGED_UID, run_in_sandbox
from tools.aptrepo import DebFile, DebSpec, build_deb
from tools.debian_rootfs import archive_sources

BACKENDS = ["bwrap", "proot"]
USERS = {"root": None, "nobody": UNPRIVILEGED_UID}
USR = (Path("/usr"), "/usr", True)


def _mkdtemp_public(prefix: str, parent: str = "/tmp") -> Path:
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    d.chmod(0o755)
    return d


@pytest.fixture
def mini_rootfs() -> Iterator[Callable[..., Path]]:
    """A rootfs of a few directories; the host's /usr is bound into it read-only."""
    made: list[Path] = []

    def make(owner: int | None = None) -> Path:
        parent = _mkdtemp_public("ocipatch-mini-")
        made.append(parent)
        root = parent / "root"
        for d in ("etc", "tmp", "proc", "dev", "root", "usr", "run", "var"):
            (root / d).mkdir(parents=True)
        for name, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"),
                             ("sbin", "usr/sbin")):  # fmt: skip
            (root / name).symlink_to(target)
        (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (root / "etc/group").write_text("root:x:0:\nshadow:x:42:\n")
        (root / "root/marker").write_text("rootfs home\n")
        (root / "f").write_text("x\n")
        if owner is not None:
            subprocess.run(["chown", "-hR", f"{owner}:{owner}", str(root)], check=True)
        return root

    yield make
    for p in made:
        subprocess.run(["rm", "-rf", str(p)], check=False)


def _tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """path -> (mode, size, mtime_ns) of everything under root, to prove "left untouched"."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    st = root.lstat()
    out["."] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def _py(code: str) -> list[str]:
    return ["python3", "-c", code]


# --- selection and availability ---------------------------------------------------------------


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_available(name: str) -> None:
    box = select_sandbox(name)
    assert box.name == name
    assert box.available() == (True, "")


def test_auto_prefers_bwrap() -> None:
    box = select_sandbox("auto")
    assert box.name == "bwrap"
    assert isinstance(box, Sandbox)


def test_auto_falls_back_to_proot(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "proot").symlink_to("/usr/bin/proot")  # a host with proot but no bwrap
    monkeypatch.setenv("PATH", str(tmp_path))
    assert select_sandbox("auto").name == "proot"
    with pytest.raises(SandboxError, match="bwrap is not installed"):
        select_sandbox("bwrap")


def test_unknown_backend_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown sandbox 'chroot'"):
        select_sandbox("chroot")


def test_no_backend_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # neither bwrap nor proot can be found
    with pytest.raises(SandboxError) as e:
        select_sandbox("auto")
    msg = str(e.value)
    assert "bwrap: bwrap is not installed" in msg and "proot: proot is not installed" in msg
    assert "install bubblewrap" in msg
    ok, why = BwrapSandbox(executable="").available()
    assert not ok and "apt-get install bubblewrap" in why
    ok, why = ProotSandbox(executable="").available()
    assert not ok and "apt-get install proot" in why


# --- the seccomp trick ------------------------------------------------------------------------


def _pfc(f: pyseccomp.SyscallFilter) -> str:
    with tempfile.TemporaryFile("w+") as fh:
        f.export_pfc(fh)
        fh.seek(0)
        return fh.read()


def test_filters_cover_the_syscalls() -> None:
    chown = _pfc(build_chown_filter())
    for name in ("chown", "fchown", "lchown", "fchownat"):
        assert f'"{name}"' in chown
    assert "ERRNO(0)" in chown
    proot = _pfc(build_proot_filter())
    for name in ("statx", "openat2", "faccessat2", "execveat", "io_uring_setup"):
        assert f'"{name}"' in proot
    assert "ERRNO(38)" in proot and "ERRNO(0)" not in proot  # 38: ENOSYS
    assert len(chown_filter()) % 8 == 0  # whole struct sock_filter instructions


CHOWN_PROBE = """
import os
fd = os.open("/f", os.O_RDONLY)
os.fchown(fd, 0, 42)           # fchown, as dpkg does
os.chown("/f", 5, 42)          # fchownat
os.symlink("/f", "/l")
os.lchown("/l", 0, 42)         # lchown of a symlink
os.chown("/missing", 0, 42)    # not even looked at: the kernel returns 0 at once
st = os.stat("/f")
print("ok", st.st_uid, st.st_gid)
"""


@pytest.mark.parametrize("user", USERS)
def test_chown_returns_zero_under_bwrap(user: str, mini_rootfs: Callable[..., Path]) -> None:
    uid = USERS[user]
    root = mini_rootfs(owner=uid)
    spec = RunSpec(root, _py(CHOWN_PROBE), binds=[USR])
    r = run_in_sandbox("bwrap", spec, user=uid)
    assert r.returncode == 0, r.stdout
    assert r.stdout.strip() == "ok 0 0"  # nothing changed: the file stays the mapped root's
    assert (root / "f").stat().st_uid == (uid if uid is not None else 0)


def test_without_the_filter_chown_fails_with_einval(mini_rootfs: Callable[..., Path]) -> None:
    # Why the filter exists: one uid is mapped, so gid 42 cannot even be expressed.
    root = mini_rootfs(owner=UNPRIVILEGED_UID)
    cmd = ["setpriv", f"--reuid={UNPRIVILEGED_UID}", f"--regid={UNPRIVILEGED_UID}",
           "--clear-groups", "bwrap", "--unshare-user", "--uid", "0", "--gid", "0",
           "--bind", str(root), "/", "--ro-bind", "/usr", "/usr",
           "python3", "-c", "import os\ntry: os.chown('/f', 0, 42)\nexcept OSError as e: "
           "print(e.errno)"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(errno.EINVAL)


# --- what the sandbox sees --------------------------------------------------------------------

VIEW_PROBE = """
import os, json, socket
open("/tmp/scratch", "w").write("x")
print(json.dumps({
    "uid": os.getuid(),
    "env": dict(os.environ),
    "cwd": os.getcwd(),
    "resolv": open("/etc/resolv.conf").read(),
    "home": sorted(os.listdir("/root")),
    "run": sorted(os.listdir("/run")),
    "tmp": sorted(os.listdir("/tmp")),
    "hostname": socket.gethostname(),
    "pid1": open("/proc/1/cmdline").read().split("\\0")[0],
}))
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_what_the_sandbox_sees(backend: str, mini_rootfs: Callable[..., Path]) -> None:
    root = mini_rootfs(owner=UNPRIVILEGED_UID)
    env = {**default_env(), "OCIPATCH_PROBE": "1"}
    spec = RunSpec(root, _py(VIEW_PROBE), env=env, binds=[USR], cwd="/etc")
    r = run_in_sandbox(backend, spec, user=UNPRIVILEGED_UID)
    assert r.returncode == 0, r.stdout
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["uid"] == 0
    assert seen["cwd"] == "/etc"
    assert seen["resolv"] == Path("/etc/resolv.conf").read_text()
    assert seen["home"] == ["marker"]  # the rootfs's /root, not a host home
    assert seen["run"] == []  # no host /run: no host sockets
    assert seen["tmp"] == ["scratch"]  # private /tmp ...
    assert not (root / "tmp/scratch").exists()  # ... that is not the rootfs's
    # The command's environment is exactly the one asked for (proot adds nothing either).
    assert {k: v for k, v in seen["env"].items() if k not in ("PWD", "SHLVL", "_")} == env
    if backend == "bwrap":
        assert seen["hostname"] == "localhost"
        assert seen["pid1"].endswith("bwrap")  # a pid namespace of its own


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", ["missing", "file", "abs-symlink", "rel-symlink"])
def test_resolv_conf_variants_leave_no_trace(
    backend: str, variant: str, mini_rootfs: Callable[..., Path]
) -> None:
    root = mini_rootfs()
    etc = root / "etc"
    if variant == "file":
        (etc / "resolv.conf").write_text("nameserver 192.0.2.1\n")
    elif variant == "abs-symlink":
        (etc / "resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")
    elif variant == "rel-symlink":
        (etc / "resolv.conf").symlink_to("../run/resolvconf/resolv.conf")
    os.utime(etc, ns=(10**18, 10**18))
    before = _tree(root)
    r = select_sandbox(backend).run(RunSpec(root, ["cat", "/etc/resolv.conf"], binds=[USR]))
    assert r.returncode == 0, r.stdout
    assert r.stdout == Path("/etc/resolv.conf").read_text()
    assert _tree(root) == before  # no mount point left behind, /etc's mtime restored


def test_mount_point_stays_inside(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/a").symlink_to("../../../../run/x")
    (tmp_path / "etc/b").symlink_to("/etc/a")
    (tmp_path / "etc/loop").symlink_to("loop")
    assert mount_point(tmp_path, "/etc/b") == "/run/x"
    assert mount_point(tmp_path, "/../../etc/./a/../y") == "/run/y"
    with pytest.raises(SandboxError, match="too many symlinks"):
        mount_point(tmp_path, "/etc/loop")


def test_binds_read_only_and_read_write(tmp_path: Path, mini_rootfs: Callable[..., Path]) -> None:
    root = mini_rootfs()
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "in").write_text("data\n")
    spec = RunSpec(
        root,
        ["sh", "-c", "cat /mnt/ro/in; touch /mnt/ro/new || echo ro-refused; touch /mnt/rw/new"],
        binds=[USR, (ro, "/mnt/ro", True), (rw, "/mnt/rw", False)],
    )
    r = select_sandbox("bwrap").run(spec)
    assert r.returncode == 0, r.stdout
    assert "data" in r.stdout and "ro-refused" in r.stdout
    assert (rw / "new").exists() and not (ro / "new").exists()
    assert not (root / "mnt").exists()  # the mount points were removed again


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args: object) -> None:
        pass


def test_network_switch(mini_rootfs: Callable[..., Path]) -> None:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        port = httpd.server_address[1]
        code = (
            "import urllib.request\ntry: print(urllib.request.urlopen("
            f"'http://127.0.0.1:{port}/', timeout=5).read().decode())\n"
            "except OSError as e: print('refused', e)"
        )
        root = mini_rootfs()
        box = select_sandbox("bwrap")
        shared = box.run(RunSpec(root, _py(code), binds=[USR], network=True))
        assert shared.stdout.strip() == "hello"
        private = box.run(RunSpec(root, _py(code), binds=[USR], network=False))
        assert private.stdout.startswith("refused")
    finally:
        httpd.shutdown()


# --- process handling -------------------------------------------------------------------------


def _pids_with(marker: str) -> set[int]:
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker in (d / "cmdline").read_bytes().decode(errors="replace"):
                    out.add(int(d.name))
            except OSError:
                pass
    return out


def _orphaned_proot_files() -> set[str]:
    """proot's temp files (proot-PID-*, prooted-PID-*) whose proot no longer runs."""
    out = set()
    for p in Path("/tmp").iterdir():
        parts = p.name.split("-")
        if len(parts) == 3 and parts[0] in ("proot", "prooted") and parts[1].isdigit():
            live = Path(f"/proc/{parts[1]}").exists()
            if not live:
                out.add(p.name)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_timeout_kills_the_whole_tree(
    backend: str, mini_rootfs: Callable[..., Path], tmp_path: Path
) -> None:
    root = mini_rootfs()
    # A child, a daemonised grandchild (own session) and the main command: all must die.
    script = "sleep 4242 & setsid sleep 4343 & sleep 4444"
    log = tmp_path / "run.log"
    proot_before = _orphaned_proot_files()
    start = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"did not finish within 1 s") as e:
        select_sandbox(backend).run(
            RunSpec(root, ["sh", "-c", f"echo started; {script}"], binds=[USR], timeout=1),
            log=log,
        )
    assert time.monotonic() - start < 15
    assert "\n" not in str(e.value) and str(log) in str(e.value)
    assert "last output: 'started'" in str(e.value) and e.value.output_tail == "started"
    assert e.value.exit_code == 12  # an ApplyError: the package manager did not finish
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_pids_with(f"sleep {n}") for n in (4242, 4343, 4444)):
        time.sleep(0.1)
    assert not any(_pids_with(f"sleep {n}") for n in (4242, 4343, 4444))
    # A killed proot cannot remove its loader and glue from /tmp: the backend does.
    assert _orphaned_proot_files() <= proot_before


@pytest.mark.parametrize("backend", BACKENDS)
def test_exit_status_output_and_log(
    backend: str, mini_rootfs: Callable[..., Path], tmp_path: Path
) -> None:
    log = tmp_path / "logs/run.log"
    spec = RunSpec(mini_rootfs(), ["sh", "-c", "echo out; echo err >&2; exit 7"], binds=[USR])
    r = select_sandbox(backend).run(spec, log=log)
    assert r.returncode == 7
    assert "out" in r.stdout and "err" in r.stdout
    text = log.read_text()
    assert text.startswith(f"### {backend}: sh -c ") and text.endswith(r.stdout)
    again = select_sandbox(backend).run(spec, log=log)  # one log for many steps: appended
    assert log.read_text() == text + text and again.stdout == r.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_start_failure_is_a_sandbox_error(backend: str, mini_rootfs: Callable[..., Path]) -> None:
    with pytest.raises(SandboxError, match="could not start '/no/such/program'"):
        select_sandbox(backend).run(RunSpec(mini_rootfs(), ["/no/such/program"], binds=[USR]))
    with pytest.raises(SandboxError, match="is not a directory"):
        select_sandbox(backend).run(RunSpec(Path("/nonexistent"), ["true"]))


def test_descendants_sees_grandchildren() -> None:
    p = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    try:
        deadline = time.monotonic() + 5
        while not descendants(p.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert descendants(p.pid)
    finally:
        p.kill()
        p.wait()


# --- a maintainer script must not write outside the rootfs ------------------------------------


@pytest.fixture
def host_sentinel() -> Iterator[Path]:
    # World-writable, so that only the sandbox (not file permissions) keeps a script out.
    # Not under /tmp: that is a private tmpfs in the sandbox, so no test of anything.
    d = _mkdtemp_public("ocipatch-sentinel-", "/var/tmp")
    d.chmod(0o777)
    (d / "sentinel").write_text("untouched\n")
    (d / "sentinel").chmod(0o666)
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def _escape_script(d: Path) -> str:
    depth = "../" * 12
    return f"""
echo pwned > {d}/sentinel
echo pwned > {d}/escaped-abs
cd / && echo pwned > {depth}{d.relative_to("/")}/escaped-climb
cd /tmp && echo pwned > ../../../../{d.relative_to("/")}/escaped-climb2
ln -s {d} /escape-link && echo pwned > /escape-link/escaped-link
for p in /proc/[0-9]*; do echo pwned > $p/root{d}/escaped-proc 2>/dev/null; done
mkdir -p {d} && echo pwned > {d}/escaped-mkdir
true
"""


OPENAT2 = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
class How(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]
how = How(os.O_WRONLY | os.O_CREAT, 0o644, 0)
fd = libc.syscall(437, -100, sys.argv[1].encode(), ctypes.byref(how), ctypes.sizeof(how))
print("openat2", fd, ctypes.get_errno())
st = os.stat("/etc/group")
print("stat size", st.st_size)
"""


def _assert_untouched(d: Path) -> None:
    assert (d / "sentinel").read_text() == "untouched\n"
    assert sorted(p.name for p in d.iterdir()) == ["sentinel"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("user", USERS)
def test_script_cannot_write_outside_mini(
    backend: str, user: str, mini_rootfs: Callable[..., Path], host_sentinel: Path
) -> None:
    uid = USERS[user]
    root = mini_rootfs(owner=uid)
    spec = RunSpec(root, ["sh", "-c", _escape_script(host_sentinel)], binds=[USR])
    r = run_in_sandbox(backend, spec, user=uid)
    assert r.returncode == 0, r.stdout
    _assert_untouched(host_sentinel)
    assert (root / host_sentinel.relative_to("/") / "escaped-mkdir").exists()  # landed inside
    # A system call proot 5.1 does not translate (openat2) is refused, so it cannot escape.
    spec = RunSpec(root, [*_py(OPENAT2), f"{host_sentinel}/escaped-openat2"], binds=[USR])
    r = run_in_sandbox(backend, spec, user=uid)
    assert r.returncode == 0, r.stdout
    _assert_untouched(host_sentinel)
    # statx falls back to a translated stat: the rootfs's /etc/group, not the host's.
    assert f"stat size {(root / 'etc/group').stat().st_size}" in r.stdout


# --- dpkg over a real Debian minbase rootfs ---------------------------------------------------


SHADOW_DEB = DebSpec(
    "ocipatch-shadowtool",
    "1.0",
    files=[
        DebFile("/usr/bin/ocipatch-shadowtool", "#!/bin/sh\necho hi\n", mode=0o2755, gid=42),
        DebFile("/etc/ocipatch-shadowtool.conf", "setting=1\n", mode=0o640, gid=42),
        DebFile("/usr/bin/ocipatch-st", kind="symlink", target="ocipatch-shadowtool"),
    ],
    conffiles=["/etc/ocipatch-shadowtool.conf"],
    scripts={
        "postinst": "#!/bin/sh\nset -e\n"
        "chgrp shadow /etc/ocipatch-shadowtool.conf\n"
        "echo postinst-ran\n"
    },
)


@pytest.mark.parametrize(
    ("backend", "user"), [("bwrap", "root"), ("bwrap", "nobody"), ("proot", "nobody")]
)
def test_dpkg_installs_root_shadow_2755(
    backend: str,
    user: str,
    debian_rootfs: Callable[..., Path],
    tmp_path: Path,
) -> None:
    uid = USERS[user]
    root = debian_rootfs(owner=uid)
    debs = _mkdtemp_public("ocipatch-debs-")
    try:
        deb = build_deb(SHADOW_DEB, debs)
        deb.chmod(0o644)
        spec = RunSpec(
            root,
            ["sh", "-c", "dpkg -i /tmp/pkg.deb && dpkg-query -W -f='${Status} ${Version}\\n' "
             "ocipatch-shadowtool && stat -c '%a' /usr/bin/ocipatch-shadowtool"],
            binds=[(deb, "/tmp/pkg.deb", True)],
            network=False,
        )  # fmt: skip
        r = run_in_sandbox(backend, spec, user=uid)
    finally:
        subprocess.run(["rm", "-rf", str(debs)], check=False)
    assert r.returncode == 0, r.stdout
    assert "postinst-ran" in r.stdout
    assert "install ok installed 1.0" in r.stdout
    assert "error setting ownership" not in r.stdout
    tool = root / "usr/bin/ocipatch-shadowtool"
    assert stat.S_IMODE(tool.stat().st_mode) == 0o2755  # the setgid bit survived
    assert "2755" in r.stdout
    assert tool.stat().st_uid == (uid if uid is not None else 0)  # owned by the invoking user
    assert os.readlink(root / "usr/bin/ocipatch-st") == "ocipatch-shadowtool"


def test_dpkg_script_cannot_write_outside(
    debian_rootfs: Callable[..., Path], host_sentinel: Path
) -> None:
    root = debian_rootfs(owner=UNPRIVILEGED_UID)
    evil = DebSpec(
        "ocipatch-evil",
        "1.0",
        files=[DebFile("/usr/share/doc/ocipatch-evil/README", "x\n")],
        scripts={
            "preinst": "#!/bin/sh\n" + _escape_script(host_sentinel),
            "postinst": "#!/bin/sh\n" + _escape_script(host_sentinel),
        },
    )
    debs = _mkdtemp_public("ocipatch-debs-")
    try:
        deb = build_deb(evil, debs)
        deb.chmod(0o644)
        for backend in BACKENDS:
            spec = RunSpec(
                root, ["dpkg", "-i", "/tmp/evil.deb"], binds=[(deb, "/tmp/evil.deb", True)]
            )
            r = run_in_sandbox(backend, spec, user=UNPRIVILEGED_UID)
            assert r.returncode == 0, r.stdout
            _assert_untouched(host_sentinel)
    finally:
        subprocess.run(["rm", "-rf", str(debs)], check=False)
    assert (root / host_sentinel.relative_to("/") / "escaped-mkdir").exists()


def test_proot_without_the_filter_would_escape(
    mini_rootfs: Callable[..., Path], host_sentinel: Path
) -> None:
    # Why proot gets a seccomp filter: proot 5.1 does not translate openat2's path.
    root = mini_rootfs(owner=UNPRIVILEGED_UID)
    target = host_sentinel / "escaped-openat2"
    cmd = ["setpriv", f"--reuid={UNPRIVILEGED_UID}", f"--regid={UNPRIVILEGED_UID}",
           "--clear-groups", "proot", "-0", "-r", str(root), "-b", "/usr",
           "python3", "-c", OPENAT2, str(target)]  # fmt: skip
    subprocess.run(cmd, capture_output=True, text=True, check=False)
    if not target.exists():
        pytest.skip("this proot translates openat2 (newer than 5.1): the filter is belt and braces")
    target.unlink()


def test_rootfs_of_another_user_is_refused(mini_rootfs: Callable[..., Path]) -> None:
    root = mini_rootfs(owner=UNPRIVILEGED_UID)
    with pytest.raises(SandboxError, match="belongs to uid 65534"):
        select_sandbox("bwrap").run(RunSpec(root, ["true"], binds=[USR]))


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_real_security_updates_as_unprivileged_user(
    backend: str, debian_rootfs: Callable[..., Path]
) -> None:
    """The real job: the image's own apt upgrades from the archive (base + -updates/-security),
    real maintainer scripts run, and passwd's root:shadow 2755 files are reinstalled."""
    root = debian_rootfs(owner=UNPRIVILEGED_UID)
    sources = root / "etc/apt/sources.list.d/0000archive.sources"
    sources.write_text(archive_sources(updates=True))
    os.chown(sources, UNPRIVILEGED_UID, UNPRIVILEGED_UID)
    apt = "apt-get -q " + " ".join(APT_NO_PRIVILEGE_DROP)
    script = (
        f"{apt} update && {apt} -y upgrade && {apt} -y install --reinstall passwd && "
        f"dpkg --audit && {apt} -s upgrade | tail -1"
    )
    r = run_in_sandbox(
        backend,
        RunSpec(root, ["sh", "-c", script], env=apt_env(), timeout=900),
        user=UNPRIVILEGED_UID,
    )
    assert r.returncode == 0, r.stdout[-3000:]
    assert "error setting ownership" not in r.stdout
    assert r.stdout.rstrip().endswith(
        "0 upgraded, 0 newly installed, 0 to remove and 0 not upgraded."
    )
    assert stat.S_IMODE((root / "usr/bin/chage").stat().st_mode) == 0o2755
