"""The orchestrator (ocipatch/patch.py) over a fake package manager (tests/fake_adapter.py):
up to date, dry run, patch and result-cache hit, verify failure, re-patch. Real synthetic
images in OCI layouts, real layers written and read back with tarfile and json; no package
manager, so each case takes well under a second."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ocipatch.context import Context
from ocipatch.distro import registry
from ocipatch.errors import VerifyError
from ocipatch.patch import PatchOptions, PatchResult, Status, patch
from ocipatch.progress import Progress
from tests import synth
from tests.fake_adapter import DB, Calls, FakePM, FakeRepo, read_layout


@dataclass
class World:
    src: str  # the source image's reference
    base_layers: list[str]
    out: Path  # the layout results are written to
    ctx: Context

    def run(self, tag: str, image: str | None = None, **kw: object) -> PatchResult:
        opts = PatchOptions(image or self.src, tag=f"oci:{self.out}:{tag}", sandbox="none", **kw)  # type: ignore[arg-type]
        return patch(self.ctx, opts, Progress(quiet=True))

    def layers(self, tag: str) -> list[str]:
        manifest, _ = read_layout(self.out, tag)
        return [layer["digest"] for layer in manifest["layers"]]

    def top_layer(self, tag: str) -> dict[str, bytes | None]:
        """path -> content (None for what is not a file) of the image's top layer."""
        blob = self.out / "blobs" / "sha256" / self.layers(tag)[-1].split(":")[1]
        out: dict[str, bytes | None] = {}
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob.read_bytes()))) as t:
            for m in t.getmembers():
                f = t.extractfile(m) if m.isfile() else None
                out[m.name] = f.read() if f is not None else None
        return out


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setattr(registry, "ADAPTERS", [FakePM, *registry.ADAPTERS])
    monkeypatch.setattr(FakePM, "repo", FakeRepo())
    monkeypatch.setattr(FakePM, "calls", Calls())
    e = synth
    built = synth.write_layout(
        tmp_path / "src",
        [
            [
                e.d("etc"),
                e.f("etc/os-release", 'ID=fakeos\nVERSION_ID="1"\n'),
                e.d("usr"),
                e.d("usr/share"),
                e.d("usr/share/fake"),
                e.f("usr/share/fake/a", "a 1.0\n"),
                e.f("usr/share/fake/b", "b 1.0\n"),
                e.d("var"),
                e.d("var/lib"),
                e.d("var/lib/fake"),
                e.f(DB, "a 1.0\nb 1.0\n"),
            ]
        ],
        tag="1",
    )
    ctx = Context.create(cache_dir=tmp_path / "cache")
    yield World(f"oci:{built.layout}:1", built.layer_digests, tmp_path / "out", ctx)


def test_up_to_date(world: World) -> None:
    FakePM.repo.versions.update(a="1.0")
    r = world.run("p")
    assert r.status == Status.UP_TO_DATE and r.to_json()["status"] == "up-to-date"
    assert r.image is None and not world.out.exists(), "nothing written"
    assert FakePM.calls.applies == 0


def test_dry_run_plans_and_writes_nothing(world: World) -> None:
    FakePM.repo.versions.update(a="2.0")
    r = world.run("p", dry_run=True)
    out = json.loads(json.dumps(r.to_json()))
    assert out["status"] == "dry-run"
    assert [(i["name"], i["action"], i["available"]) for i in out["plan"]] == [
        ("a", "update", "2.0"),
        ("b", "skip", None),
    ]
    assert not world.out.exists() and FakePM.calls.applies == 0


def test_patch_then_the_same_patch_is_reused(world: World) -> None:
    FakePM.repo.versions.update(a="2.0")
    t0 = time.monotonic()
    first = world.run("p")
    assert first.status == Status.PATCHED
    assert first.to_json()["updated"] == [{"name": "a", "from": "1.0", "to": "2.0"}]
    assert f"fake: /{DB} changed" in first.notes, "the package manager's notes reach the result"
    assert world.layers("p")[:-1] == world.base_layers, "the original layers are kept"
    layer = world.top_layer("p")
    assert layer["usr/share/fake/a"] == b"a 2.0\n"
    assert layer[DB] == b"a 2.0\nb 1.0\n"
    assert "usr/share/fake/b" not in layer, "only what changed"
    assert not any(n.startswith("var/cache/fake") for n in layer), "excluded() is honoured"

    again = world.run("p2")
    assert again.status == Status.PATCHED
    assert any("reused the patch layer" in n for n in again.notes)
    assert FakePM.calls.applies == 1 and FakePM.calls.installers == 1, "nothing installed again"
    assert again.image_digest == first.image_digest
    assert world.layers("p2") == world.layers("p")
    assert again.to_json()["updated"] == first.to_json()["updated"]
    assert time.monotonic() - t0 < 30


def test_verify_failure_is_an_error_or_a_skip(world: World) -> None:
    FakePM.repo.versions.update(a="2.0", b="2.0")
    FakePM.repo.broken.add("b")
    with pytest.raises(VerifyError) as e:
        world.run("p")
    assert e.value.exit_code == 13 and "b is still at 1.0" in str(e.value)
    assert not world.out.exists(), "a failed patch writes nothing"

    r = world.run("p", ignore_errors=True)
    assert r.status == Status.PATCHED
    assert [(c.name, c.old, c.new) for c in r.updated] == [("a", "1.0", "2.0")]
    assert ("b", "still at 1.0") in r.skipped


def test_repatch_keeps_one_patch_layer(world: World) -> None:
    FakePM.repo.versions.update(a="2.0")
    world.run("p")
    FakePM.repo.versions.update(a="3.0", b="2.0")
    r = world.run("p2", image=f"oci:{world.out}:p")
    assert r.status == Status.PATCHED
    assert sorted((c.name, c.old, c.new) for c in r.updated) == [
        ("a", "2.0", "3.0"),
        ("b", "1.0", "2.0"),
    ]
    layers = world.layers("p2")
    assert layers[:-1] == world.base_layers and len(layers) == len(world.base_layers) + 1
    layer = world.top_layer("p2")
    assert layer["usr/share/fake/a"] == b"a 3.0\n" and layer["usr/share/fake/b"] == b"b 2.0\n"
    _, config = read_layout(world.out, "p2")
    assert config["config"]["Labels"]["dev.ocipatch.base.layers"] == "1"

    same = world.run("p3", image=f"oci:{world.out}:p2")
    assert same.status == Status.UP_TO_DATE
