"""Flows the GPU tests run (no GPU needed: the worker is told --resource gpu=2)."""

from __future__ import annotations

import os
import time

import fleetflow
from fleetflow import flow, task


@task(resources={"cpu": 0.5, "gpu": 1})
def which_device(i: int, hold_s: float = 0.3) -> dict:
    """The devices this attempt sees, its process, and how often the process ran it."""
    state = fleetflow.keep("which_device", lambda: {"calls": 0})
    state["calls"] += 1
    started = time.time()
    time.sleep(hold_s)
    return {
        "i": i,
        "devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "pid": os.getpid(),
        "calls": state["calls"],
        "started": started,
        "ended": time.time(),
    }


@flow
def devices(n: int = 6, hold_s: float = 0.3):
    return which_device.map(range(n), hold_s=hold_s)
