"""Task identity (issue 11, item 1): qualified names, one definition per name, fingerprints."""

from __future__ import annotations

import gc
import importlib
import os
import subprocess
import sys
import textwrap

import pytest
from fleetflow import DuplicateTaskError, task
from fleetflow._identity import fingerprint
from fleetflow.loader import load_module
from fleetflow_worker._child import load_tasks

from tests.e2e.fleet import ROOT, _env


@task
def plain(x: int) -> int:
    return x


def make_scaler(factor):
    @task
    def scale(x: int) -> int:
        return factor * x

    return scale


def make_named_scaler(factor):
    @task(name=f"unit_scale_by_{factor}")
    def scale(x: int) -> int:
        return factor * x

    return scale


def test_the_default_name_is_module_and_qualname():
    assert plain.name == f"{__name__}:plain"
    assert make_scaler(1).name == f"{__name__}:make_scaler.<locals>.scale"


def test_a_given_name_is_kept_and_must_be_a_non_empty_string():
    assert make_named_scaler(2).name == "unit_scale_by_2"
    with pytest.raises(ValueError, match="non-empty string"):
        task(name="")(lambda: None)


def test_a_factory_making_two_tasks_under_one_name_is_refused_with_both_places():
    double = make_scaler(2)
    with pytest.raises(DuplicateTaskError) as caught:
        make_scaler(3)
    message = str(caught.value)
    assert double.name in message
    here = __file__
    # Both the definition line and the two calls of the factory are named.
    assert message.count(f"{here}:") >= 3 and "called from" in message
    assert "distinct name" in message and "@task(name=...)" in message
    assert isinstance(caught.value, ValueError)


def test_a_factory_with_distinct_names_makes_distinct_tasks():
    double, triple = make_named_scaler(2), make_named_scaler(3)
    assert (double.name, triple.name) == ("unit_scale_by_2", "unit_scale_by_3")
    assert double.fingerprint != triple.fingerprint  # the closure's value counts
    assert (double(10), triple(10)) == (20, 30)


def make_adder(amount):
    @task
    def add(x: int) -> int:
        return x + amount

    return add


def test_the_same_factory_call_again_is_the_same_task():
    first = make_adder(5)
    again = make_adder(5)
    assert first.name == again.name and first.fingerprint == again.fingerprint


def test_a_collected_definition_frees_its_name():
    gc.collect()  # a refused definition's traceback may hold one of another test
    make_scaler(7)
    gc.collect()
    assert make_scaler(8).name.endswith("make_scaler.<locals>.scale")


def test_one_name_given_to_two_functions_is_refused():
    @task(name="identity-test-shared")
    def first() -> int:
        return 1

    with pytest.raises(DuplicateTaskError, match="rename one of the functions"):

        @task(name="identity-test-shared")
        def second() -> int:
            return 2

    assert first() == 1


def test_any_version_says_so_and_sends_no_fingerprint():
    from fleetflow import flow
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        loose = plain.with_options(any_version=True)
    assert [(e["event"], e["log_level"], e["task_name"]) for e in logs] == [
        ("task_any_version", "warning", plain.name)
    ]

    @flow
    def both():
        return loose(plain(1))

    strict_node, loose_node = both.build().nodes[:2]
    assert strict_node.fingerprint == plain.fingerprint and loose_node.fingerprint == ""


def test_with_options_keeps_the_name_and_is_no_duplicate():
    other = plain.with_options(retries=2)
    assert other.name == plain.name and other.fingerprint == plain.fingerprint


def _write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


def test_two_modules_defining_the_same_function_get_two_names(tmp_path):
    a = _write(
        tmp_path / "identity_mod_a.py",
        "from fleetflow import task\n\n@task\ndef process(x):\n    return ('a', x)\n",
    )
    b = _write(
        tmp_path / "identity_mod_b.py",
        "from fleetflow import task\n\n@task\ndef process(x):\n    return ('b', x)\n",
    )
    tasks = load_tasks([str(a), str(b)])
    assert tasks["identity_mod_a:process"](1) == ("a", 1)
    assert tasks["identity_mod_b:process"](1) == ("b", 1)


def test_a_module_reloaded_after_an_edit_replaces_its_tasks(tmp_path, monkeypatch):
    path = _write(
        tmp_path / "identity_reloaded.py",
        "from fleetflow import task\n\n@task\ndef f():\n    return 1\n",
    )
    module = load_module(str(path))
    before = module.f.fingerprint
    _write(path, "from fleetflow import task\n\n@task\ndef f():\n    return 2\n")
    os.utime(path, (0, 2_000_000_000))  # a new mtime, so the bytecode cache is not used
    module = importlib.reload(module)
    assert module.f() == 2 and module.f.fingerprint != before
    sys.modules.pop("identity_reloaded", None)


def _in_subprocess(code: str, *args: str, env: dict | None = None) -> str:
    done = subprocess.run(
        [sys.executable, *args] if args else [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**_env(), **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_script_run_as_main_names_its_tasks_as_workers_load_them(tmp_path):
    script = _write(
        tmp_path / "identity_script.py",
        "from fleetflow import task\n\n@task\ndef f():\n    return 1\n\n"
        "print(f.name, f.fingerprint)\n",
    )
    as_main = _in_subprocess("", str(script))
    code = f"from fleetflow.loader import load_module; m = load_module({str(script)!r})"
    as_module = _in_subprocess(code)  # the module prints at import
    assert as_main == as_module and as_main.startswith("identity_script:f ")


def test_the_fingerprint_is_the_same_in_every_process_and_ignores_where_the_code_sits():
    code = (
        "from fleetflow.loader import load_module; "
        "m = load_module('tests/worker/sample_tasks.py'); print(m.add.fingerprint)"
    )
    one = _in_subprocess(code, env={"PYTHONHASHSEED": "1"})
    two = _in_subprocess(code, env={"PYTHONHASHSEED": "2"})
    assert one == two and len(one) == 16


def test_the_fingerprint_follows_code_signature_name_and_closure(tmp_path):
    def version(text: str, name: str = "m:f") -> str:
        namespace: dict = {}
        path = tmp_path / f"v{abs(hash(text))}.py"
        path.write_text(text)
        exec(compile(text, str(path), "exec"), namespace)  # noqa: S102 - test input
        fn = namespace["f"]
        import inspect

        return fingerprint(name, fn, inspect.signature(fn))

    base = version("def f(x, y=1):\n    return x + y\n")
    assert version("\n\n\ndef f(x, y=1):\n    return x + y\n") == base  # moved down: same
    assert version("def f(x, y=1):\n    return x - y\n") != base  # code
    assert version("def f(x, y=2):\n    return x + y\n") != base  # default
    assert version("def f(x, z=1):\n    return x + z\n") != base  # signature
    assert version("def f(x, y=1):\n    return x + y\n", name="m:g") != base  # name
