"""Where the real apk sample files (../shared/formats) and their public keys are, for
tests/test_apk_*. The keys and apk-tools' own version cases are not in this repository (they
are other projects' files): tests that need them run when ../shared/formats has them
(apk-keys/*.rsa.pub, apk-version.data) and skip otherwise; re-signed copies made with throwaway
keys test the signature paths everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from ocipatch.distro.apk.signing import load_keys

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout, or two levels up from a worktree (/work/wt/NAME).
FORMATS = next(
    (p / "shared" / "formats" for p in ROOT.parents[:2] if (p / "shared" / "formats").is_dir()),
    ROOT.parent / "shared" / "formats",
)
needs_formats = pytest.mark.skipif(not FORMATS.is_dir(), reason="shared format samples not present")


def samples(kind: str, pattern: str) -> list[Path]:
    """Sample files of one kind (apk-installed, apk-package, apkindex, apk-scripts-tar)."""
    return sorted((FORMATS / kind).glob(pattern)) if FORMATS.is_dir() else []


def sample_id(path: Path) -> str:
    return path.parent.name + ("/" + path.name if path.suffix == ".apk" else "")


KEYS = FORMATS / "apk-keys"
VERSION_DATA = FORMATS / "apk-version.data"
needs_keys = pytest.mark.skipif(
    not KEYS.is_dir(), reason="no public keys of the samples (../shared/formats/apk-keys)"
)


def trusted_keys() -> dict[str, bytes]:
    """The samples' signing keys (Alpine's, Wolfi's, melange-local's) when shared/ has them."""
    return load_keys(KEYS) if KEYS.is_dir() else {}
