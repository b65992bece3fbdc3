"""`fleetflow run --param NAME=VALUE`: conversion to the flow parameters' types."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click
import pytest
from click.testing import CliRunner
from fleetflow import flow
from fleetflow.cli import cli, convert_param, parse_params


@flow
def typed(
    n: int,
    ratio: float = 0.5,
    verbose: bool = False,
    name: str = "x",
    root: Path = Path("."),
    limit: int | None = None,
    old_style: Optional[float] = None,  # noqa: UP045 - the typing spelling must work too
    items: list[int] | None = None,
    anything=None,
):
    return None


@flow
def open_ended(a: int, **extra):
    return None


@flow
def unresolvable(n: int, thing: NotDefinedAnywhere = None):  # type: ignore[name-defined]  # noqa: F821
    return None


@pytest.mark.parametrize(
    ("pair", "name", "expected"),
    [
        ("n=3", "n", 3),
        ("n=-7", "n", -7),
        ("ratio=2", "ratio", 2.0),
        ("ratio=1e-3", "ratio", 0.001),
        ("verbose=true", "verbose", True),
        ("verbose=YES", "verbose", True),
        ("verbose=1", "verbose", True),
        ("verbose=off", "verbose", False),
        ("verbose=False", "verbose", False),
        ("name=42", "name", "42"),
        ("name=", "name", ""),
        ("name=a=b", "name", "a=b"),
        ('name="quoted"', "name", '"quoted"'),
        ("root=/tmp/data", "root", Path("/tmp/data")),
        ("limit=5", "limit", 5),
        ("limit=none", "limit", None),
        ("limit=null", "limit", None),
        ("old_style=2.5", "old_style", 2.5),
        ("items=[1, 2, 3]", "items", [1, 2, 3]),
        ("anything=[1, 2]", "anything", [1, 2]),
        ('anything={"a": 1}', "anything", {"a": 1}),
        ("anything=3.5", "anything", 3.5),
        ("anything=true", "anything", True),
        ("anything=null", "anything", None),
        ("anything=hello", "anything", "hello"),
        ("anything=/some/path", "anything", "/some/path"),
    ],
)
def test_conversion(pair, name, expected):
    value = parse_params(typed, [pair])[name]
    assert value == expected and type(value) is type(expected)


def test_several_params_and_last_one_wins():
    assert parse_params(typed, ["n=1", "ratio=3", "n=2"]) == {"n": 2, "ratio": 3.0}


def test_no_params():
    assert parse_params(typed, []) == {}


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("nope=1", "no parameter 'nope'"),
        ("n", "expected NAME=VALUE"),
        ("=3", "expected NAME=VALUE"),
        ("n=three", "expected int"),
        ("n=1.5", "expected int"),
        ("ratio=fast", "expected float"),
        ("verbose=maybe", "expected a boolean"),
        ("limit=many", "expected int"),
    ],
)
def test_rejected(pair, message):
    with pytest.raises(click.BadParameter, match=message):
        parse_params(typed, [pair])


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(click.BadParameter, match="it takes: n, ratio, verbose"):
        parse_params(typed, ["bogus=1"])


def test_var_keyword_flow_accepts_extra_names_as_json():
    assert parse_params(open_ended, ["a=1", "b=[1]", "c=word"]) == {"a": 1, "b": [1], "c": "word"}


def test_var_keyword_itself_is_not_a_parameter_name():
    with pytest.raises(click.BadParameter, match="no parameter 'extra'"):
        parse_params(typed, ["extra=1"])


def test_unresolvable_hints_fall_back_to_string_annotations():
    # get_type_hints fails on the undefined name; "int" is still understood.
    assert parse_params(unresolvable, ["n=4", "thing=[1]"]) == {"n": 4, "thing": [1]}


def test_convert_param_without_annotation_is_json_or_string():
    assert convert_param("x", "12") == 12
    assert convert_param("x", "12abc") == "12abc"


def test_run_rejects_unknown_param_before_starting_anything(tmp_path):
    flows = tmp_path / "cli_param_flows.py"
    flows.write_text("from fleetflow import flow\n\n@flow\ndef f(n: int = 1):\n    return n\n")
    result = CliRunner().invoke(cli, ["run", f"{flows}:f", "--param", "m=2"])
    assert result.exit_code == 2
    assert "no parameter 'm'" in result.output


def test_run_rejects_a_target_that_is_not_a_flow(tmp_path):
    flows = tmp_path / "cli_not_a_flow.py"
    flows.write_text("value = 3\n")
    result = CliRunner().invoke(cli, ["run", f"{flows}:value"])
    assert result.exit_code == 2
    assert "not a @flow" in result.output
    result = CliRunner().invoke(cli, ["run", f"{flows}:missing"])
    assert result.exit_code == 2
    assert "no attribute 'missing'" in result.output
