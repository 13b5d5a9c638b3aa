"""Issue #10 Part A: moving Debian behind the package-manager interface changed no byte.

Opt-in (it needs a second checkout): OCIPATCH_OLD_TREE=/path/to/an/older/checkout runs that
tree's ocipatch (PYTHONPATH) and this one on the very same hermetic image and repository
(tests/test_patch_hermetic.py's), and every case must give the same image and layer digests;
a second run of this tree gives them again (through the result cache). E.g.
    git archive ce9a053 | tar -x -C /tmp/old
    OCIPATCH_OLD_TREE=/tmp/old .venv/bin/python -m pytest tests/test_same_digests.py
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.images import skopeo
from tests.test_patch_hermetic import OCIPATCH, Env
from tests.test_patch_hermetic import env as env  # the module-scoped fixture

OLD = os.environ.get("OCIPATCH_OLD_TREE", "")
pytestmark = pytest.mark.skipif(not OLD, reason="set OCIPATCH_OLD_TREE to an older checkout")

CASES: dict[str, list[str]] = {
    "all": [],
    "none": ["--sandbox", "none"],
    "zstd": ["--compression", "zstd"],
    "report": ["-r", "{report}"],
    "conf": ["-r", "{conf}"],
}


def _run(e: Env, which: str, tag: str, args: list[str]) -> dict[str, Any]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "DOCKER_"))}
    if which == "old":
        environ["PYTHONPATH"] = OLD
    cache = e.work / f"cache-{which}"
    cmd = [str(OCIPATCH), "patch", "--json", "-q", "--cache-dir", str(cache), "-t", tag, *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=environ, cwd="/", timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    inspect = skopeo("inspect", "--tls-verify=false", f"docker://{e.dest(tag)}")
    return {"digest": out["image"]["digest"], "layers": json.loads(inspect)["Layers"], **out}


def test_the_old_and_this_tree_write_the_same_images(env: Env) -> None:
    python = Path(OCIPATCH).parent / "python"
    where = subprocess.run(
        [str(python), "-c", "import ocipatch; print(ocipatch.__file__)"],
        env={**os.environ, "PYTHONPATH": OLD}, capture_output=True, text=True, cwd="/",
    ).stdout  # fmt: skip
    assert where.startswith(str(Path(OLD).resolve())), f"the old run imports {where}"
    reports = {
        "report": str(env.report("same-report", {"ocp-lib": "2.0", "ocp-zstd": "2.0"})),
        "conf": str(env.report("same-conf", {"ocp-conf": "2.0"})),
    }
    for name, extra in CASES.items():
        args = ["-i", env.ref, *(a.format(**reports) for a in extra)]
        old = _run(env, "old", f"old-{name}", args)
        new = _run(env, "new", f"new-{name}", args)
        again = _run(env, "new", f"again-{name}", args)
        assert old["digest"] == new["digest"] == again["digest"], name
        assert old["layers"] == new["layers"] == again["layers"], name
        assert (old["updated"], old["notes"]) == (new["updated"], new["notes"]), name
    # A re-patch of each tree's own result.
    old = _run(env, "old", "old-repatch", ["-i", env.dest("old-report")])
    new = _run(env, "new", "new-repatch", ["-i", env.dest("new-report")])
    assert old["digest"] == new["digest"] and old["layers"] == new["layers"]
