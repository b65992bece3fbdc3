"""A flow whose task no test worker offers (workers never import this file)."""

from __future__ import annotations

from fleetflow import flow, task


@task(name="not_offered_anywhere")
def missing() -> None:
    raise AssertionError("no worker offers this task")


@flow
def needs_missing_task():
    return missing()
