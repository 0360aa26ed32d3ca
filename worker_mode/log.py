"""Map a management command's --verbosity to a log level, in one place."""

from __future__ import annotations

import logging


def level_for(verbosity: int) -> str:
    if verbosity <= 0:
        return "WARNING"
    if verbosity >= 2:
        return "DEBUG"
    return "INFO"


def configure(verbosity: int) -> str:
    """Set worker_mode's and rq's loggers to the level ``verbosity`` asks for; returns it."""
    level = level_for(verbosity)
    for name in ("worker_mode", "rq.worker"):
        logging.getLogger(name).setLevel(level)
    return level
