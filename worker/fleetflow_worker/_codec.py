"""Wire <-> Python for one attempt: decode and bind arguments, encode results.

Pure functions (no I/O, no asyncio), shared by the event loop (``async def``
tasks) and the pool processes (plain ``def`` tasks). A *payload* is the small
picklable tuple a pool process sends back:

* ``("value", bytes)``: success, the pickled return value;
* ``("items", [bytes, ...])``: success of a ``split_result`` lease, each item
  pickled on its own;
* ``("error", bytes)``: failure, a serialized ``TaskError`` message.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal, TypeAlias

from fleetflow._task import Task, is_sequence_result
from fleetflow.api.v1 import common_pb2, worker_service_pb2
from fleetflow.serde import dumps, error_from_exception, loads

__all__ = [
    "WireArg",
    "Payload",
    "wire_args",
    "decode_args",
    "bind_arguments",
    "encode_result",
    "encode_error",
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
    """Capture an exception (type, message, traceback text, pickled) as a payload."""
    return "error", error_from_exception(exc).SerializeToString()


def to_outcome(
    task_run_id: int, attempt: int, payload: Payload, *, infrastructure: bool = False
) -> worker_service_pb2.Outcome:
    """Build the Outcome message reported for one attempt.

    Args:
        task_run_id: The leased task run.
        attempt: The lease's attempt number (fencing token).
        payload: What the attempt produced.
        infrastructure: True when the worker, not task code, caused the failure.

    Raises:
        ValueError: the payload kind is unknown.
    """
    outcome = worker_service_pb2.Outcome(
        task_run_id=task_run_id, attempt=attempt, infrastructure=infrastructure
    )
    kind, data = payload
    if kind == "value":
        outcome.value = data
    elif kind == "items":
        outcome.items.CopyFrom(common_pb2.ValueList(items=data))
    elif kind == "error":
        outcome.error.SetInParent()  # present even when the TaskError is empty
        outcome.error.MergeFromString(data)
    else:
        raise ValueError(f"unknown payload kind {kind!r}")
    return outcome
