"""serde.dumps: the standard pickler for plain values, cloudpickle for the rest."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
from fleetflow.serde import dumps, loads

PLAIN = [
    0,
    -5,
    2**70,
    1.5,
    float("inf"),
    "héllo",
    b"\x00",
    True,
    None,
    1j,
    (1, "a"),
    [1, 2.0],
    {1, 2},
    frozenset({"x"}),
    {"a": 1, 2: None},
    (),
]


@pytest.mark.parametrize("value", PLAIN, ids=repr)
def test_plain_values_round_trip_and_are_standard_pickles(value):
    data = dumps(value)
    assert loads(data) == value
    assert pickle.loads(data) == value


def test_functions_and_nested_values_still_travel_by_value():
    square = lambda x: x * x  # noqa: E731 - a lambda is the point
    data = dumps([square, 3])
    # Load in a fresh interpreter, where no module defines the lambda.
    code = "import sys, cloudpickle; f, x = cloudpickle.loads(sys.stdin.buffer.read()); print(f(x))"
    out = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True, check=True)
    assert out.stdout.strip() == b"9"
    assert loads(dumps({"k": [1, (2, 3)]})) == {"k": [1, (2, 3)]}
