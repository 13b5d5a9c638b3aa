"""pytest fixtures: apk test images (Alpine-, Wolfi-, static- and multi-layer-shaped OCI layouts,
tools/build_apk_image.py) and their signed repository tree served on loopback.

- `apk_image`: `make(kind, tag="latest") -> ApkImage`, a fresh copy of the cached layout under
  tmp_path (kinds: alpine, wolfi, static, alpine-multilayer). `.installed` and `.fixed` say what
  the image's installed DB holds and what its Trivy report (`.report`) asks for.
- `apk_repo_server`: a private copy of the repository tree served on 127.0.0.1; pass
  `image.mirror_arg(server.url)` as `--repo-mirror`. Tamper with files under `server.root`
  (tools.apkrepo.flip_byte / strip_signature / resign) or use `server.tamper(path, bytes)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tools.aptrepo import RepoServer
from tools.build_apk_image import ApkImage, ApkImageError, Kind, build_apk_image, copy_repo


@pytest.fixture
def apk_image(tmp_path: Path) -> Callable[..., ApkImage]:
    def make(kind: Kind, tag: str = "latest") -> ApkImage:
        try:
            return build_apk_image(tmp_path / f"apk-{kind}-{tag}", kind, tag)
        except ApkImageError as e:
            pytest.skip(str(e))

    return make


@pytest.fixture
def apk_repo_server(tmp_path: Path) -> Iterator[RepoServer]:
    try:
        root = copy_repo(tmp_path / "apk-repo")
    except ApkImageError as e:
        pytest.skip(str(e))
    with RepoServer(root) as server:
        yield server
