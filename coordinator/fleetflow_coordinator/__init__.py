"""The fleetflow coordinator: holds all flow state and leases task runs to workers.

It never runs user code and never unpickles user data. Start it with
``fleetflow coordinator`` or ``python -m fleetflow_coordinator``.
"""

__version__ = "0.1.0"
