"""Torch tasks for ``benchmarks/gpu_check.py`` (a GPU worker imports this file).

torch is imported inside the task, not at module level, so the first attempt in a
task process pays the import and the CUDA initialisation, and a warm process does
not: that is what the check measures.
"""

from __future__ import annotations

import os
import time

import fleetflow
from fleetflow import flow, task


def _model():
    import torch

    weights = torch.randn(4096, 4096, device="cuda")
    torch.cuda.synchronize()
    return weights


@task(resources={"cpu": 1, "gpu": 1})
def matmul(i: int, rounds: int = 20) -> dict:
    """A few 4096x4096 matmuls on the attempt's GPU; what it saw and how long it took."""
    started = time.time()
    t0 = time.perf_counter()
    warm = bool(fleetflow.kept())
    weights = fleetflow.keep("weights", _model)  # import torch, CUDA context, 64 MiB on the GPU
    import torch

    x = torch.randn(4096, 4096, device="cuda")
    for _ in range(rounds):
        x = torch.tanh(x @ weights)
    torch.cuda.synchronize()
    return {
        "i": i,
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "device_name": torch.cuda.get_device_name(0),
        "device_count": torch.cuda.device_count(),
        "pid": os.getpid(),
        "warm": warm,
        "started": started,
        "ended": time.time(),
        "in_task_s": time.perf_counter() - t0,
    }


@flow
def eight(n: int = 8, rounds: int = 20):
    return matmul.map(range(n), rounds=rounds)
