"""Build distroless-shaped Debian 12 test images from the Debian archive's .debs.

Like gcr.io/distroless: the files of a few bookworm MAIN packages, one stanza per package in
/var/lib/dpkg/status.d/<pkg> (the package's control file, no Status line) and the package's
md5sums in status.d/<pkg>.md5sums; no /var/lib/dpkg/status, no shell, no dpkg, no apt. Two
layers: "static" (base-files, netbase, tzdata, passwd/group) and "base" (libc6, libssl3,
zlib1g). tzdata's dependency on debconf and libc6's on libgcc-s1 are left unmet, as in the real
images.

The archive's URL and keyring come from this machine's apt sources (deb822 files in
/etc/apt/sources.list.d); InRelease is checked with gpgv against the Signed-By keyring, the
Packages index against InRelease, every .deb against the index (SHA256). Images are written
with ocipatch's layer writer (deterministic; no root needed) and cached under
~/.cache/ocipatch-tests, keyed by every input.

    python -m tools.build_distroless [--arch amd64,arm64] [--merged-usr] OUT_LAYOUT[:TAG]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import io
import json
import lzma
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import requests
from debian.deb822 import Deb822
from debian.debfile import DebFile
from debian.debian_support import version_compare

from ocipatch.fs.changes import Change
from ocipatch.fs.layerwriter import write_layer
from ocipatch.oci import mediatypes as mt
from ocipatch.oci.digest import sha256_bytes
from ocipatch.oci.layout import LayoutDestination
from ocipatch.oci.types import Descriptor
from tools.build_image import copy_cached_layout
from tools.debian_rootfs import CACHE_DIR, DEFAULT_EPOCH, AptSource, read_host_sources

SUITE = "bookworm"
CREATED = "2023-11-14T22:13:20Z"  # DEFAULT_EPOCH as RFC 3339
STATIC = ("base-files", "netbase", "tzdata")
BASE = ("libc6", "libssl3", "zlib1g")
BUILDER_VERSION = "v1"
STATUS_D = "var/lib/dpkg/status.d"
# The top-level directories merged-/usr turns into symlinks into usr/.
MERGED_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")

PASSWD = (
    "root:x:0:0:root:/root:/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
    "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
)
GROUP = "root:x:0:\nnobody:x:65534:\ntty:x:5:\nstaff:x:50:\nnonroot:x:65532:\n"


class FixtureError(RuntimeError):
    """The archive cannot be read or a download does not match its index."""


@dataclass(frozen=True)
class DebRef:
    name: str
    version: str
    arch: str
    filename: str  # pool path
    sha256: str
    size: int
    base_url: str

    @property
    def key(self) -> str:
        return f"{self.name}_{self.version}_{self.arch}:{self.sha256}"


# -- the archive -------------------------------------------------------------------------------
def _source_for(suite: str) -> AptSource:
    for src in read_host_sources():
        if "deb" in src.types and suite in src.suites:
            return src
    raise FixtureError(f"no apt source for {suite} in /etc/apt/sources.list.d/*.sources")


def _get(url: str) -> bytes:
    try:
        resp = requests.get(url, timeout=300)
    except requests.RequestException as e:
        raise FixtureError(f"cannot fetch {url}: {e}") from None
    if resp.status_code != 200:
        raise FixtureError(f"cannot fetch {url}: HTTP {resp.status_code}")
    return resp.content


def _release_hashes(src: AptSource, suite: str) -> dict[str, tuple[str, int]]:
    """path -> (sha256, size) from the suite's InRelease, its signature checked with gpgv."""
    data = _get(f"{src.uris[0].rstrip('/')}/dists/{suite}/InRelease")
    if src.signed_by and Path(src.signed_by).is_file() and shutil.which("gpgv"):
        with tempfile.NamedTemporaryFile() as f:
            f.write(data)
            f.flush()
            proc = subprocess.run(
                ["gpgv", "--keyring", src.signed_by, f.name], capture_output=True, text=True
            )
        if proc.returncode != 0:
            raise FixtureError(f"InRelease of {suite} does not verify: {proc.stderr.strip()}")
    text = data.decode("utf-8", "replace")
    out: dict[str, tuple[str, int]] = {}
    in_sha = False
    for line in text.splitlines():
        if line.startswith("SHA256:"):
            in_sha = True
            continue
        if in_sha and line.startswith(" "):
            digest, size, path = line.split()
            out[path] = (digest, int(size))
        elif in_sha:
            in_sha = False
    return out


_FIELDS = ("Package", "Version", "Architecture", "Filename", "SHA256", "Size")


def _parse_packages(text: str) -> dict[str, dict[str, str]]:
    """The fields fixtures need, newest version per name (a plain split: python-debian's
    parser takes seconds over a whole index)."""
    out: dict[str, dict[str, str]] = {}
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            if key in _FIELDS:
                fields[key] = value.strip()
        name = fields.get("Package")
        if not name or "Version" not in fields:
            continue
        if name not in out or version_compare(fields["Version"], out[name]["Version"]) > 0:
            out[name] = fields
    return out


@functools.lru_cache(maxsize=16)
def archive_index(suite: str, arch: str, component: str = "main") -> dict[str, dict[str, str]]:
    """name -> fields of `suite`'s Packages index for `arch` (parsed once per index hash)."""
    src = _source_for(suite)
    rel = f"{component}/binary-{arch}/Packages.xz"
    hashes = _release_hashes(src, suite)
    if rel not in hashes:
        raise FixtureError(f"{suite} has no {rel}")
    digest, size = hashes[rel]
    cache = CACHE_DIR / "indices" / f"{digest}.json"
    if cache.is_file():
        parsed: dict[str, dict[str, str]] = json.loads(cache.read_text())
        return parsed
    data = _get(f"{src.uris[0].rstrip('/')}/dists/{suite}/{rel}")
    if hashlib.sha256(data).hexdigest() != digest or len(data) != size:
        raise FixtureError(f"{suite}/{rel} does not match InRelease")
    parsed = _parse_packages(lzma.decompress(data).decode("utf-8", "replace"))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".part")
    tmp.write_text(json.dumps(parsed, sort_keys=True))
    tmp.replace(cache)
    return parsed


def newest_versions(arch: str, names: Sequence[str] | None = None) -> dict[str, str]:
    """name -> newest version over bookworm, -updates and -security (main) for `arch`."""
    newest: dict[str, str] = {}
    for suite in (SUITE, f"{SUITE}-updates", f"{SUITE}-security"):
        with contextlib.suppress(FixtureError):
            for name, p in archive_index(suite, arch).items():
                if names is not None and name not in names:
                    continue
                if name not in newest or version_compare(p["Version"], newest[name]) > 0:
                    newest[name] = p["Version"]
    return newest


def deb_refs(names: Sequence[str], arch: str, suite: str = SUITE) -> list[DebRef]:
    index = archive_index(suite, arch)
    base_url = _source_for(suite).uris[0].rstrip("/")
    out = []
    for n in names:
        if n not in index:
            raise FixtureError(f"{n} is not in {suite} main for {arch}")
        p = index[n]
        out.append(
            DebRef(
                n,
                p["Version"],
                p["Architecture"],
                p["Filename"],
                p["SHA256"],
                int(p["Size"]),
                base_url,
            )
        )
    return out


def fetch_deb(ref: DebRef) -> Path:
    """The .deb in the cache, downloaded once and checked against the index's SHA256."""
    dest = CACHE_DIR / "debs" / f"{ref.sha256}.deb"
    if dest.is_file():
        return dest
    data = _get(f"{ref.base_url}/{ref.filename}")
    if hashlib.sha256(data).hexdigest() != ref.sha256 or len(data) != ref.size:
        raise FixtureError(f"{ref.filename} does not match its SHA256 in the Packages index")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return dest


# -- files of a package as layer entries --------------------------------------------------------
def _merged(path: str, merged_usr: bool) -> str:
    if not merged_usr:
        return path
    top, _, rest = path.partition("/")
    if top in MERGED_DIRS:
        return f"usr/{top}/{rest}".rstrip("/")
    return path


def _member_path(name: str) -> str:
    path = name[2:] if name.startswith("./") else name.lstrip("/")
    return "" if path in (".", "./") else path


def deb_changes(deb: Path, merged_usr: bool) -> tuple[dict[str, Change], str, bytes | None]:
    """(path -> Change for every entry of the data.tar, control text, md5sums or None)."""
    d = DebFile(str(deb))
    changes: dict[str, Change] = {}
    with d.data.tgz() as tar:
        for m in tar.getmembers():
            rel = _member_path(m.name).rstrip("/")
            if not rel:
                continue
            path = _merged(rel, merged_usr)
            mode = m.mode & 0o7777
            mtime = int(m.mtime)
            if m.isdir():
                changes[path] = Change.dir(path, mode=mode, uid=m.uid, gid=m.gid, mtime=mtime)
            elif m.isreg():
                f = tar.extractfile(m)
                data = f.read() if f is not None else b""
                changes[path] = Change.file(
                    path, data, mode=mode, uid=m.uid, gid=m.gid, mtime=mtime
                )
            elif m.issym():
                changes[path] = Change.symlink(path, m.linkname, uid=m.uid, gid=m.gid, mtime=mtime)
            elif m.islnk():
                changes[path] = Change.hardlink(path, _merged(_member_path(m.linkname), merged_usr))
    control = d.control.get_content("control")
    md5 = d.control.get_content("md5sums") if d.control.has_file("md5sums") else None
    text = control.decode("utf-8") if isinstance(control, bytes) else str(control)
    return changes, text, md5 if isinstance(md5, bytes) or md5 is None else md5.encode()


def _layer_changes(debs: list[Path], merged_usr: bool, extra: dict[str, Change]) -> list[Change]:
    out: dict[str, Change] = {}
    for path in ("var", "var/lib", "var/lib/dpkg", STATUS_D):
        out[path] = Change.dir(path, mtime=DEFAULT_EPOCH)
    for deb in debs:
        changes, control, md5 = deb_changes(deb, merged_usr)
        for path, c in changes.items():
            if c.type == "dir" and path in out:
                continue  # several packages ship the same directory
            out[path] = c
        name = Deb822(control)["Package"]
        out[f"{STATUS_D}/{name}"] = Change.file(
            f"{STATUS_D}/{name}", control.encode(), mtime=DEFAULT_EPOCH
        )
        if md5 is not None:
            out[f"{STATUS_D}/{name}.md5sums"] = Change.file(
                f"{STATUS_D}/{name}.md5sums", md5, mtime=DEFAULT_EPOCH
            )
    out.update(extra)
    if merged_usr:
        tops = {p.split("/")[1] for p in out if p.startswith("usr/") and p.count("/") >= 1}
        for top in MERGED_DIRS:
            if top in tops:
                out[top] = Change.symlink(top, f"usr/{top}", mtime=DEFAULT_EPOCH)
    return list(out.values())


def _static_extra() -> dict[str, Change]:
    return {
        "etc": Change.dir("etc", mtime=DEFAULT_EPOCH),
        "etc/passwd": Change.file("etc/passwd", PASSWD.encode(), mtime=DEFAULT_EPOCH),
        "etc/group": Change.file("etc/group", GROUP.encode(), mtime=DEFAULT_EPOCH),
        "home": Change.dir("home", mtime=DEFAULT_EPOCH),
        "home/nonroot": Change.dir(
            "home/nonroot", mode=0o700, uid=65532, gid=65532, mtime=DEFAULT_EPOCH
        ),
        "root": Change.dir("root", mode=0o700, mtime=DEFAULT_EPOCH),
        "tmp": Change.dir("tmp", mode=0o1777, mtime=DEFAULT_EPOCH),
    }


# -- the image -----------------------------------------------------------------------------------
def _write(changes: list[Change], work: Path) -> tuple[Descriptor, str, Path]:
    tmp = work / "layer.tmp"
    with tmp.open("wb") as out:
        info = write_layer(changes, out, "gzip", clamp_mtime=DEFAULT_EPOCH)
    final = work / info.digest.split(":")[1]
    tmp.rename(final)
    return Descriptor(mt.OCI_LAYER_GZIP, info.digest, info.size), info.diff_id, final


def _platform_image(
    dest: LayoutDestination, work: Path, arch: str, merged_usr: bool
) -> tuple[bytes, dict[str, str]]:
    """Write one platform's blobs; return its manifest bytes and platform."""
    static = [fetch_deb(r) for r in deb_refs(STATIC, arch)]
    base = [fetch_deb(r) for r in deb_refs(BASE, arch)]
    layers = [
        _write(_layer_changes(static, merged_usr, _static_extra()), work),
        _write(_layer_changes(base, merged_usr, {}), work),
    ]
    platform = {"architecture": arch, "os": "linux"}
    if arch == "arm64":
        platform["variant"] = "v8"
    config = {
        "created": CREATED,
        **platform,
        "config": {
            "Env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
            ],
            "User": "0",
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id, _ in layers]},
        "history": [
            {"created": CREATED, "created_by": f"distroless static: {', '.join(STATIC)}"},
            {"created": CREATED, "created_by": f"distroless base: {', '.join(BASE)}"},
        ],
    }
    config_bytes = json.dumps(config, separators=(",", ":")).encode()
    cfg = Descriptor(mt.OCI_CONFIG, sha256_bytes(config_bytes), len(config_bytes))
    for desc, _, path in layers:
        dest.put_blob(desc, lambda p=path: p.open("rb"))  # type: ignore[misc]
    dest.put_blob(cfg, lambda: io.BytesIO(config_bytes))
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": cfg.to_json(),
        "layers": [desc.to_json() for desc, _, _ in layers],
    }
    return json.dumps(manifest, separators=(",", ":")).encode(), platform


def _build(target: Path, arches: Sequence[str], merged_usr: bool) -> None:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-distroless-", dir=CACHE_DIR) as tmp:
        work = Path(tmp)
        staging = work / "layout"
        dest = LayoutDestination(staging, "latest")
        manifests = []
        for arch in arches:
            data, platform = _platform_image(dest, work, arch, merged_usr)
            manifests.append((data, platform))
        if len(manifests) == 1:
            data = manifests[0][0]
            dest.put_root(data, mt.OCI_MANIFEST, sha256_bytes(data))
        else:
            entries = []
            for data, platform in manifests:
                digest = sha256_bytes(data)
                dest.put_manifest(data, mt.OCI_MANIFEST, digest)
                entries.append(
                    {
                        "mediaType": mt.OCI_MANIFEST,
                        "digest": digest,
                        "size": len(data),
                        "platform": platform,
                    }
                )
            index = json.dumps(
                {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries},
                separators=(",", ":"),
            ).encode()
            dest.put_root(index, mt.OCI_INDEX, sha256_bytes(index))
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(staging), target)


def build_distroless_image(
    out: Path,
    tag: str = "latest",
    *,
    arches: Sequence[str] = ("amd64",),
    merged_usr: bool = False,
) -> Path:
    """Write (or reuse) an OCI layout at `out`: one image, or an index when several arches."""
    refs = [r.key for arch in arches for r in deb_refs([*STATIC, *BASE], arch)]
    key = hashlib.sha256(
        json.dumps([BUILDER_VERSION, list(arches), merged_usr, refs]).encode()
    ).hexdigest()[:16]
    cached = CACHE_DIR / f"distroless-{key}"
    if not (cached / "index.json").exists():
        _build(cached, arches, merged_usr)
    return copy_cached_layout(cached, out, tag)


def installed_versions(arch: str) -> dict[str, str]:
    """name -> version of the packages a fixture for `arch` holds (bookworm main)."""
    return {r.name: r.version for r in deb_refs([*STATIC, *BASE], arch)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build a distroless-shaped Debian 12 OCI layout.")
    p.add_argument("out", help="OUT_DIR[:TAG]")
    p.add_argument("--arch", default="amd64", help="comma separated; several give an index")
    p.add_argument("--merged-usr", action="store_true", help="/bin, /lib... as symlinks into /usr")
    args = p.parse_args(argv)
    out, _, tag = args.out.partition(":")
    arches = [a for a in args.arch.split(",") if a]
    try:
        print(
            build_distroless_image(
                Path(out), tag or "latest", arches=arches, merged_usr=args.merged_usr
            )
        )
    except FixtureError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
