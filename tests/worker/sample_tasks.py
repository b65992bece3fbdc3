"""Tasks the worker tests run (loaded by path, in the test process and in pool processes)."""

import asyncio
import os
import sys
import threading
import time

import fleetflow
from fleetflow import task


class Unpicklable:
    def __init__(self):
        self.lock = threading.Lock()


@task
def double(x):
    return 2 * x


@task
def add(a, b=10, *rest, scale=1, **extra):
    return (a + b + sum(rest) + sum(extra.values())) * scale


@task
def split_range(n):
    return list(range(n))


@task
def as_tuple(n):
    return tuple(range(n))


@task
def as_dict(n):
    return {i: i for i in range(n)}


@task
def total(values):
    return sum(values)


@task
def boom(x):
    raise ValueError(f"bad value {x}")


@task
def exit_task(code):
    sys.exit(code)


@task
def die(code):
    os._exit(code)


@task
def sleep_sync(seconds):
    time.sleep(seconds)
    return seconds


@task
def spin(seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
    return seconds


@task
def unpicklable_result():
    return Unpicklable()


@task(name="renamed")
def original_name():
    return "renamed"


@task
async def adouble(x):
    await asyncio.sleep(0)
    return 2 * x


@task
async def asleep(seconds):
    await asyncio.sleep(seconds)
    return seconds


#: Attempts of ``counted`` running now, and the most at once (in the worker's process).
COUNTED = {"now": 0, "peak": 0}


@task
async def counted(seconds):
    COUNTED["now"] += 1
    COUNTED["peak"] = max(COUNTED["peak"], COUNTED["now"])
    try:
        await asyncio.sleep(seconds)
    finally:
        COUNTED["now"] -= 1
    return seconds


@task
async def aboom():
    raise KeyError("missing")


@task
async def aexit():
    sys.exit(3)


MIB = 1 << 20


@task
def hog(mib, hold_s=0.0):
    """Hold ``mib`` MiB of touched memory for ``hold_s`` seconds."""
    block = b"\x01" * (mib * MIB)
    time.sleep(hold_s)
    return len(block) // MIB


@task
def sleep_then_mark(path, seconds):
    """Record the start, sleep, then record that the line after the sleep ran."""
    with open(path, "a") as f:
        f.write(f"start {os.getpid()}\n")
    try:
        time.sleep(seconds)
        with open(path, "a") as f:
            f.write("after\n")
    finally:
        with open(path, "a") as f:
            f.write("finally\n")
    return os.getpid()


@task
def getpid():
    return os.getpid()


@task
def burn_cpu(seconds):
    """Use about ``seconds`` of CPU time."""
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass
    return seconds


@task
def ask_retry(delay):
    from fleetflow.errors import Retry

    raise Retry(delay=delay)


@task
def give_up():
    from fleetflow.errors import NonRetryableError

    raise NonRetryableError("no point")


@task
async def aask_retry(delay):
    from fleetflow.errors import Retry

    raise Retry(delay=delay)


@task
def double_or_die(x):
    """Double ``x``; a negative ``x`` kills the process with exit code ``-x``."""
    if x < 0:
        os._exit(-x)
    return 2 * x


@task
def warm_count(label):
    """How many attempts this process ran with the kept state (and which process)."""
    state = fleetflow.keep("warm_count", lambda: {"built_by": os.getpid(), "calls": 0})
    state["calls"] += 1
    return os.getpid(), state["calls"], label


@task(resources={"gpu": 1})
def gpu_visible(seconds=0.0):
    """The devices this attempt sees, and when it ran."""
    started = time.monotonic()
    time.sleep(seconds)
    return os.environ.get("CUDA_VISIBLE_DEVICES"), os.getpid(), started, time.monotonic()


@task(resources={"gpu": 1})
def kill_self():
    """SIGKILL this task process, as the OOM killer would."""
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


@task
def where():
    """The process and thread an attempt ran in (executor tests)."""
    return os.getpid(), threading.current_thread().name


@task
def dask_resources_free():
    """On a Dask worker: its resources still free while this attempt holds its share."""
    from distributed import get_worker

    return dict(get_worker().state.available_resources)


@task
def die_once(marker, seconds=1.0):
    """Kill this process the first time (after ``seconds``); return "survived" the next."""
    if os.path.exists(marker):
        time.sleep(seconds)
        return "survived"
    with open(marker, "w") as f:
        f.write("died\n")
    time.sleep(seconds)
    os._exit(1)


@task(resources={"gpu": 1})
def spawn_and_hang(pid_file):
    """Start a child process (as a data loader or a CUDA helper would), then hang."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with open(pid_file, "w") as f:
        f.write(str(child.pid))
    time.sleep(60)
