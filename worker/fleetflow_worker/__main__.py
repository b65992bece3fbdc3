"""``python -m fleetflow_worker``: the same command as ``fleetflow worker``."""

from fleetflow_worker.cli import command

if __name__ == "__main__":
    command(prog_name="python -m fleetflow_worker")
