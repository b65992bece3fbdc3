"""A task module that touches CUDA when imported, as `torch.cuda.is_available()` at
module level does: CUDA reads CUDA_VISIBLE_DEVICES once, at that moment (simulated
here by latching the value), so setting it later in the process changes nothing."""

import os

from fleetflow import task

LATCHED = os.environ.get("CUDA_VISIBLE_DEVICES")


@task(resources={"gpu": 1})
def devices_cuda_sees():
    """What CUDA in this process sees (latched at import), and what the env says now."""
    return LATCHED, os.environ.get("CUDA_VISIBLE_DEVICES")
