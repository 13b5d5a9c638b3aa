"""Debian's version rule: [epoch:]upstream[-revision], ordered as `dpkg --compare-versions`."""

from __future__ import annotations

from debian.debian_support import Version as _DebVersion
from debian.debian_support import version_compare as _deb_version_compare


def compare_deb(a: str, b: str) -> int:
    """Order two Debian versions as dpkg does: -1, 0 or 1.

    Raises ValueError for a string python-debian cannot parse (spaces, '_', empty, ...).
    """
    v = _deb_version_compare(a, b)
    return (v > 0) - (v < 0)


def is_deb_version(text: str) -> bool:
    """True if compare_deb can order `text` (what readers of outside data check first)."""
    try:
        _DebVersion(text)
    except ValueError:
        return False
    return True
