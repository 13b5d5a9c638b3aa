"""A tiny, signed, hermetic apt repository for tests: build .debs, index, sign, serve.

Library:
    deb = build_deb(DebSpec("hello", "1.0", files=[DebFile("/usr/bin/hello", "#!/bin/sh\\n",
                    mode=0o2755, gid=42)]), out_dir)
    with Signer() as signer:
        repo = build_repo(repo_dir, [deb], signer=signer)
        with RepoServer(repo.root) as server:
            repo.write_sources(rootfs, server.url)   # deb822 .sources + keyring, Signed-By
            server.tamper("pool/main/h/hello/hello_1.0_all.deb", b"evil")

CLI:
    python tools/aptrepo.py deb --name hello --version 1.0 --file /usr/bin/hello:2755:0:42:TEXT
    python tools/aptrepo.py repo --out DIR [--suite S] [--flat] [--by-hash] DEB...
    python tools/aptrepo.py serve DIR [--port N]

.debs are built by `dpkg-deb --build`. Ownership other than root:root comes from a real chown
in the staging tree when running as root, else from `fakeroot` (needed only then). Everything
written is deterministic (SOURCE_DATE_EPOCH, sorted indexes, gzip without timestamps) except
the signatures and the throwaway key.
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import gzip
import hashlib
import http.server
import lzma
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

DEFAULT_EPOCH = 1700000000
SCRIPTS = ("preinst", "postinst", "prerm", "postrm", "config")
Compression = Literal["xz", "zstd", "gzip", "none"]


class AptRepoError(RuntimeError):
    """A tool (dpkg-deb, gpg, fakeroot) failed while building the test repository."""


def _run(cmd: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, **kw)
    if proc.returncode != 0:
        raise AptRepoError(f"{shlex.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def host_arch() -> str:
    return _run(["dpkg", "--print-architecture"]).stdout.strip()


# --- .deb -------------------------------------------------------------------------------------


@dataclass
class DebFile:
    """One entry of a package's data.tar. `path` is absolute inside the package."""

    path: str
    content: bytes | str = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    kind: Literal["file", "dir", "symlink"] = "file"
    target: str = ""  # for symlinks

    def data(self) -> bytes:
        return self.content.encode() if isinstance(self.content, str) else self.content


@dataclass
class DebSpec:
    name: str
    version: str
    arch: str = "all"
    depends: Sequence[str] = ()
    files: Sequence[DebFile] = ()
    conffiles: Sequence[str] = ()
    scripts: Mapping[str, str] = field(default_factory=dict)  # preinst/postinst/... -> text
    description: str = "ocipatch test package"
    section: str = "misc"
    priority: str = "optional"
    maintainer: str = "ocipatch tests <tests@ocipatch.invalid>"
    extra_fields: Mapping[str, str] = field(default_factory=dict)  # Pre-Depends, Source, ...
    compression: Compression = "xz"

    @property
    def filename(self) -> str:
        version = self.version.split(":", 1)[-1]  # the epoch is not part of the file name
        return f"{self.name}_{version}_{self.arch}.deb"

    def control(self, installed_kib: int) -> str:
        fields: dict[str, str] = {
            "Package": self.name,
            "Version": self.version,
            "Architecture": self.arch,
            "Maintainer": self.maintainer,
            "Installed-Size": str(installed_kib),
        }
        if self.depends:
            fields["Depends"] = ", ".join(self.depends)
        fields.update(self.extra_fields)
        fields["Section"] = self.section
        fields["Priority"] = self.priority
        summary, _, rest = self.description.partition("\n")
        body = "".join(f"\n {ln if ln.strip() else '.'}" for ln in rest.splitlines())
        fields["Description"] = summary + body
        return "".join(f"{k}: {v}\n" for k, v in fields.items())


def build_deb(spec: DebSpec, out_dir: Path, *, source_date_epoch: int = DEFAULT_EPOCH) -> Path:
    """Build `spec` with dpkg-deb into `out_dir`; returns the .deb path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / spec.filename
    with tempfile.TemporaryDirectory(prefix="aptrepo-deb-") as tmp:
        stage = Path(tmp) / "stage"
        stage.mkdir()
        owners: dict[Path, tuple[int, int]] = {}
        modes: dict[Path, int] = {}
        size = 0
        md5s: list[str] = []
        for f in sorted(spec.files, key=lambda f: f.path):
            rel = f.path.strip("/")
            if not rel or rel.startswith("DEBIAN") or ".." in rel.split("/"):
                raise AptRepoError(f"bad path in package {spec.name}: {f.path!r}")
            dest = stage / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if f.kind == "dir":
                dest.mkdir(exist_ok=True)
            elif f.kind == "symlink":
                dest.symlink_to(f.target)
            else:
                data = f.data()
                dest.write_bytes(data)
                size += len(data)
                md5s.append(f"{hashlib.md5(data).hexdigest()}  {rel}\n")
            if f.kind != "symlink":
                modes[dest] = f.mode
            if (f.uid, f.gid) != (0, 0):
                owners[dest] = (f.uid, f.gid)
        debian = stage / "DEBIAN"
        debian.mkdir()
        (debian / "control").write_text(spec.control(max(1, (size + 1023) // 1024)))
        if md5s:
            (debian / "md5sums").write_text("".join(sorted(md5s)))
        if spec.conffiles:
            (debian / "conffiles").write_text("".join(f"{c}\n" for c in spec.conffiles))
        for script, text in spec.scripts.items():
            if script not in SCRIPTS:
                raise AptRepoError(f"unknown maintainer script {script!r}")
            (debian / script).write_text(text)
            modes[debian / script] = 0o755
        for p in [stage, *stage.rglob("*")]:
            if p.is_dir() and not p.is_symlink() and p not in modes:
                modes[p] = 0o755
        _apply_metadata(stage, owners, modes, source_date_epoch)
        comp = {"none": "none", "gzip": "gzip", "xz": "xz", "zstd": "zstd"}[spec.compression]
        build = ["dpkg-deb", "--build", f"-Z{comp}", str(stage), str(out)]
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(source_date_epoch)}
        if not owners:
            _run([*build[:2], "--root-owner-group", *build[2:]], env=env)
        elif os.geteuid() == 0:
            _run(build, env=env)
        else:
            # Not root: fake the chowns, in the same fakeroot session as dpkg-deb.
            if shutil.which("fakeroot") is None:
                raise AptRepoError("files owned by other than root need fakeroot: install it")
            lines = ["chown -R 0:0 " + shlex.quote(str(stage))]
            for path, (uid, gid) in sorted(owners.items()):
                lines.append(f"chown -h {uid}:{gid} {shlex.quote(str(path))}")
                if path in modes:
                    lines.append(f"chmod {modes[path]:o} {shlex.quote(str(path))}")
            lines.append(shlex.join(build))
            _run(["fakeroot", "--", "sh", "-ec", "\n".join(lines)], env=env)
    return out


def _apply_metadata(
    stage: Path, owners: dict[Path, tuple[int, int]], modes: dict[Path, int], epoch: int
) -> None:
    is_root = os.geteuid() == 0
    for path in sorted([stage, *stage.rglob("*")], key=lambda p: len(p.parts), reverse=True):
        if is_root:
            uid, gid = owners.get(path, (0, 0))
            os.lchown(path, uid, gid)  # before chmod: chown clears setuid/setgid bits
        if path in modes:
            os.chmod(path, modes[path])
        os.utime(path, (epoch, epoch), follow_symlinks=False)


def deb_control(deb: Path) -> str:
    """The control paragraph of `deb`, as dpkg-deb prints it."""
    return _run(["dpkg-deb", "--field", str(deb)]).stdout


# --- signing ----------------------------------------------------------------------------------


class Signer:
    """A throwaway ed25519 signing key in a temporary GNUPGHOME (short path: agent socket)."""

    def __init__(self, uid: str = "ocipatch test archive <archive@ocipatch.invalid>") -> None:
        self.home = Path(tempfile.mkdtemp(prefix="aptgpg-", dir="/tmp"))
        self.uid = uid
        self._gpg("--quick-generate-key", uid, "ed25519", "sign", "never")
        listing = self._gpg("--with-colons", "--list-secret-keys").stdout
        self.fingerprint = next(
            ln.split(":")[9] for ln in listing.splitlines() if ln.startswith("fpr:")
        )
        self.keyring = self.home / "archive-keyring.gpg"
        self.keyring.write_bytes(self._export())

    def _gpg(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = ["gpg", "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", "", *args]
        return _run(cmd, env={**os.environ, "GNUPGHOME": str(self.home)})

    def _export(self) -> bytes:
        env = {**os.environ, "GNUPGHOME": str(self.home)}
        proc = subprocess.run(
            ["gpg", "--batch", "--export", self.fingerprint],
            capture_output=True,
            env=env,
            check=True,
        )
        return proc.stdout

    def clearsign(self, src: Path, dst: Path) -> None:
        self._gpg("--local-user", self.fingerprint, "--digest-algo", "SHA512",
                  "--clearsign", "--output", str(dst), str(src))  # fmt: skip

    def detach_sign(self, src: Path, dst: Path) -> None:
        self._gpg("--local-user", self.fingerprint, "--digest-algo", "SHA512",
                  "--armor", "--detach-sign", "--output", str(dst), str(src))  # fmt: skip

    def close(self) -> None:
        env = {**os.environ, "GNUPGHOME": str(self.home)}
        subprocess.run(["gpgconf", "--kill", "all"], env=env, capture_output=True, check=False)
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> Signer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- repository -------------------------------------------------------------------------------


@dataclass
class AptRepo:
    """A built repository. `suite` is "./" for a flat one."""

    root: Path
    suite: str
    component: str
    architectures: list[str]
    keyring: Path
    flat: bool = False

    def sources_text(self, url: str, signed_by: str) -> str:
        lines = ["Types: deb", f"URIs: {url}", f"Suites: {self.suite}"]
        if not self.flat:
            lines.append(f"Components: {self.component}")
        lines.append(f"Signed-By: {signed_by}")
        return "\n".join(lines) + "\n"

    def write_sources(self, rootfs: Path, url: str, name: str = "ocipatch-test") -> Path:
        """Write /etc/apt/sources.list.d/NAME.sources and /etc/apt/keyrings/NAME.gpg in rootfs.

        New files get the owner of `rootfs` (the unpacking user). Returns the .sources path.
        """
        st = rootfs.stat()
        keyrings = rootfs / "etc/apt/keyrings"
        keyrings.mkdir(parents=True, exist_ok=True)
        key = keyrings / f"{name}.gpg"
        shutil.copyfile(self.keyring, key)
        key.chmod(0o644)
        sources = rootfs / "etc/apt/sources.list.d" / f"{name}.sources"
        sources.parent.mkdir(parents=True, exist_ok=True)
        sources.write_text(self.sources_text(url, f"/etc/apt/keyrings/{name}.gpg"))
        if os.geteuid() == 0:
            for p in (keyrings, key, sources):
                os.lchown(p, st.st_uid, st.st_gid)
        return sources

    @staticmethod
    def apt_options(name: str = "ocipatch-test") -> list[str]:
        """apt-get options that use only this repository (the image's own sources ignored)."""
        return [
            "-o", f"Dir::Etc::SourceList=/etc/apt/sources.list.d/{name}.sources",
            "-o", "Dir::Etc::SourceParts=-",
        ]  # fmt: skip


def _hashes(data: bytes) -> dict[str, str]:
    return {
        "MD5Sum": hashlib.md5(data).hexdigest(),
        "SHA256": hashlib.sha256(data).hexdigest(),
    }


def _packages_text(debs: Sequence[Path], root: Path) -> str:
    stanzas: list[tuple[tuple[str, str, str], str]] = []
    for deb in debs:
        control = deb_control(deb).rstrip("\n")
        data = deb.read_bytes()
        fields = dict(
            ln.split(": ", 1) for ln in control.splitlines() if ln and not ln.startswith(" ")
        )
        h = _hashes(data)
        extra = (
            f"Filename: {deb.relative_to(root).as_posix()}\nSize: {len(data)}\n"
            f"MD5sum: {h['MD5Sum']}\nSHA256: {h['SHA256']}\n"
        )
        key = (fields["Package"], fields["Version"], fields["Architecture"])
        stanzas.append((key, control + "\n" + extra))
    return "\n".join(text for _key, text in sorted(stanzas))


def build_repo(
    root: Path,
    debs: Sequence[Path],
    *,
    signer: Signer,
    suite: str = "ocipatch-test",
    component: str = "main",
    architectures: Sequence[str] | None = None,
    flat: bool = False,
    by_hash: bool = False,
    date_epoch: int = DEFAULT_EPOCH,
    valid_until_epoch: int | None = None,
    origin: str = "ocipatch-test",
) -> AptRepo:
    """Copy `debs` into `root` (pool/ or flat), write the indexes, Release, InRelease, .gpg.

    Architecture `all` packages are listed in every binary-ARCH index.
    """
    root.mkdir(parents=True, exist_ok=True)
    placed: list[tuple[Path, str]] = []
    for deb in debs:
        control = deb_control(deb)
        arch, name = _field(control, "Architecture"), _field(control, "Package")
        if flat:
            dest = root / deb.name
        else:
            prefix = name[:4] if name.startswith("lib") else name[0]
            dest = root / "pool" / component / prefix / name / deb.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if deb.resolve() != dest.resolve():
            shutil.copyfile(deb, dest)
        placed.append((dest, arch))
    archs = sorted(set(architectures or [a for _d, a in placed if a != "all"] or [host_arch()]))
    base = root if flat else root / "dists" / suite
    index_files: dict[str, bytes] = {}
    for arch in archs:
        mine = [d for d, a in placed if a in (arch, "all")]
        text = _packages_text(mine, root).encode()
        rel = "" if flat else f"{component}/binary-{arch}/"
        if flat and len(archs) > 1:
            raise AptRepoError("a flat repository holds one architecture; use the pool layout")
        index_files[f"{rel}Packages"] = text
        index_files[f"{rel}Packages.gz"] = gzip.compress(text, mtime=0)
        index_files[f"{rel}Packages.xz"] = lzma.compress(text, preset=6)
    for rel, data in index_files.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if by_hash:
            for algo, digest in _hashes(data).items():
                hashed = path.parent / "by-hash" / algo / digest
                hashed.parent.mkdir(parents=True, exist_ok=True)
                hashed.write_bytes(data)
    date = email.utils.formatdate(date_epoch, usegmt=True)
    release = [f"Origin: {origin}", f"Label: {origin}"]
    if not flat:
        release += [f"Suite: {suite}", f"Codename: {suite}"]
    release += [f"Date: {date}"]
    if valid_until_epoch is not None:
        release.append(f"Valid-Until: {email.utils.formatdate(valid_until_epoch, usegmt=True)}")
    release += [f"Architectures: {' '.join(archs)}"]
    if not flat:
        release.append(f"Components: {component}")
    if by_hash:
        release.append("Acquire-By-Hash: yes")
    release.append("Description: ocipatch test repository")
    for algo in ("MD5Sum", "SHA256"):
        release.append(f"{algo}:")
        for rel, data in sorted(index_files.items()):
            release.append(f" {_hashes(data)[algo]} {len(data):>8} {rel}")
    (base / "Release").write_text("\n".join(release) + "\n")
    for stale in ("InRelease", "Release.gpg"):
        (base / stale).unlink(missing_ok=True)
    signer.clearsign(base / "Release", base / "InRelease")
    signer.detach_sign(base / "Release", base / "Release.gpg")
    return AptRepo(
        root=root,
        suite="./" if flat else suite,
        component=component,
        architectures=archs,
        keyring=signer.keyring,
        flat=flat,
    )


def _field(control: str, name: str) -> str:
    for ln in control.splitlines():
        if ln.startswith(f"{name}: "):
            return ln.split(": ", 1)[1].strip()
    raise AptRepoError(f"no {name} field in control data")


# --- serving ----------------------------------------------------------------------------------

Tamper = bytes | Callable[[bytes], bytes]


class RepoServer:
    """Serve a directory on loopback (threaded). `tamper()` swaps what one path returns."""

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = root
        self._tampered: dict[str, Tamper] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(server.root), **kwargs)

            def log_message(self, format: str, *args: Any) -> None:
                server.requests.append(f"{self.command} {self.path}")

            def _tampered_body(self) -> bytes | None:
                rel = self.path.split("?", 1)[0].lstrip("/")
                change = server._tampered.get(rel)
                if change is None:
                    return None
                if callable(change):
                    return change((server.root / rel).read_bytes())
                return change

            def do_GET(self) -> None:
                body = self._tampered_body()
                if body is None:
                    super().do_GET()
                    return
                self._send(body, head=False)

            def do_HEAD(self) -> None:
                body = self._tampered_body()
                if body is None:
                    super().do_HEAD()
                    return
                self._send(body, head=True)

            def _send(self, body: bytes, *, head: bool) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

        self._httpd = http.server.ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def tamper(self, path: str, change: Tamper) -> None:
        """Serve `change` (bytes, or a function of the real bytes) for `path` (repo-relative)."""
        self._tampered[path.lstrip("/")] = change

    def untamper(self, path: str | None = None) -> None:
        if path is None:
            self._tampered.clear()
        else:
            self._tampered.pop(path.lstrip("/"), None)

    def start(self) -> RepoServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> RepoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def served_repo(
    root: Path, debs: Sequence[Path], **kwargs: Any
) -> Iterator[tuple[AptRepo, RepoServer]]:
    """Build a repository with a throwaway key and serve it until the block ends."""
    with Signer() as signer:
        repo = build_repo(root, debs, signer=signer, **kwargs)
        with RepoServer(root) as server:
            yield repo, server


# --- CLI --------------------------------------------------------------------------------------


def _parse_file(arg: str) -> DebFile:
    # PATH[:MODE[:UID[:GID[:CONTENT]]]]
    path, *rest = arg.split(":", 4)
    mode = int(rest[0], 8) if len(rest) > 0 and rest[0] else 0o644
    uid = int(rest[1]) if len(rest) > 1 and rest[1] else 0
    gid = int(rest[2]) if len(rest) > 2 and rest[2] else 0
    content = rest[3].replace("\\n", "\n") if len(rest) > 3 else ""
    return DebFile(path, content, mode=mode, uid=uid, gid=gid)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="build and serve a signed test apt repository")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("deb", help="build one .deb")
    d.add_argument("--name", required=True)
    d.add_argument("--version", required=True)
    d.add_argument("--arch", default="all")
    d.add_argument("--depends", action="append", default=[])
    d.add_argument("--file", action="append", default=[], help="PATH[:MODE[:UID[:GID[:TEXT]]]]")
    d.add_argument("--conffile", action="append", default=[])
    d.add_argument("--postinst", default=None, help="postinst script text")
    d.add_argument("--compression", default="xz", choices=["xz", "zstd", "gzip", "none"])
    d.add_argument("--out", type=Path, default=Path("."))
    r = sub.add_parser("repo", help="index and sign .debs (prints the keyring path)")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--suite", default="ocipatch-test")
    r.add_argument("--flat", action="store_true")
    r.add_argument("--by-hash", action="store_true")
    r.add_argument("debs", nargs="+", type=Path)
    s = sub.add_parser("serve", help="serve a directory on loopback until interrupted")
    s.add_argument("dir", type=Path)
    s.add_argument("--port", type=int, default=0)
    a = p.parse_args(argv)
    if a.cmd == "deb":
        spec = DebSpec(
            a.name,
            a.version,
            arch=a.arch,
            depends=a.depends,
            files=[_parse_file(f) for f in a.file],
            conffiles=a.conffile,
            scripts={"postinst": a.postinst} if a.postinst else {},
            compression=a.compression,
        )
        print(build_deb(spec, a.out))
    elif a.cmd == "repo":
        signer = Signer()
        repo = build_repo(
            a.out, a.debs, signer=signer, suite=a.suite, flat=a.flat, by_hash=a.by_hash
        )
        keyring = a.out / "archive-keyring.gpg"
        shutil.copyfile(repo.keyring, keyring)
        signer.close()
        print(keyring)
    else:
        with RepoServer(a.dir, port=a.port) as server:
            print(server.url, flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
