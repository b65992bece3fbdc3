"""The other module defining a task ``process`` (issue 11, item 1)."""

from fleetflow import task


@task
def process(x: int) -> str:
    return f"b{x}"
