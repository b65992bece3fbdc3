"""Task and flow definitions, and the recorder that turns a flow function into a graph.

Calling a task inside a flow function does not run it: it records a node of
the flow graph and returns a :class:`TaskFuture`. ``task.map(...)`` records a
map node (fan-out). Passing a future to another task makes a dependency;
passing a map future to a plain task is fan-in (it receives the list of
results in input order). The finished graph is a ``FlowSpec`` message.

Outside a flow function a task is an ordinary function: ``parse(path)`` runs
``parse`` right here, which keeps user code testable without a coordinator.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, ParamSpec, TypeVar, overload

from fleetflow import _identity
from fleetflow._task_rules import (
    BoundTask,
    check_number,
    check_seconds,
    dumps_arg,
    map_items,
    nothing_mapped,
    record_parameters,
    unmapped,
)
from fleetflow.api.v1 import common_pb2
from fleetflow.resources import parse_resources
from fleetflow.serde import dumps

__all__ = ["Task", "Flow", "TaskFuture", "task", "flow", "unmapped", "DEFAULT_RESOURCES"]

P = ParamSpec("P")
R = TypeVar("R")

#: Resources a task requests when it declares none: one logical CPU.
DEFAULT_RESOURCES: dict[str, float] = {"cpu": 1.0}
#: Relative jitter applied to retry delays unless a task sets ``retry_jitter``.
DEFAULT_RETRY_JITTER = 0.2

_recorder: contextvars.ContextVar[_FlowRecorder | None] = contextvars.ContextVar(
    "fleetflow_recorder", default=None
)


class Task(Generic[P, R]):
    """A unit of work that workers run; made with the :func:`task` decorator.

    Attributes:
        fn: The user's function (``def`` or ``async def``).
        name: Registered name workers offer; defaults to ``module:qualname``
            (:func:`fleetflow._identity.default_task_name`). One name, one
            definition per process (:class:`~fleetflow._identity.DuplicateTaskError`).
        fingerprint: The code version of the task
            (:func:`fleetflow._identity.fingerprint`).
        resources: ``{name: amount}`` parsed by :mod:`fleetflow.resources`
            (cpu in CPUs, memory in bytes).
        retries: Retries after the first failed attempt.
        retry_delay_seconds: Delay before each retry in seconds, or a list with
            one delay per retry (the last repeats).
        retry_backoff: Multiplier per further failure (1 constant, 2 doubling).
        retry_max_delay_seconds: Cap on any retry delay, seconds (None: no cap).
        retry_jitter: Relative jitter in [0, 1] (default 0.2: +-20%).
        retry_on: Exception types worth a retry; others fail at once. None: all.
        timeout_seconds: Per-attempt time limit in seconds, or None.
        tags: Concurrency-limit tags (limits are set on the coordinator).
        pool: Worker pool that runs it (``fleetflow worker --pool NAME``).
        concurrency_limit: At most this many task runs of this task at once.
        mapped: Calling the task maps it: ``t(xs)`` is ``t.map(xs)`` (inside a
            flow a fan-out; outside one, a list of results computed here).
        is_async: True for ``async def`` functions (run on the worker's loop).
        any_version: Run on workers whatever version of the task's code they
            have (nodes carry no fingerprint; such a worker reports none).
            Off by default: a node is leased only to workers whose fingerprint
            matches the client's.
    """

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        resources: Mapping[str, object] | None = None,
        retries: int = 0,
        retry_delay_seconds: float | Sequence[float] = 0.0,
        retry_backoff: float = 1.0,
        retry_max_delay_seconds: float | None = None,
        retry_jitter: float = DEFAULT_RETRY_JITTER,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
        timeout_seconds: float | None = None,
        tags: Sequence[str] = (),
        concurrency_limit: int | None = None,
        pool: str = "default",
        mapped: bool = False,
        any_version: bool = False,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"@task needs a function, got {type(fn).__name__}")
        self.fn = fn
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"@task name must be a non-empty string, got {name!r}")
        self.name = name or _identity.default_task_name(fn)
        owner = f"task {self.name!r}"
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"{owner}: retries must be a non-negative int, got {retries!r}")
        is_list = isinstance(retry_delay_seconds, Sequence) and not isinstance(
            retry_delay_seconds, str
        )
        if is_list and not retry_delay_seconds:
            raise ValueError(f"{owner}: retry_delay_seconds must not be an empty list")
        delays = [
            check_seconds(owner, "retry_delay_seconds", d)
            for d in (retry_delay_seconds if is_list else [retry_delay_seconds])
        ]
        retry_backoff = check_number(owner, "retry_backoff", retry_backoff, low=1, high=1000)
        if retry_max_delay_seconds is not None:
            retry_max_delay_seconds = check_seconds(
                owner, "retry_max_delay_seconds", retry_max_delay_seconds
            )
        retry_jitter = check_number(owner, "retry_jitter", retry_jitter, low=0, high=1)
        if retry_on is not None:
            retry_on = retry_on if isinstance(retry_on, tuple) else (retry_on,)
            if not all(isinstance(t, type) and issubclass(t, BaseException) for t in retry_on):
                raise ValueError(f"{owner}: retry_on must be exception types")
        if concurrency_limit is not None and (
            isinstance(concurrency_limit, bool)
            or not isinstance(concurrency_limit, int)
            or concurrency_limit < 1
        ):
            raise ValueError(
                f"{owner}: concurrency_limit must be an int >= 1 or None, got {concurrency_limit!r}"
            )
        if isinstance(tags, str) or not all(isinstance(t, str) and t for t in tags):
            raise ValueError(f"{owner}: tags must be a list of non-empty strings")
        if timeout_seconds is not None:
            timeout_seconds = check_seconds(
                owner, "timeout_seconds", timeout_seconds, positive=True
            )
        self.resources = parse_resources(
            DEFAULT_RESOURCES if resources is None else resources, owner=self.name
        )
        self.retries = retries
        self.retry_delay_seconds: float | list[float] = delays if is_list else delays[0]
        self.retry_backoff = float(retry_backoff)
        self.retry_max_delay_seconds = retry_max_delay_seconds
        self.retry_jitter = float(retry_jitter)
        self.retry_on = retry_on
        self.timeout_seconds = timeout_seconds
        self.tags = tuple(tags)
        self.concurrency_limit = concurrency_limit
        if not isinstance(pool, str) or not pool:
            raise ValueError(f"task {self.name!r}: pool must be a non-empty string")
        self.pool = pool
        if not isinstance(mapped, bool):
            raise ValueError(f"task {self.name!r}: mapped must be True or False, got {mapped!r}")
        self.mapped = mapped
        if not isinstance(any_version, bool):
            raise ValueError(f"task {self.name!r}: any_version must be True or False")
        self.any_version = any_version
        if any_version:
            import structlog

            structlog.get_logger("fleetflow.task").warning(
                "task_any_version",
                task_name=self.name,
                message="@task(any_version=True): its task runs go to workers with any "
                "version of its code; results may come from code other than this",
            )
        self.is_async = inspect.iscoroutinefunction(fn)
        self.signature = inspect.signature(fn)
        self.fingerprint = _identity.fingerprint(self.name, fn, self.signature)
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]
        _identity.register(self)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        """A task defined in a class body binds like a method (see :class:`BoundTask`)."""
        if instance is None or not BoundTask.defined_in(self.fn, type(instance)):
            return self
        return BoundTask(self, instance)

    def with_options(self, **options: Any) -> Task[P, R]:
        """Return a copy with some options replaced (same keywords as :func:`task`).

        Raises:
            ValueError: an option is out of range, or ``retry_on`` changes while
                the name stays (workers apply the retry_on of the task they load).
        """
        merged: dict[str, Any] = {
            "name": self.name,
            "resources": self.resources,
            "retries": self.retries,
            "retry_delay_seconds": self.retry_delay_seconds,
            "retry_backoff": self.retry_backoff,
            "retry_max_delay_seconds": self.retry_max_delay_seconds,
            "retry_jitter": self.retry_jitter,
            "retry_on": self.retry_on,
            "timeout_seconds": self.timeout_seconds,
            "tags": self.tags,
            "concurrency_limit": self.concurrency_limit,
            "pool": self.pool,
            "mapped": self.mapped,
            "any_version": self.any_version,
        }
        merged.update(options)
        retry_on = merged["retry_on"]
        if not (retry_on is None or isinstance(retry_on, tuple)):
            retry_on = (retry_on,)
        if retry_on != self.retry_on and merged["name"] == self.name:
            # Workers decide which exceptions are retried with the task they
            # loaded under the name; a copy's own retry_on would be ignored.
            raise ValueError(
                f"task {self.name!r}: with_options cannot change retry_on under the same "
                "name (workers apply the retry_on of the task they load by name); define "
                "another task with @task(name=..., retry_on=...) where the module is imported"
            )
        return Task(self.fn, **merged)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        recorder = _recorder.get()
        if recorder is None:
            if self.mapped:
                return self._map_here(args, kwargs)  # type: ignore[return-value]
            return self.fn(*args, **kwargs)
        return recorder.add(self, args, kwargs, map_=self.mapped)  # type: ignore[return-value]

    def _map_here(self, args: tuple, kwargs: dict) -> list[Any]:
        """A ``mapped=True`` task called outside a flow: the map, run in this process.

        The same rules as a recorded map: lists, tuples, ranges and other
        iterables are mapped, :class:`unmapped` values, strings, dicts, sets and
        everything else are passed whole, and the mapped arguments must have
        equal lengths.
        """
        where = f"{self.name}()"
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{where}: {exc}") from None
        mapped: dict[str, list[Any]] = {}
        whole: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            kind = self.signature.parameters[name].kind
            variadic = kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
            items = None if variadic or isinstance(value, unmapped) else map_items(value)
            if items is not None:
                mapped[name] = list(items)
            else:
                whole[name] = value.value if isinstance(value, unmapped) else value
        if not mapped:
            raise TypeError(f"{where}: {nothing_mapped(self.signature)}")
        lengths = {name: len(items) for name, items in mapped.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{where}: mapped arguments differ in length: {lengths}")
        results = []
        for i in range(next(iter(lengths.values()))):
            bound.arguments.update(whole)
            bound.arguments.update({name: items[i] for name, items in mapped.items()})
            results.append(self.fn(*bound.args, **bound.kwargs))
        return results

    def map(self, *args: Any, **kwargs: Any) -> TaskFuture:
        """Fan out: one task run per item of the mapped arguments.

        Every argument that is a list, tuple, range, other iterable (a
        generator, an iterator, a numpy array) or the future of another task
        is mapped (iterated); strings, bytes, dicts, sets, other values, and
        anything wrapped in :class:`unmapped`, are passed whole to each child
        (:func:`fleetflow._task_rules.map_items`). Mapped arguments must have
        equal lengths.

        Returns:
            A map future; pass it to a task for fan-in or to ``map`` again for
            an item-by-item pipeline.

        Raises:
            RuntimeError: called outside a flow function.
            TypeError: no argument is mapped.
            ValueError: literal mapped arguments differ in length.
        """
        recorder = _recorder.get()
        if recorder is None:
            raise RuntimeError(
                f"{self.name}.map() records a fan-out and only works inside a @flow function"
            )
        return recorder.add(self, args, kwargs, map_=True)


class TaskFuture:
    """Stands for a task's result inside a flow function while it is recorded."""

    __slots__ = ("_recorder", "node", "is_map", "task_name")

    def __init__(self, recorder: _FlowRecorder, node: int, is_map: bool, task_name: str) -> None:
        self._recorder = recorder
        self.node = node
        self.is_map = is_map
        self.task_name = task_name

    def __repr__(self) -> str:
        kind = "map " if self.is_map else ""
        return f"<TaskFuture {kind}node={self.node} task={self.task_name}>"

    def _no_value(self, *_: Any) -> Any:
        raise TypeError(
            f"the result of {self.task_name} is not known while the flow is recorded; "
            "pass it to another task instead of inspecting it in the flow function"
        )

    __bool__ = __iter__ = __len__ = __getitem__ = __int__ = __float__ = _no_value  # type: ignore[assignment]


class _FlowRecorder:
    """Collects TaskNode messages while a flow function runs."""

    def __init__(self) -> None:
        self.nodes: list[common_pb2.TaskNode] = []

    def _check_future(self, future: TaskFuture, where: str) -> None:
        if future._recorder is not self:
            raise ValueError(f"{where}: a future from another flow run cannot be used here")

    def add(self, task: Task, args: tuple, kwargs: dict, *, map_: bool) -> TaskFuture:
        where = f"{task.name}{'.map' if map_ else ''}()"
        try:
            bound = task.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{where}: {exc}") from None
        node = common_pb2.TaskNode(
            task_name=task.name,
            map=map_,
            resources=common_pb2.Resources(amounts=task.resources),
            retry=_retry_policy(task),
            timeout_seconds=task.timeout_seconds or 0.0,
            tags=task.tags,
            concurrency_limit=task.concurrency_limit or 0,
            pool=task.pool,
            fingerprint="" if task.any_version else task.fingerprint,
        )
        literal_lengths: dict[str, int] = {}
        for name, value in bound.arguments.items():
            arg = node.args.add(name=name)
            kind = task.signature.parameters[name].kind
            variadic = kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
            mappable = map_ and not variadic and not isinstance(value, unmapped)
            if mappable and isinstance(value, TaskFuture):
                arg.mapped = True
                self._check_future(value, where)
                arg.node = value.node
                continue
            items = map_items(value) if mappable else None
            if items is not None:
                arg.mapped = True
                _reject_mapped_futures(items, where, name)
                try:
                    payloads = [dumps(item) for item in items]
                except Exception:
                    for item in items:  # find the item that does not pickle, and name it
                        dumps_arg(item, where, name)
                    raise
                arg.literal_items.items.extend(payloads)
                literal_lengths[name] = len(items)
                continue
            if isinstance(value, unmapped):
                value = value.value
            if isinstance(value, TaskFuture):
                self._check_future(value, where)
                arg.node = value.node
            elif (
                isinstance(value, (list, tuple))
                and value
                and all(isinstance(v, TaskFuture) for v in value)
            ):
                for future in value:
                    self._check_future(future, where)
                    if future.is_map:
                        raise TypeError(
                            f"{where}: argument {name!r} lists the map result of "
                            f"{future.task_name}; pass that map future directly for fan-in"
                        )
                arg.nodes.nodes.extend(f.node for f in value)
            else:
                _reject_futures(value, where, name)
                arg.literal = dumps_arg(value, where, name)
        if map_:
            if not any(a.mapped for a in node.args):
                raise TypeError(f"{where}: {nothing_mapped(task.signature)}")
            if len(set(literal_lengths.values())) > 1:
                raise ValueError(f"{where}: mapped arguments differ in length: {literal_lengths}")
        self.nodes.append(node)
        return TaskFuture(self, len(self.nodes) - 1, map_, task.name)


def _retry_policy(task: Task) -> common_pb2.RetryPolicy:
    delays = task.retry_delay_seconds
    policy = common_pb2.RetryPolicy(
        retries=task.retries,
        backoff=task.retry_backoff,
        max_delay_seconds=task.retry_max_delay_seconds or 0.0,
        jitter=task.retry_jitter,
    )
    if isinstance(delays, list):
        policy.retry_delays_seconds.extend(delays)
        policy.retry_delay_seconds = delays[0]
    else:
        policy.retry_delay_seconds = delays
    return policy


def _reject_mapped_futures(items: Any, where: str, name: str) -> None:
    """:func:`_reject_futures` for a mapped list, saying what to do with a list of futures."""
    try:
        _reject_futures(items, where, name)
    except TypeError:
        if any(isinstance(item, TaskFuture) for item in items):
            raise TypeError(
                f"{where}: argument {name!r} is a list of task futures; a map iterates "
                "a list of values or one task's result: pass the futures to a task "
                "that returns them as a list, and map over that task's future"
            ) from None
        raise


def _reject_futures(value: Any, where: str, name: str) -> None:
    """Refuse futures nested in containers: they would be pickled, not resolved."""
    stack = [value]
    seen = 0
    while stack and seen < 10_000:
        item = stack.pop()
        seen += 1
        if isinstance(item, TaskFuture):
            raise TypeError(
                f"{where}: argument {name!r} nests the future of {item.task_name} inside a "
                "container; pass futures directly, or a flat list of them"
            )
        if isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())


class Flow(Generic[P, R]):
    """A flow function whose task calls are recorded into a graph; see :func:`flow`.

    Attributes:
        fn: The user's flow function.
        name: Display name; defaults to ``fn.__name__``.
    """

    def __init__(
        self, fn: Callable[P, R], *, name: str | None = None, timeout_seconds: float | None = None
    ) -> None:
        if timeout_seconds is not None:
            timeout_seconds = check_seconds(
                f"flow {name or fn.__name__!r}", "timeout_seconds", timeout_seconds, positive=True
            )
        self.fn = fn
        self.name = name or fn.__name__
        #: The whole flow run's time limit, seconds, or None.
        self.timeout_seconds = timeout_seconds
        self.signature = inspect.signature(fn)
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"<Flow {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        raise TypeError(
            f"flow {self.name!r} runs on a fleet: submit it with fleetflow.Client(...).submit("
            f"{self.name}, ...) or `fleetflow run FILE:{self.name}`"
        )

    def build(self, *args: Any, **kwargs: Any) -> common_pb2.FlowSpec:
        """Record the flow function with these parameters into a FlowSpec.

        Args:
            *args: Positional flow parameters.
            **kwargs: Keyword flow parameters; defaults are applied.

        Returns:
            The graph as a ``FlowSpec`` message (nodes in topological order).

        Raises:
            TypeError: the parameters do not fit the signature, or task futures
                are used in ways the recorder cannot resolve.
        """
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"flow {self.name!r}: {exc}") from None
        bound.apply_defaults()
        recorder = _FlowRecorder()
        token = _recorder.set(recorder)
        try:
            out = self.fn(*bound.args, **bound.kwargs)
        finally:
            _recorder.reset(token)
        if inspect.iscoroutine(out):
            out.close()
            raise TypeError(f"flow {self.name!r}: flow functions are plain `def`, not `async def`")
        spec = common_pb2.FlowSpec(
            name=self.name, nodes=recorder.nodes, timeout_seconds=self.timeout_seconds or 0.0
        )
        if isinstance(out, TaskFuture):
            spec.output_node = out.node
        else:
            _reject_futures(out, f"flow {self.name!r}", "return value")
            spec.output_literal = dumps(out)
        record_parameters(spec, dict(bound.arguments))
        return spec


@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...
@overload
def task(
    *,
    name: str | None = ...,
    resources: Mapping[str, object] | None = ...,
    retries: int = ...,
    retry_delay_seconds: float | Sequence[float] = ...,
    retry_backoff: float = ...,
    retry_max_delay_seconds: float | None = ...,
    retry_jitter: float = ...,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = ...,
    timeout_seconds: float | None = ...,
    tags: Sequence[str] = ...,
    concurrency_limit: int | None = ...,
    pool: str = ...,
    mapped: bool = ...,
    any_version: bool = ...,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...
def task(fn: Callable[P, R] | None = None, /, **options: Any) -> Any:
    """Declare a task: ``@task`` or ``@task(resources=..., retries=..., ...)``.

    Args:
        fn: The function, when used bare as ``@task``.
        **options: ``name`` (str), ``resources`` (``{name: number | quantity}``,
            default ``{"cpu": 1}``), ``retries`` (int >= 0, default 0),
            ``retry_delay_seconds`` (seconds, or a list with one per retry),
            ``retry_backoff`` (>= 1, default 1), ``retry_max_delay_seconds``,
            ``retry_jitter`` (0..1, default 0.2), ``retry_on`` (exception types),
            ``timeout_seconds`` (seconds or None), ``tags`` (concurrency-limit
            tags), ``concurrency_limit`` (int >= 1 or None), ``pool`` (worker
            pool, default ``"default"``), ``mapped`` (calling the task maps it
            over its list, tuple, range and future arguments, exactly as
            ``.map()``; default False), ``any_version`` (run on workers with
            any version of the task's code; default False: only workers
            whose fingerprint matches). See :class:`Task`.

    Raises:
        ValueError: an option is out of range.
        fleetflow.resources.InvalidResourceError: a resource amount is invalid.
    """
    if fn is not None:
        return Task(fn, **options)
    return lambda f: Task(f, **options)


def flow(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    timeout_seconds: float | None = None,
) -> Any:
    """Declare a flow: ``@flow`` or ``@flow(name=..., timeout_seconds=...)``.

    Args:
        fn: The flow function, when used bare as ``@flow``.
        name: Display name (default: the function's name).
        timeout_seconds: The whole flow run's time limit in seconds; when it
            passes, what has not ended is cancelled and the run ends FAILED.

    Raises:
        ValueError: ``timeout_seconds`` is not positive.
    """
    if fn is not None:
        return Flow(fn, name=name, timeout_seconds=timeout_seconds)
    return lambda f: Flow(f, name=name, timeout_seconds=timeout_seconds)


def find_tasks(namespace: Mapping[str, Any]) -> dict[str, Task]:
    """Return the tasks defined in a module namespace, by registered name."""
    return {v.name: v for v in namespace.values() if isinstance(v, Task)}


def is_sequence_result(value: Any) -> bool:
    """Whether a result can be split for a downstream map (not str/bytes/dict)."""
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray))
