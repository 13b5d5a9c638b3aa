"""Helpers of the hermetic patch tests (tests/test_patch_hermetic.py): tiny packages, a signed
loopback apt repository whose served tree can be switched, and a Debian 12 test image with the
packages' first versions installed, built with ocipatch's own code.

The test image is the real Debian 12 minbase image plus ONE layer made the way ocipatch makes
its patch layer: unpack, snapshot, `dpkg -i` in the bwrap sandbox, point apt at the loopback
repository only (debian.sources removed), `apt-mark hold`, edit a conffile, diff, owners and
modes and times from the .debs, write the layer, append it, write an OCI layout.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from ocipatch.distro.deb.aptrun import apt_env
from ocipatch.distro.deb.debmeta import newest_mtime, with_package_metadata
from ocipatch.distro.deb.native import exclude
from ocipatch.fs.changes import diff, snapshot
from ocipatch.fs.layerwriter import write_layer
from ocipatch.fs.unpack import unpack
from ocipatch.oci import mediatypes as mt
from ocipatch.oci.cache import BlobCache
from ocipatch.oci.mutate import append_layer
from ocipatch.oci.reference import parse_reference
from ocipatch.oci.remote import RegistryOptions
from ocipatch.oci.transport import open_image, write_image
from ocipatch.oci.types import Descriptor
from ocipatch.sandbox.base import RunSpec
from ocipatch.sandbox.select import select_sandbox
from tools.aptrepo import DEFAULT_EPOCH, AptRepo, DebFile, DebSpec, RepoServer

SHADOW_GID = 42  # Debian's fixed gid of group shadow
TOOL = "/usr/bin/ocp-tool"
LIB = "/usr/lib/ocp/libocp.so"
ZTOOL = "/usr/bin/ocp-ztool"
CONF = "/etc/ocp.conf"
CONF_V1 = "# ocp-conf 1.0 default\nlevel = 1\n"
CONF_V2 = "# ocp-conf 2.0 default\nlevel = 2\nnew-option = yes\n"
CONF_EDITED = "# edited by the image's author\nlevel = 99\n"
NEWDEP_MARKER = "/usr/share/ocp-newdep/marker"
HELD = "ocp-held"
# Where the test image's .debs are bound inside the sandbox: a tree the patch layer excludes.
_DEBS_INSIDE = "/var/cache/ocipatch/hermetic-debs"


# When the packages were built (their data.tar mtimes, dpkg-deb's SOURCE_DATE_EPOCH): the 1.0s
# with the image (DEFAULT_EPOCH, also its `created`), the newer versions later and not all at
# once, so that a patch layer's times tell the packages apart.
V2_BUILT = 1_710_000_000
BUILT = {"ocp-zstd": 1_720_000_000}


def built_at(spec: DebSpec) -> int:
    return DEFAULT_EPOCH if spec.version == "1.0" else BUILT.get(spec.name, V2_BUILT)


def _lib(version: str) -> DebSpec:
    return DebSpec(
        "ocp-lib",
        version,
        files=[
            DebFile(LIB, f"v{version[0]}\n"),
            DebFile(TOOL, f"#!/bin/sh\necho ocp-tool {version}\n", mode=0o2755, gid=SHADOW_GID),
        ],
    )


def _conf(version: str) -> DebSpec:
    return DebSpec(
        "ocp-conf",
        version,
        files=[DebFile(CONF, CONF_V1 if version == "1.0" else CONF_V2)],
        conffiles=[CONF],
    )


def _simple(
    name: str, version: str, *, depends: Sequence[str] = (), postinst: str | None = None
) -> DebSpec:
    return DebSpec(
        name,
        version,
        depends=depends,
        files=[DebFile(f"/usr/share/{name}/version", f"{version}\n")],
        scripts={"postinst": postinst} if postinst else {},
    )


def _zstd(version: str) -> DebSpec:
    # Ubuntu's .debs use zstd: the patch layer's owners must come out of a data.tar.zst too.
    return DebSpec(
        "ocp-zstd",
        version,
        files=[
            DebFile(ZTOOL, f"#!/bin/sh\necho ocp-ztool {version}\n", mode=0o2755, gid=SHADOW_GID)
        ],
        compression="zstd",
    )


def image_specs() -> list[DebSpec]:
    """The first versions, installed in the test image."""
    return [
        _lib("1.0"),
        _conf("1.0"),
        _simple("ocp-dep", "1.0"),
        _simple(HELD, "1.0"),
        _simple("ocp-badpost", "1.0"),
        _zstd("1.0"),
    ]


def repo_specs(*, bad_postinst: bool = False) -> list[DebSpec]:
    """What the repository offers. The good tree has no newer ocp-badpost (so "update every
    upgradable package" can succeed); the bad tree adds ocp-badpost 2.0 whose postinst fails."""
    specs = [
        _lib("2.0"),
        _conf("2.0"),
        _simple("ocp-dep", "2.0", depends=["ocp-newdep (>= 1.0)"]),
        DebSpec("ocp-newdep", "1.0", files=[DebFile(NEWDEP_MARKER, "new dependency\n")]),
        _simple(HELD, "2.0"),
        _simple("ocp-badpost", "1.0"),
        _zstd("2.0"),
    ]
    if bad_postinst:
        specs.append(
            _simple(
                "ocp-badpost",
                "2.0",
                postinst="#!/bin/sh\necho 'ocp-badpost: cannot configure' >&2\nexit 1\n",
            )
        )
    return specs


@contextlib.contextmanager
def serving(server: RepoServer, root: Path) -> Iterator[None]:
    """Serve another repository tree at the same URL (same key) for the block."""
    old = server.root
    server.root = root  # the request handler reads it per request
    try:
        yield
    finally:
        server.root = old


def _sandbox_run(rootfs: Path, argv: list[str], binds: Sequence[tuple[Path, str, bool]]) -> None:
    proc = select_sandbox("bwrap").run(
        RunSpec(rootfs, argv, env=apt_env(), binds=binds, network=False, timeout=300)
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}")


def build_test_image(
    base_layout: Path,
    base_tag: str,
    out: Path,
    tag: str,
    *,
    debs: Sequence[Path],
    repo: AptRepo,
    url: str,
    hold: Sequence[str] = (),
    edits: Mapping[str, str] = {},
    work: Path,
) -> Path:
    """Write `out` (an OCI layout, `tag`): the base image plus one layer with `debs` installed,
    apt pointed only at `repo` served at `url`, `hold` held and `edits` (path -> text) written
    over the installed files. Needs root for the base image's real owners (as its fixture)."""
    cache = BlobCache(work / "cache")
    image = open_image(parse_reference(f"oci:{base_layout}:{base_tag}"), RegistryOptions(), cache)
    rootfs = work / "rootfs"
    own = unpack(image.layers, rootfs)
    snap = snapshot(rootfs, own, exclude=exclude)

    deb_dir = work / "debs"
    deb_dir.mkdir()
    for d in debs:
        shutil.copyfile(d, deb_dir / d.name)
    inside = [f"{_DEBS_INSIDE}/{d.name}" for d in debs]
    _sandbox_run(rootfs, ["dpkg", "-i", *inside], [(deb_dir, _DEBS_INSIDE, True)])

    (rootfs / "etc/apt/sources.list.d/debian.sources").unlink(missing_ok=True)
    (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
    repo.write_sources(rootfs, url)
    if hold:
        _sandbox_run(rootfs, ["apt-mark", "hold", *hold], [])
    for path, text in edits.items():
        (rootfs / path.lstrip("/")).write_text(text)

    # The sandbox fakes chown: owners, modes and times come from the packages, as in a patch.
    changes = with_package_metadata(diff(snap, rootfs, exclude, ownership=own), rootfs, [*debs])
    fd, tmp = tempfile.mkstemp(dir=work, prefix="layer-")
    with os.fdopen(fd, "wb") as fh:
        info = write_layer(changes, fh, "gzip", clamp_mtime=newest_mtime([*debs]))
    cache.put_file(info.digest, Path(tmp))
    desc = Descriptor(mt.layer_media_type("gzip", image.is_docker), info.digest, info.size)
    history = {"created_by": "dpkg -i ocp-* (tests/hermetic.py)", "comment": "test packages"}
    new = append_layer(image, desc, info.diff_id, cache, history=history)
    write_image(new, parse_reference(f"oci:{out}:{tag}"), RegistryOptions())
    shutil.rmtree(rootfs, ignore_errors=True)
    return out
