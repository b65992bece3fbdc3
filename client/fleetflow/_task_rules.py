"""The rules a task's options and a map's arguments follow, shared by the recorder and workers.

* :func:`check_seconds`, :func:`check_number`: a ``@task`` option is checked
  when the task is defined, with an error naming the task, the option and the
  rule, so a NaN, an infinity or a string fails at the decorator, not at submit.
* :func:`map_items`: what a map iterates for one argument: the same rule for a
  literal argument (the recorder and ``mapped=True`` outside a flow) and for an
  upstream task's result a worker splits.
* :func:`collect_generator`: a generator task's result is the list of what it
  yields (a generator does not pickle).
"""

from __future__ import annotations

import asyncio
import inspect
import io
import itertools
import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "MAX_MAP_ITEMS",
    "MAX_SECONDS",
    "check_number",
    "check_seconds",
    "collect_generator",
    "map_items",
    "NOT_MAPPED",
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
