"""examples/stdlib_stats.py: its tasks called directly, as plain functions."""

from __future__ import annotations

from pathlib import Path

import pytest
from fleetflow.loader import load_module
from fleetflow.serde import loads

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "stdlib_stats.py"


@pytest.fixture(scope="module")
def example():
    return load_module(str(EXAMPLE))


GOOD = '''\
"""A module."""
import os
from sys import path, argv
import json as j


class A:
    def method(self):
        def inner():
            pass

    async def amethod(self):
        pass


class B(A):
    pass


async def top():
    import re
'''


def test_parse_module_counts(example, tmp_path):
    path = tmp_path / "pkg" / "good.py"
    path.parent.mkdir()
    path.write_text(GOOD)
    stats = example.parse_module(str(path), root=str(tmp_path))
    assert stats == {
        "module": "pkg/good.py",
        "lines": GOOD.count("\n"),
        "functions": 4,
        "classes": 2,
        "imports": 4,
        "error": None,
    }


def test_parse_module_without_root_is_relative_to_the_stdlib(example):
    import json
    import os

    path = json.__file__
    assert example.parse_module(path)["module"] == os.path.join("json", "__init__.py")


def test_list_sources_refuses_a_missing_root(example, tmp_path):
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        example.list_sources(str(tmp_path / "nope"))
    assert example.list_sources(None)[0].startswith(example.stdlib_root())


@pytest.mark.parametrize(
    ("content", "error_type"),
    [
        pytest.param(b"def broken(:\n    pass\n", "SyntaxError", id="syntax"),
        pytest.param(b"x = 1\x00\n", "SyntaxError", id="null-byte"),
        pytest.param(b"x = '\xff\xfe'\n", "SyntaxError", id="not-utf8"),
        pytest.param(b"# -*- coding: nope -*-\nx = 1\n", "SyntaxError", id="bad-cookie"),
    ],
)
def test_parse_module_reports_broken_files(example, tmp_path, content, error_type):
    path = tmp_path / "broken.py"
    path.write_bytes(content)
    stats = example.parse_module(str(path), root=str(tmp_path))
    assert stats["module"] == "broken.py"
    assert stats["error"].split(":")[0] in {error_type, "ValueError", "UnicodeDecodeError"}
    assert (stats["lines"], stats["functions"], stats["classes"], stats["imports"]) == (0, 0, 0, 0)


def test_list_sources_skips_site_packages_and_caches(example, tmp_path):
    for rel in [
        "b.py",
        "a/x.py",
        "a/notes.txt",
        "site-packages/dep/mod.py",
        "a/__pycache__/x.cpython-311.py",
        "a/deeper/site-packages/y.py",
        "c/z.py",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    found = example.list_sources(str(tmp_path))
    assert found == sorted(str(tmp_path / r) for r in ["a/x.py", "b.py", "c/z.py"])


def row(module, lines, error=None):
    return {
        "module": module,
        "lines": lines,
        "functions": lines // 10,
        "classes": 1,
        "imports": 2,
        "error": error,
    }


def test_summarize(example):
    stats = [row(f"m{i:02}.py", i * 10) for i in range(12)]
    stats += [
        row("z_broken.py", 0, "SyntaxError: bad"),
        row("a_broken.py", 0, "UnicodeDecodeError: bad"),
    ]
    summary = example.summarize(stats)
    assert summary["files"] == 14
    assert summary["parsed"] == 12
    assert summary["unparsable"] == 2
    assert summary["lines"] == sum(i * 10 for i in range(12))
    assert summary["functions"] == sum(range(12))
    assert summary["classes"] == 12
    assert summary["imports"] == 24
    largest = summary["largest_modules"]
    assert [r["module"] for r in largest] == [f"m{i:02}.py" for i in range(11, 1, -1)]
    assert largest[0] == {"module": "m11.py", "lines": 110, "functions": 11, "classes": 1}
    assert summary["unparsable_files"] == [
        {"module": "a_broken.py", "error": "UnicodeDecodeError: bad"},
        {"module": "z_broken.py", "error": "SyntaxError: bad"},
    ]


def test_summarize_nothing(example):
    summary = example.summarize([])
    assert summary["files"] == 0 and summary["largest_modules"] == []


def test_flow_graph(example, tmp_path):
    spec = example.stdlib_stats.build(root=str(tmp_path))
    names = [(n.task_name, n.map) for n in spec.nodes]
    assert names == [
        ("stdlib_stats:list_sources", False),
        ("stdlib_stats:parse_module", True),
        ("stdlib_stats:summarize", False),
    ]
    parse = spec.nodes[1]
    assert dict(parse.resources.amounts) == {"cpu": 1.0, "memory": 256e6}
    assert parse.retry.retries == 2 and parse.retry.retry_delay_seconds == 0.5
    (path_arg,) = [a for a in parse.args if a.name == "path"]
    assert path_arg.mapped and path_arg.node == 0
    assert spec.output_node == 2
    assert loads(spec.parameters) == {"root": str(tmp_path)}


def test_tasks_compose_locally(example, tmp_path):
    (tmp_path / "one.py").write_text("import os\n\ndef f():\n    pass\n")
    (tmp_path / "two.py").write_text("def (\n")
    paths = example.list_sources(str(tmp_path))
    summary = example.summarize([example.parse_module(p, str(tmp_path)) for p in paths])
    assert (summary["files"], summary["parsed"], summary["unparsable"]) == (2, 1, 1)
    assert summary["largest_modules"][0]["module"] == "one.py"
