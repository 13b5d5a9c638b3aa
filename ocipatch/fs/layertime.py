"""The one time of a patch layer: what every entry without a time of its own gets, and the upper
bound of the rest (see docs/design.md, "Deterministic output").

- `SOURCE_DATE_EPOCH` when set (the reproducible-builds convention: a package file newer than it
  is clamped to it, an older one keeps its time);
- otherwise the newest mtime in the installed packages' data.tar headers (and among the times a
  re-patch keeps from the previous patch layer), or the source image's `created` if that is
  later: derived only from the inputs (never the wall clock, the machine or the thread count),
  and not older than the base layers, whose files an image build dates no later than
  `created`. 0 when neither is known.
"""

from __future__ import annotations

import calendar
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ocipatch.errors import UsageError

_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:[Zz]|([+-])(\d\d):(\d\d))"
)


def source_date_epoch(environ: Mapping[str, str] | None = None) -> int | None:
    """$SOURCE_DATE_EPOCH as seconds; None when unset or empty. A malformed value is refused
    (the convention asks for an error rather than a silently different output)."""
    raw = (os.environ if environ is None else environ).get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return None
    if not raw.isascii() or not raw.isdigit():
        raise UsageError(
            f"SOURCE_DATE_EPOCH={raw!r} is not a whole number of seconds since 1970-01-01 UTC: "
            "set it to e.g. $(date +%s), or unset it"
        )
    return int(raw)


def created_epoch(created: object) -> int | None:
    """An image config's `created` (RFC 3339) in whole seconds, rounded up so that it is not
    older than a file dated within that second; None if absent or unreadable."""
    if not isinstance(created, str):
        return None
    m = _RFC3339.fullmatch(created.strip())
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    fraction, sign, off_h, off_m = m.group(7), m.group(8), m.group(9), m.group(10)
    try:
        seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    if sign is not None:
        offset = int(off_h) * 3600 + int(off_m) * 60
        seconds -= offset if sign == "+" else -offset
    if fraction is not None and int(fraction) > 0:
        seconds += 1
    return max(0, seconds)


@dataclass(frozen=True)
class LayerClock:
    """The inputs of the layer time known before the packages are: read once per run."""

    source_date_epoch: int | None
    created: int | None

    @classmethod
    def of(cls, image_config: Mapping[str, Any]) -> LayerClock:
        return cls(source_date_epoch(), created_epoch(image_config.get("created")))

    def time(self, newest_package_mtime: int) -> int:
        """The layer time, given the newest mtime over the installed packages' data.tar."""
        if self.source_date_epoch is not None:
            return self.source_date_epoch
        return max(0, newest_package_mtime, self.created or 0)

    def key(self) -> dict[str, int | None]:
        """What the result cache must tell apart (the packages are in its key already)."""
        return {"source_date_epoch": self.source_date_epoch, "created": self.created}
