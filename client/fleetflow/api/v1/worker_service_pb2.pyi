from fleetflow.api.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OutcomeAck(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_ACK_UNSPECIFIED: _ClassVar[OutcomeAck]
    OUTCOME_ACK_ACCEPTED: _ClassVar[OutcomeAck]
    OUTCOME_ACK_REJECTED_STALE: _ClassVar[OutcomeAck]
    OUTCOME_ACK_REJECTED_UNKNOWN: _ClassVar[OutcomeAck]
OUTCOME_ACK_UNSPECIFIED: OutcomeAck
OUTCOME_ACK_ACCEPTED: OutcomeAck
OUTCOME_ACK_REJECTED_STALE: OutcomeAck
OUTCOME_ACK_REJECTED_UNKNOWN: OutcomeAck

class RegisterWorkerRequest(_message.Message):
    __slots__ = ("worker_id", "capacity", "task_names", "hostname", "pid", "running", "pools", "gpus", "task_fingerprints", "any_version")
    class TaskFingerprintsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    TASK_NAMES_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    TASK_FINGERPRINTS_FIELD_NUMBER: _ClassVar[int]
    ANY_VERSION_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    capacity: _common_pb2.Resources
    task_names: _containers.RepeatedScalarFieldContainer[str]
    hostname: str
    pid: int
    running: _containers.RepeatedCompositeFieldContainer[HeldTaskRun]
    pools: _containers.RepeatedScalarFieldContainer[str]
    gpus: _containers.RepeatedScalarFieldContainer[str]
    task_fingerprints: _containers.ScalarMap[str, str]
    any_version: bool
    def __init__(self, worker_id: _Optional[str] = ..., capacity: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., task_names: _Optional[_Iterable[str]] = ..., hostname: _Optional[str] = ..., pid: _Optional[int] = ..., running: _Optional[_Iterable[_Union[HeldTaskRun, _Mapping]]] = ..., pools: _Optional[_Iterable[str]] = ..., gpus: _Optional[_Iterable[str]] = ..., task_fingerprints: _Optional[_Mapping[str, str]] = ..., any_version: _Optional[bool] = ...) -> None: ...

class RegisterWorkerResponse(_message.Message):
    __slots__ = ("lease_ttl_seconds", "heartbeat_interval_seconds")
    LEASE_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    lease_ttl_seconds: float
    heartbeat_interval_seconds: float
    def __init__(self, lease_ttl_seconds: _Optional[float] = ..., heartbeat_interval_seconds: _Optional[float] = ...) -> None: ...

class HeldTaskRun(_message.Message):
    __slots__ = ("task_run_id", "attempt")
    TASK_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    task_run_id: int
    attempt: int
    def __init__(self, task_run_id: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("worker_id", "running", "cpu_percent", "memory_available", "capacity")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    running: _containers.RepeatedCompositeFieldContainer[HeldTaskRun]
    cpu_percent: float
    memory_available: float
    capacity: _common_pb2.Resources
    def __init__(self, worker_id: _Optional[str] = ..., running: _Optional[_Iterable[_Union[HeldTaskRun, _Mapping]]] = ..., cpu_percent: _Optional[float] = ..., memory_available: _Optional[float] = ..., capacity: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("known", "cancel")
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    known: bool
    cancel: _containers.RepeatedCompositeFieldContainer[HeldTaskRun]
    def __init__(self, known: _Optional[bool] = ..., cancel: _Optional[_Iterable[_Union[HeldTaskRun, _Mapping]]] = ...) -> None: ...

class LeaseTasksRequest(_message.Message):
    __slots__ = ("worker_id", "max_task_runs", "wait_seconds", "max_batch")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_TASK_RUNS_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    max_task_runs: int
    wait_seconds: float
    max_batch: int
    def __init__(self, worker_id: _Optional[str] = ..., max_task_runs: _Optional[int] = ..., wait_seconds: _Optional[float] = ..., max_batch: _Optional[int] = ...) -> None: ...

class ArgValue(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: _common_pb2.Value
    def __init__(self, name: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Value, _Mapping]] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("task_run_id", "attempt", "task_name", "flow_run_id", "node", "index", "args", "split_result", "timeout_seconds", "resources", "batch", "inline_max_bytes")
    TASK_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TASK_NAME_FIELD_NUMBER: _ClassVar[int]
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    SPLIT_RESULT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    INLINE_MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    task_run_id: int
    attempt: int
    task_name: str
    flow_run_id: str
    node: int
    index: int
    args: _containers.RepeatedCompositeFieldContainer[ArgValue]
    split_result: bool
    timeout_seconds: float
    resources: _common_pb2.Resources
    batch: int
    inline_max_bytes: int
    def __init__(self, task_run_id: _Optional[int] = ..., attempt: _Optional[int] = ..., task_name: _Optional[str] = ..., flow_run_id: _Optional[str] = ..., node: _Optional[int] = ..., index: _Optional[int] = ..., args: _Optional[_Iterable[_Union[ArgValue, _Mapping]]] = ..., split_result: _Optional[bool] = ..., timeout_seconds: _Optional[float] = ..., resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., batch: _Optional[int] = ..., inline_max_bytes: _Optional[int] = ...) -> None: ...

class LeaseTasksResponse(_message.Message):
    __slots__ = ("leases", "known")
    LEASES_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    leases: _containers.RepeatedCompositeFieldContainer[Lease]
    known: bool
    def __init__(self, leases: _Optional[_Iterable[_Union[Lease, _Mapping]]] = ..., known: _Optional[bool] = ...) -> None: ...

class Outcome(_message.Message):
    __slots__ = ("task_run_id", "attempt", "value", "items", "error", "ref", "stored_items", "infrastructure", "timed_out", "cpu_seconds", "peak_memory_bytes", "non_retryable", "retry_requested", "retry_delay_seconds", "duration_seconds", "gpu_devices", "peak_gpu_memory_bytes", "gpu_utilization_percent")
    TASK_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    STORED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    INFRASTRUCTURE_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    NON_RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    RETRY_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    RETRY_DELAY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GPU_DEVICES_FIELD_NUMBER: _ClassVar[int]
    PEAK_GPU_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPU_UTILIZATION_PERCENT_FIELD_NUMBER: _ClassVar[int]
    task_run_id: int
    attempt: int
    value: bytes
    items: _common_pb2.ValueList
    error: _common_pb2.TaskError
    ref: _common_pb2.StoredRef
    stored_items: _common_pb2.StoredItems
    infrastructure: bool
    timed_out: bool
    cpu_seconds: float
    peak_memory_bytes: float
    non_retryable: bool
    retry_requested: bool
    retry_delay_seconds: float
    duration_seconds: float
    gpu_devices: _containers.RepeatedScalarFieldContainer[str]
    peak_gpu_memory_bytes: float
    gpu_utilization_percent: float
    def __init__(self, task_run_id: _Optional[int] = ..., attempt: _Optional[int] = ..., value: _Optional[bytes] = ..., items: _Optional[_Union[_common_pb2.ValueList, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.TaskError, _Mapping]] = ..., ref: _Optional[_Union[_common_pb2.StoredRef, _Mapping]] = ..., stored_items: _Optional[_Union[_common_pb2.StoredItems, _Mapping]] = ..., infrastructure: _Optional[bool] = ..., timed_out: _Optional[bool] = ..., cpu_seconds: _Optional[float] = ..., peak_memory_bytes: _Optional[float] = ..., non_retryable: _Optional[bool] = ..., retry_requested: _Optional[bool] = ..., retry_delay_seconds: _Optional[float] = ..., duration_seconds: _Optional[float] = ..., gpu_devices: _Optional[_Iterable[str]] = ..., peak_gpu_memory_bytes: _Optional[float] = ..., gpu_utilization_percent: _Optional[float] = ...) -> None: ...

class ReportOutcomesRequest(_message.Message):
    __slots__ = ("worker_id", "outcomes", "max_new_leases", "max_batch")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_LEASES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    outcomes: _containers.RepeatedCompositeFieldContainer[Outcome]
    max_new_leases: int
    max_batch: int
    def __init__(self, worker_id: _Optional[str] = ..., outcomes: _Optional[_Iterable[_Union[Outcome, _Mapping]]] = ..., max_new_leases: _Optional[int] = ..., max_batch: _Optional[int] = ...) -> None: ...

class ReportOutcomesResponse(_message.Message):
    __slots__ = ("acks", "leases")
    ACKS_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedScalarFieldContainer[OutcomeAck]
    leases: _containers.RepeatedCompositeFieldContainer[Lease]
    def __init__(self, acks: _Optional[_Iterable[_Union[OutcomeAck, str]]] = ..., leases: _Optional[_Iterable[_Union[Lease, _Mapping]]] = ...) -> None: ...

class ReleaseLeasesRequest(_message.Message):
    __slots__ = ("worker_id", "released")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    released: _containers.RepeatedCompositeFieldContainer[HeldTaskRun]
    def __init__(self, worker_id: _Optional[str] = ..., released: _Optional[_Iterable[_Union[HeldTaskRun, _Mapping]]] = ...) -> None: ...

class ReleaseLeasesResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerUp(_message.Message):
    __slots__ = ("id", "lease_tasks", "report_outcomes", "release_leases", "cancel")
    ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TASKS_FIELD_NUMBER: _ClassVar[int]
    REPORT_OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    RELEASE_LEASES_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    id: int
    lease_tasks: LeaseTasksRequest
    report_outcomes: ReportOutcomesRequest
    release_leases: ReleaseLeasesRequest
    cancel: int
    def __init__(self, id: _Optional[int] = ..., lease_tasks: _Optional[_Union[LeaseTasksRequest, _Mapping]] = ..., report_outcomes: _Optional[_Union[ReportOutcomesRequest, _Mapping]] = ..., release_leases: _Optional[_Union[ReleaseLeasesRequest, _Mapping]] = ..., cancel: _Optional[int] = ...) -> None: ...

class SessionError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class WorkerDown(_message.Message):
    __slots__ = ("id", "lease_tasks", "report_outcomes", "release_leases", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TASKS_FIELD_NUMBER: _ClassVar[int]
    REPORT_OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    RELEASE_LEASES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: int
    lease_tasks: LeaseTasksResponse
    report_outcomes: ReportOutcomesResponse
    release_leases: ReleaseLeasesResponse
    error: SessionError
    def __init__(self, id: _Optional[int] = ..., lease_tasks: _Optional[_Union[LeaseTasksResponse, _Mapping]] = ..., report_outcomes: _Optional[_Union[ReportOutcomesResponse, _Mapping]] = ..., release_leases: _Optional[_Union[ReleaseLeasesResponse, _Mapping]] = ..., error: _Optional[_Union[SessionError, _Mapping]] = ...) -> None: ...
