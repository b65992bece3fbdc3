"""Coordinator addresses: one parser for clients, workers and the CLI.

Several coordinators (one active, the others standing by, see the
architecture notes on hot standby) are given as a comma list,
``--coordinator A:50051,B:50051``, or as one DNS name that resolves to
several addresses. A standby answers every call with UNAVAILABLE and the
fixed message ``"standby coordinator; the active one is HOST:PORT"``
(:data:`STANDBY_PREFIX`); :func:`active_hint` reads the address back out so a
caller can go straight to the active one.
"""

from __future__ import annotations

import socket

__all__ = ["STANDBY_PREFIX", "active_hint", "expand_dns", "parse_addresses"]

#: How a standby coordinator's UNAVAILABLE message starts.
STANDBY_PREFIX = "standby coordinator; the active one is "


def _check(entry: str) -> str:
    host, sep, port = entry.rpartition(":")
    if not sep or not host:
        raise ValueError(f"coordinator address {entry!r}: expected HOST:PORT")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"coordinator address {entry!r}: unbalanced brackets around the host")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"coordinator address {entry!r}: the port must be 1..65535")
    return entry


def parse_addresses(text: str) -> list[str]:
    """Split ``"A:P,B:P"`` into checked ``HOST:PORT`` entries, in order, without repeats.

    Args:
        text: One address or a comma-separated list (spaces around commas are
            ignored). IPv6 hosts go in brackets: ``[::1]:50051``.

    Returns:
        The addresses, at least one.

    Raises:
        ValueError: the list is empty, or an entry has no host or no valid
            port (1..65535); the message names the entry.
    """
    entries = [e.strip() for e in text.split(",")]
    if not any(entries):
        raise ValueError("coordinator address: expected HOST:PORT[,HOST:PORT...], got nothing")
    out: list[str] = []
    for entry in entries:
        if not entry:
            raise ValueError(f"coordinator addresses {text!r}: an empty entry between commas")
        if _check(entry) not in out:
            out.append(entry)
    return out


def active_hint(details: str | None) -> str | None:
    """The active coordinator's ``HOST:PORT`` named in a standby's message, if any."""
    if not details or not details.startswith(STANDBY_PREFIX):
        return None
    hint = details[len(STANDBY_PREFIX) :].strip()
    try:
        return _check(hint)
    except ValueError:
        return None  # "unknown": no active coordinator yet


def expand_dns(addresses: list[str]) -> list[str]:
    """Replace a host name that resolves to several addresses by one entry per address.

    A name with a single address is kept as written (TLS checks the name).
    Names that do not resolve are kept too: connecting reports the error.
    """
    out: list[str] = []
    for entry in addresses:
        host, _, port = entry.rpartition(":")
        bare = host.strip("[]")
        try:
            infos = socket.getaddrinfo(bare, int(port), type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            infos = []
        found = list(dict.fromkeys(info[4][0] for info in infos))
        if len(found) <= 1:
            candidates = [entry]
        else:
            candidates = [f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in found]
        out.extend(c for c in candidates if c not in out)
    return out
