"""Measure what one attempt costs its task process (psutil), and the memory limit rule."""

from __future__ import annotations

from dataclasses import dataclass

import psutil

__all__ = ["AttemptUsage", "ProcessMeter", "memory_limit_bytes"]


@dataclass(frozen=True, slots=True)
class AttemptUsage:
    """What an attempt used; zeros mean "not measured".

    Attributes:
        cpu_seconds: User plus system CPU time, including children the task
            waited for, seconds.
        peak_memory_bytes: Peak resident size of the task process, bytes.
        peak_gpu_memory_bytes: Peak GPU memory of the task process and its
            children on the attempt's devices, bytes (0: none or not measured).
        gpu_utilization_percent: Mean SM utilisation of those processes on
            those devices, percent (None: not measured).
    """

    cpu_seconds: float = 0.0
    peak_memory_bytes: float = 0.0
    peak_gpu_memory_bytes: float = 0.0
    gpu_utilization_percent: float | None = None


def memory_limit_bytes(request_bytes: float, margin_fraction: float, margin_bytes: float) -> float:
    """The resident size above which a task process is killed, bytes (0: no limit).

    The limit is ``request * (1 + margin_fraction) + margin_bytes``: the
    fraction absorbs allocator slack and the fixed part covers the
    interpreter and the modules every task process imports (about 30-60 MB).

    Args:
        request_bytes: The task's ``memory`` request, bytes; 0 means none.
        margin_fraction: Relative margin, e.g. 0.2 for 20 %.
        margin_bytes: Fixed margin, bytes.
    """
    if request_bytes <= 0:
        return 0.0
    return request_bytes * (1.0 + margin_fraction) + margin_bytes


def _cpu_total(times: psutil._common.pcputimes) -> float:  # type: ignore[name-defined]
    return float(
        times.user
        + times.system
        + getattr(times, "children_user", 0.0)
        + getattr(times, "children_system", 0.0)
    )


def _peak_rss(pid: int) -> float:
    """``VmHWM`` of a process from ``/proc`` (bytes), or 0 where unavailable."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return float(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return 0.0


class ProcessMeter:
    """Samples one task process during one attempt.

    Created when the attempt starts; :meth:`sample` is called periodically
    and once more before the process is killed or after it answered. The
    peak is the largest of the sampled resident sizes and the kernel's own
    high-water mark (``VmHWM``, which the task process resets at the start
    of every attempt), so short spikes between samples are not missed on
    Linux.

    Args:
        process: The task process.
    """

    def __init__(self, process: psutil.Process) -> None:
        self._process = process
        self._cpu_start = self._cpu_now() or 0.0
        self._cpu_last = self._cpu_start
        #: Largest resident size seen so far, bytes.
        self.rss_peak = 0.0
        #: Resident size at the last sample, bytes.
        self.rss = 0.0

    def _cpu_now(self) -> float | None:
        try:
            return _cpu_total(self._process.cpu_times())
        except psutil.Error:
            return None

    def sample(self, *, high_water_mark: bool = False) -> float:
        """Take a sample; returns the resident size now, bytes (0 once the process is gone).

        Args:
            high_water_mark: Also read the kernel's peak (``VmHWM``); do this
                only once the attempt is known to have started in the process.
        """
        try:
            with self._process.oneshot():
                self.rss = float(self._process.memory_info().rss)
                self._cpu_last = _cpu_total(self._process.cpu_times())
        except psutil.Error:
            self.rss = 0.0
            return 0.0
        self.rss_peak = max(self.rss_peak, self.rss)
        if high_water_mark:
            self.rss_peak = max(self.rss_peak, _peak_rss(self._process.pid))
        return self.rss

    def usage(self) -> AttemptUsage:
        """The attempt's usage as of the last sample."""
        return AttemptUsage(max(0.0, self._cpu_last - self._cpu_start), self.rss_peak)
