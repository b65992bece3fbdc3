"""The version of a flow file that workers started earlier still run (issue 11, item 1)."""

from fleetflow import task


@task
def compute(x: int) -> str:
    return f"old code: {x}"
