"""A worker that heartbeats but never reports cannot hold a lease past timeout + grace (#12.4)."""

from __future__ import annotations

import asyncio
import pickle
import time

from fleetflow.api.v1 import common_pb2
from fleetflow.api.v1 import worker_service_pb2 as ws

from tests.review.helpers import plain, spec_of
from tests.review.rpc import coordinator


async def test_the_coordinator_expires_an_attempt_its_worker_keeps_alive():
    async with coordinator(lease_ttl_s=0.5, heartbeat_interval_s=0.1) as co:
        assert co.rt.core.attempt_grace_s == 1.0
        await co.register("holder", ["t"])
        task = plain("t", x=1)
        task.timeout_seconds = 0.5
        flow_id = (await co.submit(spec_of(task, output_node=0))).flow_run_id
        [lease] = (await co.lease("holder", 1)).leases
        held = [ws.HeldTaskRun(task_run_id=lease.task_run_id, attempt=lease.attempt)]
        started = time.monotonic()
        cancel = []
        while time.monotonic() - started < 10 and not cancel:  # bounded
            answer = await co.w.Heartbeat(ws.HeartbeatRequest(worker_id="holder", running=held),
                                          timeout=5)  # fmt: skip
            assert answer.known
            cancel = list(answer.cancel)
            await asyncio.sleep(0.1)
        waited = time.monotonic() - started
        assert cancel == held, "the attempt was never expired"
        assert 1.4 <= waited < 6.0  # 0.5 s timeout + 1 s grace, then a heartbeat
        assert co.rt.core.attempts_expired == 1
        # an honest worker runs the new attempt; the holder's late outcome is fenced
        await co.register("honest", ["t"])
        [again] = (await co.lease("honest", 1)).leases
        assert again.attempt == lease.attempt + 1
        late = await co.report("holder", ws.Outcome(task_run_id=lease.task_run_id,
                                                    attempt=lease.attempt,
                                                    value=pickle.dumps("late")))  # fmt: skip
        assert list(late.acks) == [ws.OUTCOME_ACK_REJECTED_STALE]
        await co.report("honest", ws.Outcome(task_run_id=again.task_run_id, attempt=again.attempt,
                                             value=pickle.dumps("ok")))  # fmt: skip
        info = await co.get(flow_id, include_result=True)
        assert info.info.state == common_pb2.FLOW_RUN_STATE_COMPLETED
        assert pickle.loads(info.result.pickled) == "ok"
        flow = co.rt.core.flows[flow_id]
        assert any("worker holder sent no outcome" in e.message for e in flow.events)
