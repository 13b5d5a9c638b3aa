"""Fuzzing image references (what a user types): parse_reference returns an ImageRef or raises
UsageError; a parsed registry reference reads back the same from its own text."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from ocipatch.errors import OcipatchError
from ocipatch.oci.reference import ImageRef, parse_reference
from tests.fuzz.budget import counted, fuzz_settings, mutated_text

DIGEST = "sha256:" + "0123456789abcdef" * 4
SEEDS = [
    "debian",
    "debian:12-slim",
    "docker.io/library/debian:bookworm",
    "index.docker.io/library/debian",
    "registry.example/team/app:1.2",
    f"registry.example:5000/team/app:1.2@{DIGEST}",
    f"app@{DIGEST}",
    "localhost/app",
    "[::1]:5000/app:v1",
    "127.0.0.1:5000/a/b/c__d-e.f:tag_1.2-3",
    "docker://ghcr.io/org/app:latest",
    "oci:/tmp/layout:tag",
    "oci:relative/dir",
    "oci-archive:/tmp/img.tar:v2",
    "docker-archive:/tmp/img.tar",
    "docker-archive:/tmp/img.tar:registry.example/app:1.0",
    "containers-storage:app",
    "dir:/tmp/x",
]


def check(text: str) -> None:
    try:
        ref = parse_reference(text)
    except OcipatchError:
        return
    assert isinstance(ref, ImageRef)
    if ref.is_registry:
        assert parse_reference(str(ref)) == ref


@fuzz_settings()
@given(mutated_text(SEEDS) | st.text(max_size=40))
@counted("references")
def test_parse_reference(text: str) -> None:
    check(text)


@fuzz_settings()
@given(st.from_regex(r"[a-z0-9.:/@_\-\[\]]{1,40}", fullmatch=True))
@example("a:b:c")
@example("docker://")
@counted("references (grammar alphabet)")
def test_parse_reference_alphabet(text: str) -> None:
    check(text)
