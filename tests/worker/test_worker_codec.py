from __future__ import annotations

from collections import OrderedDict

import pytest
from fleetflow.api.v1 import worker_service_pb2
from fleetflow.serde import dumps, loads
from fleetflow_worker._codec import (
    bind_arguments,
    decode_args,
    encode_error,
    encode_result,
    error_of,
    to_outcome,
    wire_args,
)


def lease_with(**args) -> worker_service_pb2.Lease:
    lease = worker_service_pb2.Lease(task_run_id=1, attempt=1, task_name="t")
    for name, value in args.items():
        arg = lease.args.add(name=name)
        if isinstance(value, list):
            arg.value.list.items.extend(dumps(v) for v in value)
        else:
            arg.value.pickled = dumps(value)
    return lease


def test_wire_args_keeps_bytes_and_lists_apart():
    lease = lease_with(x=1, xs=[1, 2])
    assert wire_args(lease) == [("x", dumps(1)), ("xs", [dumps(1), dumps(2)])]


def test_wire_args_rejects_an_empty_value():
    lease = worker_service_pb2.Lease()
    lease.args.add(name="x")
    with pytest.raises(ValueError, match="'x'"):
        wire_args(lease)


def test_decode_args_turns_a_value_list_into_a_python_list():
    args = decode_args(wire_args(lease_with(x={"a": 1}, xs=[1, "two"], empty=[])))
    assert args == OrderedDict(x={"a": 1}, xs=[1, "two"], empty=[])


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"a": 1}, 11),  # default b
        ({"a": 1, "b": 2}, 3),
        ({"b": 2, "a": 1}, 3),  # order of the wire does not matter
        ({"a": 1, "b": 2, "rest": (3, 4)}, 10),  # *args arrive as a tuple
        ({"a": 1, "b": 2, "rest": [3, 4]}, 10),  # ... or as a fan-in list
        ({"a": 1, "scale": 3}, 33),  # keyword-only
        ({"a": 1, "extra": {"k": 5}}, 16),  # **kwargs arrive as a dict
    ],
)
def test_bind_arguments_calls_the_function_like_the_client_bound_it(
    sample_tasks, arguments, expected
):
    task = sample_tasks["sample_tasks:add"]
    args, kwargs = bind_arguments(task, OrderedDict(arguments))
    assert task.fn(*args, **kwargs) == expected


def test_bind_arguments_rejects_unknown_names(sample_tasks):
    with pytest.raises(TypeError, match=r"does not declare: \['nope'\]"):
        bind_arguments(sample_tasks["sample_tasks:double"], OrderedDict(x=1, nope=2))


def test_encode_result_plain():
    assert encode_result("t", {"a": 1}, False) == ("value", dumps({"a": 1}))


@pytest.mark.parametrize("value", [[1, 2, 3], (1, 2, 3), range(1, 4)])
def test_encode_result_split_pickles_each_item(value):
    kind, items = encode_result("t", value, True)
    assert kind == "items"
    assert [loads(b) for b in items] == [1, 2, 3]


def test_encode_result_split_of_an_empty_list():
    assert encode_result("t", [], True) == ("items", [])


@pytest.mark.parametrize(
    ("value", "type_name"),
    [({"a": 1}, "dict"), ("abc", "str"), (b"ab", "bytes"), (3, "int"), ({1, 2}, "set")],
)
def test_encode_result_split_refuses_non_sequences(value, type_name):
    with pytest.raises(TypeError) as info:
        encode_result("parse", value, True)
    assert str(info.value) == (
        f"task parse returned {type_name}; a downstream map "
        "needs a list, tuple or other iterable (str, bytes, dicts and sets are not split)"
    )


def test_encode_result_unpicklable_value_is_a_type_error():
    import threading

    with pytest.raises(TypeError, match="task t returned a value that cannot be pickled"):
        encode_result("t", threading.Lock(), False)


def test_encode_error_carries_type_message_traceback_and_pickle():
    try:
        raise ValueError("bad")
    except ValueError as exc:
        payload = encode_error(exc)
    assert payload[0] == "error"
    error = error_of(payload)
    assert error.type == "builtins.ValueError"
    assert error.message == "bad"
    assert "raise ValueError" in error.traceback
    assert isinstance(loads(error.pickled), ValueError)


def test_to_outcome_for_each_payload_kind():
    value = to_outcome(7, 2, ("value", b"v"))
    assert (value.task_run_id, value.attempt, value.value) == (7, 2, b"v")
    assert value.WhichOneof("result") == "value"
    items = to_outcome(7, 2, ("items", []))
    assert items.WhichOneof("result") == "items"
    assert list(items.items.items) == []
    error = to_outcome(7, 2, ("error", b""), infrastructure=True)
    assert error.WhichOneof("result") == "error"
    assert error.infrastructure
    with pytest.raises(ValueError):
        to_outcome(7, 2, ("nope", b""))  # type: ignore[arg-type]
