"""Every bound on what a peer may send, and the one place that checks it.

The edge interceptor calls :func:`check_request` on every decoded request,
before its handler runs, so no handler ever reads an unchecked number or an
unbounded name. The rule (written down in docs/architecture.md, "Bounds"):

* **Refused** with INVALID_ARGUMENT (a name or number out of range) or
  RESOURCE_EXHAUSTED (a count or size over its limit), the message naming the
  field and the limit: everything a *client* declares (a flow's names,
  resources, retry policy, timeouts, node count) and every *claim* a worker
  makes about itself (its id, capacity, pools, task names). Nothing of a
  refused request is kept.
* **Clamped** into range, silently: what a worker *measures* or *asks for*
  (durations, CPU and memory readings, a Retry(delay=...), long-poll waits,
  how many leases or how big a batch it wants). Refusing those would lose an
  outcome the worker cannot correct; a worker's odd reading must not skew
  anyone else's batch sizes or dashboards. Not-a-number or infinite readings
  count as "not measured" (0).
* **Cut**: the text of a task's error (message, traceback, log lines) is cut
  to its limit, and a pickled exception over its limit is dropped (the client
  then rebuilds the error from its type and message).

:data:`BOUNDS` is the table; the README's "Limits" table lists the same rows
(a test keeps them in step).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fleetflow.api.v1 import common_pb2
from fleetflow.api.v1 import coordinator_service_pb2 as cs
from fleetflow.api.v1 import transfer_service_pb2 as ts
from fleetflow.api.v1 import worker_service_pb2 as ws

from fleetflow_coordinator.errors import InvalidRequest, LimitExceeded

__all__ = ["BOUNDS", "Bound", "check_request", "request_bytes_limit"]


@dataclass(frozen=True, slots=True)
class Bound:
    """One row of the bounds table.

    Attributes:
        key: Short name used in refusal messages (``"flow_name"``).
        applies_to: The fields it covers, as the protocol names them.
        limit: The limit, in ``unit``.
        unit: ``"characters"``, ``"entries"``, ``"bytes"``, ``"seconds"``, ...
        action: ``"INVALID_ARGUMENT"``, ``"RESOURCE_EXHAUSTED"``, ``"clamped"`` or ``"cut"``.
    """

    key: str
    applies_to: str
    limit: float
    unit: str
    action: str


_MIB = 1 << 20
#: Longest duration any field may hold: 366 days, in seconds.
MAX_SECONDS = 366 * 86400.0

_ROWS = (
    Bound("flow_name", "FlowSpec.name", 256, "characters", "INVALID_ARGUMENT"),
    Bound("task_name", "TaskNode.task_name, RegisterWorker.task_names", 512, "characters",
          "INVALID_ARGUMENT"),
    Bound("tag", "TaskNode.tags, SetConcurrencyLimit.tag", 128, "characters", "INVALID_ARGUMENT"),
    Bound("pool", "TaskNode.pool, RegisterWorker.pools", 128, "characters", "INVALID_ARGUMENT"),
    Bound("fingerprint", "TaskNode.fingerprint, RegisterWorker.task_fingerprints", 128,
          "characters", "INVALID_ARGUMENT"),
    Bound("worker_id", "worker_id of every worker call (required)", 128, "characters",
          "INVALID_ARGUMENT"),
    Bound("hostname", "RegisterWorker.hostname", 255, "characters", "INVALID_ARGUMENT"),
    Bound("idempotency_key", "SubmitFlowRun.idempotency_key", 256, "characters",
          "INVALID_ARGUMENT"),
    Bound("id", "flow_run_id of every call", 128, "characters", "INVALID_ARGUMENT"),
    Bound("resource_name", "resource names (requests and capacity)", 64, "characters",
          "INVALID_ARGUMENT"),
    Bound("arg_name", "ArgSpec.name", 256, "characters", "INVALID_ARGUMENT"),
    Bound("nodes", "nodes per flow run", 100_000, "entries", "RESOURCE_EXHAUSTED"),
    Bound("literal_items", "literal map items per node", 1_000_000, "entries",
          "RESOURCE_EXHAUSTED"),
    Bound("args", "arguments per node; upstream nodes per gathered argument", 1024, "entries",
          "RESOURCE_EXHAUSTED"),
    Bound("tags", "tags per node", 32, "entries", "RESOURCE_EXHAUSTED"),
    Bound("resources", "resource names per request or capacity", 32, "entries",
          "RESOURCE_EXHAUSTED"),
    Bound("retry_delays", "RetryPolicy.retry_delays_seconds entries", 1000, "entries",
          "RESOURCE_EXHAUSTED"),
    Bound("worker_tasks", "RegisterWorker.task_names", 10_000, "entries", "RESOURCE_EXHAUSTED"),
    Bound("worker_pools", "RegisterWorker.pools", 32, "entries", "RESOURCE_EXHAUSTED"),
    Bound("held", "running/released attempts per worker call", 100_000, "entries",
          "RESOURCE_EXHAUSTED"),
    Bound("outcomes", "outcomes per ReportOutcomes", 10_000, "entries", "RESOURCE_EXHAUSTED"),
    Bound("request_bytes", "SubmitFlowRun, ReportOutcomes request; WorkerSession message",
          256 * _MIB, "bytes", "RESOURCE_EXHAUSTED"),
    Bound("small_request_bytes", "every other request (a WorkerSession LeaseTasks or "
          "ReleaseLeases too)", 4 * _MIB, "bytes", "RESOURCE_EXHAUSTED"),
    Bound("session_requests", "unanswered requests per WorkerSession (one LeaseTasks); more "
          "ends the stream", 64, "requests", "RESOURCE_EXHAUSTED"),
    Bound("object_key", "key of a result store object (WriteObject, ReadObject)", 300,
          "characters", "INVALID_ARGUMENT"),
    Bound("transfer_chunk", "WriteObjectRequest.data", _MIB, "bytes", "RESOURCE_EXHAUSTED"),
    Bound("seconds", "timeouts, retry delays, max delays of a flow spec", MAX_SECONDS, "seconds",
          "INVALID_ARGUMENT"),
    Bound("retries", "RetryPolicy.retries", 10_000, "retries", "INVALID_ARGUMENT"),
    Bound("backoff", "RetryPolicy.backoff", 1000, "factor", "INVALID_ARGUMENT"),
    Bound("amount", "any resource amount requested or offered (finite, >= 0)", 2.0**60,
          "units", "INVALID_ARGUMENT"),
    Bound("worker_cpu", "RegisterWorker.capacity cpu", 4096, "logical CPUs", "INVALID_ARGUMENT"),
    Bound("worker_memory", "RegisterWorker.capacity memory, gpu_memory", 2.0**50, "bytes (1 PiB)",
          "INVALID_ARGUMENT"),
    Bound("worker_custom", "RegisterWorker.capacity, other resources", 1_000_000, "units",
          "INVALID_ARGUMENT"),
    Bound("lease_slots", "LeaseTasks.max_task_runs, ReportOutcomes.max_new_leases", 10_000,
          "slots", "clamped"),
    Bound("batch", "max_batch of LeaseTasks and ReportOutcomes", 10_000, "task runs", "clamped"),
    Bound("lease_wait", "LeaseTasks.wait_seconds", 10, "seconds (setting lease_wait_max_s)",
          "clamped"),
    Bound("get_wait", "GetFlowRun.wait_seconds, SubmitFlowRun.wait_seconds", 300, "seconds",
          "clamped"),
    Bound("page", "ListTaskRuns.limit (0 means 100)", 500, "task runs", "INVALID_ARGUMENT"),
    Bound("measured_seconds", "Outcome.duration_seconds (nonzero: at least 1 us), cpu_seconds",
          MAX_SECONDS, "seconds", "clamped"),
    Bound("retry_delay", "Outcome.retry_delay_seconds (Retry(delay=...))", MAX_SECONDS,
          "seconds", "clamped"),
    Bound("usage", "Outcome.peak_memory_bytes, Heartbeat.memory_available", 2.0**60, "bytes",
          "clamped"),
    Bound("cpu_percent", "Heartbeat.cpu_percent", 100, "percent", "clamped"),
    Bound("gpu_devices", "Outcome.gpu_devices, RegisterWorker.gpus: entries, each 64 characters",
          64, "devices", "cut"),
    Bound("error_text", "TaskError.message, traceback (each)", 256 * 1024, "characters", "cut"),
    Bound("log_tail", "TaskError.log_tail: lines, each 4096 characters", 20, "lines", "cut"),
    Bound("error_pickle", "TaskError.pickled", _MIB, "bytes", "cut"),
)  # fmt: skip

#: ``{key: Bound}``: the bounds table.
BOUNDS: dict[str, Bound] = {row.key: row for row in _ROWS}

_LIMIT = {row.key: row.limit for row in _ROWS}
_BIG_REQUESTS = frozenset(
    {
        "/fleetflow.api.v1.CoordinatorService/SubmitFlowRun",
        "/fleetflow.api.v1.WorkerService/ReportOutcomes",
        "/fleetflow.api.v1.WorkerService/WorkerSession",
    }
)


def request_bytes_limit(method: str) -> int:
    """The largest request, in bytes, that ``method`` (``/pkg.Service/Method``) accepts."""
    key = "request_bytes" if method in _BIG_REQUESTS else "small_request_bytes"
    return int(_LIMIT[key])


# ------------------------------------------------------------------ primitives


def _name(field: str, value: str, key: str, *, required: bool = False) -> None:
    if len(value) > _LIMIT[key]:
        raise InvalidRequest(
            f"{field}: {len(value)} characters, over the limit of {_LIMIT[key]:.0f} ({key})"
        )
    if required and not value:
        raise InvalidRequest(f"{field}: must not be empty")
    if not value.isprintable():
        raise InvalidRequest(f"{field}: must be printable text (no control characters)")


def _count(field: str, n: int, key: str) -> None:
    if n > _LIMIT[key]:
        raise LimitExceeded(f"{field}: {n} entries, over the limit of {_LIMIT[key]:.0f} ({key})")


def _number(field: str, value: float, high: float, key: str) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= high):
        raise InvalidRequest(f"{field} = {value!r}: must be finite, >= 0 and <= {high:g} ({key})")


def _clamp(value: float, high: float) -> float:
    """``value`` in ``[0, high]``; NaN, infinities and negatives become 0 (not measured)."""
    if not 0.0 <= value < math.inf:
        return 0.0
    return high if value > high else value


def _resources(field: str, amounts: Any, limits: Callable[[str], tuple[float, str]]) -> None:
    _count(field, len(amounts), "resources")
    for name, amount in amounts.items():
        _name(f"{field}[{name[:64]!r}]", name, "resource_name", required=True)
        high, key = limits(name)
        _number(f"{field}[{name!r}]", amount, high, key)


def _any_amount(_name: str) -> tuple[float, str]:
    return _LIMIT["amount"], "amount"


def _capacity_limit(name: str) -> tuple[float, str]:
    key = {"cpu": "worker_cpu", "memory": "worker_memory", "gpu_memory": "worker_memory"}.get(
        name, "worker_custom"
    )
    return _LIMIT[key], key


def _flow_run_id(field: str, value: str) -> None:
    _name(field, value, "id")


# -------------------------------------------------------------- client calls


def _node(i: int, node: common_pb2.TaskNode) -> None:
    where = f"nodes[{i}]"
    _name(f"{where}.task_name", node.task_name, "task_name")
    where = f"nodes[{i}] ({node.task_name})"
    _name(f"{where}.fingerprint", node.fingerprint, "fingerprint")
    _count(f"{where}.args", len(node.args), "args")
    for arg in node.args:
        _name(f"{where}.args.name", arg.name, "arg_name")
        source = arg.WhichOneof("source")
        if source == "literal_items":
            _count(f"{where}.args[{arg.name!r}].literal_items", len(arg.literal_items.items),
                   "literal_items")  # fmt: skip
        elif source == "nodes":
            _count(f"{where}.args[{arg.name!r}].nodes", len(arg.nodes.nodes), "args")
    _resources(f"{where}.resources", node.resources.amounts, _any_amount)
    retry = node.retry
    high = _LIMIT["seconds"]
    if retry.retries > _LIMIT["retries"]:
        raise InvalidRequest(
            f"{where}.retry.retries = {retry.retries}: over the limit of "
            f"{_LIMIT['retries']:.0f} (retries)"
        )
    _number(f"{where}.retry.retry_delay_seconds", retry.retry_delay_seconds, high, "seconds")
    _number(f"{where}.retry.max_delay_seconds", retry.max_delay_seconds, high, "seconds")
    _number(f"{where}.retry.backoff", retry.backoff, _LIMIT["backoff"], "backoff")
    _number(f"{where}.retry.jitter", retry.jitter, 1.0, "jitter")
    _count(f"{where}.retry.retry_delays_seconds", len(retry.retry_delays_seconds), "retry_delays")
    for delay in retry.retry_delays_seconds:
        _number(f"{where}.retry.retry_delays_seconds", delay, high, "seconds")
    _number(f"{where}.timeout_seconds", node.timeout_seconds, high, "seconds")
    _count(f"{where}.tags", len(node.tags), "tags")
    for tag in node.tags:
        _name(f"{where}.tags", tag, "tag", required=True)
    _name(f"{where}.pool", node.pool, "pool")


def _submit(request: cs.SubmitFlowRunRequest) -> None:
    spec = request.spec
    _name("spec.name", spec.name, "flow_name")
    _name("idempotency_key", request.idempotency_key, "idempotency_key")
    _count("spec.nodes", len(spec.nodes), "nodes")
    _number("spec.timeout_seconds", spec.timeout_seconds, _LIMIT["seconds"], "seconds")
    for i, node in enumerate(spec.nodes):
        _node(i, node)
    if not 0.0 <= request.wait_seconds <= _LIMIT["get_wait"]:  # a wait, as GetFlowRun's
        request.wait_seconds = _clamp(request.wait_seconds, _LIMIT["get_wait"])


def _get(request: cs.GetFlowRunRequest) -> None:
    _flow_run_id("flow_run_id", request.flow_run_id)
    if not 0.0 <= request.wait_seconds <= _LIMIT["get_wait"]:
        request.wait_seconds = _clamp(request.wait_seconds, _LIMIT["get_wait"])


def _by_flow_run_id(request: Any) -> None:
    _flow_run_id("flow_run_id", request.flow_run_id)


def _list_task_runs(request: cs.ListTaskRunsRequest) -> None:
    _flow_run_id("flow_run_id", request.flow_run_id)
    _name("task_name", request.task_name, "task_name")
    if request.limit > _LIMIT["page"]:
        raise InvalidRequest(
            f"limit: {request.limit} task runs, over the limit of {_LIMIT['page']:.0f} (page)"
        )


def _prune(request: cs.PruneFlowRunsRequest) -> None:
    _number("older_than_seconds", request.older_than_seconds, math.inf, "seconds")


def _set_limit(request: cs.SetConcurrencyLimitRequest) -> None:
    _name("tag", request.tag, "tag", required=True)


def _nothing(request: Any) -> None:
    return None


# -------------------------------------------------------------- worker calls


def _worker_id(value: str) -> None:
    _name("worker_id", value, "worker_id", required=True)


def _held(field: str, held: Any) -> None:
    _count(field, len(held), "held")


def _register(request: ws.RegisterWorkerRequest) -> None:
    _worker_id(request.worker_id)
    _name("hostname", request.hostname, "hostname")
    _resources("capacity", request.capacity.amounts, _capacity_limit)
    most = int(_LIMIT["gpu_devices"])
    if len(request.gpus) > most or any(len(g) > 64 for g in request.gpus):
        kept = [g[:64] for g in request.gpus[:most]]
        del request.gpus[:]
        request.gpus.extend(kept)
    _count("task_names", len(request.task_names), "worker_tasks")
    for name in request.task_names:
        _name("task_names", name, "task_name", required=True)
    _count("task_fingerprints", len(request.task_fingerprints), "worker_tasks")
    for name, version in request.task_fingerprints.items():
        _name("task_fingerprints", name, "task_name", required=True)
        _name(f"task_fingerprints[{name!r}]", version, "fingerprint")
    _count("pools", len(request.pools), "worker_pools")
    for pool in request.pools:
        _name("pools", pool, "pool", required=True)
    _held("running", request.running)


def _heartbeat(request: ws.HeartbeatRequest) -> None:
    _worker_id(request.worker_id)
    _held("running", request.running)
    if request.HasField("capacity"):  # as at registration
        _resources("capacity", request.capacity.amounts, _capacity_limit)
    if not 0.0 <= request.cpu_percent <= 100.0:
        request.cpu_percent = _clamp(request.cpu_percent, 100.0)
    if not 0.0 <= request.memory_available <= _LIMIT["usage"]:
        request.memory_available = _clamp(request.memory_available, _LIMIT["usage"])


def _slots(value: int) -> int:
    return min(value, int(_LIMIT["lease_slots"]))


def _lease(request: ws.LeaseTasksRequest) -> None:
    # lease_wait is clamped to the coordinator's lease_wait_max_s by the handler;
    # here only what is never valid: NaN, negative, infinite.
    _worker_id(request.worker_id)
    if not 0.0 <= request.wait_seconds < math.inf:
        request.wait_seconds = 0.0
    request.max_task_runs = max(1, _slots(request.max_task_runs))
    request.max_batch = min(request.max_batch, int(_LIMIT["batch"]))


def _error(error: common_pb2.TaskError) -> None:
    text = int(_LIMIT["error_text"])
    if len(error.message) > text:
        error.message = error.message[:text]
    if len(error.traceback) > text:
        error.traceback = error.traceback[:text]
    if len(error.type) > text:
        error.type = error.type[:text]
    if len(error.pickled) > _LIMIT["error_pickle"]:
        error.pickled = b""
    tail = error.log_tail
    if len(tail) > _LIMIT["log_tail"] or any(len(line) > 4096 for line in tail):
        lines = [line[:4096] for line in tail[-int(_LIMIT["log_tail"]) :]]
        del tail[:]
        tail.extend(lines)


def _clamp_outcome(outcome: ws.Outcome) -> None:
    high = _LIMIT["measured_seconds"]
    duration = outcome.duration_seconds
    if duration != 0.0 and not 1e-6 <= duration <= high:
        outcome.duration_seconds = (
            0.0 if not 0.0 < duration < math.inf else min(max(duration, 1e-6), high)
        )
    if not 0.0 <= outcome.cpu_seconds <= high:
        outcome.cpu_seconds = _clamp(outcome.cpu_seconds, high)
    if not 0.0 <= outcome.peak_memory_bytes <= _LIMIT["usage"]:
        outcome.peak_memory_bytes = _clamp(outcome.peak_memory_bytes, _LIMIT["usage"])
    if not 0.0 <= outcome.retry_delay_seconds <= _LIMIT["retry_delay"]:
        outcome.retry_delay_seconds = _clamp(outcome.retry_delay_seconds, _LIMIT["retry_delay"])


def _gpu_outcome(outcome: ws.Outcome) -> None:
    """Cut an attempt's device list; clamp its GPU memory and utilisation."""
    most = int(_LIMIT["gpu_devices"])
    if len(outcome.gpu_devices) > most or any(len(d) > 64 for d in outcome.gpu_devices):
        kept = [d[:64] for d in outcome.gpu_devices[:most]]
        del outcome.gpu_devices[:]
        outcome.gpu_devices.extend(kept)
    if not 0.0 <= outcome.peak_gpu_memory_bytes <= _LIMIT["usage"]:
        outcome.peak_gpu_memory_bytes = _clamp(outcome.peak_gpu_memory_bytes, _LIMIT["usage"])
    if outcome.HasField("gpu_utilization_percent"):
        util = outcome.gpu_utilization_percent
        if util != util:  # NaN: not a measurement
            outcome.ClearField("gpu_utilization_percent")
        elif not 0.0 <= util <= 100.0:
            outcome.gpu_utilization_percent = _clamp(util, 100.0)


_SECONDS_HIGH = _LIMIT["measured_seconds"]
_USAGE_HIGH = _LIMIT["usage"]
_RETRY_HIGH = _LIMIT["retry_delay"]


def _report(request: ws.ReportOutcomesRequest) -> None:
    _worker_id(request.worker_id)
    _count("outcomes", len(request.outcomes), "outcomes")
    # Once per task run: the common case is read once and compared, nothing more.
    high, usage, retry = _SECONDS_HIGH, _USAGE_HIGH, _RETRY_HIGH
    for outcome in request.outcomes:
        duration = outcome.duration_seconds
        if (
            not (1e-6 <= duration <= high or duration == 0.0)
            or not 0.0 <= outcome.cpu_seconds <= high
            or not 0.0 <= outcome.peak_memory_bytes <= usage
            or not 0.0 <= outcome.retry_delay_seconds <= retry
        ):
            _clamp_outcome(outcome)
        if outcome.HasField("error"):
            _error(outcome.error)
        if outcome.gpu_devices or outcome.peak_gpu_memory_bytes:
            _gpu_outcome(outcome)
    request.max_new_leases = _slots(request.max_new_leases)
    request.max_batch = min(request.max_batch, int(_LIMIT["batch"]))


def _release(request: ws.ReleaseLeasesRequest) -> None:
    _worker_id(request.worker_id)
    _held("released", request.released)


def _worker_up(request: ws.WorkerUp) -> None:
    # The envelope only: the session checks the request inside on its own
    # (session.py), so a refusal of it is answered for its id and the stream
    # goes on; a malformed envelope ends the stream.
    kind = request.WhichOneof("call")
    if kind is None:
        raise InvalidRequest("WorkerUp: no call set (lease_tasks, report_outcomes, ...)")
    if kind != "cancel" and request.id == 0:
        raise InvalidRequest("WorkerUp.id: must not be 0")


# ------------------------------------------------------ result store calls


def _object_key(request: Any) -> None:
    # The servicer checks the key's layout (fleetflow.store.refs.valid_key).
    _name("key", request.key, "object_key")


def _write_object(request: ts.WriteObjectRequest) -> None:
    _object_key(request)
    if len(request.data) > _LIMIT["transfer_chunk"]:
        raise LimitExceeded(
            f"data: {len(request.data)} bytes, over the limit of "
            f"{_LIMIT['transfer_chunk']:.0f} bytes per message (transfer_chunk)"
        )


#: ``{request message type: check}``: one entry per request type of both services.
_CHECKS: dict[type, Callable[[Any], None]] = {
    cs.SubmitFlowRunRequest: _submit,
    cs.GetFlowRunRequest: _get,
    cs.ListFlowRunsRequest: _nothing,
    cs.WatchFlowRunRequest: _by_flow_run_id,
    cs.PruneFlowRunsRequest: _prune,
    cs.CancelFlowRunRequest: _by_flow_run_id,
    cs.CancelTaskRunRequest: _by_flow_run_id,
    cs.GetTaskRunRequest: _nothing,
    cs.SetConcurrencyLimitRequest: _set_limit,
    cs.GetDemandRequest: _nothing,
    cs.ListWorkersRequest: _nothing,
    cs.GetFlowRunStatsRequest: _by_flow_run_id,
    cs.ListTaskRunsRequest: _list_task_runs,
    cs.ListConcurrencyLimitsRequest: _nothing,
    ws.RegisterWorkerRequest: _register,
    ws.HeartbeatRequest: _heartbeat,
    ws.LeaseTasksRequest: _lease,
    ws.ReportOutcomesRequest: _report,
    ws.ReleaseLeasesRequest: _release,
    ws.WorkerUp: _worker_up,
    ts.GetStoreInfoRequest: _nothing,
    ts.WriteObjectRequest: _write_object,
    ts.ReadObjectRequest: _object_key,
    ts.ReadNodeValuesRequest: _by_flow_run_id,
}


def check_request(request: Any) -> None:
    """Check a decoded request against the bounds table; clamp what the rule clamps.

    Args:
        request: A request message of ``CoordinatorService`` or ``WorkerService``;
            clamped fields are rewritten in place.

    Raises:
        InvalidRequest: a name or number is out of range (INVALID_ARGUMENT).
        LimitExceeded: a count is over its limit (RESOURCE_EXHAUSTED).
        KeyError: ``request`` is of a type the table does not know (a bug: a
            new RPC needs its row).
    """
    _CHECKS[type(request)](request)
