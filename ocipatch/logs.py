"""Log helpers shared by modules: `trace` writes at the lowest level, shown with --debug."""

from __future__ import annotations

import logging
from typing import Any


def trace(logger: logging.Logger, msg: str, *args: Any) -> None:
    logger.debug(msg, *args)
