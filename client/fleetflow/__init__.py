"""fleetflow: run large Python workflows across a fleet of machines.

Define tasks and flows here, submit them with :class:`Client` (or
:class:`AsyncClient`), and watch their events::

    from fleetflow import Client, flow, task

    @task
    def double(x: int) -> int:
        return 2 * x

    @flow
    def doubles(n: int):
        return double.map(range(n))

    with Client("127.0.0.1:50051") as client:
        print(client.submit(doubles, n=10).result())
"""

from fleetflow._client import (
    AsyncClient,
    AsyncFlowRunHandle,
    Backoff,
    Client,
    FlowRunHandle,
    FlowRunInfo,
    KeepAlive,
    TaskCounts,
    WorkerInfo,
)
from fleetflow._logging import TaskLogger, get_logger
from fleetflow._stats import FlowRunStats, ResourceAdvice, TaskUsage, TimeInState
from fleetflow._task import Flow, Task, TaskFuture, flow, task, unmapped
from fleetflow._taskruns import AttemptInfo, TaskRunInfo
from fleetflow._warm import forget, keep, kept
from fleetflow.credentials import Credentials, CredentialsError
from fleetflow.errors import (
    ConnectFailure,
    CoordinatorUnreachable,
    DuplicateTaskError,
    FleetflowError,
    FlowRunCancelled,
    FlowRunFailed,
    FlowRunNotFound,
    FlowRunTimeout,
    InvalidAddressError,
    InvalidFlowError,
    NonRetryableError,
    PayloadTooLarge,
    Retry,
    RPCError,
    StoredObjectCorrupt,
    StoredObjectError,
    StoredObjectMissing,
    WatchInterrupted,
)
from fleetflow.events import FlowEvent, TaskErrorInfo
from fleetflow.resources import InvalidResourceError, parse_quantity, parse_resources
from fleetflow.serde import RemoteTaskError
from fleetflow.store.values import ResultRef, StoredPiece

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "Credentials",
    "CredentialsError",
    "AsyncFlowRunHandle",
    "Backoff",
    "Client",
    "FlowRunHandle",
    "FlowRunInfo",
    "KeepAlive",
    "TaskCounts",
    "WorkerInfo",
    "FlowEvent",
    "TaskErrorInfo",
    "Flow",
    "Task",
    "TaskFuture",
    "flow",
    "task",
    "unmapped",
    "ConnectFailure",
    "CoordinatorUnreachable",
    "DuplicateTaskError",
    "FleetflowError",
    "FlowRunCancelled",
    "FlowRunFailed",
    "FlowRunNotFound",
    "FlowRunTimeout",
    "InvalidAddressError",
    "InvalidFlowError",
    "RPCError",
    "WatchInterrupted",
    "Retry",
    "NonRetryableError",
    "TaskRunInfo",
    "AttemptInfo",
    "RemoteTaskError",
    "InvalidResourceError",
    "parse_quantity",
    "parse_resources",
    "get_logger",
    "TaskLogger",
    "keep",
    "forget",
    "kept",
    "FlowRunStats",
    "TaskUsage",
    "ResourceAdvice",
    "TimeInState",
    "StoredObjectError",
    "StoredObjectMissing",
    "StoredObjectCorrupt",
    "PayloadTooLarge",
    "ResultRef",
    "StoredPiece",
]
