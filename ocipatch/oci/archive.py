"""Image archives: `oci-archive:FILE` (a tar of an OCI layout) and `docker-archive:FILE` (the
`docker save` format: manifest.json + config + uncompressed layer tars), read and written.

Reading uses the tar's member offsets (archives are plain tars), so a 1 GB archive is never
loaded into memory. Writing builds the archive in a temporary file beside the target and renames
it into place: a failed write leaves any existing archive untouched.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, BinaryIO

from ocipatch import runs
from ocipatch.errors import ImageFormatError, NotFoundError
from ocipatch.oci import jsondoc
from ocipatch.oci import mediatypes as mt
from ocipatch.oci.atomic import atomic_file, target_of
from ocipatch.oci.cache import CHUNK
from ocipatch.oci.digest import sha256_bytes, verify_bytes
from ocipatch.oci.layout import LayoutDestination, pick_entry
from ocipatch.oci.reference import ImageRef
from ocipatch.oci.types import Descriptor

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class _TarMembers:
    """Random access to the regular files of a plain tar by normalised name.

    Every way the file can fail to be a whole tar archive (not a tar at all, compressed,
    truncated, damaged headers) is an ImageFormatError naming the file; a member whose data
    runs past the end of the file is found here, before anything reads it."""

    def __init__(self, path: Path, what: str) -> None:
        if not path.is_file():
            raise NotFoundError(f"{what}: no such file {path}")
        self._what = what
        try:
            self._tar = tarfile.open(path, "r:")
            listed = self._tar.getmembers()
            file_size = path.stat().st_size
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ImageFormatError(f"{what}: {path} {_not_a_tar(path, e)}") from None
        self.members: dict[str, tarfile.TarInfo] = {}
        for m in listed:
            if m.isfile() and m.offset_data + m.size > file_size:
                raise ImageFormatError(
                    f"{what}: {path} is truncated: {m.name} needs {m.offset_data + m.size} "
                    f"bytes but the file has {file_size}; copy or save the archive again"
                )
            name = m.name.lstrip("./") if m.name.startswith("./") else m.name
            self.members[name.strip("/")] = m
        # A whole tar ends with two zero blocks; without them the file was likely cut short
        # between two members, which shows only as a member missing.
        self._ended = file_size >= self._tar.offset + 2 * tarfile.BLOCKSIZE

    def open(self, name: str) -> BinaryIO:
        m = self.members.get(name)
        # Follow in-archive symlinks (docker save links identical layers).
        hops = 0
        while m is not None and (m.issym() or m.islnk()) and hops < 8:
            target = m.linkname
            if m.issym():
                target = os.path.normpath(os.path.join(os.path.dirname(name), target))
            name, m, hops = target, self.members.get(target), hops + 1
        if m is None or not m.isfile():
            cut = "" if self._ended else " (the archive has no end marker: it looks truncated)"
            raise ImageFormatError(f"{self._what}: {name} is missing from the archive{cut}")
        f = self._tar.extractfile(m)
        assert f is not None
        return _MemberReader(f, f"{self._what}: {name}")  # type: ignore[return-value]

    def read(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()

    def size(self, name: str) -> int:
        return self.members[name].size


def _check_entry(entry: object, what: str) -> None:
    """One image of manifest.json: {"Config": str, "RepoTags": [str], "Layers": [str]}."""

    def strings(value: object) -> bool:
        return value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value))

    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("Config"), str)
        or not strings(entry.get("Layers"))
        or not strings(entry.get("RepoTags"))
    ):
        raise ImageFormatError(
            f"{what}: manifest.json is malformed: each image needs Config (a file name), "
            "Layers and RepoTags (lists of names)"
        )


def _not_a_tar(path: Path, e: BaseException) -> str:
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError:
        magic = b""
    if magic.startswith(_GZIP_MAGIC) or magic == _ZSTD_MAGIC:
        kind = "gzip" if magic.startswith(_GZIP_MAGIC) else "zstd"
        return f"is {kind}-compressed: decompress it to a plain tar first"
    if str(e) == "unexpected end of data":
        return "is truncated (it ends inside a member): copy or save the archive again"
    return f"is not a complete tar archive ({e}): the file is damaged, truncated or not an archive"


class _MemberReader:
    """A member's data stream whose read errors (the file changed or shrank under us) are
    ImageFormatError, not tarfile's."""

    def __init__(self, raw: IO[bytes], what: str) -> None:
        self._raw = raw
        self._what = what

    def read(self, n: int = -1) -> bytes:
        try:
            return self._raw.read(n)
        except (tarfile.TarError, EOFError) as e:
            raise ImageFormatError(
                f"{self._what}: unreadable ({e}): the archive is damaged"
            ) from None

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> _MemberReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class OciArchiveSource:
    def __init__(self, ref: ImageRef) -> None:
        self.ref = ref
        self._what = str(ref)
        self._tar = _TarMembers(Path(ref.path), self._what)

    def root_manifest(self) -> tuple[bytes, str]:
        if "index.json" not in self._tar.members:
            raise ImageFormatError(f"{self._what}: not an OCI archive (no index.json)")
        index = jsondoc.parse(self._tar.read("index.json"), f"{self._what}: index.json")
        if not isinstance(index, dict) or not isinstance(index.get("manifests", []), list):
            raise ImageFormatError(f"{self._what}: index.json is not an OCI image index")
        entry = pick_entry(index, self.ref.tag, self._what)
        return self.manifest(entry), entry.media_type

    def manifest(self, desc: Descriptor) -> bytes:
        return verify_bytes(
            self._tar.read(_blob_name(desc.digest)), desc.digest, desc.size, "manifest"
        )

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        return self._tar.open(_blob_name(desc.digest))

    def local_blob(self, desc: Descriptor) -> Path | None:
        return None


def _blob_name(digest: str) -> str:
    alg, _, hexpart = digest.partition(":")
    return f"blobs/{alg}/{hexpart}"


class DockerArchiveSource:
    """Reads `docker save` archives; the manifest is synthesised as Docker schema2 from
    manifest.json, with layer digests equal to their diff_ids for plain tar layers."""

    def __init__(self, ref: ImageRef) -> None:
        self.ref = ref
        self._what = str(ref)
        self._tar = _TarMembers(Path(ref.path), self._what)
        self._blobs: dict[str, str] = {}
        self.repo_tag: str | None = None  # the image's NAME:TAG in RepoTags, once read

    def _entry(self) -> dict[str, Any]:
        if "manifest.json" not in self._tar.members:
            raise ImageFormatError(f"{self._what}: not a docker-archive (no manifest.json)")
        entries = jsondoc.parse(self._tar.read("manifest.json"), f"{self._what}: manifest.json")
        if not isinstance(entries, list) or not entries:
            raise ImageFormatError(f"{self._what}: manifest.json lists no image")
        for entry in entries:
            _check_entry(entry, self._what)
        if self.ref.tag is None:
            if len(entries) > 1:
                raise NotFoundError(
                    f"{self._what}: the archive holds {len(entries)} images; name one as FILE:NAME:TAG"
                )
            self.repo_tag = next(iter(entries[0].get("RepoTags") or []), None)
            return dict(entries[0])
        for entry in entries:
            for t in self._strings(entry, "RepoTags"):
                if (
                    t == self.ref.tag
                    or t.endswith("/" + self.ref.tag)
                    or t.split(":")[-1] == self.ref.tag
                ):
                    self.repo_tag = t
                    return dict(entry)
        raise NotFoundError(f"{self._what}: no image tagged {self.ref.tag!r}")

    def _strings(self, entry: dict[str, Any], key: str) -> list[str]:
        value = entry.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ImageFormatError(f"{self._what}: manifest.json {key} is not a list of strings")
        return value

    def root_manifest(self) -> tuple[bytes, str]:
        entry = self._entry()
        config_name = entry.get("Config")
        if not isinstance(config_name, str):
            raise ImageFormatError(f"{self._what}: manifest.json names no Config file")
        config_bytes = self._tar.read(config_name)
        config = jsondoc.parse_object(config_bytes, f"{self._what}: image config {config_name}")
        rootfs = config.get("rootfs")
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
            raise ImageFormatError(
                f"{self._what}: image config {config_name} has no rootfs.diff_ids list of digests"
            )
        layer_names = list(entry.get("Layers") or [])
        if len(diff_ids) != len(layer_names):
            raise ImageFormatError(
                f"{self._what}: {len(layer_names)} layers but {len(diff_ids)} diff_ids"
            )
        config_digest = sha256_bytes(config_bytes)
        self._blobs[config_digest] = config_name
        layers = []
        for name, diff_id in zip(layer_names, diff_ids, strict=True):
            with self._tar.open(name) as f:
                magic = f.read(4)
            if magic.startswith(_GZIP_MAGIC) or magic == _ZSTD_MAGIC:
                # Compressed layers are allowed by docker load; their digest must be computed.
                with self._tar.open(name) as f:
                    import hashlib

                    h = hashlib.sha256()
                    while chunk := f.read(CHUNK):
                        h.update(chunk)
                digest = "sha256:" + h.hexdigest()
                media = mt.DOCKER_LAYER_GZIP if magic.startswith(_GZIP_MAGIC) else mt.OCI_LAYER_ZSTD
            else:
                digest, media = str(diff_id), mt.DOCKER_LAYER
            self._blobs[digest] = name
            layers.append({"mediaType": media, "size": self._tar.size(name), "digest": digest})
        manifest = {
            "schemaVersion": 2,
            "mediaType": mt.DOCKER_MANIFEST,
            "config": {
                "mediaType": mt.DOCKER_CONFIG,
                "size": len(config_bytes),
                "digest": config_digest,
            },
            "layers": layers,
        }
        return json.dumps(manifest, indent=2).encode(), mt.DOCKER_MANIFEST

    def manifest(self, desc: Descriptor) -> bytes:
        raise ImageFormatError(f"{self._what}: a docker-archive holds no image index")

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        name = self._blobs.get(desc.digest)
        if name is None:
            raise ImageFormatError(f"{self._what}: blob {desc.digest} is not in the archive")
        return self._tar.open(name)

    def local_blob(self, desc: Descriptor) -> Path | None:
        return None


def _add_file(tar: tarfile.TarFile, name: str, size: int, stream: BinaryIO) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    tar.addfile(info, stream)


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
    tar.addfile(info)


class OciArchiveDestination(LayoutDestination):
    """An OCI layout built in a temporary directory and packed into FILE when closed."""

    def __init__(self, path: Path, tag: str | None) -> None:
        self._target = path
        parent = target_of(path).parent
        parent = parent if parent.exists() else Path(tempfile.gettempdir())
        runs.sweep([parent], legacy=False)  # what killed runs writing here left
        # The owner in the name only: a lock file inside would be packed into the archive.
        self._tmp = Path(tempfile.mkdtemp(prefix=runs.owned_prefix(".ocipatch-"), dir=parent))
        super().__init__(self._tmp, tag)

    def close(self) -> None:
        try:
            with (
                atomic_file(self._target) as f,
                tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tar,
            ):
                for dirpath, dirnames, filenames in sorted(os.walk(self._tmp)):
                    dirnames.sort()
                    rel = os.path.relpath(dirpath, self._tmp)
                    if rel != ".":
                        _add_dir(tar, rel)
                    for fn in sorted(filenames):
                        p = Path(dirpath) / fn
                        name = fn if rel == "." else f"{rel}/{fn}"
                        with p.open("rb") as src:
                            _add_file(tar, name, p.stat().st_size, src)
        finally:
            self.discard()

    def discard(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


def write_docker_archive(
    path: Path,
    repo_tag: str | None,
    config_bytes: bytes,
    layers: Sequence[tuple[str, int | None, Callable[[], BinaryIO]]],
) -> None:
    """Write a docker-archive: layers are (diff_id, uncompressed size or None, opener of the
    uncompressed tar stream). Sizes unknown up front are measured through a spool file."""
    config_digest = sha256_bytes(config_bytes)
    config_name = config_digest.split(":", 1)[1] + ".json"
    layer_names = []
    with (
        atomic_file(path) as f,
        tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for diff_id, _size, opener in layers:
            name = diff_id.split(":", 1)[1] + ".tar"
            if name not in layer_names:
                with tempfile.TemporaryFile(dir=target_of(path).parent) as spool:
                    with opener() as src:
                        shutil.copyfileobj(src, spool, CHUNK)
                    n = spool.tell()
                    spool.seek(0)
                    _add_file(tar, name, n, spool)  # type: ignore[arg-type]
            layer_names.append(name)
        _add_file(tar, config_name, len(config_bytes), io.BytesIO(config_bytes))
        manifest = [
            {
                "Config": config_name,
                "RepoTags": [repo_tag] if repo_tag else [],
                "Layers": layer_names,
            }
        ]
        data = json.dumps(manifest).encode()
        _add_file(tar, "manifest.json", len(data), io.BytesIO(data))
