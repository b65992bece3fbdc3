"""The rules a task's options and a map's arguments follow, shared by the recorder and workers.

* :func:`check_seconds`, :func:`check_number`: a ``@task`` option is checked
  when the task is defined, with an error naming the task, the option and the
  rule, so a NaN, an infinity or a string fails at the decorator, not at submit.
* :func:`map_items`: what a map iterates for one argument: the same rule for a
  literal argument (the recorder and ``mapped=True`` outside a flow) and for an
  upstream task's result a worker splits.
* :func:`collect_generator`: a generator task's result is the list of what it
  yields (a generator does not pickle).
* :class:`unmapped`, :class:`BoundTask` (a task defined in a class body is a
  method), :func:`dumps_arg` and :func:`record_parameters` (pickling what a
  flow records, naming what does not pickle).
"""

from __future__ import annotations

import asyncio
import inspect
import io
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleetflow.api.v1 import common_pb2
from fleetflow.serde import dumps

__all__ = [
    "BoundTask",
    "MAX_MAP_ITEMS",
    "MAX_SECONDS",
    "check_number",
    "check_seconds",
    "collect_generator",
    "dumps_arg",
    "map_items",
    "nothing_mapped",
    "NOT_MAPPED",
    "PARAMETER_INLINE_BYTES",
    "record_parameters",
    "unmapped",
]

#: Longest time option of a task (timeout, retry delays, their cap), seconds:
#: the coordinator refuses more (README "Limits", ``seconds``).
MAX_SECONDS = 366 * 86400.0
#: Most items one map iterates from an iterator or generator (the coordinator's
#: ``literal_items`` limit); a longer, or endless, one is refused, not drained.
MAX_MAP_ITEMS = 1_000_000

#: Iterable values a map passes whole: text and bytes (their characters are
#: not items), mappings (iterating a dict gives only its keys), sets (no
#: order, so results could not follow the input's) and open files.
NOT_MAPPED = (str, bytes, bytearray, memoryview, Mapping, set, frozenset, io.IOBase)


def check_number(owner: str, field: str, value: Any, *, low: float, high: float) -> float:
    """A real, finite number in ``[low, high]`` as a float.

    Raises:
        ValueError: naming ``owner`` (``task 'mod:f'``), ``field`` and the rule.
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not low <= value <= high:
        raise ValueError(
            f"{owner}: {field} must be a finite number in [{low:g}, {high:g}], got {value!r}"
        )
    return float(value)


def check_seconds(owner: str, field: str, value: Any, *, positive: bool = False) -> float:
    """A duration in seconds: finite, >= 0 (> 0 when ``positive``), at most 366 days.

    Raises:
        ValueError: naming ``owner``, ``field`` and the rule.
    """
    seconds = check_number(owner, field, value, low=0.0, high=MAX_SECONDS)
    if positive and seconds <= 0:
        raise ValueError(f"{owner}: {field} must be > 0 seconds or None, got {value!r}")
    return seconds


def map_items(
    value: Any, limit: int | None = MAX_MAP_ITEMS
) -> list[Any] | tuple[Any, ...] | range | None:
    """The items a map iterates for ``value``, or None when ``value`` is passed whole.

    Lists, tuples and ranges are mapped as they are; any other iterable (a
    generator, an iterator, ``zip(...)``, a dict view, a numpy array or pandas
    Series, a class with ``__iter__``) as the list of its items. Strings,
    bytes, dicts and other mappings, sets and files are passed whole
    (:data:`NOT_MAPPED`); so is anything that does not iterate.

    Args:
        value: A literal argument, or the result of a task a map iterates.
        limit: Most items read from an iterator (None: all; a worker splitting
            a result, whose list would have no limit either).

    Raises:
        ValueError: an iterator yields more than ``limit`` items.
    """
    if isinstance(value, (list, tuple, range)):
        return value
    if isinstance(value, NOT_MAPPED):
        return None
    try:
        iterator = iter(value)
    except TypeError:  # not iterable (or a future, which refuses iteration)
        return None
    if limit is None:
        return list(iterator)
    items = list(itertools.islice(iterator, limit + 1))
    if len(items) > limit:
        raise ValueError(
            f"a mapped {type(value).__name__} yields more than {limit:,} items "
            "(the literal_items limit)"
        )
    return items


def collect_generator(result: Any) -> Any:
    """The list of what a generator (or async generator) yields; any other value as it is.

    A task written as a generator function returns a generator, which does
    not pickle: its result is the list of its items instead, so a downstream
    map or fan-in gets them. Runs where the task runs (its timeout covers it).
    """
    if inspect.isgenerator(result):
        return list(result)
    if inspect.isasyncgen(result):
        return asyncio.run(_collect_async(result))
    return result


async def _collect_async(agen: Any) -> list[Any]:
    return [item async for item in agen]


@dataclass(frozen=True)
class unmapped:  # noqa: N801 - lower case like Prefect's and Dask's marker
    """Wrap an argument of ``task.map(...)`` so it is passed whole to every child."""

    value: Any


def dumps_arg(value: Any, where: str, name: str) -> bytes:
    """Pickle an argument, or say which argument of which task does not pickle."""
    try:
        return dumps(value)
    except Exception as exc:
        raise TypeError(
            f"{where}: argument {name!r} ({type(value).__name__}) cannot be pickled: {exc}"
        ) from exc


#: A parameter whose pickle is larger than this is not kept in
#: ``FlowSpec.parameters`` (bytes; the default inline limit of the result store).
PARAMETER_INLINE_BYTES = 64 << 10


def record_parameters(spec: common_pb2.FlowSpec, params: dict[str, Any]) -> None:
    """Record the flow's parameters for display, each large one only once.

    Small parameters go into ``spec.parameters`` (one pickled dict). A large
    one gets a placeholder in ``spec.stored_parameters`` (its size and
    checksum, no key): when the flow is submitted, it is pointed at the
    stored argument with the same bytes (a task that receives the parameter
    as it is), so the parameter does not travel a second time.
    """
    from fleetflow.store.codec import checksum

    small: dict[str, Any] = {}
    for name, value in params.items():
        data = dumps_arg(value, f"flow {spec.name!r}", name)
        if len(data) <= PARAMETER_INLINE_BYTES:
            small[name] = value
        else:
            placeholder = spec.stored_parameters[name]
            placeholder.size = len(data)
            placeholder.checksum = checksum([data])
    spec.parameters = dumps(small)


class BoundTask:
    """A task defined in a class body, reached through an instance: a method.

    ``Pipeline().step(x)`` passes the instance as the task's first parameter,
    as a plain method would: in a flow it records ``step(self=instance, x=x)``
    (the instance is pickled like any argument), and ``.map(xs)`` passes the
    instance whole to every task run. Outside a flow it calls the function.
    A task that is only assigned to a class attribute (defined elsewhere) is
    not bound. The worker runs it by its name (``module:Class.step``).

    Attributes:
        task: The :class:`~fleetflow.Task`.
        instance: The instance it is bound to.
    """

    def __init__(self, task: Any, instance: Any) -> None:
        self.task = task
        self.instance = instance

    @staticmethod
    def defined_in(fn: Any, cls: type) -> bool:
        """Whether ``fn`` was defined in the body of ``cls`` or one of its bases."""
        owner = (getattr(fn, "__qualname__", "") or "").rpartition(".")[0]
        return any(
            getattr(k, "__qualname__", None) == owner
            and getattr(k, "__module__", None) == getattr(fn, "__module__", None)
            for k in cls.__mro__
        )

    def __repr__(self) -> str:
        return f"<bound Task {self.task.name} of {self.instance!r}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.task.mapped:
            return self.task(unmapped(self.instance), *args, **kwargs)
        return self.task(self.instance, *args, **kwargs)

    def map(self, *args: Any, **kwargs: Any) -> Any:
        """``task.map`` with the instance passed whole to every task run."""
        return self.task.map(unmapped(self.instance), *args, **kwargs)

    def with_options(self, **options: Any) -> BoundTask:
        """The task with some options replaced, bound to the same instance."""
        return BoundTask(self.task.with_options(**options), self.instance)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)


def nothing_mapped(signature: inspect.Signature) -> str:
    """Why a map has nothing to map over, for a task with ``signature``."""
    text = (
        "no argument to map over; pass a list, tuple, range, other iterable or task future "
        "(str, bytes, dicts and sets are passed whole; wrap constants in fleetflow.unmapped)"
    )
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in signature.parameters.values()):
        text += "; *args and **kwargs are passed whole: map over a named parameter"
    return text
