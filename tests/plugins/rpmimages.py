"""pytest fixtures: rpm test images (Rocky, Fedora, ubi-micro, Azure Linux distroless, SLES and
CentOS 7 shaped OCI layouts, tools/build_rpm_image.py) and their signed repository tree served
on loopback.

- `rpm_image`: `make(kind, tag="latest") -> RpmImage`, a fresh copy of the cached layout under
  tmp_path. `.installed` and `.fixed` say what the image's rpmdb (or rpmmanifest) holds and what
  its Trivy report (`.report`) asks for.
- `rpm_repo_server`: a private copy of the repository tree served on 127.0.0.1; pass
  `image.mirror_arg(server.url)` as `--repo-mirror`. Tamper with files under `server.root`
  (tools.rpmrepo.flip_byte / strip_signature / rewrite_primary / flip_file_byte).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tools.aptrepo import RepoServer
from tools.build_rpm_image import Kind, RpmImage, RpmImageError, build_rpm_image, copy_repo


@pytest.fixture
def rpm_image(tmp_path: Path) -> Callable[..., RpmImage]:
    def make(kind: Kind, tag: str = "latest") -> RpmImage:
        try:
            return build_rpm_image(tmp_path / f"rpm-{kind}-{tag}", kind, tag)
        except RpmImageError as e:
            pytest.skip(str(e))

    return make


@pytest.fixture
def rpm_repo_server(tmp_path: Path) -> Iterator[RepoServer]:
    try:
        root = copy_repo(tmp_path / "rpm-repo")
    except RpmImageError as e:
        pytest.skip(str(e))
    with RepoServer(root) as server:
        yield server
