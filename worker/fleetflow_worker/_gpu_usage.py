"""What GPU memory and compute an attempt's processes use, sampled through NVML.

The worker keeps NVML open for its whole life (:class:`GpuSampler`), and the
pool gives each GPU attempt a :class:`GpuMeter` that samples the attempt's
task process and its children on the attempt's devices: at every
``sample_interval_s`` while it runs, and once more when its result arrives
(so an attempt shorter than one sample is measured too):

* **peak GPU memory**: the largest sum of ``usedGpuMemory`` NVML reports
  for those processes (``nvmlDeviceGetComputeRunningProcesses``), bytes. A
  warm process keeps its CUDA context and cached allocations between
  attempts, so this is what the process holds while the attempt runs;
* **utilisation**: the mean, over samples, of the SM utilisation NVML
  reports for those processes (``nvmlDeviceGetProcessUtilization``, summed
  over the processes, averaged over the attempt's devices), percent.

NVML reports host process ids: in a container without the host's PID
namespace no process matches and nothing is measured (zeros, no figure).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Sequence
from typing import Any

import psutil
import structlog

from fleetflow_worker._usage import AttemptUsage
from fleetflow_worker.gpus import Gpu, _bindings

__all__ = ["GpuSampler", "GpuMeter"]

log = structlog.get_logger()


class GpuSampler:
    """NVML, open from :meth:`open` to :meth:`close`, over the worker's devices.

    Args:
        devices: The devices the worker offers; those NVML knows (index >= 0)
            can be sampled.
    """

    def __init__(self, devices: Sequence[Gpu]) -> None:
        #: {device id: NVML index}
        self._index = {d.id: d.index for d in devices if d.index >= 0}
        self._pynvml: Any = None
        #: {NVML index: handle}
        self._handles: dict[int, Any] = {}

    def open(self) -> bool:
        """Initialise NVML; False (and no sampling) when it is not available."""
        if not self._index:
            return False
        pynvml = _bindings()
        if pynvml is None:
            return False
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - no GPU figures, no failure
            log.warning("gpu_sampling_unavailable", error=f"{type(exc).__name__}: {exc}")
            return False
        try:
            self._handles = {
                i: pynvml.nvmlDeviceGetHandleByIndex(i) for i in set(self._index.values())
            }
        except Exception as exc:  # noqa: BLE001 - no GPU figures, no failure
            log.warning("gpu_sampling_unavailable", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(Exception):
                pynvml.nvmlShutdown()  # NVML counts inits: pair the one that succeeded
            return False
        self._pynvml = pynvml
        return True

    def indexes(self, ids: Iterable[str]) -> list[int]:
        """NVML indexes of the devices ``ids`` that can be sampled."""
        return [self._index[i] for i in ids if i in self._index]

    @property
    def active(self) -> bool:
        """NVML is open."""
        return self._pynvml is not None

    def close(self) -> None:
        """Shut NVML down (idempotent)."""
        pynvml, self._pynvml = self._pynvml, None
        if pynvml is not None:
            try:
                pynvml.nvmlShutdown()
            except Exception:  # noqa: BLE001, S110 - shutting down anyway
                pass

    def sample(
        self, pids: set[int], ids: Iterable[str], last_seen: dict[int, int]
    ) -> tuple[float, dict[int, tuple[float, int]]]:
        """GPU memory and SM utilisation of ``pids`` on the devices ``ids``.

        Args:
            pids: The processes to count.
            ids: Device ids (as in ``CUDA_VISIBLE_DEVICES``).
            last_seen: ``{NVML index: timestamp in microseconds}`` of the
                newest utilisation sample already counted; updated.

        Returns:
            ``(memory bytes, {NVML index: (percent summed over the new sample
            times, number of sample times)})``. NVML samples at its own pace,
            so a device with no new sample gives ``(0.0, 0)``: no figure yet,
            not 0 %; a device NVML gave no answer for is left out.
        """
        pynvml = self._pynvml
        utils: dict[int, tuple[float, int]] = {}
        if pynvml is None:
            return 0.0, utils
        memory = 0.0
        for device_id in ids:
            index = self._index.get(device_id)
            handle = self._handles.get(index) if index is not None else None
            if handle is None:
                continue
            try:
                for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if proc.pid in pids and proc.usedGpuMemory:
                        memory += float(proc.usedGpuMemory)
            except Exception:  # noqa: BLE001, S112 - this device gives no figure
                continue
            util = self._utilisation(pynvml, handle, index, pids, last_seen)  # type: ignore[arg-type]
            if util is not None:
                utils[index] = util  # type: ignore[index]
        return memory, utils

    @staticmethod
    def _utilisation(
        pynvml: Any, handle: Any, index: int, pids: set[int], last_seen: dict[int, int]
    ) -> tuple[float, int] | None:
        since = last_seen.get(index, 0)
        try:
            samples = pynvml.nvmlDeviceGetProcessUtilization(handle, since)
        except Exception as exc:  # noqa: BLE001
            if type(exc).__name__ == "NVMLError_NotFound":
                return 0.0, 0  # no sample since then (idle, or not sampled yet)
            return None
        newest = since
        at: dict[int, float] = {}  # {sample time: our processes' summed percent}
        for s in samples:
            stamp = int(s.timeStamp)
            newest = max(newest, stamp)
            at[stamp] = at.get(stamp, 0.0) + (float(s.smUtil) if s.pid in pids else 0.0)
        last_seen[index] = newest
        return sum(min(100.0, v) for v in at.values()), len(at)


class GpuMeter:
    """Samples one GPU attempt's processes (see the module docstring).

    Args:
        sampler: The worker's open NVML.
        ids: The attempt's devices.
    """

    def __init__(self, sampler: GpuSampler, ids: Sequence[str]) -> None:
        self.sampler = sampler
        self.ids = tuple(ids)
        self.process: psutil.Process | None = None
        #: Largest GPU memory seen, bytes.
        self.peak_bytes = 0.0
        #: {NVML index: [percent summed over sample times, sample times]}
        self._util: dict[int, list[float]] = {}
        now_us = int(time.time() * 1e6)  # NVML stamps samples in CPU time, microseconds
        #: {NVML index: newest utilisation sample counted}: only this attempt's
        self._last_seen = {i: now_us for i in sampler.indexes(self.ids)}

    def attach(self, process: psutil.Process) -> None:
        """Sample this process (and its children) from now on."""
        self.process = process

    def sample(self) -> None:
        """One sample of the attached process tree (nothing once it is gone)."""
        if self.process is None or not self.sampler.active:
            return
        try:
            pids = {self.process.pid, *(c.pid for c in self.process.children(recursive=True))}
            memory, util = self.sampler.sample(pids, self.ids, self._last_seen)
        except psutil.Error:
            return
        except Exception as exc:  # noqa: BLE001 - measuring must never fail the attempt
            # An unexpected NVML answer: this attempt gets no more GPU figures,
            # but it runs on, and its process is still watched for its limits.
            log.warning("gpu_sampling_failed", error=f"{type(exc).__name__}: {exc}")
            self.process = None
            return
        self.peak_bytes = max(self.peak_bytes, memory)
        for index, (total, times) in util.items():
            acc = self._util.setdefault(index, [0.0, 0])
            acc[0] += total
            acc[1] += times

    def usage(self, base: AttemptUsage) -> AttemptUsage:
        """``base`` (CPU, memory) with this attempt's GPU figures.

        Utilisation is the mean over the attempt's devices of each device's
        mean over NVML's samples; a device NVML never sampled during the
        attempt (nothing ran there) is 0 %; None when NVML answered for none.
        """
        util = None
        if self._util:
            means = [total / times if times else 0.0 for total, times in self._util.values()]
            util = sum(means) / len(means)
        return AttemptUsage(
            base.cpu_seconds,
            base.peak_memory_bytes,
            peak_gpu_memory_bytes=self.peak_bytes,
            gpu_utilization_percent=util,
        )
