"""Flows for the hot standby tests: every execution leaves a token in a ledger."""

from __future__ import annotations

import os
import secrets
import time

from fleetflow import flow, task


@task
def collect_tokens(xs: list) -> list:
    return xs


@task
def tokened(x: int, ledger: str, seconds: float = 0.0) -> tuple[int, str]:
    """Run item ``x`` once more: log ``x token`` and return the same token."""
    token = secrets.token_hex(6)
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{x} {token}\n".encode())
    finally:
        os.close(fd)
    if seconds:
        time.sleep(seconds)
    return x, token


@flow
def tokened_map(n: int, ledger: str, seconds: float = 0.0):
    return collect_tokens(tokened.map(range(n), ledger=ledger, seconds=seconds))
