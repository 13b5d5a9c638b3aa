"""JSON documents of an image (manifests, configs, index.json, a docker-archive's manifest.json)
decoded with every way the decoder can fail mapped to one ImageFormatError.

json.loads fails with more than JSONDecodeError: bytes that are not UTF-8 (UnicodeDecodeError),
a number longer than Python's int conversion limit (a plain ValueError), nesting deeper than
the interpreter's stack (RecursionError). A registry or archive controls these bytes, so each
is a malformed image, never an internal error.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from ocipatch.errors import ImageFormatError


def parse(data: bytes | str, what: str) -> Any:
    """The decoded document; ImageFormatError naming `what` if it is not usable JSON."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ImageFormatError(f"{what} is not usable JSON: nested too deeply") from None
    except UnicodeDecodeError:
        raise ImageFormatError(f"{what} is not valid JSON: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ImageFormatError(f"{what} is not valid JSON: {e}") from None
    except ValueError:  # the int conversion limit: the message is about Python, not the image
        limit = sys.get_int_max_str_digits()
        raise ImageFormatError(
            f"{what} is not usable JSON: it holds a number longer than {limit} digits"
        ) from None


def parse_object(data: bytes | str, what: str) -> dict[str, Any]:
    obj = parse(data, what)
    if not isinstance(obj, dict):
        raise ImageFormatError(f"{what} is not a JSON object")
    return obj
