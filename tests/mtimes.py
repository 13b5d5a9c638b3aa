"""Checking a patch layer's times against the .debs it installed, read with dpkg-deb (not with
ocipatch): a package's file or symlink has its .deb's header time (clamped to the layer time),
every other entry the layer time, nothing the old fixed 2000-01-01."""

from __future__ import annotations

import datetime
import io
import math
import os
import subprocess
import tarfile
from pathlib import Path

OLD_DEFAULT = 946684800  # 2000-01-01, what every entry of a patch layer used to get

Payload = dict[str, tuple[tarfile.TarInfo, bytes]]


def deb_payload(deb: Path) -> Payload:
    """path -> (header, content) of a .deb's data.tar; a hard link as its target."""
    raw = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True
    ).stdout
    out: Payload = {}
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        for m in tf.getmembers():
            name = m.name.removeprefix("./").rstrip("/")
            if m.islnk():
                out[name] = out[m.linkname.removeprefix("./")]
                continue
            f = tf.extractfile(m) if m.isreg() else None
            out[name] = (m, f.read() if f is not None else b"")
    return out


def rfc3339_up(created: str) -> int:
    when = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
    return math.ceil(when.timestamp())


def expected_layer_time(debs: list[Path], created: str | None) -> int:
    """SOURCE_DATE_EPOCH if set, else the newest header time of the packages or `created`."""
    sde = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if sde:
        return int(sde)
    newest = max((int(m.mtime) for d in debs for m, _ in deb_payload(d).values()), default=0)
    return max(newest, rfc3339_up(created) if created else 0)


def top_symlinks(*layers: Path) -> dict[str, str]:
    """Top-level directory symlinks in layer blobs as prefixes, e.g. {"lib/": "usr/lib/"} in a
    merged-/usr image: where dpkg puts what a package ships under /lib."""
    out: dict[str, str] = {}
    for layer in layers:
        with tarfile.open(layer) as t:
            for m in t:
                name = m.name.removeprefix("./").rstrip("/")
                if m.issym() and "/" not in name:
                    out[f"{name}/"] = m.linkname.strip("/") + "/"
    return out


def check_layer_times(
    layer: Path, debs: list[Path], layer_time: int, aliases: dict[str, str] | None = None
) -> dict[str, int]:
    """Assert the rule over every entry of the layer blob; returns path -> mtime of the entries
    that are a package's (same content or link target; a kept conffile's .dpkg-dist too).
    aliases: top_symlinks of the image (a path shipped under its real name wins)."""
    shipped: Payload = {}
    for deb in debs:
        payload = deb_payload(deb)
        for path, entry in payload.items():
            for prefix, real in (aliases or {}).items():
                if path.startswith(prefix) and real + path[len(prefix) :] not in payload:
                    shipped[real + path[len(prefix) :]] = entry
        shipped.update(payload)
    from_packages: dict[str, int] = {}
    with tarfile.open(layer) as t:
        members = {m.name: m for m in t.getmembers()}
        for m in members.values():
            assert m.mtime != OLD_DEFAULT, m.name
            if m.islnk():  # a hard link repeats its target's header (target in the layer)
                target = members.get(m.linkname)
                assert m.mtime == (target.mtime if target else layer_time), m.name
                continue
            own = shipped.get(m.name) or shipped.get(m.name.removesuffix(".dpkg-dist"))
            if own is not None and _same(t, m, *own):
                assert m.mtime == min(int(own[0].mtime), layer_time), m.name
                from_packages[m.name] = m.mtime
            else:
                assert m.mtime == layer_time, (m.name, m.mtime, layer_time)
    return from_packages


def _same(t: tarfile.TarFile, m: tarfile.TarInfo, deb_m: tarfile.TarInfo, data: bytes) -> bool:
    if m.issym():
        return deb_m.issym() and m.linkname == deb_m.linkname
    if not (m.isreg() and deb_m.isreg()) or m.size != deb_m.size:
        return False
    f = t.extractfile(m)
    return f is not None and f.read() == data
