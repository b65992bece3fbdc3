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
  :func:`encode_failure`), or ``infrastructure`` for a failure that is not
  the task's doing (an input missing from the result store);
  :func:`error_of` reads its ``TaskError``;
* ``("ref", StoredRef)``: success, the return value written to the result
  store because its pickle is larger than the lease's inline limit;
* ``("stored_items", StoredItems)``: success of a ``split_result`` lease
  whose items add up to more than the inline limit, written in chunks.

Arguments arrive as leased (:func:`wire_args`): a pickle, a list of them, or
where to read them in the result store (:mod:`fleetflow.store`); the
process that runs the task reads them (:func:`decode_args`) from the
``StoreContext`` it is given, which also says where large results go.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple, TypeAlias

from fleetflow.api.v1 import common_pb2, worker_service_pb2
from fleetflow.errors import NonRetryableError, Retry
from fleetflow.execution import Task, map_items
from fleetflow.serde import dumps, error_from_exception, loads
from fleetflow.store import (
    StoredItem,
    StoredItems,
    StoredRef,
    StoreSpec,
    chunk_frames,
    encode_frame,
    frame_size,
    open_spec,
    result_key,
)
from fleetflow.store.refs import (
    item_from_proto,
    items_from_proto,
    items_to_proto,
    ref_from_proto,
    ref_to_proto,
)

__all__ = [
    "WireArg",
    "WireValue",
    "NodeValues",
    "StoreContext",
    "Payload",
    "stored_refs",
    "wire_args",
    "decode_args",
    "bind_arguments",
    "encode_result",
    "encode_error",
    "encode_failure",
    "error_of",
    "to_outcome",
]


class NodeValues(NamedTuple):
    """A list argument to read page by page from the coordinator (a large fan-in).

    The worker's loop replaces it with the list of values before the attempt
    runs (``fleetflow_worker._data``); task processes never see one.
    """

    flow_run_id: str
    node: int
    count: int


#: One argument's value as leased: a pickle; a list whose elements are pickles
#: or references; a stored value, item or list; or a list still to page in.
WireValue: TypeAlias = (
    bytes | list[bytes | StoredRef] | StoredRef | StoredItem | StoredItems | NodeValues
)
#: One argument as it leaves the lease: ``(name, value)``.
WireArg: TypeAlias = tuple[str, WireValue]
#: What running an attempt produced; see the module docstring.
Payload: TypeAlias = (
    tuple[Literal["value"], bytes]
    | tuple[Literal["items"], list[bytes]]
    | tuple[Literal["error"], bytes]
    | tuple[Literal["ref"], StoredRef]
    | tuple[Literal["stored_items"], StoredItems]
)


class StoreContext(NamedTuple):
    """What a process running one attempt needs from the result store.

    Attributes:
        spec: The store to open (:func:`fleetflow.store.open_spec`): the
            store itself, or the worker's spool when the coordinator hosts it
            on another machine.
        inline_max_bytes: A result whose pickle is larger goes to the store.
        chunk_bytes: Target size of one chunk of a stored list, bytes.
        flow_run_id: The attempt's flow run (part of the keys it writes).
        task_run_id: The attempt's task run.
        attempt: The attempt number.
    """

    spec: StoreSpec
    inline_max_bytes: int
    chunk_bytes: int
    flow_run_id: str
    task_run_id: int
    attempt: int

    def key(self, part: str) -> str:
        """The key of something this attempt stores."""
        return result_key(self.flow_run_id, self.task_run_id, self.attempt, part)


def _wire_value(name: str, value: common_pb2.Value) -> WireValue:
    kind = value.WhichOneof("kind")
    if kind == "pickled":
        return value.pickled
    if kind == "list":
        return list(value.list.items)
    if kind == "ref":
        return ref_from_proto(value.ref)
    if kind == "item":
        return item_from_proto(value.item)
    if kind == "items":
        return items_from_proto(value.items)
    if kind == "values":
        out: list[bytes | StoredRef] = []
        for element in value.values.values:
            which = element.WhichOneof("kind")
            if which == "pickled":
                out.append(element.pickled)
            elif which == "ref":
                out.append(ref_from_proto(element.ref))
            else:
                raise ValueError(f"argument {name!r}: a list element of kind {which!r}")
        return out
    if kind == "node_values":
        nv = value.node_values
        return NodeValues(nv.flow_run_id, nv.node, nv.count)
    raise ValueError(f"argument {name!r} of the lease carries no value")


def wire_args(lease: worker_service_pb2.Lease) -> list[WireArg]:
    """Take a lease's arguments out of protobuf without unpickling them.

    Raises:
        ValueError: an argument carries no value, or a malformed reference.
    """
    return [(arg.name, _wire_value(arg.name, arg.value)) for arg in lease.args]


def stored_refs(args: Sequence[WireArg]) -> list[StoredRef]:
    """Every stored payload the arguments refer to (what must be readable first)."""
    refs: list[StoredRef] = []
    for _, value in args:
        if isinstance(value, StoredRef):
            refs.append(value)
        elif isinstance(value, StoredItem):
            refs.append(value.chunk)
        elif isinstance(value, StoredItems):
            refs.extend(ref for ref, _ in value.chunks)
        elif isinstance(value, list):
            refs.extend(v for v in value if isinstance(v, StoredRef))
    return refs


def decode_args(
    args: Sequence[WireArg],
    store: StoreContext | None = None,
    cache: dict[Any, Any] | None = None,
) -> OrderedDict[str, Any]:
    """Rebuild arguments: pickles are unpickled, stored values read and verified.

    Args:
        args: As leased (after the worker's loop paged in any ``NodeValues``).
        store: Where stored values are read; required when there are any.
        cache: Keeps the last decoded chunk of a stored list, so the members
            of a batch, which walk a map in order, read each chunk once.

    Raises:
        fleetflow.errors.StoredObjectError: a stored value is missing or damaged.
        ValueError: a stored value came without a store.
        Exception: whatever unpickling raises (e.g. ``ModuleNotFoundError``
            when a class the client pickled is not importable here).
    """
    objects = None
    out: OrderedDict[str, Any] = OrderedDict()
    for name, value in args:
        if isinstance(value, bytes):
            out[name] = loads(value)
            continue
        if isinstance(value, NodeValues):
            raise ValueError(f"argument {name!r}: its values were not paged in")
        if objects is None and (not isinstance(value, list) or stored_refs([(name, value)])):
            if store is None:
                raise ValueError(f"argument {name!r} is in the result store, but none is set")
            objects = open_spec(store.spec)
        if isinstance(value, list):
            if objects is None:
                out[name] = [loads(v) for v in value]  # type: ignore[arg-type]
            else:
                out[name] = objects.load_many(value)
        elif isinstance(value, StoredRef):
            out[name] = objects.load(value)  # type: ignore[union-attr]
        elif isinstance(value, StoredItem):
            out[name] = objects.load_item(value, cache)  # type: ignore[union-attr]
        else:
            out[name] = [x for ref, _ in value.chunks for x in objects.load_chunk(ref)]  # type: ignore[union-attr]
    return out


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


def encode_result(
    task_name: str, result: Any, split_result: bool, store: StoreContext | None = None
) -> Payload:
    """Pickle a return value, item by item when a downstream map needs it split.

    With a ``store``, a value whose pickle is larger than its inline limit is
    written there (and the payload is its reference), and a split result
    whose items add up to more is written in chunks: the list is never
    pickled whole, and only one chunk's pickle exists at a time.

    Raises:
        TypeError: ``split_result`` and the result is not split
            (:func:`fleetflow.execution.map_items`), or the value does not pickle.
        OSError: the store refused a write.
    """
    if split_result:
        items = map_items(result, limit=None)
        if items is None:
            raise TypeError(
                f"task {task_name} returned {type(result).__name__}; a downstream map "
                "needs a list, tuple or other iterable (str, bytes, dicts and sets are not split)"
            )
        result = items  # an iterator or generator is read once, here
        if store is None:
            return "items", [_dumps_result(task_name, item) for item in result]
        items: list[bytes] = []
        total = 0
        for item in result:
            data = _dumps_result(task_name, item)
            total += len(data)
            if total > store.inline_max_bytes:
                return "stored_items", _store_items(task_name, result, store)
            items.append(data)
        return "items", items
    if store is None:
        return "value", _dumps_result(task_name, result)
    if type(result) is not bytes or len(result) <= store.inline_max_bytes:
        if _likely_small(result):
            data = _dumps_result(task_name, result)
            if len(data) <= store.inline_max_bytes:
                return "value", data
    try:
        frame = encode_frame(result)
    except TypeError as exc:
        raise TypeError(f"task {task_name} returned a value that cannot be pickled: {exc}") from exc
    if frame_size(frame) <= store.inline_max_bytes:
        return "value", _dumps_result(task_name, result)
    return "ref", open_spec(store.spec).put(store.key("r"), frame)


def _likely_small(value: Any) -> bool:
    """Whether to try an inline pickle first (no large buffers to copy into it)."""
    return not hasattr(value, "__array_interface__") and type(value) not in (bytearray, memoryview)


def _store_items(task_name: str, result: Any, store: StoreContext) -> StoredItems:
    objects = open_spec(store.spec)
    sequence = result if hasattr(result, "__getitem__") else list(result)
    chunks: list[tuple[StoredRef, int]] = []
    try:
        for k, (frame, count) in enumerate(chunk_frames(sequence, store.chunk_bytes)):
            chunks.append((objects.put(store.key(f"s{k}"), frame), count))
    except TypeError as exc:
        raise TypeError(f"task {task_name} returned items that cannot be pickled: {exc}") from exc
    return StoredItems(chunks)


def _dumps_result(task_name: str, value: Any) -> bytes:
    try:
        return dumps(value)
    except Exception as exc:
        raise TypeError(
            f"task {task_name} returned a value that cannot be pickled "
            f"({type(value).__name__}): {exc}"
        ) from exc


def encode_error(exc: BaseException, *, infrastructure: bool = False) -> Payload:
    """Capture an exception (type, message, traceback text, pickled) as a payload.

    For failures the worker reports on its own (timeouts, bad arguments, a
    dead process); task code's own exceptions go through :func:`encode_failure`.

    Args:
        exc: The exception.
        infrastructure: The failure is not the task code's doing (e.g. an
            input is missing from the result store): it counts against the
            task run's ``max_infra_failures``, not its retries.
    """
    outcome = worker_service_pb2.Outcome(infrastructure=infrastructure)
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
    elif kind == "ref":
        ref_to_proto(data, outcome.ref)
    elif kind == "stored_items":
        items_to_proto(data, outcome.stored_items)
    elif kind == "error":
        outcome.MergeFromString(data)  # error, retry directives, infrastructure
        outcome.error.SetInParent()  # present even when the TaskError is empty
    else:
        raise ValueError(f"unknown payload kind {kind!r}")
    return outcome
