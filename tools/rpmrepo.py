"""Signed rpm repositories for tests, made with the real tools: rpmbuild, rpmsign, gpg,
createrepo_c. Plus a loopback server and tamper helpers.

Independent of ocipatch's rpm reader (it must not import ocipatch.distro.rpm).

    key = GpgKey.generate(tmp / "gnupg", "RPM-GPG-KEY-test")
    pkg = build_rpm(RpmSpec("hello", "1.0", "1.el9", files=[RpmFile("/usr/bin/hello",
                    "#!/bin/sh\\n", mode=0o755)]), out_dir, key)
    repo = build_repo(root, [spec, ...], key, compress="zstd")   # root/repodata/repomd.xml(.asc)
    with serve(root) as server: ...                               # 127.0.0.1, a free port

Packages are built with `AutoReqProv: no`: requires and provides are exactly the spec's (sonames
are written as rpm spells them, `libfoo.so.1()(64bit)`; a file provide is any path a package
owns). Builds are deterministic apart from the signatures' key material: SOURCE_DATE_EPOCH with
buildtime and mtimes clamped to it, a fixed `%_buildhost`, and gpg's clock faked to BUILDTIME.
The OpenPGP key is made by gpg (random), so bytes differ between two cache builds; within one
build everything refers to the same key.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import hashlib
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tools.aptrepo import RepoServer

BUILDTIME = 1700000000
GPG_TIME = "20231114T221320!"  # BUILDTIME, frozen
BUILDHOST = "build.ocipatch.invalid"
SCRIPTS = ("pre", "post", "preun", "postun", "pretrans", "posttrans")
Payload = Literal["gz", "xz", "zstd"]
PAYLOAD_MACRO: dict[Payload, str] = {"gz": "w9.gzdio", "xz": "w6.xzdio", "zstd": "w19.zstdio"}
Compress = Literal["gz", "xz", "zstd"]
RPM_LEAD = 96
HEADER_MAGIC = b"\x8e\xad\xe8\x01"


class RpmRepoError(RuntimeError):
    """A spec cannot be built, or a tool failed."""


def _run(
    cmd: Sequence[str], env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RpmRepoError(f"{shlex.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


# --- keys ---------------------------------------------------------------------------------------


@dataclass
class GpgKey:
    """A throwaway OpenPGP signing key in its own GNUPGHOME (test key, not a secret)."""

    home: Path
    uid: str  # "Name <email>"; rpm's %_gpg_name
    fingerprint: str
    name: str = "RPM-GPG-KEY-test"  # file name of the exported public key

    @classmethod
    def generate(
        cls, home: Path, name: str = "RPM-GPG-KEY-test",
        uid: str = "ocipatch test signing key <rpm-signing@ocipatch.invalid>",
    ) -> GpgKey:  # fmt: skip
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(home, 0o700)
        _run(["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback",
              "--passphrase", "", "--faked-system-time", GPG_TIME,
              "--quick-generate-key", uid, "rsa2048", "sign", "never"])  # fmt: skip
        out = _run(["gpg", "--homedir", str(home), "--with-colons", "--list-keys", uid]).stdout
        fpr = next(ln.split(":")[9] for ln in out.splitlines() if ln.startswith("fpr:"))
        # gpg leaves an agent running for the home: stop it when this process ends.
        atexit.register(subprocess.run, ["gpgconf", "--homedir", str(home), "--kill", "all"],
                        capture_output=True, check=False)  # fmt: skip
        return cls(home, uid, fpr, name)

    @property
    def short_id(self) -> str:
        """The gpg-pubkey package's version: the last 8 hex digits of the key id, lower case."""
        return self.fingerprint[-8:].lower()

    def public_armored(self) -> bytes:
        return _run(["gpg", "--homedir", str(self.home), "--armor", "--export",
                     self.fingerprint]).stdout.encode()  # fmt: skip

    def write_public(self, directory: Path) -> Path:
        """`<dir>/<name>` (armored), e.g. an image's /etc/pki/rpm-gpg/RPM-GPG-KEY-test."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.name
        path.write_bytes(self.public_armored())
        return path

    def keyring(self, dest: Path) -> Path:
        """A binary keyring file holding only the public key, for gpgv --keyring."""
        data = subprocess.run(["gpg", "--homedir", str(self.home), "--export", self.fingerprint],
                              capture_output=True, check=True).stdout  # fmt: skip
        dest.write_bytes(data)
        return dest

    def detach_sign(self, path: Path) -> Path:
        """`<path>.asc`: an armored detached signature, as repomd.xml.asc."""
        sig = path.with_name(path.name + ".asc")
        sig.unlink(missing_ok=True)
        _run(["gpg", "--homedir", str(self.home), "--batch", "--yes", "--faked-system-time",
              GPG_TIME, "--local-user", self.fingerprint, "--armor", "--detach-sign",
              "--output", str(sig), str(path)])  # fmt: skip
        return sig


# --- packages -----------------------------------------------------------------------------------


@dataclass
class RpmFile:
    """One entry of a package. `path` is absolute; user/group are names (rpm stores names)."""

    path: str
    content: bytes | str = b""
    mode: int | None = None  # default 0644 files, 0755 dirs
    user: str = "root"
    group: str = "root"
    kind: Literal["file", "dir", "symlink"] = "file"
    target: str = ""  # symlinks
    config: Literal["", "config", "noreplace", "missingok"] = ""
    doc: bool = False

    def data(self) -> bytes:
        return self.content.encode() if isinstance(self.content, str) else self.content

    @property
    def perm(self) -> int:
        if self.mode is None:
            return 0o755 if self.kind == "dir" else 0o644
        return self.mode

    @property
    def rel(self) -> str:
        return self.path.strip("/")


@dataclass
class RpmSpec:
    name: str
    version: str
    release: str
    epoch: int | None = None  # None: no Epoch tag at all (not 0)
    arch: str = "x86_64"  # or noarch
    files: Sequence[RpmFile] = ()
    requires: Sequence[str] = ()  # "foo >= 1.0", "libz.so.1()(64bit)", "/bin/sh"
    provides: Sequence[str] = ()
    obsoletes: Sequence[str] = ()
    conflicts: Sequence[str] = ()
    # post -> shell text, or "-p /sbin/ldconfig" (interpreter form: no /bin/sh needed)
    scripts: Mapping[str, str] = field(default_factory=dict)
    source: str = ""  # source package name (SOURCERPM = <source>-<version>-<release>.src.rpm)
    vendor: str = "ocipatch tests"
    summary: str = "ocipatch test package"
    license: str = "MIT"
    url: str = "https://ocipatch.invalid/"
    packager: str = "ocipatch tests <tests@ocipatch.invalid>"
    group: str = "Unspecified"

    @property
    def evr(self) -> str:
        epoch = f"{self.epoch}:" if self.epoch is not None else ""
        return f"{epoch}{self.version}-{self.release}"

    @property
    def nevra(self) -> str:
        return f"{self.name}-{self.evr}.{self.arch}"

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-{self.release}.{self.arch}.rpm"

    @property
    def sourcerpm(self) -> str:
        return f"{self.source or self.name}-{self.version}-{self.release}.src.rpm"


@dataclass
class BuiltRpm:
    spec: RpmSpec
    path: Path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def evr(self) -> str:
        return self.spec.evr


def _entries(spec: RpmSpec) -> list[RpmFile]:
    seen: dict[str, RpmFile] = {}
    for f in spec.files:
        rel = f.rel
        if not rel or ".." in rel.split("/"):
            raise RpmRepoError(f"bad path in package {spec.name}: {f.path!r}")
        seen[rel] = f
    return [seen[k] for k in sorted(seen)]


def _stage(spec: RpmSpec, stage: Path) -> None:
    """The files as %install copies them into the buildroot."""
    for f in _entries(spec):
        p = stage / f.rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if f.kind == "dir":
            p.mkdir(exist_ok=True)
        elif f.kind == "symlink":
            p.symlink_to(f.target)
        else:
            p.write_bytes(f.data())


def _files_line(f: RpmFile) -> str:
    path = "/" + f.rel
    if any(c in path for c in ' "%\\\n'):
        raise RpmRepoError(f"path not supported in a %files list: {path!r}")
    mode = "-" if f.kind == "symlink" else f"{f.perm:04o}"
    parts = [f"%attr({mode},{f.user},{f.group})"]
    if f.kind == "dir":
        parts.append("%dir")
    if f.config == "config":
        parts.append("%config")
    elif f.config:
        parts.append(f"%config({f.config})")
    if f.doc:
        parts.append("%doc")
    return " ".join([*parts, path])


def spec_text(spec: RpmSpec, stage: Path) -> str:
    """The .spec file. A `source` other than the name makes the package a subpackage
    (`%package -n`) of that source, so SOURCERPM names the source, as distros build them."""
    sub = bool(spec.source) and spec.source != spec.name
    head = [
        f"Name: {spec.source if sub else spec.name}",
        *([f"Epoch: {spec.epoch}"] if spec.epoch is not None else []),
        f"Version: {spec.version}",
        f"Release: {spec.release}",
        f"Summary: {spec.summary}",
        f"License: {spec.license}",
        f"URL: {spec.url}",
        f"Vendor: {spec.vendor}",
        f"Packager: {spec.packager}",
        f"Group: {spec.group}",
        f"BuildArch: {spec.arch}",
        "AutoReqProv: no",
        "",
        "%description",
        f"{spec.summary}.",
        "",
    ]
    deps = (
        [f"Requires: {r}" for r in spec.requires]
        + [f"Provides: {p}" for p in spec.provides]
        + [f"Obsoletes: {o}" for o in spec.obsoletes]
        + [f"Conflicts: {c}" for c in spec.conflicts]
    )
    label = ""
    if sub:
        label = f" -n {spec.name}"
        head += [f"%package -n {spec.name}", f"Summary: {spec.summary}", f"Group: {spec.group}",
                 "AutoReqProv: no", *deps, "", f"%description -n {spec.name}",
                 f"{spec.summary}.", ""]  # fmt: skip
    else:
        head[head.index("AutoReqProv: no") + 1 : head.index("AutoReqProv: no") + 1] = deps
    body = [
        "%install",
        f"cp -a {shlex.quote(str(stage))}/. %{{buildroot}}/",
        "",
        f"%files{label}",
        *[_files_line(f) for f in _entries(spec)],
        "",
    ]
    unknown = set(spec.scripts) - set(SCRIPTS)
    if unknown:
        raise RpmRepoError(f"unknown rpm scriptlet(s) {sorted(unknown)} in {spec.name}")
    for s in SCRIPTS:
        if s not in spec.scripts:
            continue
        text = spec.scripts[s]
        if text.startswith("-p "):  # interpreter form: `%post -p /sbin/ldconfig`, no body
            body += [f"%{s}{label} {text.strip()}", ""]
        else:
            body += [f"%{s}{label}", text.rstrip("\n"), ""]
    return "\n".join(head + body)


def _rpm_defines(top: Path, payload: Payload) -> list[str]:
    defs = {
        "_topdir": str(top),
        "_buildhost": BUILDHOST,
        "use_source_date_epoch_as_buildtime": "1",
        "clamp_mtime_to_source_date_epoch": "1",
        "_binary_payload": PAYLOAD_MACRO[payload],
        "_build_id_links": "none",
        "__os_install_post": "%{nil}",  # no strip, no brp scripts: files stay as given
        "_rpmfilename": "%%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm",
        "_source_payload": "w9.gzdio",
        "debug_package": "%{nil}",
    }
    out: list[str] = []
    for k, v in defs.items():
        out += ["--define", f"{k} {v}"]
    return out


def _env() -> dict[str, str]:
    return {**os.environ, "SOURCE_DATE_EPOCH": str(BUILDTIME), "TZ": "UTC", "LC_ALL": "C"}


def build_rpm(
    spec: RpmSpec, out_dir: Path, key: GpgKey | None, *, payload: Payload = "zstd"
) -> BuiltRpm:
    """Build `out_dir/<name>-<version>-<release>.<arch>.rpm`, signed by `key` unless None."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rpmbuild-") as tmp:
        top, stage = Path(tmp) / "top", Path(tmp) / "stage"
        stage.mkdir()
        _stage(spec, stage)
        spec_file = Path(tmp) / f"{spec.name}.spec"
        spec_file.write_text(spec_text(spec, stage))
        _run(["rpmbuild", "-bb", "--quiet", *_rpm_defines(top, payload), str(spec_file)],
             env=_env())  # fmt: skip
        built = top / "RPMS" / spec.filename
        if not built.is_file():
            raise RpmRepoError(f"rpmbuild did not write {spec.filename}")
        dest = out_dir / spec.filename
        shutil.move(str(built), dest)
    if key is not None:
        sign_rpm(dest, key)
    return BuiltRpm(spec, dest)


def sign_rpm(path: Path, key: GpgKey) -> None:
    """`rpmsign --addsign` with the key's GNUPGHOME and gpg's clock frozen."""
    _run(["rpmsign", "--addsign", "--define", f"_gpg_name {key.fingerprint}",
          "--define", "__gpg /usr/bin/gpg", "--define", f"_gpg_path {key.home}",
          "--define", f"_gpg_sign_cmd_extra_args --faked-system-time {GPG_TIME}",
          str(path)], env={**_env(), "GNUPGHOME": str(key.home)})  # fmt: skip


# --- repository ---------------------------------------------------------------------------------


@dataclass
class RpmRepo:
    """One repository directory: packages under Packages/, repodata/ and the public key."""

    root: Path
    packages: list[BuiltRpm]
    key: GpgKey | None
    compress: Compress

    @property
    def repomd(self) -> Path:
        return self.root / "repodata" / "repomd.xml"

    def file_url(self) -> str:
        return self.root.resolve().as_uri()

    def package(self, name: str, evr: str | None = None) -> BuiltRpm:
        for p in self.packages:
            if p.name == name and evr in (None, p.evr):
                return p
        raise KeyError(f"{name} {evr or ''}")

    def data_file(self, kind: str = "primary") -> Path:
        """repodata/<sha>-<kind>.xml.<ext> as repomd.xml names it."""
        text = self.repomd.read_text()
        m = re.search(rf'<data type="{kind}">.*?<location href="([^"]+)"', text, re.S)
        if not m:
            raise RpmRepoError(f"{self.repomd}: no {kind} data")
        return self.root / m.group(1)


def createrepo(root: Path, compress: Compress = "gz", key: GpgKey | None = None) -> Path:
    """createrepo_c over `root` (deterministic: fixed revision, mtimes from the packages);
    with `key`, repomd.xml.asc beside repomd.xml."""
    shutil.rmtree(root / "repodata", ignore_errors=True)
    # createrepo_c 0.17 (Debian) has no zstd: write gz, then recompress (as newer ones write)
    native = "gz" if compress == "zstd" else compress
    _run(["createrepo_c", "--quiet", "--no-database", "--unique-md-filenames",
          "--general-compress-type", native, "--revision", str(BUILDTIME),
          "--set-timestamp-to-revision", "--workers", "1", str(root)], env=_env())  # fmt: skip
    repomd = root / "repodata" / "repomd.xml"
    if compress == "zstd":
        _recompress_zstd(repomd)
    if key is not None:
        key.detach_sign(repomd)
    return repomd


def _recompress_zstd(repomd: Path) -> None:
    """Every gz data file as .xml.zst, with repomd.xml's checksum, size and href updated
    (open-checksum and open-size stay: they cover the uncompressed xml)."""
    text = repomd.read_text()

    def redo(m: re.Match[str]) -> str:
        block = m.group(0)
        loc = re.search(r'<location href="([^"]+\.gz)"', block)
        if not loc:
            return block
        old = repomd.parent.parent / loc.group(1)
        raw = _pipe(["gzip", "-d", "-c"], old.read_bytes())
        data = _pipe(["zstd", "-q", "-19", "-c"], raw)
        digest = hashlib.sha256(data).hexdigest()
        kind = old.name.split("-", 1)[1].removesuffix(".gz")
        new = old.with_name(f"{digest}-{kind}.zst")
        new.write_bytes(data)
        old.unlink()
        block = block.replace(loc.group(1), f"repodata/{new.name}")
        block = re.sub(r'(<checksum type="sha256">)[0-9a-f]+(</checksum>)',
                       rf"\g<1>{digest}\g<2>", block)  # fmt: skip
        return re.sub(r"<size>\d+</size>", f"<size>{len(data)}</size>", block)

    repomd.write_text(re.sub(r"<data type=.*?</data>", redo, text, flags=re.S))


def build_repo(
    root: Path,
    specs: Sequence[RpmSpec],
    key: GpgKey | None,
    *,
    compress: Compress = "gz",
    payload: Payload = "zstd",
    sign_repomd: bool = True,
) -> RpmRepo:
    """Every spec under root/Packages/<first letter>/, repodata, the key as root/<key.name>."""
    pkgs = [build_rpm(s, root / "Packages" / s.name[0].lower(), key, payload=payload)
            for s in specs]  # fmt: skip
    createrepo(root, compress, key if sign_repomd else None)
    if key is not None:
        key.write_public(root)
    return RpmRepo(root, pkgs, key, compress)


# --- tampering (negative tests) -----------------------------------------------------------------

Part = Literal["signature", "header", "payload"]


def rpm_sections(data: bytes) -> dict[str, tuple[int, int]]:
    """Byte ranges (start, end) of an .rpm's signature header, main header and payload."""

    def header_end(off: int) -> int:
        if data[off : off + 4] != HEADER_MAGIC:
            raise RpmRepoError(f"no header magic at {off}")
        il, dl = struct.unpack(">II", data[off + 8 : off + 16])
        return off + 16 + 16 * int(il) + int(dl)

    sig_end = header_end(RPM_LEAD)
    hdr_start = sig_end + (-sig_end % 8)
    hdr_end = header_end(hdr_start)
    return {"signature": (RPM_LEAD, sig_end), "header": (hdr_start, hdr_end),
            "payload": (hdr_end, len(data))}  # fmt: skip


# Where flip_byte aims by default: a value the header keeps parseable when changed. SUMMARY
# (1004) in the main header; RSAHEADER (256) or else SHA256HEADER (273) in the signature one.
DEFAULT_TAGS: dict[str, tuple[int, ...]] = {"header": (1004, 1000), "signature": (256, 268, 273)}


def _tag_data_offset(data: bytes, start: int, tags: Sequence[int]) -> int:
    """Absolute offset of the first data byte of the first of `tags` present in the header
    structure at `start` (index entries: tag, type, offset, count, big-endian)."""
    il = struct.unpack(">I", data[start + 8 : start + 12])[0]
    store = start + 16 + 16 * int(il)
    found: dict[int, int] = {}
    for i in range(int(il)):
        tag, _type, off, _count = struct.unpack(
            ">IIII", data[start + 16 + 16 * i : start + 32 + 16 * i]
        )
        found[int(tag)] = store + int(off)
    for tag in tags:
        if tag in found:
            return found[tag] + 1
    raise RpmRepoError(f"none of the tags {list(tags)} in the header at {start}")


def flip_byte(path: Path, part: Part = "payload", offset: int | None = None) -> bytes:
    """Flip one bit of a byte in one part of an .rpm in place; returns the original bytes.

    Default places: in the header, a byte of the Summary string (the header still parses, its
    digests and signature no longer match); in the signature header, a byte of the OpenPGP
    signature; in the payload, a byte in the middle of the compressed stream. `offset` counts
    from the start of the part instead."""
    original = path.read_bytes()
    sections = rpm_sections(original)
    start, end = sections[part]
    if offset is not None:
        at = start + offset
    elif part == "payload":
        at = (start + end) // 2
    else:
        at = _tag_data_offset(original, start, DEFAULT_TAGS[part])
    if not start <= at < end:
        raise RpmRepoError(f"offset {offset} is outside the {part} of {path}")
    data = bytearray(original)
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    return original


def strip_signature(path: Path) -> None:
    """`rpmsign --delsign`: the package stays valid but unsigned (digests kept)."""
    _run(["rpmsign", "--delsign", str(path)])


def flip_file_byte(path: Path, offset: int = -1) -> bytes:
    """Flip one bit of any file (repomd.xml, a primary.xml.gz, repomd.xml.asc); returns the
    original. For compressed metadata this corrupts the stream; use `rewrite_primary` for a
    well-formed primary whose checksum no longer matches."""
    original = path.read_bytes()
    data = bytearray(original)
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    return original


def _codec(path: Path) -> list[str]:
    ext = path.suffix
    return {".gz": ["gzip", "-n"], ".xz": ["xz"], ".zst": ["zstd", "-q"],
            ".zstd": ["zstd", "-q"]}.get(ext, [])  # fmt: skip


def rewrite_primary(repo_root: Path, old: str, new: str) -> bytes:
    """Replace text in the (decompressed) primary and recompress it in place, leaving
    repomd.xml's checksums stale: a well-formed but tampered primary. Returns the original."""
    text = (repo_root / "repodata" / "repomd.xml").read_text()
    m = re.search(r'<data type="primary">.*?<location href="([^"]+)"', text, re.S)
    if not m:
        raise RpmRepoError("no primary in repomd.xml")
    path = repo_root / m.group(1)
    original = path.read_bytes()
    codec = _codec(path)
    raw = _pipe([*codec, "-d", "-c"], original) if codec else original
    if old.encode() not in raw:
        raise RpmRepoError(f"{old!r} is not in {path.name}")
    changed = raw.replace(old.encode(), new.encode(), 1)
    path.write_bytes(_pipe([*codec, "-c"], changed) if codec else changed)
    return original


def _pipe(cmd: list[str], data: bytes) -> bytes:
    return subprocess.run(cmd, input=data, capture_output=True, check=True).stdout


# --- serving ------------------------------------------------------------------------------------


@contextlib.contextmanager
def serve(root: Path) -> Iterator[RepoServer]:
    """Serve a repository tree on 127.0.0.1 (free port) until the block ends."""
    with RepoServer(root) as server:
        yield server


def _parse_file(arg: str) -> RpmFile:
    # PATH[:MODE[:USER[:GROUP[:CONTENT]]]], as tools/apkrepo.py
    path, *rest = arg.split(":", 4)
    mode = int(rest[0], 8) if len(rest) > 0 and rest[0] else None
    user = rest[1] if len(rest) > 1 and rest[1] else "root"
    group = rest[2] if len(rest) > 2 and rest[2] else "root"
    content = rest[3].replace("\\n", "\n") if len(rest) > 3 else ""
    return RpmFile(path, content, mode=mode, user=user, group=group)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="build or serve test rpm packages and repositories")
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("pkg", help="build one .rpm, signed by a new key in OUT/gnupg")
    k.add_argument("--name", required=True)
    k.add_argument("--version", required=True)
    k.add_argument("--release", default="1")
    k.add_argument("--epoch", type=int, default=None)
    k.add_argument("--arch", default="x86_64")
    k.add_argument("--require", action="append", default=[])
    k.add_argument("--provide", action="append", default=[])
    k.add_argument("--file", action="append", default=[], help="PATH[:MODE[:USER[:GROUP[:TEXT]]]]")
    k.add_argument("--payload", choices=list(PAYLOAD_MACRO), default="zstd")
    k.add_argument("--unsigned", action="store_true")
    k.add_argument("--out", type=Path, default=Path("."))
    s = sub.add_parser("serve", help="serve a directory on loopback until interrupted")
    s.add_argument("dir", type=Path)
    a = p.parse_args(argv)
    if a.cmd == "pkg":
        key = None if a.unsigned else GpgKey.generate(a.out / "gnupg")
        spec = RpmSpec(a.name, a.version, a.release, a.epoch, a.arch,
                       files=[_parse_file(f) for f in a.file], requires=a.require,
                       provides=a.provide)  # fmt: skip
        built = build_rpm(spec, a.out, key, payload=a.payload)
        print(built.path, key.write_public(a.out) if key else "(unsigned)")
        return 0
    with serve(a.dir) as server:
        print(server.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
