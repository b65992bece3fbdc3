"""``python -m fleetflow_coordinator``."""

from fleetflow_coordinator.cli import command

if __name__ == "__main__":
    command(prog_name="fleetflow coordinator")
