"""What a process that executes tasks needs from the client package (the worker's seam).

The worker (``fleetflow_worker``), and any other executor, imports the user's
task modules and runs the :class:`Task` objects they define, binds each
attempt's ids to the task's log lines and keeps the attempt's last lines for
its error. These are the names it uses; they are public and stable for that
purpose, while the modules they live in (``fleetflow._task``,
``fleetflow._logging``) are private and may move. Flow authors never need
this module: they use :mod:`fleetflow` (``task``, ``flow``, ``get_logger``).

``tests/test_layering.py`` checks that the worker and the coordinator import
no private module of ``fleetflow``; a name they need is added here (or to
another public module) instead.

Names:

* :class:`Task`: a registered task (``name``, ``fn``, ``is_async``,
  ``retry_on``, resources...), as the ``@task`` decorator made it.
* :func:`find_tasks`: the tasks a module namespace defines, by name.
* :func:`live_tasks`: every task defined in this process and still alive
  (also those no module-level name holds: in a class body, in a dict).
* :func:`is_sequence_result`: whether a result is a list-like sequence.
* :func:`map_items`: the items a downstream map iterates for a result (or
  None: it cannot be split); the recorder's rule for literal arguments.
* :func:`collect_generator`: a generator task's result as the list it yields.
* :func:`where`: ``file:line`` where a task's function is defined (for
  errors that name two definitions).
* :func:`attempt_scope`: run one attempt with its ids bound to every log line
  and its last :data:`TAIL_LINES` lines kept.
* :func:`start_tail` / :func:`current_tail`: keep, and read, the running
  attempt's last lines in the current context (an ``async def`` attempt's
  asyncio task).
"""

from __future__ import annotations

from fleetflow._identity import live_tasks, where
from fleetflow._logging import TAIL_LINES, attempt_scope, current_tail, start_tail
from fleetflow._task import Task, find_tasks, is_sequence_result
from fleetflow._task_rules import collect_generator, map_items

__all__ = [
    "TAIL_LINES",
    "Task",
    "attempt_scope",
    "collect_generator",
    "current_tail",
    "find_tasks",
    "is_sequence_result",
    "live_tasks",
    "map_items",
    "where",
    "start_tail",
]
