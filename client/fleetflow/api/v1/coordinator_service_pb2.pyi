from fleetflow.api.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PruneFlowRunsRequest(_message.Message):
    __slots__ = ("older_than_seconds",)
    OLDER_THAN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    older_than_seconds: float
    def __init__(self, older_than_seconds: _Optional[float] = ...) -> None: ...

class PruneFlowRunsResponse(_message.Message):
    __slots__ = ("pruned_flow_run_ids",)
    PRUNED_FLOW_RUN_IDS_FIELD_NUMBER: _ClassVar[int]
    pruned_flow_run_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, pruned_flow_run_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SubmitFlowRunRequest(_message.Message):
    __slots__ = ("spec", "idempotency_key", "wait_seconds", "include_result")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_RESULT_FIELD_NUMBER: _ClassVar[int]
    spec: _common_pb2.FlowSpec
    idempotency_key: str
    wait_seconds: float
    include_result: bool
    def __init__(self, spec: _Optional[_Union[_common_pb2.FlowSpec, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., wait_seconds: _Optional[float] = ..., include_result: _Optional[bool] = ...) -> None: ...

class SubmitFlowRunResponse(_message.Message):
    __slots__ = ("flow_run_id", "created", "flow_run")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    FLOW_RUN_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    created: bool
    flow_run: GetFlowRunResponse
    def __init__(self, flow_run_id: _Optional[str] = ..., created: _Optional[bool] = ..., flow_run: _Optional[_Union[GetFlowRunResponse, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("node", "task_name", "map", "total", "pending", "scheduled", "running", "awaiting_retry", "completed", "failed", "upstream_failed", "cancelled", "timed_out", "unexpanded_end", "unschedulable_reason")
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
    UNEXPANDED_END_FIELD_NUMBER: _ClassVar[int]
    UNSCHEDULABLE_REASON_FIELD_NUMBER: _ClassVar[int]
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
    unexpanded_end: _common_pb2.TaskRunState
    unschedulable_reason: str
    def __init__(self, node: _Optional[int] = ..., task_name: _Optional[str] = ..., map: _Optional[bool] = ..., total: _Optional[int] = ..., pending: _Optional[int] = ..., scheduled: _Optional[int] = ..., running: _Optional[int] = ..., awaiting_retry: _Optional[int] = ..., completed: _Optional[int] = ..., failed: _Optional[int] = ..., upstream_failed: _Optional[int] = ..., cancelled: _Optional[int] = ..., timed_out: _Optional[int] = ..., unexpanded_end: _Optional[_Union[_common_pb2.TaskRunState, str]] = ..., unschedulable_reason: _Optional[str] = ...) -> None: ...

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

class ListWorkersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("worker_id", "hostname", "pid", "capacity", "allocated", "running", "task_names", "cpu_percent", "memory_available", "last_seen_at", "heartbeat_age_seconds", "gpus")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    ALLOCATED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    TASK_NAMES_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_AT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    hostname: str
    pid: int
    capacity: _common_pb2.Resources
    allocated: _common_pb2.Resources
    running: int
    task_names: _containers.RepeatedScalarFieldContainer[str]
    cpu_percent: float
    memory_available: float
    last_seen_at: float
    heartbeat_age_seconds: float
    gpus: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, worker_id: _Optional[str] = ..., hostname: _Optional[str] = ..., pid: _Optional[int] = ..., capacity: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., allocated: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., running: _Optional[int] = ..., task_names: _Optional[_Iterable[str]] = ..., cpu_percent: _Optional[float] = ..., memory_available: _Optional[float] = ..., last_seen_at: _Optional[float] = ..., heartbeat_age_seconds: _Optional[float] = ..., gpus: _Optional[_Iterable[str]] = ...) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ...) -> None: ...

class CancelFlowRunRequest(_message.Message):
    __slots__ = ("flow_run_id",)
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    def __init__(self, flow_run_id: _Optional[str] = ...) -> None: ...

class CancelFlowRunResponse(_message.Message):
    __slots__ = ("cancelled",)
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    cancelled: int
    def __init__(self, cancelled: _Optional[int] = ...) -> None: ...

class CancelTaskRunRequest(_message.Message):
    __slots__ = ("task_run_id", "flow_run_id", "node", "by_node")
    TASK_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    BY_NODE_FIELD_NUMBER: _ClassVar[int]
    task_run_id: int
    flow_run_id: str
    node: int
    by_node: bool
    def __init__(self, task_run_id: _Optional[int] = ..., flow_run_id: _Optional[str] = ..., node: _Optional[int] = ..., by_node: _Optional[bool] = ...) -> None: ...

class CancelTaskRunResponse(_message.Message):
    __slots__ = ("cancelled",)
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    cancelled: int
    def __init__(self, cancelled: _Optional[int] = ...) -> None: ...

class GetTaskRunRequest(_message.Message):
    __slots__ = ("task_run_id",)
    TASK_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    task_run_id: int
    def __init__(self, task_run_id: _Optional[int] = ...) -> None: ...

class Attempt(_message.Message):
    __slots__ = ("attempt", "worker_id", "started_at", "ended_at", "outcome", "error", "infrastructure", "message", "gpu_devices", "peak_gpu_memory_bytes", "gpu_utilization_percent")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    INFRASTRUCTURE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    GPU_DEVICES_FIELD_NUMBER: _ClassVar[int]
    PEAK_GPU_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPU_UTILIZATION_PERCENT_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    worker_id: str
    started_at: float
    ended_at: float
    outcome: str
    error: _common_pb2.TaskError
    infrastructure: bool
    message: str
    gpu_devices: _containers.RepeatedScalarFieldContainer[str]
    peak_gpu_memory_bytes: float
    gpu_utilization_percent: float
    def __init__(self, attempt: _Optional[int] = ..., worker_id: _Optional[str] = ..., started_at: _Optional[float] = ..., ended_at: _Optional[float] = ..., outcome: _Optional[str] = ..., error: _Optional[_Union[_common_pb2.TaskError, _Mapping]] = ..., infrastructure: _Optional[bool] = ..., message: _Optional[str] = ..., gpu_devices: _Optional[_Iterable[str]] = ..., peak_gpu_memory_bytes: _Optional[float] = ..., gpu_utilization_percent: _Optional[float] = ...) -> None: ...

class GetTaskRunResponse(_message.Message):
    __slots__ = ("task_run_id", "flow_run_id", "node", "index", "task_name", "state", "attempt", "attempts", "resources")
    TASK_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TASK_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    task_run_id: int
    flow_run_id: str
    node: int
    index: int
    task_name: str
    state: _common_pb2.TaskRunState
    attempt: int
    attempts: _containers.RepeatedCompositeFieldContainer[Attempt]
    resources: _common_pb2.Resources
    def __init__(self, task_run_id: _Optional[int] = ..., flow_run_id: _Optional[str] = ..., node: _Optional[int] = ..., index: _Optional[int] = ..., task_name: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.TaskRunState, str]] = ..., attempt: _Optional[int] = ..., attempts: _Optional[_Iterable[_Union[Attempt, _Mapping]]] = ..., resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ...) -> None: ...

class SetConcurrencyLimitRequest(_message.Message):
    __slots__ = ("tag", "limit")
    TAG_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    tag: str
    limit: int
    def __init__(self, tag: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class SetConcurrencyLimitResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetDemandRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Demand(_message.Message):
    __slots__ = ("pool", "resources", "waiting", "task_names", "unschedulable_reason", "waiting_on_limits")
    POOL_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    TASK_NAMES_FIELD_NUMBER: _ClassVar[int]
    UNSCHEDULABLE_REASON_FIELD_NUMBER: _ClassVar[int]
    WAITING_ON_LIMITS_FIELD_NUMBER: _ClassVar[int]
    pool: str
    resources: _common_pb2.Resources
    waiting: int
    task_names: _containers.RepeatedScalarFieldContainer[str]
    unschedulable_reason: str
    waiting_on_limits: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, pool: _Optional[str] = ..., resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., waiting: _Optional[int] = ..., task_names: _Optional[_Iterable[str]] = ..., unschedulable_reason: _Optional[str] = ..., waiting_on_limits: _Optional[_Iterable[str]] = ...) -> None: ...

class GetDemandResponse(_message.Message):
    __slots__ = ("demand",)
    DEMAND_FIELD_NUMBER: _ClassVar[int]
    demand: _containers.RepeatedCompositeFieldContainer[Demand]
    def __init__(self, demand: _Optional[_Iterable[_Union[Demand, _Mapping]]] = ...) -> None: ...

class GetFlowRunStatsRequest(_message.Message):
    __slots__ = ("flow_run_id",)
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    def __init__(self, flow_run_id: _Optional[str] = ...) -> None: ...

class UsageQuantiles(_message.Message):
    __slots__ = ("median", "p95", "max")
    MEDIAN_FIELD_NUMBER: _ClassVar[int]
    P95_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    median: float
    p95: float
    max: float
    def __init__(self, median: _Optional[float] = ..., p95: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class ResourceAdvice(_message.Message):
    __slots__ = ("resource", "requested", "used_p95", "suggested", "message")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_FIELD_NUMBER: _ClassVar[int]
    USED_P95_FIELD_NUMBER: _ClassVar[int]
    SUGGESTED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    resource: str
    requested: float
    used_p95: float
    suggested: float
    message: str
    def __init__(self, resource: _Optional[str] = ..., requested: _Optional[float] = ..., used_p95: _Optional[float] = ..., suggested: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class TaskUsage(_message.Message):
    __slots__ = ("node", "task_name", "requested", "measured_attempts", "cpu_cores", "cpu_seconds", "peak_memory_bytes", "duration_seconds", "advice", "gpu_measured_attempts", "peak_gpu_memory_bytes", "gpu_utilization_percent")
    NODE_FIELD_NUMBER: _ClassVar[int]
    TASK_NAME_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_FIELD_NUMBER: _ClassVar[int]
    MEASURED_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ADVICE_FIELD_NUMBER: _ClassVar[int]
    GPU_MEASURED_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    PEAK_GPU_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPU_UTILIZATION_PERCENT_FIELD_NUMBER: _ClassVar[int]
    node: int
    task_name: str
    requested: _common_pb2.Resources
    measured_attempts: int
    cpu_cores: UsageQuantiles
    cpu_seconds: UsageQuantiles
    peak_memory_bytes: UsageQuantiles
    duration_seconds: UsageQuantiles
    advice: _containers.RepeatedCompositeFieldContainer[ResourceAdvice]
    gpu_measured_attempts: int
    peak_gpu_memory_bytes: UsageQuantiles
    gpu_utilization_percent: UsageQuantiles
    def __init__(self, node: _Optional[int] = ..., task_name: _Optional[str] = ..., requested: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., measured_attempts: _Optional[int] = ..., cpu_cores: _Optional[_Union[UsageQuantiles, _Mapping]] = ..., cpu_seconds: _Optional[_Union[UsageQuantiles, _Mapping]] = ..., peak_memory_bytes: _Optional[_Union[UsageQuantiles, _Mapping]] = ..., duration_seconds: _Optional[_Union[UsageQuantiles, _Mapping]] = ..., advice: _Optional[_Iterable[_Union[ResourceAdvice, _Mapping]]] = ..., gpu_measured_attempts: _Optional[int] = ..., peak_gpu_memory_bytes: _Optional[_Union[UsageQuantiles, _Mapping]] = ..., gpu_utilization_percent: _Optional[_Union[UsageQuantiles, _Mapping]] = ...) -> None: ...

class TimeInState(_message.Message):
    __slots__ = ("pending_seconds", "queued_seconds", "running_seconds", "awaiting_retry_seconds")
    PENDING_SECONDS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_SECONDS_FIELD_NUMBER: _ClassVar[int]
    AWAITING_RETRY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    pending_seconds: float
    queued_seconds: float
    running_seconds: float
    awaiting_retry_seconds: float
    def __init__(self, pending_seconds: _Optional[float] = ..., queued_seconds: _Optional[float] = ..., running_seconds: _Optional[float] = ..., awaiting_retry_seconds: _Optional[float] = ...) -> None: ...

class GetFlowRunStatsResponse(_message.Message):
    __slots__ = ("flow_run_id", "tasks", "fleet_tasks", "time", "folded_seq", "stored")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    FLEET_TASKS_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    FOLDED_SEQ_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    tasks: _containers.RepeatedCompositeFieldContainer[TaskUsage]
    fleet_tasks: _containers.RepeatedCompositeFieldContainer[TaskUsage]
    time: TimeInState
    folded_seq: int
    stored: StoredUsage
    def __init__(self, flow_run_id: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[TaskUsage, _Mapping]]] = ..., fleet_tasks: _Optional[_Iterable[_Union[TaskUsage, _Mapping]]] = ..., time: _Optional[_Union[TimeInState, _Mapping]] = ..., folded_seq: _Optional[int] = ..., stored: _Optional[_Union[StoredUsage, _Mapping]] = ...) -> None: ...

class StoredUsage(_message.Message):
    __slots__ = ("bytes", "objects", "largest")
    BYTES_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    LARGEST_FIELD_NUMBER: _ClassVar[int]
    bytes: int
    objects: int
    largest: int
    def __init__(self, bytes: _Optional[int] = ..., objects: _Optional[int] = ..., largest: _Optional[int] = ...) -> None: ...

class ListTaskRunsRequest(_message.Message):
    __slots__ = ("flow_run_id", "states", "task_name", "index", "offset", "limit")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    TASK_NAME_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    states: _containers.RepeatedScalarFieldContainer[_common_pb2.TaskRunState]
    task_name: str
    index: int
    offset: int
    limit: int
    def __init__(self, flow_run_id: _Optional[str] = ..., states: _Optional[_Iterable[_Union[_common_pb2.TaskRunState, str]]] = ..., task_name: _Optional[str] = ..., index: _Optional[int] = ..., offset: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class TaskRunSummary(_message.Message):
    __slots__ = ("task_run_id", "node", "task_name", "index", "state", "attempt", "worker_id", "error", "input_summary", "input_item")
    TASK_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    TASK_NAME_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    INPUT_SUMMARY_FIELD_NUMBER: _ClassVar[int]
    INPUT_ITEM_FIELD_NUMBER: _ClassVar[int]
    task_run_id: int
    node: int
    task_name: str
    index: int
    state: _common_pb2.TaskRunState
    attempt: int
    worker_id: str
    error: str
    input_summary: str
    input_item: bytes
    def __init__(self, task_run_id: _Optional[int] = ..., node: _Optional[int] = ..., task_name: _Optional[str] = ..., index: _Optional[int] = ..., state: _Optional[_Union[_common_pb2.TaskRunState, str]] = ..., attempt: _Optional[int] = ..., worker_id: _Optional[str] = ..., error: _Optional[str] = ..., input_summary: _Optional[str] = ..., input_item: _Optional[bytes] = ...) -> None: ...

class ListTaskRunsResponse(_message.Message):
    __slots__ = ("task_runs", "total")
    TASK_RUNS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    task_runs: _containers.RepeatedCompositeFieldContainer[TaskRunSummary]
    total: int
    def __init__(self, task_runs: _Optional[_Iterable[_Union[TaskRunSummary, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...

class ListConcurrencyLimitsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConcurrencyLimit(_message.Message):
    __slots__ = ("tag", "limit", "running", "waiting", "source")
    TAG_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    tag: str
    limit: int
    running: int
    waiting: int
    source: str
    def __init__(self, tag: _Optional[str] = ..., limit: _Optional[int] = ..., running: _Optional[int] = ..., waiting: _Optional[int] = ..., source: _Optional[str] = ...) -> None: ...

class ListConcurrencyLimitsResponse(_message.Message):
    __slots__ = ("limits",)
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    limits: _containers.RepeatedCompositeFieldContainer[ConcurrencyLimit]
    def __init__(self, limits: _Optional[_Iterable[_Union[ConcurrencyLimit, _Mapping]]] = ...) -> None: ...
