"""Coordinator settings: one frozen dataclass, defaults in one place, env overrides."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["Settings"]


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the coordinator process can be told.

    Each field can be overridden by an environment variable named
    ``FLEETFLOW_<FIELD>`` in upper case (``FLEETFLOW_LEASE_TTL_S=5``).

    Attributes:
        listen: ``HOST:PORT`` to bind; port 0 picks a free port.
        port_file: If set, the bound port is written there once serving.
        lease_ttl_s: Seconds a worker may stay silent before its leases expire.
        heartbeat_interval_s: Seconds between worker heartbeats (told to workers).
        tick_interval_s: Seconds between timer checks (retries, expiry).
        max_infra_failures: Attempts per task run that may end through the
            infrastructure (worker lost) before the task run fails.
        lease_wait_max_s: Upper bound on a worker's long poll, seconds.
    """

    listen: str = "127.0.0.1:50051"
    port_file: str | None = None
    lease_ttl_s: float = 10.0
    heartbeat_interval_s: float = 1.0
    tick_interval_s: float = 0.05
    max_infra_failures: int = 3
    lease_wait_max_s: float = 10.0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from defaults, then ``FLEETFLOW_*`` variables, then overrides.

        Raises:
            ValueError: a variable does not parse as the field's type.
        """
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f"FLEETFLOW_{f.name.upper()}")
            if raw is None:
                continue
            kind = type(getattr(cls(), f.name))
            try:
                values[f.name] = raw if kind in (str, type(None)) else kind(raw)
            except ValueError:
                raise ValueError(
                    f"FLEETFLOW_{f.name.upper()}={raw!r}: not a {kind.__name__}"
                ) from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = replace(cls(), **values)
        if settings.lease_ttl_s <= settings.heartbeat_interval_s:
            raise ValueError(
                f"lease_ttl_s ({settings.lease_ttl_s}) must exceed heartbeat_interval_s "
                f"({settings.heartbeat_interval_s})"
            )
        return settings
