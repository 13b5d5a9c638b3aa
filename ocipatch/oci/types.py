"""Descriptors and platforms: the small value types every image source and destination shares."""

from __future__ import annotations

import platform as _platform
from dataclasses import dataclass, field
from typing import Any

from ocipatch.errors import ImageFormatError, UsageError
from ocipatch.oci.digest import is_digest

# Python's machine names -> GOARCH, the names OCI platforms use.
_MACHINE_TO_GOARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise UsageError(
                f"invalid platform {text!r}: use OS/ARCH[/VARIANT], e.g. linux/arm64 or linux/arm/v7"
            )
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def host(cls) -> Platform:
        machine = _platform.machine().lower()
        arch = _MACHINE_TO_GOARCH.get(machine, machine)
        variant = {"armv7l": "v7", "armv6l": "v6"}.get(machine)
        return cls("linux", arch, variant)

    @classmethod
    def from_json(cls, obj: dict[str, Any], what: str = "platform") -> Platform:
        """An index entry's platform, or an image config's os/architecture/variant."""
        os_, arch, variant = (_text(obj, k, what) for k in ("os", "architecture", "variant"))
        return cls(os_, arch, variant or None)

    def matches(self, other: Platform) -> bool:
        """Whether an index entry `other` satisfies this request. No variant asked: any fits;
        arm64's v8 is its default variant, so it matches an entry without one."""
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        if self.variant is None:
            return True
        default = {"arm64": "v8"}.get(self.architecture)
        return (other.variant or default) == self.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def _text(obj: dict[str, Any], key: str, what: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ImageFormatError(f"malformed {what}: {key} is not a string")
    return value


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    # The descriptor exactly as read, so that rewriting an index keeps fields we do not model.
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @classmethod
    def from_json(cls, obj: Any, what: str = "descriptor") -> Descriptor:
        if not isinstance(obj, dict):
            raise ImageFormatError(f"malformed {what}: expected a JSON object")
        digest, size = obj.get("digest"), obj.get("size")
        # The digest names files (blob stores, caches): only a well-formed one is used.
        if not is_digest(digest):
            raise ImageFormatError(
                f"malformed {what}: digest {digest!r} is not sha256:<64 hex digits>"
            )
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ImageFormatError(f"malformed {what}: size {size!r} is not a byte count")
        plat = obj.get("platform")
        annotations = obj.get("annotations") or {}
        if not isinstance(annotations, dict) or not all(
            isinstance(v, str) for v in annotations.values()
        ):
            raise ImageFormatError(f"malformed {what}: annotations are not strings by name")
        return cls(
            media_type=_text(obj, "mediaType", what),
            digest=str(digest),
            size=size,
            platform=Platform.from_json(plat, f"{what} platform")
            if isinstance(plat, dict)
            else None,
            annotations=dict(annotations),
            raw=dict(obj),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.raw)
        out.update({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out
