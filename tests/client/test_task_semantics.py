"""Bug classes other orchestrators' users hit, checked on the client side (no fleet).

* task options that are NaN, infinite, negative or not numbers fail at ``@task``
  with the task, the option and the rule (not at submit, not as a bare TypeError);
* a map iterates generators, iterators and array-likes, and passes strings,
  dicts and sets whole (Prefect #2023: mapping over a generator);
* a task's exception whose ``__init__`` takes other arguments, or that holds
  an attribute that does not pickle, comes back as its own type (Celery
  #6990, Ray #52660); a task's ``SystemExit``/``KeyboardInterrupt`` never
  re-raises in the caller; a failure the coordinator describes is a
  ``FlowRunFailed``.
"""

from __future__ import annotations

import itertools
import math
import threading
from pathlib import Path

import pytest
from fleetflow import FlowRunFailed, RemoteTaskError, flow, task, unmapped
from fleetflow.api.v1 import common_pb2
from fleetflow.serde import error_from_exception, exception_from_error, loads


def _plain(x, y=0):
    return x + y


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("timeout_seconds", math.nan),
        ("timeout_seconds", math.inf),
        ("timeout_seconds", -1),
        ("timeout_seconds", 0),
        ("timeout_seconds", "5"),
        ("retry_delay_seconds", math.nan),
        ("retry_delay_seconds", [1.0, math.inf]),
        ("retry_delay_seconds", "5"),
        ("retry_delay_seconds", []),
        ("retry_backoff", math.nan),
        ("retry_backoff", 0.5),
        ("retry_backoff", None),
        ("retry_max_delay_seconds", -1),
        ("retry_max_delay_seconds", math.inf),
        ("retry_jitter", math.nan),
        ("retry_jitter", 2),
        ("retries", math.nan),
        ("retries", -1),
        ("retries", 1.5),
        ("concurrency_limit", 0),
        ("concurrency_limit", 1.5),
    ],
)
def test_a_bad_task_option_fails_at_definition_naming_task_and_option(option, value):
    with pytest.raises(ValueError) as info:
        task(name=f"sem:bad_{option}", **{option: value})(_plain)
    message = str(info.value)
    assert "task 'sem:bad_" in message and option in message, message


def test_a_bad_flow_timeout_fails_at_definition():
    for value in (math.nan, math.inf, -1.0, "3"):
        with pytest.raises(ValueError, match="flow 'f': timeout_seconds"):
            flow(name="f", timeout_seconds=value)(lambda: None)
    assert flow(name="f", timeout_seconds=2)(lambda: None).timeout_seconds == 2.0


def test_good_task_options_are_kept_as_numbers():
    t = task(
        name="sem:good",
        timeout_seconds=1,
        retry_delay_seconds=[0, 2],
        retry_backoff=2,
        retry_max_delay_seconds=30,
        retry_jitter=0,
        concurrency_limit=3,
    )(_plain)
    assert t.timeout_seconds == 1.0 and t.retry_delay_seconds == [0.0, 2.0]
    assert (t.retry_backoff, t.retry_max_delay_seconds, t.retry_jitter) == (2.0, 30.0, 0.0)


add = task(name="sem:add")(_plain)
mapped_add = task(name="sem:mapped_add", mapped=True)(_plain)


class ArrayLike:
    """Like a numpy array: iterates and has a length, but is no registered Sequence."""

    def __init__(self, items):
        self._items = list(items)

    def __len__(self):
        return len(self._items)

    def __getitem__(self, i):
        return self._items[i]


def _mapped_literals(spec, node=0):
    return {
        a.name: [loads(b) for b in a.literal_items.items] for a in spec.nodes[node].args if a.mapped
    }


@pytest.mark.parametrize(
    "make",
    [
        lambda: (i for i in range(3)),
        lambda: iter([0, 1, 2]),
        lambda: ArrayLike(range(3)),
        lambda: {0: "a", 1: "b", 2: "c"}.keys(),
        lambda: map(int, "012"),
    ],
)
def test_a_map_iterates_generators_iterators_and_array_likes(make):
    @flow
    def f():
        return add.map(make(), [10, 20, 30])

    assert _mapped_literals(f.build()) == {"x": [0, 1, 2], "y": [10, 20, 30]}
    assert mapped_add(make(), [10, 20, 30]) == [10, 21, 32]  # outside a flow: the same rule


@pytest.mark.parametrize("whole", ["abc", b"ab", {"k": 1}, {1, 2}, frozenset({3})])
def test_strings_dicts_and_sets_are_passed_whole(whole):
    @flow
    def f():
        return add.map([1, 2], whole)

    spec = f.build()
    assert _mapped_literals(spec) == {"x": [1, 2]}
    (y,) = [a for a in spec.nodes[0].args if a.name == "y"]
    assert loads(y.literal) == whole


def test_an_endless_iterator_is_refused_not_drained():
    @flow
    def f():
        return add.map(itertools.count(), unmapped(1))

    with pytest.raises(ValueError, match="more than 1,000,000 items"):
        f.build()


def test_an_argument_that_does_not_pickle_is_named():
    @flow
    def f():
        return add(threading.Lock())

    with pytest.raises(TypeError, match=r"sem:add\(\): argument 'x' \(lock\) cannot be pickled"):
        f.build()


class CodeError(Exception):
    def __init__(self, code, detail):
        super().__init__(f"code={code} detail={detail}")
        self.code = code


class LockedError(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()
        self.attempts = 3


class KeywordError(Exception):
    def __init__(self, *, field):
        super().__init__()
        self.field = field


def _round_trip(exc: BaseException) -> BaseException:
    return exception_from_error(error_from_exception(exc))


def test_exceptions_that_do_not_pickle_plainly_come_back_as_their_own_type():
    back = _round_trip(CodeError(42, "boom"))
    assert type(back) is CodeError and str(back) == "code=42 detail=boom" and back.code == 42
    back = _round_trip(LockedError("held"))
    assert type(back) is LockedError and back.args == ("held",) and back.attempts == 3
    assert not hasattr(back, "lock")  # what does not pickle is left out, not the whole error
    back = _round_trip(KeywordError(field="name"))
    assert type(back) is KeywordError and back.field == "name"


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt("ki"), GeneratorExit()])
def test_a_tasks_base_exception_is_not_raised_as_itself_in_the_caller(exc):
    back = _round_trip(exc)
    assert isinstance(back, RemoteTaskError) and isinstance(back, FlowRunFailed)
    assert back.type_name == f"builtins.{type(exc).__name__}"


def test_a_failure_the_coordinator_describes_is_a_flow_run_failed():
    error = common_pb2.TaskError(
        type="fleetflow.errors.FlowRunFailed", message="task t: unschedulable for 2 s"
    )
    back = exception_from_error(error)
    assert type(back) is FlowRunFailed and str(back) == "task t: unschedulable for 2 s"


def test_an_error_whose_text_breaks_still_makes_a_task_error():
    class BadStr(Exception):
        def __str__(self):
            raise RuntimeError("no text")

    error = error_from_exception(BadStr())
    assert error.message == "<str() of the exception raised RuntimeError>"
    error = error_from_exception(ValueError("no file caf\udce9.txt"))
    assert error.message == "no file caf\\udce9.txt" and error.SerializeToString()


class Pipeline:
    def __init__(self, k):
        self.k = k

    @task(name="sem:Pipeline.step")
    def step(self, x):
        return self.k + x


def test_a_task_defined_in_a_class_body_is_a_method():
    pipeline = Pipeline(100)
    assert pipeline.step(1) == 101 and Pipeline.step.name == "sem:Pipeline.step"

    @flow
    def f():
        return pipeline.step.map([1, 2])

    node = f.build().nodes[0]
    args = {a.name: a for a in node.args}
    assert not args["self"].mapped and loads(args["self"].literal).k == 100
    assert [loads(b) for b in args["x"].literal_items.items] == [1, 2]

    class Holder:
        adder = add  # defined elsewhere: not bound

    assert Holder().adder(1, 2) == 3


def test_with_options_cannot_change_retry_on_under_the_same_name():
    base = task(name="sem:retried", retry_on=KeyError)(_plain)
    assert base.with_options(retries=3, retry_on=(KeyError,)).retries == 3
    with pytest.raises(ValueError, match="with_options cannot change retry_on"):
        base.with_options(retry_on=ValueError)
    assert base.with_options(name="sem:retried_v", retry_on=ValueError).retry_on == (ValueError,)


def test_a_huge_error_is_cut_where_it_is_made():
    # A 2 MB message used to travel whole (message, traceback and pickle: three
    # copies) for the coordinator to cut; the traceback now keeps its end.
    try:
        raise ValueError("x" * (2 << 20))
    except ValueError as exc:
        error = error_from_exception(exc)
    assert len(error.message) <= 256 * 1024 and error.message.endswith("characters cut ...]")
    assert len(error.traceback) <= 256 * 1024 and error.traceback.startswith("[... ")
    assert error.pickled == b""  # over the 1 MiB error_pickle limit: type and message stay
    assert error.type == "builtins.ValueError"


def test_fleetflow_run_names_missing_parameters_as_a_usage_error(tmp_path):
    from click.testing import CliRunner
    from fleetflow.cli import cli

    module = tmp_path / "needs_params.py"
    module.write_text(
        "from fleetflow import flow\n\n@flow\ndef f(n: int, *, label: str, k=1):\n    return n\n"
    )
    done = CliRunner().invoke(cli, ["run", f"{module}:f", "--coordinator", "127.0.0.1:1"])
    assert done.exit_code == 2, done.output
    assert "flow 'f' needs 'n', 'label': pass -p n=VALUE -p label=VALUE" in done.output


def test_mapping_over_a_list_of_futures_says_how_to_do_it():
    @flow
    def f():
        return add.map([add(1, 2), add(3, 4)], unmapped(1))

    with pytest.raises(TypeError, match="is a list of task futures; a map iterates"):
        f.build()


def test_mapping_over_star_args_says_to_map_a_named_parameter():
    @task(name="sem:star")
    def star(*args):
        return args

    @flow
    def f():
        return star.map([1, 2])

    with pytest.raises(TypeError, match=r"\*args and \*\*kwargs are passed whole"):
        f.build()


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["--timeout", "nan"], "'--timeout': 'nan' is not a finite number"),
        (["--cpu", "inf"], "'--cpu': 'inf' is not a finite number"),
        (["--unschedulable-timeout", "nan"], "'--unschedulable-timeout': 'nan' is not a finite"),
        (["--resource", "gpu=inf"], "--resource: expected NAME=AMOUNT (a finite amount >= 0)"),
        (["--pool", " "], "--pool: a pool name must not be empty"),
    ],
)
def test_fleetflow_run_refuses_non_finite_and_empty_options_before_starting(args, shown):
    # NaN passes click's range checks: --timeout nan meant "never", and --cpu nan or
    # --unschedulable-timeout nan started an embedded fleet that failed ("see fleet.log").
    from click.testing import CliRunner
    from fleetflow.cli import cli

    example = Path(__file__).resolve().parents[2] / "examples" / "stdlib_stats.py"
    done = CliRunner().invoke(cli, ["run", f"{example}:stdlib_stats", *args])
    assert done.exit_code == 2 and shown in done.output, done.output


def test_client_call_arguments_are_checked_naming_the_field():
    # Before: protobuf's "'str' object cannot be interpreted as an integer" or
    # "Value out of range", set_concurrency_limit(tag, -1) silently removed the
    # limit, and result(timeout=nan) gave up at once.
    from fleetflow import Client

    @flow(name="sem_quick")
    def quick():
        return 1

    with Client("127.0.0.1:1") as client:  # each check fails before any call is made
        for kwargs, message in (
            ({"priority": "high"}, "priority must be a whole number"),
            ({"priority": 2**40}, "priority must be a whole number"),
            ({"idempotency_key": 123}, "idempotency_key must be a str or None"),
        ):
            with pytest.raises((TypeError, ValueError), match=message):
                client.submit(quick, **kwargs)
        with pytest.raises(ValueError, match="limit must be a whole number in \\[0, "):
            client.set_concurrency_limit("tag", -1)
        with pytest.raises(ValueError, match="limit must be a whole number"):
            client.set_concurrency_limit("tag", 1.5)
        with pytest.raises(ValueError, match="wait_s must be a finite number"):
            client.get("run", wait_s=math.nan)
        with pytest.raises(ValueError, match="timeout must be >= 0 seconds"):
            client.handle("run").result(timeout=math.nan)
        with pytest.raises(ValueError, match="offset must be a whole number"):
            client.list_task_runs("run", offset=-1)
        with pytest.raises(ValueError, match="task_run_id must be a whole number"):
            client.cancel_task_run(-1)


@pytest.mark.parametrize("text", ["abc:parse[x]", "abc:parse[-1]", "abc:parse[2"])
def test_a_task_run_reference_with_a_bad_index_is_a_usage_error(text):
    import click
    from fleetflow._cli_taskruns import parse_task_ref

    with pytest.raises(click.BadParameter, match="INDEX a whole number >= 0"):
        parse_task_ref(text)
    assert parse_task_ref("abc:parse[3]") == ("abc", "parse", 3)
    assert parse_task_ref("abc123") is None
