"""Flow.build: how flow functions are recorded into FlowSpec graphs."""

from __future__ import annotations

import pytest
from fleetflow import flow, task, unmapped
from fleetflow.serde import loads


@task
def inc(x: int) -> int:
    return x + 1


@task
def add(x: int, y: int) -> int:
    return x + y


@task
def total(xs: list[int]) -> int:
    return sum(xs)


@task
def numbers(n: int) -> list[int]:
    return list(range(n))


@task(
    resources={"cpu": "500m", "memory": "1Gi"},
    retries=3,
    retry_delay_seconds=1.5,
    timeout_seconds=9,
)
def heavy(x: int) -> int:
    return x


def arg(node, name):
    (found,) = [a for a in node.args if a.name == name]
    return found


def test_literal_map():
    @flow
    def f():
        return inc.map([1, 2, 3])

    spec = f.build()
    (node,) = spec.nodes
    assert node.task_name == f"{__name__}:inc" and node.map
    x = arg(node, "x")
    assert x.mapped and x.WhichOneof("source") == "literal_items"
    assert [loads(b) for b in x.literal_items.items] == [1, 2, 3]
    assert spec.WhichOneof("output") == "output_node" and spec.output_node == 0
    assert spec.name == "f"


def test_range_and_tuple_are_mapped_like_lists():
    @flow
    def f():
        return add.map(range(2), (10, 20))

    node = f.build().nodes[0]
    assert [loads(b) for b in arg(node, "x").literal_items.items] == [0, 1]
    assert [loads(b) for b in arg(node, "y").literal_items.items] == [10, 20]


def test_map_over_upstream_future():
    @flow
    def f(n: int):
        return inc.map(numbers(n))

    spec = f.build(n=4)
    first, second = spec.nodes
    assert not first.map and loads(arg(first, "n").literal) == 4
    x = arg(second, "x")
    assert second.map and x.mapped and x.WhichOneof("source") == "node" and x.node == 0
    assert spec.output_node == 1


def test_map_of_a_map_pipelines_item_by_item():
    @flow
    def f():
        return inc.map(inc.map([1, 2]))

    first, second = f.build().nodes
    assert first.map and second.map
    assert arg(second, "x").node == 0 and arg(second, "x").mapped


def test_fan_in_passes_the_map_future_whole():
    @flow
    def f():
        return total(inc.map([1, 2, 3]))

    spec = f.build()
    xs = arg(spec.nodes[1], "xs")
    assert not spec.nodes[1].map and not xs.mapped
    assert xs.WhichOneof("source") == "node" and xs.node == 0


def test_unmapped_constant_is_passed_whole_to_every_child():
    @flow
    def f():
        return add.map([1, 2], unmapped([10, 20]))

    node = f.build().nodes[0]
    y = arg(node, "y")
    assert not y.mapped and y.WhichOneof("source") == "literal" and loads(y.literal) == [10, 20]


def test_unmapped_future_is_a_plain_dependency():
    @flow
    def f():
        base = inc(1)
        return add.map([1, 2], unmapped(base))

    y = arg(f.build().nodes[1], "y")
    assert not y.mapped and y.WhichOneof("source") == "node" and y.node == 0


def test_gather_of_several_futures():
    @flow
    def f():
        return total([inc(1), inc(2), inc(3)])

    spec = f.build()
    xs = arg(spec.nodes[3], "xs")
    assert xs.WhichOneof("source") == "nodes" and list(xs.nodes.nodes) == [0, 1, 2]


def test_positional_args_are_bound_by_name_and_defaults_recorded():
    @flow
    def f(a: int, b: int = 5):
        return add(a, y=b)

    spec = f.build(1)
    node = spec.nodes[0]
    assert loads(arg(node, "x").literal) == 1 and loads(arg(node, "y").literal) == 5
    assert loads(spec.parameters) == {"a": 1, "b": 5}


def test_task_options_are_recorded():
    @flow
    def f():
        return heavy(1)

    node = f.build().nodes[0]
    assert dict(node.resources.amounts) == {"cpu": 0.5, "memory": 2.0**30}
    assert node.retry.retries == 3 and node.retry.retry_delay_seconds == 1.5
    assert node.timeout_seconds == 9


def test_literal_return_value_is_output_literal():
    @flow
    def f():
        inc(1)
        return {"done": True}

    spec = f.build()
    assert spec.WhichOneof("output") == "output_literal"
    assert loads(spec.output_literal) == {"done": True}


def test_each_build_is_independent():
    @flow
    def f(n: int):
        return inc.map(range(n))

    assert len(f.build(n=2).nodes[0].args[0].literal_items.items) == 2
    assert len(f.build(n=5).nodes[0].args[0].literal_items.items) == 5


# ------------------------------------------------------------------ error cases


def test_map_with_nothing_mappable():
    @flow
    def f():
        return inc.map(5)

    with pytest.raises(TypeError, match="no argument to map over"):
        f.build()


def test_map_with_only_unmapped_arguments():
    @flow
    def f():
        return inc.map(unmapped([1, 2]))

    with pytest.raises(TypeError, match="no argument to map over"):
        f.build()


def test_unequal_literal_lengths():
    @flow
    def f():
        return add.map([1, 2, 3], [1, 2])

    with pytest.raises(ValueError, match="differ in length"):
        f.build()


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda fut: {"key": fut}, id="dict"),
        pytest.param(lambda fut: [[fut]], id="nested-list"),
        pytest.param(lambda fut: [fut, 1], id="mixed-list"),
        pytest.param(lambda fut: ({fut},), id="set-in-tuple"),
    ],
)
def test_futures_nested_in_containers_are_rejected(wrap):
    @flow
    def f():
        return total(wrap(inc(1)))

    with pytest.raises(TypeError, match="nests the future"):
        f.build()


def test_future_nested_in_return_value_is_rejected():
    @flow
    def f():
        return {"x": inc(1)}

    with pytest.raises(TypeError, match="nests the future"):
        f.build()


def test_future_nested_in_mapped_literal_is_rejected():
    @flow
    def f():
        return inc.map([inc(1), 2])

    with pytest.raises(TypeError, match="is a list of task futures"):
        f.build()


def test_gather_of_map_futures_is_rejected():
    @flow
    def f():
        return total([inc.map([1]), inc(2)])

    with pytest.raises(TypeError, match="pass that map future directly"):
        f.build()


def test_calling_a_flow_directly_is_an_error():
    @flow
    def f():
        return inc(1)

    with pytest.raises(TypeError, match="submit it"):
        f()


def test_bad_flow_parameters():
    @flow
    def f(n: int):
        return inc(n)

    with pytest.raises(TypeError, match="flow 'f'"):
        f.build(m=1)


def test_bad_task_arguments_name_the_task():
    @flow
    def f():
        return add(1)

    with pytest.raises(TypeError, match=r"add\(\)"):
        f.build()


def test_inspecting_a_future_in_the_flow_function_is_an_error():
    @flow
    def f():
        if inc(1):
            return 1
        return 0

    with pytest.raises(TypeError, match="not known while the flow is recorded"):
        f.build()


def test_map_outside_a_flow_is_an_error():
    with pytest.raises(RuntimeError, match="only works inside a @flow"):
        inc.map([1, 2])


def test_async_flow_function_is_rejected():
    @flow
    async def f():
        return None

    with pytest.raises(TypeError, match="not `async def`"):
        f.build()


def test_tasks_run_locally_outside_a_flow():
    assert inc(1) == 2
    assert total([1, 2, 3]) == 6
