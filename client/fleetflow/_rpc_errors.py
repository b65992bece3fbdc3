"""The one place a failed RPC's gRPC status becomes the error a caller sees."""

from __future__ import annotations

import grpc

from fleetflow.errors import FlowRunNotFound, InvalidFlowError, RPCError

__all__ = ["translate"]


def translate(code: grpc.StatusCode, details: str, flow_run_id: str | None) -> Exception:
    """Map a failed RPC's status to a fleetflow error.

    Args:
        code: The status code the coordinator answered with.
        details: Its status message.
        flow_run_id: The flow run the call was about; None for calls about no
            flow run (SubmitFlowRun, ListFlowRuns...), where INVALID_ARGUMENT
            means a rejected flow spec.

    Returns:
        :class:`FlowRunNotFound` for NOT_FOUND on a flow run,
        :class:`InvalidFlowError` for INVALID_ARGUMENT on a call about no flow
        run, else :class:`RPCError` with the code's name.
    """
    if code is grpc.StatusCode.NOT_FOUND and flow_run_id is not None:
        return FlowRunNotFound(f"no flow run with id {flow_run_id!r} ({details})")
    if code is grpc.StatusCode.INVALID_ARGUMENT and flow_run_id is None:
        return InvalidFlowError(details)
    return RPCError(code.name, details)
