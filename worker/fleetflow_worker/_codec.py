"""Wire <-> Python for one attempt: decode and bind arguments, encode results.

Pure functions (no I/O, no asyncio), shared by the event loop (``async def``
tasks) and the pool processes (plain ``def`` tasks). A *payload* is the small
picklable tuple a pool process sends back:

* ``("value", bytes)``: success, the pickled return value;
* ``("items", [bytes, ...])``: success of a ``split_result`` lease, each item
  pickled on its own;
* ``("error", bytes)``: failure, a serialized ``Outcome`` message holding
  only ``error`` and the retry directives task code gave
  (``non_retryable``, ``retry_requested``, ``retry_delay_seconds``; see
  :func:`encode_failure`); :func:`error_of` reads its ``TaskError``.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal, TypeAlias

from fleetflow._task import Task, is_sequence_result
from fleetflow.api.v1 import common_pb2, worker_service_pb2
from fleetflow.errors import NonRetryableError, Retry
from fleetflow.serde import dumps, error_from_exception, loads

__all__ = [
    "WireArg",
    "Payload",
    "wire_args",
    "decode_args",
    "bind_arguments",
    "encode_result",
    "encode_error",
    "encode_failure",
    "error_of",
    "to_outcome",
]

#: One argument as it leaves the lease: ``(name, pickled)`` or ``(name, [pickled, ...])``.
WireArg: TypeAlias = tuple[str, bytes | list[bytes]]
#: What running an attempt produced; see the module docstring.
Payload: TypeAlias = (
    tuple[Literal["value"], bytes]
    | tuple[Literal["items"], list[bytes]]
    | tuple[Literal["error"], bytes]
)


def wire_args(lease: worker_service_pb2.Lease) -> list[WireArg]:
    """Take a lease's arguments out of protobuf without unpickling them.

    Raises:
        ValueError: an argument's value has neither ``pickled`` nor ``list`` set.
    """
    out: list[WireArg] = []
    for arg in lease.args:
        kind = arg.value.WhichOneof("kind")
        if kind == "pickled":
            out.append((arg.name, arg.value.pickled))
        elif kind == "list":
            out.append((arg.name, list(arg.value.list.items)))
        else:
            raise ValueError(f"argument {arg.name!r} of the lease carries no value")
    return out


def decode_args(args: Sequence[WireArg]) -> OrderedDict[str, Any]:
    """Unpickle arguments: bytes become one object, a list of bytes a Python list.

    Raises:
        Exception: whatever unpickling raises (e.g. ``ModuleNotFoundError``
            when a class the client pickled is not importable here).
    """
    return OrderedDict(
        (name, [loads(b) for b in value] if isinstance(value, list) else loads(value))
        for name, value in args
    )


def bind_arguments(task: Task, arguments: OrderedDict[str, Any]) -> tuple[tuple, dict]:
    """Turn named arguments into ``(args, kwargs)`` for ``task.fn``.

    The client binds every call with ``inspect.signature``, so positional
    arguments arrive by name (``*args``/``**kwargs`` parameters arrive as a
    tuple/list and a dict under their own name). Parameters left out take
    their defaults.

    Raises:
        TypeError: an argument names no parameter of the task.
    """
    unknown = [name for name in arguments if name not in task.signature.parameters]
    if unknown:
        raise TypeError(f"task {task.name!r} got arguments it does not declare: {unknown}")
    bound = inspect.BoundArguments(task.signature, arguments)
    return bound.args, bound.kwargs


def encode_result(task_name: str, result: Any, split_result: bool) -> Payload:
    """Pickle a return value, item by item when a downstream map needs it split.

    Raises:
        TypeError: ``split_result`` and the result is not a list/tuple-like
            sequence, or the value does not pickle.
    """
    if split_result:
        if not is_sequence_result(result):
            raise TypeError(
                f"task {task_name} returned {type(result).__name__}; "
                "a downstream map needs a list or tuple"
            )
        return "items", [_dumps_result(task_name, item) for item in result]
    return "value", _dumps_result(task_name, result)


def _dumps_result(task_name: str, value: Any) -> bytes:
    try:
        return dumps(value)
    except Exception as exc:
        raise TypeError(
            f"task {task_name} returned a value that cannot be pickled "
            f"({type(value).__name__}): {exc}"
        ) from exc


def encode_error(exc: BaseException) -> Payload:
    """Capture an exception (type, message, traceback text, pickled) as a payload.

    For failures the worker reports on its own (timeouts, bad arguments, a
    dead process); task code's own exceptions go through :func:`encode_failure`.
    """
    outcome = worker_service_pb2.Outcome()
    outcome.error.CopyFrom(error_from_exception(exc))
    return "error", outcome.SerializeToString()


def encode_failure(
    exc: BaseException, retry_on: tuple[type[BaseException], ...] | None = None
) -> Payload:
    """Capture an exception raised by task code, with what it says about retrying.

    * ``fleetflow.Retry(delay=d)``: retry after ``d`` seconds (within the
      task's retries); ``Retry()`` without a delay leaves the delay to the policy.
    * ``fleetflow.NonRetryableError`` (or a subclass): fail now.
    * any other exception that is not an instance of ``retry_on`` (when the
      task sets it): fail now.

    Args:
        exc: The exception task code raised.
        retry_on: The task's ``retry_on`` types; None retries every exception.
    """
    outcome = worker_service_pb2.Outcome()
    outcome.error.CopyFrom(error_from_exception(exc))
    if isinstance(exc, Retry):
        if exc.delay is not None:
            outcome.retry_requested = True
            outcome.retry_delay_seconds = exc.delay
    elif isinstance(exc, NonRetryableError) or (
        retry_on is not None and not isinstance(exc, retry_on)
    ):
        outcome.non_retryable = True
    return "error", outcome.SerializeToString()


def error_of(payload: Payload) -> common_pb2.TaskError:
    """The ``TaskError`` of an ``"error"`` payload.

    Raises:
        ValueError: the payload is not an error.
    """
    kind, data = payload
    if kind != "error":
        raise ValueError(f"not an error payload: {kind!r}")
    return worker_service_pb2.Outcome.FromString(data).error  # type: ignore[arg-type]


def to_outcome(
    task_run_id: int,
    attempt: int,
    payload: Payload,
    *,
    infrastructure: bool = False,
    timed_out: bool = False,
    cpu_seconds: float = 0.0,
    peak_memory_bytes: float = 0.0,
    duration_seconds: float = 0.0,
) -> worker_service_pb2.Outcome:
    """Build the Outcome message reported for one attempt.

    Args:
        task_run_id: The leased task run.
        attempt: The lease's attempt number (fencing token).
        payload: What the attempt produced.
        infrastructure: True when the worker, not task code, caused the failure.
        timed_out: True when the attempt was stopped at its timeout.
        cpu_seconds: CPU time the attempt used, seconds (0: not measured).
        peak_memory_bytes: Peak resident memory of its process, bytes (0: not measured).
        duration_seconds: Wall time of the task code, seconds (0: not measured).

    Raises:
        ValueError: the payload kind is unknown.
    """
    outcome = worker_service_pb2.Outcome(
        task_run_id=task_run_id,
        attempt=attempt,
        infrastructure=infrastructure,
        timed_out=timed_out,
        cpu_seconds=cpu_seconds,
        peak_memory_bytes=peak_memory_bytes,
        duration_seconds=duration_seconds,
    )
    kind, data = payload
    if kind == "value":
        outcome.value = data
    elif kind == "items":
        outcome.items.CopyFrom(common_pb2.ValueList(items=data))
    elif kind == "error":
        outcome.MergeFromString(data)  # error and retry directives
        outcome.error.SetInParent()  # present even when the TaskError is empty
    else:
        raise ValueError(f"unknown payload kind {kind!r}")
    return outcome
