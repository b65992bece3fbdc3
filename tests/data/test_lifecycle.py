"""Stored objects go with their flow run: prune deletes them; orphans of a crash are collected."""

from __future__ import annotations

import os
import pickle
import time

from fleetflow.api.v1 import common_pb2
from fleetflow.api.v1 import worker_service_pb2 as ws
from fleetflow.store.codec import encode_frame

from tests.review.rpc import coordinator


async def _finished_flow(coord, key: str) -> str:
    spec = common_pb2.FlowSpec(name="one")
    spec.nodes.add(task_name="f").args.add(name="x", literal=pickle.dumps(1))
    flow_run_id = (await coord.submit(spec, key=key)).flow_run_id
    await coord.register("w1", ["f"])
    (lease,) = (await coord.lease("w1")).leases
    await coord.report(
        "w1", ws.Outcome(task_run_id=lease.task_run_id, attempt=lease.attempt, value=b"\x80.")
    )
    info = await coord.get(flow_run_id, wait=5)
    assert info.info.state == common_pb2.FLOW_RUN_STATE_COMPLETED
    return flow_run_id


def _age(objects, key: str, seconds: float) -> None:
    path = objects.path(key)
    old = time.time() - seconds
    os.utime(path, (old, old))


async def test_prune_deletes_the_flow_runs_objects_and_uploads():
    async with coordinator() as coord:
        objects = coord.rt.results.objects
        gone = await _finished_flow(coord, key="k-gone")
        objects.put(f"runs/{gone}/1.1.r", encode_frame(b"x" * 100_000))
        objects.put("submit/k-gone/abc", encode_frame(b"y"))
        objects.put("runs/someone-else/1.1.r", encode_frame(b"z"))
        pruned = await coord.rt.prune(0.0)
        assert pruned == [gone]
        assert objects.list(f"runs/{gone}") == []
        assert objects.list("submit/k-gone") == []
        assert len(objects.list("runs/someone-else")) == 1


async def test_orphans_older_than_the_grace_period_are_collected():
    async with coordinator(orphan_grace_s=600.0) as coord:
        results = coord.rt.results
        objects = results.objects
        done = await _finished_flow(coord, key="k-done")
        tr = next(iter(coord.rt.core.task_runs.values()))
        objects.put(f"runs/{done}/{tr.id}.2.r", encode_frame(1))  # a lost attempt's payload
        objects.put("runs/unknown-flow/1.1.r", encode_frame(2))  # its flow run is gone
        objects.put("submit/never-submitted/a", encode_frame(3))  # the client crashed
        objects.put("submit/k-done/b", encode_frame(4))  # the live flow run's upload
        objects.put("runs/recent-flow/1.1.r", encode_frame(5))  # maybe still being written
        for key in (
            f"runs/{done}/{tr.id}.2.r",
            "runs/unknown-flow/1.1.r",
            "submit/never-submitted/a",
            "submit/k-done/b",
        ):
            _age(objects, key, 3600)
        deleted = await results.collect_orphans(coord.rt.core.flows)
        assert deleted == 3
        remaining = {o.key for top in ("runs", "submit") for o in objects.list(top)}
        assert remaining == {"submit/k-done/b", "runs/recent-flow/1.1.r"}


def test_references_survive_a_restart_in_the_task_run_rows():
    from fleetflow.store import StoredItems, StoredRef
    from fleetflow_coordinator.store.rows import (
        _items_blob,
        _items_from_blob,
        _result_blob,
        _result_from_blob,
    )

    ref = StoredRef("runs/f/1.1.r-ab12cd34", 123, b"\x07" * 16, 64)
    items = StoredItems([(ref, 10), (ref._replace(offset=999), 5)])
    assert _result_from_blob(_result_blob(ref)) == ref
    assert _result_from_blob(_result_blob(b"\x80\x05K\x01.")) == b"\x80\x05K\x01."
    assert _result_from_blob(None) is None
    assert _items_from_blob(_items_blob(items)) == items
    assert _items_from_blob(_items_blob([b"a", b"b"])) == [b"a", b"b"]
