"""structlog configuration for the worker process; called once, by the CLI only."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

__all__ = ["configure_logging", "configured_level", "LEVELS"]

#: Accepted ``--log-level`` names.
LEVELS = ("debug", "info", "warning", "error")

#: The level :func:`configure_logging` last set in this process ("" before).
_configured = {"level": ""}


def configured_level() -> str | None:
    """The level this process was configured with, so task processes match it; None if none."""
    return _configured["level"] or None


def configure_logging(level: str = "info", *, stream: TextIO | None = None) -> None:
    """Send structlog events to ``stream`` (stderr by default).

    JSON lines when the stream is not a terminal (log shippers parse them),
    colourful key=value lines when it is. Every line carries the bound
    context (``worker_id``, ``task_run_id``...), the level and an ISO UTC time.

    Args:
        level: Lowest level written, one of :data:`LEVELS`.
        stream: Where lines go; ``sys.stderr`` by default.

    Raises:
        ValueError: unknown level.
    """
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {LEVELS}, got {level!r}")
    stream = stream or sys.stderr
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if stream.isatty():
        processors.append(structlog.dev.ConsoleRenderer())
    else:
        processors += [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    _configured["level"] = level
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
