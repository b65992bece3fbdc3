from fleetflow.api.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitFlowRunRequest(_message.Message):
    __slots__ = ("spec", "idempotency_key")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    spec: _common_pb2.FlowSpec
    idempotency_key: str
    def __init__(self, spec: _Optional[_Union[_common_pb2.FlowSpec, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class SubmitFlowRunResponse(_message.Message):
    __slots__ = ("flow_run_id", "created")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    created: bool
    def __init__(self, flow_run_id: _Optional[str] = ..., created: _Optional[bool] = ...) -> None: ...

class GetFlowRunRequest(_message.Message):
    __slots__ = ("flow_run_id", "include_result", "wait_seconds")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_RESULT_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    include_result: bool
    wait_seconds: float
    def __init__(self, flow_run_id: _Optional[str] = ..., include_result: _Optional[bool] = ..., wait_seconds: _Optional[float] = ...) -> None: ...

class TaskCounts(_message.Message):
    __slots__ = ("node", "task_name", "map", "total", "pending", "scheduled", "running", "awaiting_retry", "completed", "failed", "upstream_failed", "cancelled", "timed_out")
    NODE_FIELD_NUMBER: _ClassVar[int]
    TASK_NAME_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    AWAITING_RETRY_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_FAILED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    node: int
    task_name: str
    map: bool
    total: int
    pending: int
    scheduled: int
    running: int
    awaiting_retry: int
    completed: int
    failed: int
    upstream_failed: int
    cancelled: int
    timed_out: int
    def __init__(self, node: _Optional[int] = ..., task_name: _Optional[str] = ..., map: _Optional[bool] = ..., total: _Optional[int] = ..., pending: _Optional[int] = ..., scheduled: _Optional[int] = ..., running: _Optional[int] = ..., awaiting_retry: _Optional[int] = ..., completed: _Optional[int] = ..., failed: _Optional[int] = ..., upstream_failed: _Optional[int] = ..., cancelled: _Optional[int] = ..., timed_out: _Optional[int] = ...) -> None: ...

class FlowRunInfo(_message.Message):
    __slots__ = ("flow_run_id", "name", "state", "created_at", "ended_at", "last_seq", "nodes")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    name: str
    state: _common_pb2.FlowRunState
    created_at: float
    ended_at: float
    last_seq: int
    nodes: _containers.RepeatedCompositeFieldContainer[TaskCounts]
    def __init__(self, flow_run_id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.FlowRunState, str]] = ..., created_at: _Optional[float] = ..., ended_at: _Optional[float] = ..., last_seq: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[TaskCounts, _Mapping]]] = ...) -> None: ...

class GetFlowRunResponse(_message.Message):
    __slots__ = ("info", "result", "error", "error_task_name")
    INFO_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_TASK_NAME_FIELD_NUMBER: _ClassVar[int]
    info: FlowRunInfo
    result: _common_pb2.Value
    error: _common_pb2.TaskError
    error_task_name: str
    def __init__(self, info: _Optional[_Union[FlowRunInfo, _Mapping]] = ..., result: _Optional[_Union[_common_pb2.Value, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.TaskError, _Mapping]] = ..., error_task_name: _Optional[str] = ...) -> None: ...

class ListFlowRunsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListFlowRunsResponse(_message.Message):
    __slots__ = ("flow_runs",)
    FLOW_RUNS_FIELD_NUMBER: _ClassVar[int]
    flow_runs: _containers.RepeatedCompositeFieldContainer[FlowRunInfo]
    def __init__(self, flow_runs: _Optional[_Iterable[_Union[FlowRunInfo, _Mapping]]] = ...) -> None: ...

class WatchFlowRunRequest(_message.Message):
    __slots__ = ("flow_run_id", "after_seq")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    after_seq: int
    def __init__(self, flow_run_id: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class WatchFlowRunResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_common_pb2.Event]
    def __init__(self, events: _Optional[_Iterable[_Union[_common_pb2.Event, _Mapping]]] = ...) -> None: ...
