"""The edited flow file the client submits from (issue 11, item 1)."""

from fleetflow import flow, task


@task
def compute(x: int) -> str:
    return f"new code: {x * 2}"


@flow
def compute_flow(x: int = 21):
    return compute(x)
