"""State a task process keeps between attempts: :func:`keep`.

A worker runs plain ``def`` tasks in long-lived task processes and sends an
attempt to the process that last ran the same task when one is free (and,
for a GPU task, whose process already uses the devices it gets). Whatever a
process loaded stays: imported modules, module-level globals, a CUDA context.
:func:`keep` is the documented way to hold expensive state there, such as a
loaded model::

    @fleetflow.task(resources={"gpu": 1})
    def embed(texts: list[str]) -> list[list[float]]:
        model = fleetflow.keep("embedder", lambda: load_model().to("cuda"))
        return model(texts)

The first attempt in a process builds the value; later attempts in the same
process get the same object at once. A process that is killed (timeout,
memory limit, cancellation) or that dies takes its values with it; the next
attempt builds them again in the new process. Values are never shared across
processes, and ``async def`` tasks (which run in the worker's own process)
share one set.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

__all__ = ["keep", "forget", "kept"]

T = TypeVar("T")

#: {key: value} kept by this process.
_KEPT: dict[Hashable, Any] = {}
#: {key: lock held while its value is built}
_BUILDING: dict[Hashable, threading.Lock] = {}
_LOCK = threading.Lock()
#: Keys this thread is building now (a factory asking for its own key).
_MINE = threading.local()


def keep(key: Hashable, factory: Callable[[], T]) -> T:
    """The value this process keeps under ``key``, built by ``factory()`` the first time.

    Args:
        key: Names the value (e.g. ``"model"`` or ``("model", "v2")``).
        factory: Builds it; called once per process and key, unless it raises
            (then the next call tries again).

    Returns:
        The kept value.

    Raises:
        RuntimeError: ``factory`` itself asks for ``key`` (it would wait for
            itself for ever).
        Exception: whatever ``factory`` raises (nothing is kept then).
    """
    try:
        return _KEPT[key]  # type: ignore[no-any-return]
    except KeyError:
        pass
    building: set[Hashable] = _MINE.__dict__.setdefault("keys", set())
    if key in building:
        raise RuntimeError(f"fleetflow.keep({key!r}): its factory asks for {key!r} itself")
    with _LOCK:
        lock = _BUILDING.setdefault(key, threading.Lock())
    with lock:  # one build per key, even from threads the task starts
        if key not in _KEPT:
            building.add(key)
            try:
                _KEPT[key] = factory()
            finally:
                building.discard(key)
        return _KEPT[key]  # type: ignore[no-any-return]


def forget(key: Hashable | None = None) -> None:
    """Drop the value kept under ``key`` (None: every value) so the next :func:`keep` rebuilds."""
    with _LOCK:
        if key is None:
            _KEPT.clear()
        else:
            _KEPT.pop(key, None)


def kept() -> list[Hashable]:
    """The keys this process keeps a value under."""
    return list(_KEPT)
