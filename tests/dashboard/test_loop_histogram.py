"""LoopHistogram exposes exactly what prometheus_client's Histogram does (without _created)."""

from __future__ import annotations

from fleetflow_coordinator.metrics import DURATION_BUCKETS, MEMORY_BUCKETS, LoopHistogram
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest


@settings(max_examples=50, deadline=None)
@given(
    st.sampled_from([DURATION_BUCKETS, MEMORY_BUCKETS]),
    st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.floats(0, 1e12, allow_nan=False)),
        max_size=80,
    ),
)
def test_the_exposition_matches_prometheus_client(buckets, observations):
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("x_seconds", "doc", ["task"], buckets=buckets, registry=theirs)
    loop = LoopHistogram("x_seconds", "doc", ("task",), buckets)
    ours.register(loop)
    for task, value in [*observations, ("a", buckets[0]), ("b", 0.0)]:  # a bound, inclusive
        reference.labels(task).observe(value)
        loop.observe((task,), value)
    expected = [
        line for line in generate_latest(theirs).decode().splitlines() if "_created" not in line
    ]
    assert generate_latest(ours).decode().splitlines() == expected
