"""The logger task code uses, and the per-attempt scope a worker runs each attempt in.

Task code calls :func:`get_logger` and logs as with structlog::

    from fleetflow import get_logger, task

    log = get_logger()

    @task
    def parse_module(path: str) -> dict:
        log.info("parsing", path=path)

On a worker every line carries ``flow_run_id``, ``task_run_id``, ``attempt``,
``worker_id`` and ``task_name``: the worker binds them with
``structlog.contextvars`` around each attempt (:func:`attempt_scope`), in the
task's own process too, and its logging configuration merges them into every
line. The same scope keeps the last :data:`TAIL_LINES` lines the attempt
logged; when the attempt fails, :func:`fleetflow.serde.error_from_exception`
stores them with its error (``TaskError.log_tail``), and the client shows them
under the remote traceback.

Outside a worker (a task called as a plain function, a unit test) the logger
is a plain structlog logger: no ids, no tail.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sys
from collections import deque
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

import structlog

__all__ = [
    "get_logger",
    "TaskLogger",
    "attempt_scope",
    "start_tail",
    "current_tail",
    "TAIL_LINES",
]

#: Lines of a failed attempt's log kept with its error.
TAIL_LINES = 20
#: Characters of one kept line.
_LINE_CHARS = 500
#: The ids the worker binds around an attempt (these are not repeated in tail lines).
_IDS = frozenset({"flow_run_id", "task_run_id", "attempt", "worker_id", "task_name"})

#: The running attempt's last lines; None outside an attempt.
_TAIL: ContextVar[deque[str] | None] = ContextVar("fleetflow_log_tail", default=None)

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
}


def get_logger(name: str | None = None, **initial_values: Any) -> TaskLogger:
    """A logger for task code.

    Args:
        name: Logger name (stdlib-style); default ``"fleetflow.task"``.
        **initial_values: Key/value pairs added to every line.

    Returns:
        A logger with structlog's methods (``debug`` ... ``critical``,
        ``exception``, ``bind``); its lines carry the attempt's ids on a worker.
    """
    return TaskLogger(name or "fleetflow.task", initial_values)


class TaskLogger:
    """A structlog logger that also keeps the running attempt's last lines.

    Made by :func:`get_logger`; safe to create at import time (it resolves the
    process's structlog configuration on each call).
    """

    __slots__ = ("_name", "_values")

    def __init__(self, name: str, values: Mapping[str, Any]) -> None:
        self._name = name
        self._values = dict(values)

    def bind(self, **values: Any) -> TaskLogger:
        """A logger whose lines also carry ``values``."""
        return TaskLogger(self._name, {**self._values, **values})

    def new(self, **values: Any) -> TaskLogger:
        """A logger carrying only ``values`` (besides the attempt's ids)."""
        return TaskLogger(self._name, values)

    def _log(self, method: str, event: str, args: tuple[Any, ...], fields: dict[str, Any]) -> Any:
        logger = structlog.get_logger(self._name).bind(**self._values)
        tail = _TAIL.get()
        if tail is not None:
            enabled = getattr(logger, "is_enabled_for", None)
            if enabled is None or enabled(_LEVELS[method]):
                text = event % args if args else str(event)
                tail.append(_line(method, text, {**self._values, **fields}))
        return getattr(logger, method)(event, *args, **fields)

    def debug(self, event: str, *args: Any, **fields: Any) -> Any:
        """Log at debug level."""
        return self._log("debug", event, args, fields)

    def info(self, event: str, *args: Any, **fields: Any) -> Any:
        """Log at info level."""
        return self._log("info", event, args, fields)

    def warning(self, event: str, *args: Any, **fields: Any) -> Any:
        """Log at warning level."""
        return self._log("warning", event, args, fields)

    warn = warning

    def error(self, event: str, *args: Any, **fields: Any) -> Any:
        """Log at error level."""
        return self._log("error", event, args, fields)

    def exception(self, event: str, *args: Any, **fields: Any) -> Any:
        """Log at error level with the exception being handled."""
        return self._log("exception", event, args, fields)

    def critical(self, event: str, *args: Any, **fields: Any) -> Any:
        """Log at critical level."""
        return self._log("critical", event, args, fields)


def _line(method: str, event: str, fields: Mapping[str, Any]) -> str:
    """``12:00:01.123 info     parsing path='/x.py'``: one line of a tail."""
    stamp = dt.datetime.now(dt.UTC).strftime("%H:%M:%S.%f")[:-3]
    level = "error" if method == "exception" else method
    extra = " ".join(f"{k}={v!r}" for k, v in fields.items() if k not in _IDS and k != "exc_info")
    text = f"{stamp} {level:<8} {event}" + (f" {extra}" if extra else "")
    if method == "exception" and (exc := sys.exc_info()[1]) is not None:
        text += f" ({type(exc).__name__}: {exc})"
    return text if len(text) <= _LINE_CHARS else text[: _LINE_CHARS - 3] + "..."


@contextlib.contextmanager
def attempt_scope(ids: Mapping[str, Any]) -> Iterator[deque[str]]:
    """Run one attempt with its ids bound to every log line and its tail kept.

    Used by the worker around each attempt (and by its task processes).

    Args:
        ids: ``flow_run_id``, ``task_run_id``, ``attempt``, ``worker_id``,
            ``task_name`` (any subset).

    Yields:
        The attempt's tail: its last :data:`TAIL_LINES` lines, oldest first.
    """
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    token = _TAIL.set(tail)
    # Tokens rather than bound_contextvars(), which copies the whole context
    # twice per attempt; resetting them restores exactly what was bound before.
    bound = structlog.contextvars.bind_contextvars(**ids)
    try:
        yield tail
    finally:
        structlog.contextvars.reset_contextvars(**bound)
        _TAIL.reset(token)


def start_tail() -> deque[str]:
    """Keep the last lines logged from now on in the current context (an asyncio task)."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    _TAIL.set(tail)
    return tail


def current_tail() -> list[str]:
    """The running attempt's last lines, oldest first (empty outside an attempt)."""
    tail = _TAIL.get()
    return list(tail) if tail else []
