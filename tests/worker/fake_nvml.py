"""A stand-in for the ``pynvml`` module (``nvidia-ml-py``), for tests without a GPU.

Install it with :func:`install` (a pytest ``monkeypatch``): ``import pynvml``
in the worker then returns the fake, whether or not ``nvidia-ml-py`` is
installed. It implements the calls the worker makes, over devices and GPU
processes that the test sets up and changes while the worker runs.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any


class NVMLError(Exception):
    """Like ``pynvml.NVMLError``."""


class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801 - pynvml's spelling
    """Like the real one: no ``libnvidia-ml.so``."""


class NVMLError_NotFound(NVMLError):  # noqa: N801
    """No samples (``nvmlDeviceGetProcessUtilization``)."""


@dataclass
class FakeDevice:
    """One fake GPU: its identity and the processes using it now."""

    name: str = "NVIDIA Fake H200"
    memory_bytes: int = 80 * 2**30
    uuid: str = ""
    #: {pid: GPU memory it uses now, bytes}
    processes: dict[int, int] = field(default_factory=dict)
    #: {pid: SM utilisation now, percent}
    utilisation: dict[int, int] = field(default_factory=dict)


class FakeNvml:
    """The fake module: ``devices`` may be changed by the test at any time.

    Args:
        devices: The GPUs NVML reports, in NVML order.
        broken: ``nvmlInit`` raises as with no driver.
    """

    NVMLError = NVMLError
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    NVMLError_NotFound = NVMLError_NotFound

    def __init__(self, devices: list[FakeDevice] | None = None, *, broken: bool = False) -> None:
        self.devices = list(devices or [])
        for i, device in enumerate(self.devices):
            device.uuid = device.uuid or f"GPU-{i:08d}-fake-{i:04d}"
        self.broken = broken
        self.inits = 0
        self.shutdowns = 0
        self._lock = threading.Lock()

    # -- pynvml's calls -------------------------------------------------------

    def nvmlInit(self) -> None:  # noqa: N802
        if self.broken:
            raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")
        with self._lock:
            self.inits += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        with self._lock:
            self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeDevice:  # noqa: N802
        return self.devices[index]

    def nvmlDeviceGetName(self, handle: FakeDevice) -> str:  # noqa: N802
        return handle.name

    def nvmlDeviceGetUUID(self, handle: FakeDevice) -> str:  # noqa: N802
        return handle.uuid

    def nvmlDeviceGetMemoryInfo(self, handle: FakeDevice) -> Any:  # noqa: N802
        used = sum(handle.processes.values())
        return SimpleNamespace(
            total=handle.memory_bytes, used=used, free=handle.memory_bytes - used
        )

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeDevice) -> list[Any]:  # noqa: N802
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in dict(handle.processes).items()]

    def nvmlDeviceGetProcessUtilization(self, handle: FakeDevice, last_seen: int) -> list[Any]:  # noqa: N802
        samples = dict(handle.utilisation)
        if not samples:
            raise NVMLError_NotFound("Not Found")
        return [
            SimpleNamespace(pid=p, smUtil=u, memUtil=0, timeStamp=last_seen + 1)
            for p, u in samples.items()
        ]

    # -- for tests --------------------------------------------------------------

    def device_for(self, index: int) -> FakeDevice:
        return self.devices[index]


def install(monkeypatch: Any, fake: FakeNvml) -> FakeNvml:
    """Make ``import pynvml`` return ``fake`` for the rest of the test."""
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def uninstall(monkeypatch: Any) -> None:
    """Make ``import pynvml`` fail, as without ``nvidia-ml-py``."""
    monkeypatch.setitem(sys.modules, "pynvml", None)
