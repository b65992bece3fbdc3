"""Core records <-> store rows. Opaque errors and item lists become protobuf blobs."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Any

from fleetflow.api.v1 import common_pb2
from fleetflow.store.refs import items_from_proto, items_to_proto, ref_from_proto, ref_to_proto

from fleetflow_coordinator.core.model import EventKind, EventRecord, FlowRun, TaskRun
from fleetflow_coordinator.core.scheduler import Changes, RestoredFlow, RestoredTaskRun, Scheduler
from fleetflow_coordinator.store.base import RowBatch, RowSnapshot, apply_started

__all__ = ["changes_to_batch", "gc_paused", "restore_snapshot", "snapshot_to_flows"]


def _error_blob(error: common_pb2.TaskError | None) -> bytes | None:
    return None if error is None else error.SerializeToString()


def _error_from_blob(blob: bytes | None) -> common_pb2.TaskError | None:
    return None if blob is None else common_pb2.TaskError.FromString(blob)


#: First byte of a ``result``/``items`` column that holds a stored reference
#: (a ``StoredRef``/``StoredItems`` message follows) rather than a pickle
#: (protocol 2+ pickles start with 0x80) or a ``ValueList`` (starts with a tag).
_STORED = b"\x00"


def _result_blob(result: Any) -> bytes | None:
    if result is None or isinstance(result, bytes):
        return result
    return _STORED + ref_to_proto(result).SerializeToString()


def _result_from_blob(blob: bytes | None) -> Any:
    if blob is None or blob[:1] != _STORED:
        return blob
    return ref_from_proto(common_pb2.StoredRef.FromString(blob[1:]))


def _items_blob(items: Any) -> bytes | None:
    if items is None:
        return None
    if isinstance(items, list):
        return common_pb2.ValueList(items=items).SerializeToString()
    return _STORED + items_to_proto(items).SerializeToString()


def _items_from_blob(blob: bytes | None) -> Any:
    if blob is None:
        return None
    if blob[:1] == _STORED:
        return items_from_proto(common_pb2.StoredItems.FromString(blob[1:]))
    return list(common_pb2.ValueList.FromString(blob).items)


def _flow_row(flow: FlowRun) -> tuple:
    task, error, message = flow.first_error or (None, None, None)
    return (
        flow.id,
        flow.name,
        flow.spec_blob,
        int(flow.state),
        flow.created_at,
        flow.ended_at,
        flow.idempotency_key,
        task,
        _error_blob(error),
        message,
    )


def _flow_update(flow: FlowRun) -> tuple:
    task, error, message = flow.first_error or (None, None, None)
    return (int(flow.state), flow.ended_at, task, _error_blob(error), message, flow.id)


def _task_run_row(tr: TaskRun) -> tuple:
    return (
        tr.id,
        tr.flow.id,
        tr.node.index,
        tr.index,
        int(tr.state),
        tr.attempt,
        tr.worker_id or "",
        tr.leased_at,
        _result_blob(tr.result),
        _items_blob(tr.items),
        _error_blob(tr.error),
        tr.code_failures,
        tr.infra_failures,
        tr.retry_at,
    )


def changes_to_batch(changes: Changes) -> RowBatch:
    """Turn drained core changes into one batch of rows."""
    batch = RowBatch()
    new_ids = set()
    for flow in changes.new_flows:
        new_ids.add(flow.id)
        batch.flows.append(_flow_row(flow))
    batch.flow_updates = [_flow_update(f) for f in changes.flows if f.id not in new_ids]
    batch.nodes = [
        (flow.id, node.index, int(node.expanded), int(node.failed and not node.expanded))
        for flow, node in changes.nodes
    ]
    batch.task_runs = [_task_run_row(tr) for tr in changes.task_runs]
    batch.events = [
        (
            flow_id,
            e.seq,
            int(e.kind),
            e.time,
            e.node,
            e.task_name,
            e.task_run_id,
            e.index,
            e.attempt,
            e.worker_id,
            e.count,
            e.message,
            _error_blob(e.error),
            e.retry_at,
        )
        for flow_id, e in changes.events
    ]
    batch.event_runs = [tuple(run) for run in changes.event_runs]
    batch.expansions = [
        (flow.id, node.index, node.task_name, first_id, count, first_seq, time)
        for flow, node, first_id, count, first_seq, time in changes.expansions
    ]
    batch.pruned = list(changes.pruned)
    batch.next_task_run_id = changes.next_task_run_id
    return batch


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (restored on exit).

    Restoring a 100,000-node flow run allocates a few million objects, none of
    them garbage; with the collector on, each full collection scans all of them
    again and half the restore time went there. What becomes garbage meanwhile
    is collected after.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def restore_snapshot(core: Scheduler, snapshot: RowSnapshot, now: float) -> int:
    """Decode stored rows and restore them into ``core``; returns the flow runs restored.

    Linear in stored rows (``benchmarks/restore.py`` measures it).

    Raises:
        fleetflow_coordinator.core.InvalidFlowSpec: a stored spec is invalid.
    """
    with gc_paused():
        flows = snapshot_to_flows(snapshot)
        core.restore(flows, now, snapshot.next_task_run_id)
    return len(flows)


def snapshot_to_flows(snapshot: RowSnapshot) -> list[RestoredFlow]:
    """Decode stored rows into what :meth:`Scheduler.restore` takes."""
    # the spec decoding lives there
    from fleetflow_coordinator.convert import node_specs, output_literal

    kinds = {int(kind): kind for kind in EventKind}
    apply_started(snapshot.task_runs, snapshot.events)  # leases store no task run row
    flows = []
    for row in snapshot.flows:
        flow_id, name, spec_blob, state, created_at, ended_at, key, err_task, err, err_msg = row
        spec = common_pb2.FlowSpec.FromString(spec_blob)
        task_runs = [
            RestoredTaskRun(
                r[0],
                r[2],
                r[3],
                r[4],
                r[5],
                r[6],
                r[7],
                _result_from_blob(r[8]),
                _items_from_blob(r[9]),
                None if r[10] is None else _error_from_blob(r[10]),
                r[11],
                r[12],
                r[13],
            )
            for r in snapshot.task_runs.get(flow_id, [])
        ]
        # Positional, with the kind looked up in a dict: 300,000 events of a
        # 100,000-item map decode in a fraction of the keyword/enum-call time.
        events = [
            EventRecord(
                e[1],
                kinds[e[2]],
                e[3],
                e[4],
                e[5],
                e[6],
                e[7],
                e[8],
                e[9],
                e[10],
                e[11],
                None if e[12] is None else _error_from_blob(e[12]),
                e[13],
            )
            for e in snapshot.events.get(flow_id, [])
        ]
        flows.append(
            RestoredFlow(
                id=flow_id,
                name=name,
                nodes=node_specs(spec),
                spec_blob=spec_blob,
                state=state,
                created_at=created_at,
                ended_at=ended_at,
                output_node=spec.output_node if spec.HasField("output_node") else None,
                output_literal=output_literal(spec),
                idempotency_key=key,
                first_error=None
                if err_task is None
                else (err_task, _error_from_blob(err), err_msg),
                node_rows={n[1]: (bool(n[2]), bool(n[3])) for n in snapshot.nodes.get(flow_id, [])},
                task_runs=task_runs,
                events=events,
                priority=spec.priority,
                timeout_s=spec.timeout_seconds,
            )
        )
    return flows
