"""The dpkg adapter's bookkeeping around apt: what counts as done, and apt's auto marks."""

from __future__ import annotations

from pathlib import Path

import pytest

from ocipatch.distro.base import Plan, PlanItem
from ocipatch.distro.deb.native import EXTENDED_STATES, _keep_auto_marks, verify_versions
from ocipatch.errors import VerifyError


def _item(name: str, installed: str, required: str | None) -> PlanItem:
    return PlanItem(name, installed, required, "9", "update", "", ())


def test_verify_accepts_a_new_dependency_and_rejects_what_did_not_move() -> None:
    plan = Plan([_item("libssl3", "3.0.1", "3.0.2"), _item("newdep", "", None)])
    assert verify_versions(plan, {"libssl3": "3.0.2", "newdep": "1.0"}, when="after apt") == []
    with pytest.raises(VerifyError, match=r"libssl3 is not at 3\.0\.2"):
        verify_versions(plan, {"libssl3": "3.0.1", "newdep": "1.0"}, when="after apt")
    failed = verify_versions(plan, {"libssl3": "3.0.2"}, when="after apt", ignore_errors=True)
    assert [(i.name, i.reason) for i in failed] == [("newdep", "still at nothing after apt")]


BEFORE = (
    b"Package: libfoo1\nArchitecture: amd64\nAuto-Installed: 1\n\n"
    b"Package: libbar2\nArchitecture: amd64\nAuto-Installed: 1\n\n"
)


def test_auto_marks_survive_apt_naming_packages(tmp_path: Path) -> None:
    """apt dropped libfoo1's mark (it was named on the command line): the marks are restored
    byte for byte, so the file does not enter the patch layer."""
    path = tmp_path / EXTENDED_STATES
    path.parent.mkdir(parents=True)
    path.write_bytes(b"Package: libbar2\nArchitecture: amd64\nAuto-Installed: 1\n")
    _keep_auto_marks(path, BEFORE, {"libfoo1", "libbar2"}, {})
    assert path.read_bytes() == BEFORE


def test_packages_the_patch_added_are_automatic(tmp_path: Path) -> None:
    path = tmp_path / "extended_states"
    path.write_bytes(BEFORE)
    _keep_auto_marks(path, BEFORE, {"libfoo1", "libbar2"}, {"libnew0": "arm64"})
    text = path.read_text()
    assert text.startswith(BEFORE.decode())
    assert text.endswith("Package: libnew0\nArchitecture: arm64\nAuto-Installed: 1\n\n")
    # No file before (an image built without apt's marks): one for the new package only.
    fresh = tmp_path / "fresh"
    _keep_auto_marks(fresh, None, {"libfoo1"}, {"libnew0": "amd64"})
    assert fresh.read_text() == "Package: libnew0\nArchitecture: amd64\nAuto-Installed: 1\n\n"
    # Nothing added and apt wrote nothing: nothing is created.
    none = tmp_path / "none"
    _keep_auto_marks(none, None, {"libfoo1"}, {})
    assert not none.exists()
