"""The GPU devices recent attempts held and what they used of them, for ``inspect``.

Device ids are local to a worker (the worker assigns them; the core only
counts the ``gpu`` quantity), so the coordinator learns an attempt's devices
from its outcome (``Outcome.gpu_devices``) and keeps them here, beside the
core, for the newest :data:`MAX_ATTEMPTS` attempts. Nothing is persisted: after
a coordinator restart, earlier attempts show no devices.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

__all__ = ["AttemptGpu", "AttemptGpuBook", "MAX_ATTEMPTS", "WorkerGpus"]

#: Attempts whose devices are kept (the oldest forgotten first).
MAX_ATTEMPTS = 100_000


@dataclass(frozen=True, slots=True)
class AttemptGpu:
    """One attempt's devices and measured GPU use.

    Attributes:
        devices: As its ``CUDA_VISIBLE_DEVICES`` listed them.
        peak_gpu_memory_bytes: Peak GPU memory of its processes, bytes (0: not measured).
        gpu_utilization_percent: Mean SM utilisation, percent (None: not measured).
    """

    devices: tuple[str, ...]
    peak_gpu_memory_bytes: float = 0.0
    gpu_utilization_percent: float | None = None


class WorkerGpus:
    """``{worker_id: ("0: NVIDIA H200 (141 GiB)", ...)}`` as workers registered them.

    For ``fleetflow workers`` and the dashboard only (the core counts ``gpu``);
    departed workers are forgotten once the map holds many more than are connected.
    """

    def __init__(self) -> None:
        self._by_worker: dict[str, tuple[str, ...]] = {}

    def register(self, worker_id: str, gpus: Any, connected: Any) -> None:
        """Keep a worker's GPU lines; ``connected`` is the core's ``{worker_id: ...}``."""
        if gpus:
            self._by_worker[worker_id] = tuple(gpus)
        else:
            self._by_worker.pop(worker_id, None)
        if len(self._by_worker) > 2 * len(connected) + 1000:
            self._by_worker = {w: g for w, g in self._by_worker.items() if w in connected}

    def of(self, worker_id: str) -> tuple[str, ...]:
        """The worker's GPU lines (empty: none)."""
        return self._by_worker.get(worker_id, ())


class AttemptGpuBook:
    """``{(task_run_id, attempt): AttemptGpu}`` for the newest attempts.

    Args:
        max_attempts: Entries kept.
    """

    def __init__(self, max_attempts: int = MAX_ATTEMPTS) -> None:
        self.max_attempts = max_attempts
        self._by_attempt: OrderedDict[tuple[int, int], AttemptGpu] = OrderedDict()

    def record(self, outcome: Any) -> None:
        """Keep the devices of an accepted ``worker_service_pb2.Outcome``."""
        util = (
            outcome.gpu_utilization_percent if outcome.HasField("gpu_utilization_percent") else None
        )
        key = (outcome.task_run_id, outcome.attempt)
        self._by_attempt[key] = AttemptGpu(
            tuple(outcome.gpu_devices), outcome.peak_gpu_memory_bytes, util
        )
        self._by_attempt.move_to_end(key)
        while len(self._by_attempt) > self.max_attempts:
            self._by_attempt.popitem(last=False)

    def get(self, task_run_id: int, attempt: int) -> AttemptGpu | None:
        """The attempt's devices, or None (none held, or forgotten)."""
        return self._by_attempt.get((task_run_id, attempt))

    def __len__(self) -> int:
        return len(self._by_attempt)
