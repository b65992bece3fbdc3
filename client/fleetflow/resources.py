"""Resource quantities: the one parser shared by client, coordinator and worker.

A task declares ``resources={"cpu": 2, "memory": "2GB", "gpu": 1}``. Every
amount becomes a plain non-negative finite ``float`` before it reaches the
wire: ``cpu`` in logical CPUs (fractions allowed), ``memory`` in bytes, any
other name a custom count.

Grammar (``QUANTITY``)::

    QUANTITY := NUMBER [SUFFIX]
    NUMBER   := decimal number, optionally with an exponent ("1.5", "2e9")
    SUFFIX   := Kubernetes suffix, case-sensitive:
                  m (1e-3), k (1e3), M (1e6), G (1e9), T (1e12), P (1e15), E (1e18),
                  Ki (2**10), Mi (2**20), Gi (2**30), Ti (2**40), Pi (2**50), Ei (2**60)
              | unit spelling, case-insensitive:
                  B (1), KB (1e3), MB (1e6), GB (1e9), TB (1e12), PB (1e15),
                  KiB (2**10), MiB (2**20), GiB (2**30), TiB (2**40), PiB (2**50)

The suffixes follow the Kubernetes resource quantity format
(k8s.io/apimachinery ``resource.Quantity``); the unit spellings follow the
IEC 80000-13 convention that ``KB`` is 1000 bytes and ``KiB`` 1024 bytes.
A bare number is taken as it is (bytes, for ``memory``).

Examples: ``"256MB"`` is 256,000,000; ``"256Mi"`` is 268,435,456; ``"500m"``
CPU is 0.5; ``"1.5Gi"`` is 1,610,612,736; ``"2e9"`` is 2,000,000,000.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

__all__ = ["InvalidResourceError", "parse_quantity", "parse_resources", "format_quantity"]

_K8S_SUFFIXES: dict[str, float] = {
    "": 1.0,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
    "Pi": 2.0**50,
    "Ei": 2.0**60,
}
_UNIT_SPELLINGS: dict[str, float] = {
    "b": 1.0,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "tb": 1e12,
    "pb": 1e15,
    "kib": 2.0**10,
    "mib": 2.0**20,
    "gib": 2.0**30,
    "tib": 2.0**40,
    "pib": 2.0**50,
}
_QUANTITY = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)\s*$")


class InvalidResourceError(ValueError):
    """A resource amount broke the quantity grammar.

    Attributes:
        field: The resource name (``"memory"``), prefixed by the task when known.
        value: The rejected value as given.
        rule: The rule it broke, in words.
    """

    def __init__(self, field: str, value: object, rule: str) -> None:
        self.field = field
        self.value = value
        self.rule = rule
        super().__init__(f"resources[{field!r}] = {value!r}: {rule}")


def parse_quantity(value: object, field: str = "quantity") -> float:
    """Parse one resource amount into a float.

    Args:
        value: An ``int``/``float`` or a quantity string (see the module docstring).
        field: The resource name, used in the error message.

    Returns:
        The amount as a non-negative finite float (bytes for memory).

    Raises:
        InvalidResourceError: empty string, words, unknown suffix, a negative,
            NaN or infinite amount, or a value of another type.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidResourceError(field, value, "must be a number or a quantity string like '2GB'")
    if isinstance(value, str):
        if not value.strip():
            raise InvalidResourceError(field, value, "must not be empty")
        match = _QUANTITY.match(value)
        if match is None:
            raise InvalidResourceError(
                field, value, "must be a number with an optional unit suffix, e.g. '512Mi' or '2GB'"
            )
        number, suffix = match.groups()
        if suffix in _K8S_SUFFIXES:
            factor = _K8S_SUFFIXES[suffix]
        elif suffix.lower() in _UNIT_SPELLINGS:
            factor = _UNIT_SPELLINGS[suffix.lower()]
        else:
            raise InvalidResourceError(
                field,
                value,
                f"unknown suffix {suffix!r}; "
                "use k, M, G, T, P, E, Ki..Ei, m or B, KB..PB, KiB..PiB",
            )
        amount = float(number) * factor
    else:
        amount = float(value)
    if not math.isfinite(amount):
        raise InvalidResourceError(field, value, "must be finite")
    if amount < 0:
        raise InvalidResourceError(field, value, "must not be negative")
    return amount


def parse_resources(resources: Mapping[str, object] | None, owner: str = "") -> dict[str, float]:
    """Parse a whole resource request.

    Args:
        resources: ``{name: amount}``; names are non-empty strings.
        owner: Prefix for error fields, e.g. the task name.

    Returns:
        ``{name: float}`` with every amount parsed.

    Raises:
        InvalidResourceError: a name or an amount is invalid.
    """
    out: dict[str, float] = {}
    for name, value in (resources or {}).items():
        field = f"{owner}.{name}" if owner else str(name)
        if not isinstance(name, str) or not name.strip():
            raise InvalidResourceError(field, value, "resource names must be non-empty strings")
        out[name] = parse_quantity(value, field)
    return out


def format_quantity(name: str, amount: float) -> str:
    """Render an amount for people: memory in binary units, others as numbers."""
    if name == "memory":
        for unit, factor in (("GiB", 2.0**30), ("MiB", 2.0**20), ("KiB", 2.0**10)):
            if amount >= factor:
                return f"{amount / factor:.1f}{unit}"
        return f"{amount:.0f}B"
    return f"{amount:g}"
