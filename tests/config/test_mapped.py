"""@task(mapped=True): calling the task maps it exactly as .map() does."""

from __future__ import annotations

from pathlib import Path

import pytest
from fleetflow import Client, flow, task, unmapped
from fleetflow.loader import load_module

from tests.e2e.fleet import Fleet

# Loaded as the worker loads it (by path, under its stem), so task names agree.
MODULE = Path(__file__).with_name("mapped_flows.py")
mapped_flows = load_module(str(MODULE))


@task
def plain_scale(x: int, factor: int = 1) -> int:
    return x * factor


def strip_names(spec):
    spec = type(spec).FromString(spec.SerializeToString())
    for node in spec.nodes:
        node.task_name = "t"
        node.fingerprint = ""  # two tasks, two code versions: the graphs are compared
    spec.name = "f"
    return spec


def test_a_mapped_call_records_the_same_graph_as_map():
    @flow
    def with_call(n: int):
        return mapped_flows.scale(mapped_flows.numbers(n), factor=unmapped(3))

    @flow
    def with_map(n: int):
        return plain_scale.map(mapped_flows.numbers(n), factor=unmapped(3))

    a, b = strip_names(with_call.build(4)), strip_names(with_map.build(4))
    assert a == b
    assert a.nodes[1].map and a.nodes[1].args[0].mapped
    factor = [arg for arg in a.nodes[1].args if arg.name == "factor"][0]
    assert not factor.mapped


def test_a_mapped_call_of_literals_and_its_errors():
    @flow
    def literal():
        return mapped_flows.scale([1, 2], factor=5)

    (node,) = literal.build().nodes
    assert node.map and [a.mapped for a in node.args] == [True, False]

    @flow
    def nothing_to_map():
        return mapped_flows.scale(3)

    with pytest.raises(TypeError, match="no argument to map over"):
        nothing_to_map.build()

    @flow
    def unequal():
        return mapped_flows.shift([1, 2], [1])

    with pytest.raises(ValueError, match="differ in length"):
        unequal.build()


def test_outside_a_flow_a_mapped_task_maps_here():
    assert mapped_flows.scale([1, 2, 3], factor=2) == [2, 4, 6]
    assert mapped_flows.scale(range(3), unmapped(4)) == [0, 4, 8]
    assert mapped_flows.shift((1, 2), by=[10, 20]) == [11, 22]
    assert mapped_flows.scale.fn(3, 2) == 6  # what a worker runs: one item
    with pytest.raises(TypeError, match="no argument to map over"):
        mapped_flows.scale(3)
    with pytest.raises(ValueError, match="differ in length"):
        mapped_flows.shift([1, 2], [1])
    assert plain_scale.with_options(mapped=True)([1, 2]) == [1, 2]
    with pytest.raises(ValueError, match="mapped must be True or False"):
        task(mapped="yes")(lambda x: x)


@pytest.mark.slow
def test_a_guide_style_flow_runs_on_a_real_fleet(tmp_path):
    fleet = Fleet(tmp_path)
    try:
        address = fleet.start_coordinator(db=":memory:")
        fleet.start_worker(module=MODULE, cpu=2)
        with Client(address) as client:
            result = client.submit(mapped_flows.guide_style, n=5).result(timeout=90)
        assert result == {
            "total": sum(10 * i + 1 for i in range(5)),
            "items": [1, 11, 21, 31, 41],
            "literal": [2, 4, 6],
        }
    except Exception:
        print(fleet.logs())
        raise
    finally:
        fleet.stop()
