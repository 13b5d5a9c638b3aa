"""Signed apk repositories for tests, in the real formats: .apk v2 packages, APKINDEX.tar.gz,
RSA keys, the installed-database files, a loopback server and tamper helpers.

Independent of ocipatch's apk reader (it must not import ocipatch.distro.apk): the format facts
come from abuild/apk-tools and the samples in ../shared/formats (FORMAT-NOTES.md).

    key = ApkKey.from_seed("alpine-devel@ocipatch.invalid-5e1f0c1a", 1)
    pkg = build_apk(ApkSpec("hello", "1.0-r0", files=[ApkFile("/usr/bin/hello", "#!/bin/sh\\n",
                    mode=0o755)], provides=["cmd:hello=1.0-r0"]), out_dir, key)
    index = build_index(out_dir, [pkg], [key])       # out_dir/APKINDEX.tar.gz
    with serve(repo_root) as server: ...             # 127.0.0.1, a free port

An .apk is three concatenated gzip streams: signature tar, control tar (`.PKGINFO` and the
scripts), data tar. The first two are "cut" tars (no end-of-archive blocks) as abuild writes
them. The signature is RSA PKCS#1 v1.5 over the compressed control stream (SHA-1 for
`.SIGN.RSA.`, SHA-256 for `.SIGN.RSA256.`); an index is signed the same way over its
compressed tar. Everything is deterministic: fixed times, sorted entries, gzip without a
timestamp, and keys derived from a seed (test keys, not secrets) when asked.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import hashlib
import io
import random
import sys
import tarfile
import threading
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tools.aptrepo import RepoServer

BUILDDATE = 1700000000
SCRIPTS = (
    "pre-install", "post-install", "pre-upgrade", "post-upgrade",
    "pre-deinstall", "post-deinstall", "trigger",
)  # fmt: skip
SigAlgo = Literal["RSA", "RSA256"]
DbStyle = Literal["apk-tools", "apko"]
BLOCK = 512
# Names the data tars give to the ids the fixtures use (Alpine's and Chainguard's /etc/passwd).
OWNER_NAMES = {0: "root", 65532: "nonroot"}
GROUP_NAMES = {0: "root", 42: "shadow", 65532: "nonroot"}


class ApkRepoError(RuntimeError):
    """A spec cannot be built (bad path, unknown script, ...)."""


# --- keys ---------------------------------------------------------------------------------------


def _is_probable_prime(n: int, rng: random.Random, rounds: int = 40) -> bool:
    for p in (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73):
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for _ in range(rounds):
        x = pow(rng.randrange(2, n - 1), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(rng: random.Random, bits: int, e: int) -> int:
    while True:
        n = rng.getrandbits(bits) | (3 << (bits - 2)) | 1
        if (n - 1) % e and _is_probable_prime(n, rng):
            return n


@dataclass
class ApkKey:
    """An RSA signing key. `name` is the file name apk looks for in /etc/apk/keys."""

    name: str
    private: rsa.RSAPrivateKey

    @classmethod
    def generate(cls, name: str, bits: int = 2048) -> ApkKey:
        return cls(_key_name(name), rsa.generate_private_key(public_exponent=65537, key_size=bits))

    @classmethod
    def from_seed(cls, name: str, seed: int | str, bits: int = 2048) -> ApkKey:
        """The same key for the same seed, so fixtures are byte-for-byte reproducible."""
        rng = random.Random(f"apkrepo-key:{seed}")
        e = 65537
        p = _prime(rng, bits // 2, e)
        q = _prime(rng, bits // 2, e)
        while q == p:
            q = _prime(rng, bits // 2, e)
        d = pow(e, -1, (p - 1) * (q - 1))
        numbers = rsa.RSAPrivateNumbers(
            p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), rsa.RSAPublicNumbers(e, p * q)
        )
        return cls(_key_name(name), numbers.private_key())

    @classmethod
    def load(cls, private_pem: Path) -> ApkKey:
        key = serialization.load_pem_private_key(private_pem.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ApkRepoError(f"{private_pem}: not an RSA key")
        return cls(_key_name(private_pem.name.removesuffix(".key")), key)

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def private_pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )

    def write_public(self, directory: Path) -> Path:
        """Write `<name>.rsa.pub` (PEM) into `directory`, e.g. an image's /etc/apk/keys."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.name
        path.write_bytes(self.public_pem())
        return path

    def write_private(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / (self.name.removesuffix(".pub") + ".key")
        path.write_bytes(self.private_pem())
        return path

    def sign(self, data: bytes, algo: SigAlgo) -> bytes:
        digest: hashes.HashAlgorithm = hashes.SHA1() if algo == "RSA" else hashes.SHA256()
        return self.private.sign(data, padding.PKCS1v15(), digest)


def _key_name(name: str) -> str:
    return name if name.endswith(".rsa.pub") else f"{name}.rsa.pub"


# --- tar pieces ---------------------------------------------------------------------------------


def _octal(value: int, width: int) -> bytes:
    return f"{value:0{width - 1}o}".encode() + b"\0"


def tar_header(
    name: str,
    *,
    size: int = 0,
    mode: int = 0o644,
    typeflag: bytes = b"0",
    linkname: str = "",
    uid: int = 0,
    gid: int = 0,
    mtime: int = 0,
    uname: str = "root",
    gname: str = "root",
    gnu: bool = False,
) -> bytes:
    """One 512-byte ustar (or GNU, as apk-tools' scripts.tar) header."""
    raw, prefix = name.encode(), b""
    if len(raw) > 100:
        cut = raw.rfind(b"/", 0, 156)
        prefix, raw = raw[:cut], raw[cut + 1 :]
        if len(raw) > 100 or cut <= 0:
            raise ApkRepoError(f"path too long for a ustar header: {name}")
    magic = b"ustar  \0" if gnu else b"ustar\x0000"
    head = (
        raw.ljust(100, b"\0")
        + _octal(mode & 0o7777, 8)
        + _octal(uid, 8)
        + _octal(gid, 8)
        + _octal(size, 12)
        + _octal(mtime, 12)
        + b" " * 8
        + typeflag
        + linkname.encode().ljust(100, b"\0")
        + magic
        + uname.encode().ljust(32, b"\0")
        + gname.encode().ljust(32, b"\0")
        + _octal(0, 8)
        + _octal(0, 8)
        + prefix.ljust(155, b"\0")
    ).ljust(BLOCK, b"\0")
    checksum = f"{sum(head):06o}\0 ".encode()
    return head[:148] + checksum + head[156:]


def tar_member(name: str, data: bytes, **kw: Any) -> bytes:
    pad = -len(data) % BLOCK
    return tar_header(name, size=len(data), **kw) + data + b"\0" * pad


def _pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


def _pax_name(path: str) -> str:
    parent, _, base = path.rpartition("/")
    return f"{parent or '.'}/PaxHeaders/{base}"


def gz(data: bytes) -> bytes:
    """A deterministic gzip stream (no name, no timestamp), as the .apk streams use."""
    return gzip.compress(data, compresslevel=9, mtime=0)


def split_streams(data: bytes) -> list[bytes]:
    """The gzip streams of an .apk or APKINDEX.tar.gz, each still compressed."""
    streams, off = [], 0
    while off < len(data):
        d = zlib.decompressobj(31)
        d.decompress(data[off:])
        if not d.eof:
            raise ApkRepoError("truncated gzip stream")
        used = len(data) - off - len(d.unused_data)
        streams.append(data[off : off + used])
        off += used
    return streams


def q1(data: bytes) -> str:
    """apk's checksum notation: `Q1` + base64(SHA-1)."""
    return "Q1" + base64.b64encode(hashlib.sha1(data).digest()).decode()


# --- packages -----------------------------------------------------------------------------------


@dataclass
class ApkFile:
    """One entry of a package's data tar. `path` is absolute inside the package."""

    path: str
    content: bytes | str = b""
    mode: int | None = None  # default: 0644 files, 0755 directories, 0777 symlinks
    uid: int = 0
    gid: int = 0
    kind: Literal["file", "dir", "symlink"] = "file"
    target: str = ""  # for symlinks

    def data(self) -> bytes:
        return self.content.encode() if isinstance(self.content, str) else self.content

    @property
    def perm(self) -> int:
        if self.kind == "symlink":
            return 0o777
        if self.mode is None:
            return 0o755 if self.kind == "dir" else 0o644
        return self.mode

    @property
    def rel(self) -> str:
        return self.path.strip("/")

    def checksum_input(self) -> bytes:
        """What APK-TOOLS.checksum.SHA1 and the installed DB's Z: hash: content or link target."""
        return self.target.encode() if self.kind == "symlink" else self.data()


@dataclass
class ApkSpec:
    name: str
    version: str  # <ver>-r<N>
    arch: str = "x86_64"
    files: Sequence[ApkFile] = ()
    depends: Sequence[str] = ()
    provides: Sequence[str] = ()  # so:libfoo.so.1=1 cmd:foo=1.0-r0 pc:foo=1.0
    install_if: Sequence[str] = ()
    replaces: Sequence[str] = ()
    provider_priority: int | None = None
    scripts: Mapping[str, str] = field(default_factory=dict)  # post-upgrade -> text
    triggers: Sequence[str] = ()  # globs; needs a "trigger" script
    description: str = "ocipatch test package"
    url: str = "https://ocipatch.invalid/"
    license: str = "MIT"
    origin: str = ""  # source package; defaults to name
    maintainer: str = "ocipatch tests <tests@ocipatch.invalid>"
    commit: str = "0000000000000000000000000000000000000000"
    builddate: int = BUILDDATE
    packager: str = "ocipatch tests <tests@ocipatch.invalid>"

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}.apk"


@dataclass
class FileRecord:
    """An entry of the data tar as the installed DB records it."""

    rel: str
    kind: Literal["file", "dir", "symlink"]
    mode: int
    uid: int
    gid: int
    sha1: bytes | None  # files and symlinks


@dataclass
class BuiltApk:
    """A built package: its file and every value an index or installed DB entry needs."""

    spec: ApkSpec
    path: Path
    checksum: str  # Q1... of the control stream (C:)
    size: int  # of the .apk (S:)
    installed_size: int  # I:
    datahash: str
    records: list[FileRecord]
    scripts: dict[str, bytes]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> str:
        return self.spec.version


def _entries(spec: ApkSpec) -> list[ApkFile]:
    """The package's entries, sorted, with every parent directory present (as tar -c does)."""
    by_rel: dict[str, ApkFile] = {}
    for f in spec.files:
        rel = f.rel
        if not rel or ".." in rel.split("/") or rel.startswith("."):
            raise ApkRepoError(f"bad path in package {spec.name}: {f.path!r}")
        by_rel[rel] = f
        parts = rel.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            by_rel.setdefault(parent, ApkFile(parent, kind="dir"))
    return [by_rel[k] for k in sorted(by_rel)]


def _data_tar(spec: ApkSpec) -> tuple[bytes, list[FileRecord], int]:
    out, records, size = io.BytesIO(), [], 0
    for f in _entries(spec):
        sha1 = None
        if f.kind != "dir":
            sha1 = hashlib.sha1(f.checksum_input()).digest()
            pax = _pax_record("APK-TOOLS.checksum.SHA1", sha1.hex())
            out.write(tar_member(_pax_name(f.rel), pax, typeflag=b"x", uname="", gname=""))
        owner: dict[str, Any] = {
            "mode": f.perm,
            "uid": f.uid,
            "gid": f.gid,
            "mtime": spec.builddate,
            # apk resolves owners by these names in the image's passwd/group, so they must
            # match the numbers (an unknown id gets no name, as tar writes it)
            "uname": OWNER_NAMES.get(f.uid, ""),
            "gname": GROUP_NAMES.get(f.gid, ""),
        }
        if f.kind == "dir":
            out.write(tar_header(f.rel + "/", typeflag=b"5", **owner))
        elif f.kind == "symlink":
            out.write(tar_header(f.rel, typeflag=b"2", linkname=f.target, **owner))
        else:
            out.write(tar_member(f.rel, f.data(), **owner))
            size += len(f.data())
        records.append(FileRecord(f.rel, f.kind, f.perm, f.uid, f.gid, sha1))
    body = out.getvalue() + b"\0" * (2 * BLOCK)
    return body + b"\0" * (-len(body) % 10240), records, size  # GNU tar's 10 KiB records


def _pkginfo(spec: ApkSpec, size: int, datahash: str) -> bytes:
    lines = [
        "# Generated by ocipatch tools/apkrepo.py",
        f"pkgname = {spec.name}",
        f"pkgver = {spec.version}",
        f"pkgdesc = {spec.description}",
        f"url = {spec.url}",
        f"builddate = {spec.builddate}",
        f"packager = {spec.packager}",
        f"size = {size}",
        f"arch = {spec.arch}",
        f"origin = {spec.origin or spec.name}",
        f"commit = {spec.commit}",
        f"maintainer = {spec.maintainer}",
        f"license = {spec.license}",
    ]
    lines += [f"replaces = {r}" for r in spec.replaces]
    if spec.provider_priority is not None:
        lines.append(f"provider_priority = {spec.provider_priority}")
    lines += [f"depend = {d}" for d in spec.depends]
    lines += [f"provides = {p}" for p in spec.provides]
    if spec.install_if:
        lines.append(f"install_if = {' '.join(spec.install_if)}")
    if spec.triggers:
        lines.append(f"triggers = {' '.join(spec.triggers)}")
    lines.append(f"datahash = {datahash}")
    return ("\n".join(lines) + "\n").encode()


def _control_tar(spec: ApkSpec, pkginfo: bytes) -> tuple[bytes, dict[str, bytes]]:
    unknown = set(spec.scripts) - set(SCRIPTS)
    if unknown:
        raise ApkRepoError(f"unknown apk script(s) {sorted(unknown)} in {spec.name}")
    if spec.triggers and "trigger" not in spec.scripts:
        raise ApkRepoError(f"{spec.name}: triggers need a 'trigger' script")
    t = spec.builddate
    parts = [tar_member(".PKGINFO", pkginfo, mtime=t)]
    scripts = {a: spec.scripts[a].encode() for a in SCRIPTS if a in spec.scripts}
    parts += [tar_member(f".{a}", body, mode=0o755, mtime=t) for a, body in scripts.items()]
    return b"".join(parts), scripts  # cut: no end-of-archive blocks


def _signature_stream(payload: bytes, keys: Sequence[ApkKey], algo: SigAlgo) -> bytes:
    members = [tar_member(f".SIGN.{algo}.{k.name}", k.sign(payload, algo)) for k in keys]
    return gz(b"".join(members))


def build_apk(
    spec: ApkSpec, out_dir: Path, key: ApkKey | None, *, algo: SigAlgo = "RSA"
) -> BuiltApk:
    """Write `out_dir/<name>-<version>.apk`; unsigned when `key` is None."""
    data, records, size = _data_tar(spec)
    data_gz = gz(data)
    datahash = hashlib.sha256(data_gz).hexdigest()
    control, scripts = _control_tar(spec, _pkginfo(spec, size, datahash))
    control_gz = gz(control)
    signature = _signature_stream(control_gz, [key], algo) if key else b""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / spec.filename
    blob = signature + control_gz + data_gz
    path.write_bytes(blob)
    return BuiltApk(spec, path, q1(control_gz), len(blob), size, datahash, records, scripts)


# --- index --------------------------------------------------------------------------------------


def _deps_line(letter: str, values: Sequence[str]) -> list[str]:
    return [f"{letter}:{' '.join(values)}"] if values else []


def index_entry(pkg: BuiltApk) -> str:
    """The APKINDEX entry, field order as `apk index` writes it."""
    s = pkg.spec
    lines = [
        f"C:{pkg.checksum}", f"P:{s.name}", f"V:{s.version}", f"A:{s.arch}",
        f"S:{pkg.size}", f"I:{pkg.installed_size}", f"T:{s.description}", f"U:{s.url}",
        f"L:{s.license}", f"o:{s.origin or s.name}", f"m:{s.maintainer}",
        f"t:{s.builddate}", f"c:{s.commit}",
    ]  # fmt: skip
    if s.provider_priority is not None:
        lines.append(f"k:{s.provider_priority}")
    lines += _deps_line("D", s.depends) + _deps_line("p", s.provides)
    lines += _deps_line("i", s.install_if)
    return "\n".join(lines) + "\n"


def index_text(pkgs: Sequence[BuiltApk]) -> str:
    ordered = sorted(pkgs, key=lambda p: (p.name, p.version))
    return "".join(index_entry(p) + "\n" for p in ordered)


def build_index(
    arch_dir: Path,
    pkgs: Sequence[BuiltApk],
    keys: Sequence[ApkKey],
    *,
    description: str = "ocipatch test repository",
    algo: SigAlgo = "RSA",
    mtime: int = BUILDDATE,
) -> Path:
    """Write `arch_dir/APKINDEX.tar.gz`: signature stream(s) + tar{DESCRIPTION, APKINDEX}."""
    tar = (
        tar_member("DESCRIPTION", description.encode(), mtime=mtime)
        + tar_member("APKINDEX", index_text(pkgs).encode(), mtime=mtime)
        + b"\0" * (2 * BLOCK)
    )
    tar += b"\0" * (-len(tar) % 10240)
    tar_gz = gz(tar)
    signature = _signature_stream(tar_gz, keys, algo) if keys else b""
    arch_dir.mkdir(parents=True, exist_ok=True)
    path = arch_dir / "APKINDEX.tar.gz"
    path.write_bytes(signature + tar_gz)
    return path


@dataclass
class ApkRepo:
    """One repository (`<root>/<rel>/<arch>/`): its packages, index and keys."""

    root: Path  # what a server serves
    rel: str  # e.g. "alpine/v3.20/main"
    arch: str
    packages: list[BuiltApk]
    keys: list[ApkKey]
    index: Path

    @property
    def arch_dir(self) -> Path:
        return self.root / self.rel / self.arch

    def url(self, base: str) -> str:
        """The /etc/apk/repositories line for this repository under `base`."""
        return f"{base.rstrip('/')}/{self.rel}"

    def file_url(self) -> str:
        return (self.root / self.rel).resolve().as_uri()

    def package(self, name: str, version: str | None = None) -> BuiltApk:
        for p in self.packages:
            if p.name == name and version in (None, p.version):
                return p
        raise KeyError(f"{name} {version or ''}")


def build_repo(
    root: Path,
    rel: str,
    specs: Sequence[ApkSpec],
    keys: Sequence[ApkKey],
    *,
    arch: str = "x86_64",
    algo: SigAlgo = "RSA",
    index_algo: SigAlgo | None = None,
    package_key: ApkKey | None = None,
    description: str = "ocipatch test repository",
) -> ApkRepo:
    """Build every spec and a signed index. The index carries one signature per key (a client
    needs to trust any one); packages are signed by `package_key` (default: the first key)."""
    arch_dir = root / rel / arch
    signer = package_key or (keys[0] if keys else None)
    pkgs = [build_apk(s, arch_dir, signer, algo=algo) for s in specs]
    index = build_index(arch_dir, pkgs, keys, description=description, algo=index_algo or algo)
    return ApkRepo(root, rel, arch, pkgs, list(keys), index)


# --- installed database -------------------------------------------------------------------------


def _acl(uid: int, gid: int, mode: int, style: DbStyle) -> str:
    return f"{uid}:{gid}:{mode:04o}" if style == "apko" else f"{uid}:{gid}:{mode:o}"


def _file_records(pkg: BuiltApk, style: DbStyle) -> list[str]:
    """F:/M:/R:/a:/Z: lines: each directory once (first-seen order), its files below it."""
    dirs: dict[str, FileRecord | None] = {}
    files: dict[str, list[FileRecord]] = {}
    for r in pkg.records:
        if r.kind == "dir":
            dirs[r.rel] = r
            files.setdefault(r.rel, [])
        else:
            parent = r.rel.rpartition("/")[0]
            dirs.setdefault(parent, None)
            files.setdefault(parent, []).append(r)
    lines = []
    for d, rec in dirs.items():
        lines.append(f"F:{d}")
        if rec and (rec.uid, rec.gid, rec.mode) != (0, 0, 0o755) and style == "apk-tools":
            lines.append(f"M:{_acl(rec.uid, rec.gid, rec.mode, style)}")
        for f in files.get(d, []):
            lines.append(f"R:{f.rel.rpartition('/')[2]}")
            if (f.uid, f.gid, f.mode) != (0, 0, 0o644):
                lines.append(f"a:{_acl(f.uid, f.gid, f.mode, style)}")
            if f.sha1 is not None:
                lines.append("Z:Q1" + base64.b64encode(f.sha1).decode())
    return lines


def installed_entry(pkg: BuiltApk, style: DbStyle = "apk-tools") -> str:
    """The package's block of lib/apk/db/installed, as apk-tools (C first) or apko writes it."""
    s = pkg.spec
    if style == "apko":
        head = [
            f"P:{s.name}", f"V:{s.version}", f"A:{s.arch}", f"L:{s.license}",
            f"T:{s.description}", f"o:{s.origin or s.name}", f"m:{s.maintainer}", "U:",
            f"D:{' '.join(s.depends)}", f"p:{' '.join(s.provides)}", f"c:{s.commit}",
            "i:[]", f"t:{s.builddate}", f"S:{pkg.size}", f"I:{pkg.installed_size}",
            f"k:{s.provider_priority or 0}", f"C:{pkg.checksum}",
        ]  # fmt: skip
    else:
        head = index_entry(pkg).splitlines() + _deps_line("r", s.replaces)
    return "\n".join(head + _file_records(pkg, style)) + "\n"


def installed_db(pkgs: Sequence[BuiltApk], style: DbStyle = "apk-tools") -> bytes:
    """A whole installed DB: blocks separated by a blank line, ending with one."""
    return "".join(installed_entry(p, style) + "\n" for p in pkgs).encode()


def scripts_tar(pkgs: Sequence[BuiltApk], mtime: int = BUILDDATE) -> bytes:
    """lib/apk/db/scripts.tar: `<name>-<version>.<Q1>.<action>` members (GNU headers)."""
    body = b""
    for p in pkgs:
        for action, text in p.scripts.items():
            name = f"{p.name}-{p.version}.{p.checksum}.{action}"
            body += tar_member(name, text, mode=0o755, mtime=mtime, gnu=True)
    return body + b"\0" * (2 * BLOCK)


def triggers_file(pkgs: Sequence[BuiltApk]) -> bytes:
    """lib/apk/db/triggers: `<Q1> <glob>...` for each installed package with triggers."""
    lines = [f"{p.checksum} {' '.join(p.spec.triggers)}\n" for p in pkgs if p.spec.triggers]
    return "".join(lines).encode()


# --- tampering (negative tests) -----------------------------------------------------------------

Part = Literal["signature", "control", "data", "index"]


def flip_byte(
    path: Path, part: Part = "data", offset: int | None = None, *, raw: bool = False
) -> bytes:
    """Flip one byte of one stream of an .apk / APKINDEX.tar.gz in place; returns the original.

    By default the byte is flipped in the *uncompressed* stream and the stream recompressed, so
    the file stays well-formed gzip and tar while its checksum, datahash or signature no longer
    match. `offset` defaults to the last non-zero byte (usually in the last member's content: a
    data file, a script or .PKGINFO, the signature, the APKINDEX text). `raw=True` flips a byte
    of the compressed stream instead (a corrupt gzip stream).
    """
    original = path.read_bytes()
    streams = split_streams(original)
    which = {"signature": 0, "control": 1, "data": 2, "index": 1}[part]
    if part == "index" and len(streams) == 1:
        which = 0  # unsigned index
    if which >= len(streams):
        raise ApkRepoError(f"{path} has no {part} stream")
    if raw:
        s = bytearray(streams[which])
        s[len(s) - 12 if offset is None else offset] ^= 0x01  # before the gzip trailer
        streams[which] = bytes(s)
    else:
        s = bytearray(gzip.decompress(streams[which]))
        s[len(bytes(s).rstrip(b"\0")) - 1 if offset is None else offset] ^= 0x01
        streams[which] = gz(bytes(s))
    path.write_bytes(b"".join(streams))
    return original


def strip_signature(path: Path) -> bytes:
    """Drop the signature stream (first gzip stream) in place; returns the original bytes."""
    original = path.read_bytes()
    streams = split_streams(original)
    first = gzip.decompress(streams[0])
    if not first.startswith(b".SIGN."):
        raise ApkRepoError(f"{path} is not signed")
    path.write_bytes(b"".join(streams[1:]))
    return original


def resign(path: Path, keys: Sequence[ApkKey], algo: SigAlgo = "RSA") -> None:
    """Replace the signature stream with one by `keys` (e.g. a key the image does not trust)."""
    streams = split_streams(path.read_bytes())
    if gzip.decompress(streams[0]).startswith(b".SIGN."):
        streams = streams[1:]
    path.write_bytes(_signature_stream(streams[0], keys, algo) + b"".join(streams))


def read_tar(stream_gz: bytes) -> dict[str, bytes]:
    """name -> content of a (possibly cut) compressed tar stream."""
    raw = gzip.decompress(stream_gz) + b"\0" * (2 * BLOCK)
    out = {}
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for m in tar:
            fh = tar.extractfile(m)
            out[m.name] = fh.read() if fh else b""
    return out


# --- serving ------------------------------------------------------------------------------------


@contextlib.contextmanager
def serve(root: Path) -> Iterator[RepoServer]:
    """Serve a repository tree on 127.0.0.1 (free port) until the block ends."""
    with RepoServer(root) as server:
        yield server


def _parse_file(arg: str) -> ApkFile:
    # PATH[:MODE[:UID[:GID[:CONTENT]]]], as tools/aptrepo.py
    path, *rest = arg.split(":", 4)
    mode = int(rest[0], 8) if len(rest) > 0 and rest[0] else None
    uid = int(rest[1]) if len(rest) > 1 and rest[1] else 0
    gid = int(rest[2]) if len(rest) > 2 and rest[2] else 0
    content = rest[3].replace("\\n", "\n") if len(rest) > 3 else ""
    return ApkFile(path, content, mode=mode, uid=uid, gid=gid)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="build, inspect or serve test apk packages")
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("pkg", help="build one signed .apk (key derived from --key-seed)")
    k.add_argument("--name", required=True)
    k.add_argument("--version", required=True, help="<ver>-r<N>")
    k.add_argument("--arch", default="x86_64")
    k.add_argument("--depend", action="append", default=[])
    k.add_argument("--provide", action="append", default=[])
    k.add_argument("--file", action="append", default=[], help="PATH[:MODE[:UID[:GID[:TEXT]]]]")
    k.add_argument("--key-name", default="ocipatch-test")
    k.add_argument("--key-seed", default="ocipatch-test")
    k.add_argument("--sha256", action="store_true", help="sign .SIGN.RSA256. (default SHA-1)")
    k.add_argument("--out", type=Path, default=Path("."))
    s = sub.add_parser("serve", help="serve a directory on loopback until interrupted")
    s.add_argument("dir", type=Path)
    i = sub.add_parser("index", help="print the APKINDEX text of an APKINDEX.tar.gz")
    i.add_argument("file", type=Path)
    a = p.parse_args(argv)
    if a.cmd == "pkg":
        key = ApkKey.from_seed(a.key_name, a.key_seed)
        spec = ApkSpec(a.name, a.version, arch=a.arch, depends=a.depend, provides=a.provide,
                       files=[_parse_file(f) for f in a.file])  # fmt: skip
        built = build_apk(spec, a.out, key, algo="RSA256" if a.sha256 else "RSA")
        print(built.path, built.checksum, key.write_public(a.out))
        return 0
    if a.cmd == "index":
        streams = split_streams(a.file.read_bytes())
        sys.stdout.write(read_tar(streams[-1])["APKINDEX"].decode())
        return 0
    with serve(a.dir) as server:
        print(server.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
