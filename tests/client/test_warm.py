"""fleetflow.keep: state kept for the life of a process."""

from __future__ import annotations

import threading

import fleetflow
import pytest


@pytest.fixture(autouse=True)
def _clean():
    fleetflow.forget()
    yield
    fleetflow.forget()


def test_the_factory_runs_once_per_key():
    calls = []
    first = fleetflow.keep("model", lambda: calls.append(1) or {"weights": 1})
    second = fleetflow.keep("model", lambda: calls.append(2) or {"weights": 2})
    assert first is second and calls == [1]
    assert fleetflow.keep(("model", 2), lambda: "v2") == "v2"


def test_a_failing_factory_keeps_nothing_and_forget_rebuilds():
    with pytest.raises(RuntimeError):
        fleetflow.keep("x", lambda: (_ for _ in ()).throw(RuntimeError("no GPU")))
    assert fleetflow.keep("x", lambda: 1) == 1
    fleetflow.forget("x")
    assert fleetflow.keep("x", lambda: 2) == 2


def test_threads_build_a_value_once():
    calls = []
    barrier = threading.Barrier(8)

    def build():
        calls.append(1)
        return object()

    seen = []

    def use():
        barrier.wait(5)
        seen.append(fleetflow.keep("shared", build))

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(calls) == 1 and len({id(v) for v in seen}) == 1


def test_a_factory_asking_for_its_own_key_fails_rather_than_hangs():
    """Its build lock was held by its own thread: the attempt hung until its timeout."""
    outcome: list[BaseException] = []

    def attempt() -> None:
        try:
            fleetflow.keep("loop", lambda: fleetflow.keep("loop", dict))
        except BaseException as exc:  # noqa: BLE001 - what the attempt would see
            outcome.append(exc)

    thread = threading.Thread(target=attempt, daemon=True)  # daemon: a hang must not block exit
    thread.start()
    thread.join(5.0)
    assert not thread.is_alive(), "keep deadlocked on its own key"
    assert isinstance(outcome[0], RuntimeError) and "'loop'" in str(outcome[0])
    assert "loop" not in fleetflow.kept()
    assert fleetflow.keep("loop", lambda: 7) == 7  # nothing left locked
