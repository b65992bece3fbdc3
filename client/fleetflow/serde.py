"""Serialization of user data and errors (clients and workers only).

Arguments, results and exceptions are pickled with cloudpickle so that
lambdas and classes defined in ``__main__`` travel too. The coordinator only
ever sees the resulting ``bytes``.
"""

from __future__ import annotations

import copyreg
import io
import pickle
import traceback
from collections import ChainMap
from collections.abc import Iterator, Mapping
from typing import Any

import cloudpickle

from fleetflow import errors
from fleetflow._logging import current_tail
from fleetflow.api.v1 import common_pb2

__all__ = ["dumps", "loads", "error_from_exception", "exception_from_error", "RemoteTaskError"]

_PROTOCOL = 5


#: Types the standard pickler writes exactly as cloudpickle would (by value,
#: never by reference to a module), about ten times faster.
_PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})
_CONTAINERS = frozenset({tuple, list, set, frozenset})


def dumps(obj: Any) -> bytes:
    """Pickle ``obj`` with cloudpickle (protocol 5).

    Scalars of builtin types, and flat tuples, lists, sets and dicts of them,
    go through the standard pickler instead: the bytes mean the same to
    :func:`loads`, and a 100,000-item map is pickled item by item.
    """
    kind = type(obj)
    if kind in _PLAIN:
        return pickle.dumps(obj, protocol=_PROTOCOL)
    if kind in _CONTAINERS and len(obj) <= 64 and all(type(x) in _PLAIN for x in obj):
        return pickle.dumps(obj, protocol=_PROTOCOL)
    if (
        kind is dict
        and len(obj) <= 64
        and all(type(k) in _PLAIN and type(v) in _PLAIN for k, v in obj.items())
    ):
        return pickle.dumps(obj, protocol=_PROTOCOL)
    return cloudpickle.dumps(obj, protocol=_PROTOCOL)


class _StandardExceptionReducers(Mapping):
    """``copyreg.dispatch_table`` without the reducers tblib registers for every exception.

    Importing ``distributed`` (the Dask executor) calls
    ``tblib.pickling_support.install()``, which registers a copyreg reducer
    for every exception class defined so far. Exceptions pickled that way need
    tblib to load (a client may not have it) and fail to load for classes with
    two builtin bases (``MemoryLimitExceeded``: ``MemoryError.__new__(...) is
    not safe``). Errors are pickled the standard way instead.
    """

    def __getitem__(self, cls: Any) -> Any:
        reducer = copyreg.dispatch_table[cls]
        if getattr(reducer, "__module__", "").startswith("tblib"):
            raise KeyError(cls)
        return reducer

    def __iter__(self) -> Iterator[Any]:
        return iter(copyreg.dispatch_table)

    def __len__(self) -> int:
        return len(copyreg.dispatch_table)


class _ErrorPickler(cloudpickle.Pickler):
    dispatch_table = ChainMap(
        cloudpickle.Pickler.dispatch_table.maps[0], _StandardExceptionReducers()
    )


def _dumps_error(exc: Any) -> bytes:
    """Pickle an exception with cloudpickle, ignoring tblib's reducers (see above)."""
    buffer = io.BytesIO()
    _ErrorPickler(buffer, protocol=_PROTOCOL).dump(exc)
    return buffer.getvalue()


def _rebuild_exception(cls: type, args: tuple, state: dict[str, Any]) -> BaseException:
    """Re-create an exception without calling its ``__init__`` (see :func:`_pickle_error`)."""
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class _ExceptionCopy:
    """Pickles as a call of :func:`_rebuild_exception`: same type, args and attributes."""

    def __init__(self, exc: BaseException) -> None:
        self.cls = type(exc)
        self.args = exc.args if _pickles(exc.args) else (str(exc),)
        # Attributes that do not pickle (a lock, a socket, a client) are left out.
        self.state = {k: v for k, v in vars(exc).items() if _pickles(v)}

    def __reduce__(self) -> tuple:
        return (_rebuild_exception, (self.cls, self.args, self.state))


def _pickles(value: Any) -> bool:
    try:
        _dumps_error(value)
    except Exception:  # noqa: BLE001 - any failure means "leave it out"
        return False
    return True


def _pickle_error(exc: BaseException) -> bytes:
    """The pickle of a task's exception that loads again as the same type, or b"".

    The standard pickle of an exception re-creates it as ``type(exc)(*exc.args)``,
    which fails for a class whose ``__init__`` takes other arguments than it
    passes to ``super().__init__`` (``MyError(code, detail)`` calling
    ``super().__init__(f"{code}: {detail}")``), and the whole pickle fails when
    an attribute does not pickle. Either way the client could only show the
    type's name. Such an exception is pickled instead as its type, ``args``
    and the attributes that pickle, and re-created without calling
    ``__init__``; the round trip is checked here, where the class is known.
    """
    try:
        data = _dumps_error(exc)
        if len(data) > ERROR_PICKLE_BYTES:
            return b""
        loads(data)
        return data
    except Exception:  # noqa: BLE001 - try the copy below
        pass
    try:
        data = _dumps_error(_ExceptionCopy(exc))
        if len(data) > ERROR_PICKLE_BYTES:
            return b""
        loads(data)
        return data
    except Exception:  # noqa: BLE001 - an exception that never pickles still reports its text
        return b""


def loads(data: bytes) -> Any:
    """Unpickle bytes produced by :func:`dumps`."""
    return cloudpickle.loads(data)


class RemoteTaskError(errors.FlowRunFailed):
    """A task failed remotely with an exception that could not be re-created here.

    Also stands for a task's ``KeyboardInterrupt``, ``SystemExit`` or other
    ``BaseException`` that is not an ``Exception``: raised in the caller, those
    would read as a Ctrl-C or an exit of the caller's own program. A
    :class:`~fleetflow.FlowRunFailed` like any failure fleetflow cannot re-raise
    as itself.

    Attributes:
        type_name: Qualified type of the original exception (``"mymod.MyError"``).
        remote_traceback: The traceback text captured on the worker.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.remote_traceback = remote_traceback


def _qualname(exc_type: type) -> str:
    return f"{exc_type.__module__}.{exc_type.__qualname__}"


def error_from_exception(exc: BaseException, *, tb: str | None = None) -> common_pb2.TaskError:
    """Capture an exception as a TaskError message.

    Args:
        exc: The exception raised by task code.
        tb: Traceback text; formatted from ``exc`` when omitted.

    Returns:
        A TaskError with type, message, traceback text, the last lines the
        running attempt logged (inside a worker's attempt scope, see
        :mod:`fleetflow._logging`) and, when the exception pickles, the
        pickled exception. Never raises for what the exception or the log
        holds: a ``__str__`` that raises, or text that is not valid UTF-8,
        still gives a TaskError (before, the task process died and the
        attempt counted as an infrastructure failure).
    """
    if tb is None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    pickled = _pickle_error(exc)
    return common_pb2.TaskError(
        type=_qualname(type(exc)),
        message=_utf8(_cut(_message(exc), keep_end=False)),
        traceback=_utf8(_cut(tb, keep_end=True)),
        pickled=pickled,
        log_tail=[_utf8(line) for line in current_tail()],
    )


#: Longest message or traceback text a TaskError carries (README "Limits",
#: ``error_text``: the coordinator cuts longer ones); longer text is cut where
#: it is made, so a 40 MB message does not travel, three times, to be dropped.
ERROR_TEXT_CHARS = 256 * 1024
#: Largest pickled exception kept (``error_pickle``); a larger one is dropped
#: here (the type and message stay), before the round trip that checks it.
ERROR_PICKLE_BYTES = 1 << 20


def _cut(text: str, *, keep_end: bool) -> str:
    """``text`` within :data:`ERROR_TEXT_CHARS`, saying how much was cut.

    A message keeps its start; a traceback its end, where the frame that
    raised and the exception's own line are.
    """
    if len(text) <= ERROR_TEXT_CHARS:
        return text
    note = f"[... {len(text) - ERROR_TEXT_CHARS + 100:,} characters cut ...]"
    keep = ERROR_TEXT_CHARS - 100
    return f"{note}\n{text[-keep:]}" if keep_end else f"{text[:keep]}\n{note}"


def _message(exc: BaseException) -> str:
    """``str(exc)``, or a stand-in when the exception's own ``__str__`` raises."""
    try:
        return str(exc)
    except Exception as err:  # noqa: BLE001 - the failure is the task's; its text is ours
        return f"<str() of the exception raised {type(err).__name__}>"


def _utf8(text: str) -> str:
    """Text a protobuf string field takes, whatever ``text`` holds.

    Lone surrogates (``os.fsdecode`` of a file name that is not UTF-8) are
    written as backslash escapes instead of failing the message, and with it
    the report of the task's failure.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def exception_from_error(error: common_pb2.TaskError) -> BaseException:
    """Re-create the original exception of a TaskError where possible.

    The returned exception carries the remote traceback as a note (PEP 678),
    so it shows when the exception is printed.

    Returns:
        The original exception (same type and message); a
        :class:`~fleetflow.FlowRunFailed` for a failure the coordinator
        describes (an unschedulable task, a lost task process, mapped
        arguments of different lengths); else a :class:`RemoteTaskError` with
        the type name and message: when the exception cannot be unpickled
        here, or is a ``BaseException`` but no ``Exception`` (``SystemExit``,
        ``KeyboardInterrupt``), which would stop the caller if raised.
    """
    exc: BaseException | None = None
    if error.pickled:
        try:
            candidate = loads(error.pickled)
            if isinstance(candidate, Exception):
                exc = candidate
        except Exception:  # noqa: BLE001 - fall back to the text form
            exc = None
    if exc is None and not error.pickled:
        exc = _fleetflow_error(error)
    if exc is None:
        exc = RemoteTaskError(error.type, error.message, error.traceback)
    if error.traceback:
        exc.add_note("Remote traceback (from the fleetflow worker):\n" + error.traceback.rstrip())
    if error.log_tail:
        exc.add_note("Last log lines of the failed attempt:\n" + "\n".join(error.log_tail))
    return exc


def _fleetflow_error(error: common_pb2.TaskError) -> BaseException | None:
    """A failure fleetflow itself describes (``fleetflow.errors.FlowRunFailed``), as its type."""
    module, _, name = error.type.rpartition(".")
    cls = getattr(errors, name, None) if module == "fleetflow.errors" else None
    if isinstance(cls, type) and issubclass(cls, errors.FlowRunFailed):
        return cls(error.message)
    return None
