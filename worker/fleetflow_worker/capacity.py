"""What this machine offers and how busy it is (psutil), and ``--resource`` parsing."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import psutil
from fleetflow.resources import parse_quantity

__all__ = [
    "Usage",
    "default_cpu",
    "default_memory",
    "sample_usage",
    "parse_resource_option",
    "parse_resource_options",
]


@dataclass(frozen=True, slots=True)
class Usage:
    """Live machine usage sent with each heartbeat.

    Attributes:
        cpu_percent: CPU use of the whole machine since the previous sample, 0-100.
        memory_available: Memory available to new processes, bytes.
    """

    cpu_percent: float
    memory_available: float


def default_cpu() -> float:
    """Logical CPUs of this machine (at least 1)."""
    return float(psutil.cpu_count(logical=True) or 1)


def default_memory() -> float:
    """Total memory of this machine, bytes."""
    return float(psutil.virtual_memory().total)


def sample_usage() -> Usage:
    """Sample CPU and memory use now.

    The CPU figure covers the time since the previous call (psutil's
    ``interval=None`` mode), so the first call of a process returns 0.
    """
    return Usage(
        cpu_percent=float(psutil.cpu_percent(None)),
        memory_available=float(psutil.virtual_memory().available),
    )


def parse_resource_option(text: str) -> tuple[str, float]:
    """Parse one ``--resource NAME=AMOUNT`` value, e.g. ``"gpu=1"``.

    Args:
        text: ``NAME=AMOUNT``; AMOUNT is a quantity (``2``, ``500m``, ``16Gi``).

    Returns:
        ``(name, amount)``.

    Raises:
        ValueError: no ``=``, an empty name, ``cpu``/``memory`` (they have their
            own options), or an amount that is not a valid quantity
            (:class:`fleetflow.resources.InvalidResourceError`).
    """
    name, sep, amount = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ValueError(f"expected NAME=AMOUNT (e.g. gpu=1), got {text!r}")
    if name in ("cpu", "memory"):
        raise ValueError(f"use --{name} to set {name}, not --resource")
    return name, parse_quantity(amount.strip(), name)


def parse_resource_options(texts: Iterable[str]) -> dict[str, float]:
    """Parse repeated ``--resource`` values; a later one overrides an earlier one.

    Raises:
        ValueError: see :func:`parse_resource_option`.
    """
    return dict(parse_resource_option(t) for t in texts)
