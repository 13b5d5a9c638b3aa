"""Pick a sandbox backend: `auto` tries bwrap, then proot. `none` is the caller's business."""

from __future__ import annotations

from ocipatch.errors import SandboxError, UsageError
from ocipatch.sandbox.base import Sandbox
from ocipatch.sandbox.bwrap import BwrapSandbox
from ocipatch.sandbox.proot import ProotSandbox

BACKENDS: dict[str, type[BwrapSandbox] | type[ProotSandbox]] = {
    "bwrap": BwrapSandbox,
    "proot": ProotSandbox,
}
AUTO_ORDER = ("bwrap", "proot")


def select_sandbox(name: str = "auto", skipped: list[str] | None = None) -> Sandbox:
    """A backend that works here, proven by running `true` in it.

    Raises UsageError for an unknown name and SandboxError, saying what to install or allow,
    when the requested backend (or, for `auto`, every backend) cannot run. `skipped`, when
    given, receives "backend: why" for each backend `auto` passed over.
    """
    if name != "auto" and name not in BACKENDS:
        raise UsageError(f"unknown sandbox {name!r}: choose auto, {', '.join(BACKENDS)} or none")
    reasons: list[str] = []
    for candidate in AUTO_ORDER if name == "auto" else (name,):
        box = BACKENDS[candidate]()
        ok, why = box.available()
        if ok:
            if skipped is not None:
                skipped.extend(reasons)
            return box
        reasons.append(f"{candidate}: {why}")
    raise SandboxError(
        "no sandbox can run here ("
        + "; ".join(reasons)
        + "); install bubblewrap and allow unprivileged user namespaces, or install proot, "
        "or pass --sandbox none inside a disposable container"
    )
