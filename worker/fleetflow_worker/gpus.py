"""NVIDIA GPUs of this machine through NVML, and which of them this worker offers.

Discovery uses the ``pynvml`` module of ``nvidia-ml-py`` (the optional extra
``fleetflow[gpu]``). No module, no NVML library or no driver means no GPUs,
never an error: a CPU machine runs the same worker.

Which devices the worker offers (:func:`plan_gpus`):

1. the devices NVML reports, in NVML (PCI bus) order;
2. restricted to the worker's own ``CUDA_VISIBLE_DEVICES`` when set (indexes
   or ``GPU-`` UUIDs, as CUDA takes them);
3. restricted to ``--gpus 0,2`` (NVML indexes or UUIDs, as ``nvidia-smi``
   shows them), or none with ``--gpus none``;
4. ``--resource gpu=N`` still overrides the count: fewer devices use the
   first N, more (or devices NVML cannot see) share the devices round-robin
   (the operator said so; a warning is logged).

The worker offers capacity ``gpu`` (the count) and ``gpu_memory`` (the sum of
the offered devices' memory, bytes, when NVML knows it), and exports a
device's :attr:`Gpu.id` as ``CUDA_VISIBLE_DEVICES`` to the attempts it
assigns it to (:mod:`fleetflow_worker.devices`), together with
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so CUDA numbers devices as NVML does.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

__all__ = [
    "Gpu",
    "GpuPlan",
    "GpuSelectionError",
    "discover_gpus",
    "nvml",
    "parse_gpu_selection",
    "plan_gpus",
    "visible_ids",
]

log = structlog.get_logger()


class GpuSelectionError(ValueError):
    """``--gpus`` names a device this worker cannot see."""


@dataclass(frozen=True, slots=True)
class Gpu:
    """One GPU device as the worker offers it.

    Attributes:
        id: What an attempt's ``CUDA_VISIBLE_DEVICES`` holds for this device:
            its NVML index as text, or the entry of the worker's own
            ``CUDA_VISIBLE_DEVICES`` that named it.
        index: NVML index (-1: NVML does not know the device).
        name: Model name, e.g. ``"NVIDIA H200"`` ("" when unknown).
        memory_bytes: Total memory of the device, bytes (0 when unknown).
        uuid: NVML UUID, ``GPU-...`` ("" when unknown).
    """

    id: str
    index: int = -1
    name: str = ""
    memory_bytes: float = 0.0
    uuid: str = ""


@dataclass(frozen=True, slots=True)
class GpuPlan:
    """The GPU devices a worker offers and the capacity they add.

    Attributes:
        devices: The offered devices, in order.
        slots: One device id per unit of ``gpu`` capacity (equal to the
            devices' ids unless ``--resource gpu=N`` overrides the count).
    """

    devices: tuple[Gpu, ...] = ()
    slots: tuple[str, ...] = ()

    def describe(self) -> list[str]:
        """One line per offered device for people: ``"0: NVIDIA H200 (141 GiB)"``."""
        lines = []
        for d in self.devices:
            memory = f" ({d.memory_bytes / 2**30:.0f} GiB)" if d.memory_bytes else ""
            lines.append(f"{d.id}: {d.name or 'GPU'}{memory}"[:64])
        return lines

    @property
    def capacity(self) -> dict[str, float]:
        """``{"gpu": count, "gpu_memory": bytes}`` (empty without GPUs; no memory if unknown)."""
        if not self.slots:
            return {}
        out = {"gpu": float(len(self.slots))}
        memory = sum(d.memory_bytes for d in self.devices)
        if memory > 0:
            out["gpu_memory"] = float(memory)
        return out


#: Serializes NVML init/shutdown pairs (NVML counts them; threads may sample).
_NVML_LOCK = threading.Lock()


def _bindings() -> Any | None:
    """The ``pynvml`` module, or None when ``nvidia-ml-py`` is not installed."""
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


@contextlib.contextmanager
def nvml() -> Iterator[Any | None]:
    """NVML initialised for the block: yields the ``pynvml`` module, or None.

    None when ``nvidia-ml-py`` is missing, or when NVML cannot start (no
    library, no driver, no device): callers treat that as "no GPUs".
    """
    pynvml = _bindings()
    if pynvml is None:
        yield None
        return
    with _NVML_LOCK:
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded...
            log.debug("nvml_unavailable", error=f"{type(exc).__name__}: {exc}")
            ok = False
        else:
            ok = True
    if not ok:
        yield None
        return
    try:
        yield pynvml
    finally:
        with _NVML_LOCK, contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def discover_gpus() -> list[Gpu]:
    """Every GPU NVML reports, in NVML order; [] without NVML or on any NVML error."""
    with nvml() as pynvml:
        if pynvml is None:
            return []
        try:
            found = []
            for index in range(int(pynvml.nvmlDeviceGetCount())):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                found.append(
                    Gpu(
                        id=str(index),
                        index=index,
                        name=_text(pynvml.nvmlDeviceGetName(handle)),
                        memory_bytes=float(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                        uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                    )
                )
            return found
        except Exception as exc:  # noqa: BLE001 - a broken driver means no GPUs
            log.warning("gpu_discovery_failed", error=f"{type(exc).__name__}: {exc}")
            return []


def visible_ids(environ: Mapping[str, str]) -> list[str] | None:
    """The entries of ``CUDA_VISIBLE_DEVICES`` (None: not set, every device visible)."""
    text = environ.get("CUDA_VISIBLE_DEVICES")
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_gpu_selection(text: str) -> list[str] | None:
    """``--gpus`` text: None for "" or ``all`` (no restriction), [] for ``none``, else the ids.

    Raises:
        GpuSelectionError: an entry that is neither an index nor a UUID
            (``0,,2``, ``abc``, ``-1``, ``all,0``).
    """
    text = text.strip()
    if text.lower() in ("", "all"):
        return None
    if text.lower() == "none":
        return []
    ids = [part.strip() for part in text.split(",")]
    if not all(_is_device_id(i) for i in ids):
        # Without NVML an id is trusted as given: "abc" or "-1" would become
        # an attempt's CUDA_VISIBLE_DEVICES and hide every device from it.
        raise GpuSelectionError(
            f"--gpus expects device indexes or UUIDs such as 0,2 or GPU-..., "
            f"or none or all alone, got {text!r}"
        )
    return ids


def _is_device_id(entry: str) -> bool:
    """An NVML index (``2``) or a device UUID (``GPU-...``, ``MIG-...``)."""
    return (entry.isascii() and entry.isdigit()) or (
        entry.startswith(("GPU-", "MIG-")) and len(entry) > 4
    )


def _match(entry: str, devices: Sequence[Gpu]) -> Gpu | None:
    """The device an index or (a prefix of) a UUID names."""
    for gpu in devices:
        if entry == str(gpu.index) or (
            gpu.uuid and entry.startswith("GPU-") and gpu.uuid.startswith(entry)
        ):
            return gpu
    return None


def _visible(found: Sequence[Gpu], environ: Mapping[str, str]) -> list[Gpu]:
    """Apply the worker's own ``CUDA_VISIBLE_DEVICES`` to the NVML devices."""
    entries = visible_ids(environ)
    if entries is None:
        return list(found)
    out: list[Gpu] = []
    seen: set[object] = set()
    for entry in entries:
        gpu = _match(entry, found)
        same = entry if gpu is None else gpu.index
        if same in seen:
            # "0,0" or "0,GPU-<uuid of 0>": one device, offered once, or two
            # whole-device attempts would share it.
            log.warning("gpu_listed_twice", entry=entry, cuda_visible_devices=",".join(entries))
            continue
        seen.add(same)
        if gpu is None:
            if not found and entry.isdigit():  # NVML missing: trust CUDA's own list
                out.append(Gpu(id=entry))
                continue
            break  # CUDA ignores the rest of the list after an invalid entry
        out.append(
            Gpu(
                gpu.id if entry == str(gpu.index) else entry,
                gpu.index,
                gpu.name,
                gpu.memory_bytes,
                gpu.uuid,
            )
        )
    return out


def plan_gpus(
    selection: str = "",
    override: float | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    found: Sequence[Gpu] | None = None,
) -> GpuPlan:
    """Decide which GPUs the worker offers (see the module docstring).

    Args:
        selection: ``--gpus``: "" or ``all`` (every visible device), ``none``,
            or ids (``0,2``, or ``GPU-`` UUIDs).
        override: ``--resource gpu=N`` (None: not given): the ``gpu`` capacity.
        environ: The worker's environment (default ``os.environ``).
        found: The NVML devices (default: :func:`discover_gpus`).

    Returns:
        The offered devices and one device id per unit of capacity.

    Raises:
        GpuSelectionError: ``--gpus`` names a device NVML reports but that is
            not visible here, or one that does not exist.
    """
    environ = os.environ if environ is None else environ
    found = discover_gpus() if found is None else list(found)
    visible = _visible(found, environ)
    wanted = parse_gpu_selection(selection)
    if wanted is not None:
        chosen: list[Gpu] = []
        for entry in wanted:
            gpu = _match(entry, visible) or next((g for g in visible if g.id == entry), None)
            if gpu is None:
                if found:
                    shown = ",".join(g.id for g in visible) or "none"
                    raise GpuSelectionError(
                        f"--gpus {entry}: no such visible GPU (visible: {shown})"
                    )
                gpu = Gpu(id=entry)  # no NVML: the operator knows the machine
                log.warning("gpu_not_discovered", gpu=entry, reason="NVML unavailable")
            if gpu not in chosen:
                chosen.append(gpu)
        visible = chosen
    if override is None:
        return GpuPlan(tuple(visible), tuple(g.id for g in visible))
    count = max(0, math.floor(override + 1e-9))
    if count == 0:
        return GpuPlan()
    if not visible:
        ids = visible_ids(environ) or [str(i) for i in range(count)]
        visible = [Gpu(id=i) for i in ids[:count]] or [Gpu(id="0")]
    devices = tuple(visible[:count])
    if count > len(devices):
        log.warning("gpu_oversubscribed", gpu=count, devices=[d.id for d in devices])
    return GpuPlan(devices, tuple(devices[i % len(devices)].id for i in range(count)))
