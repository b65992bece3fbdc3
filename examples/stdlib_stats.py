"""Count lines, functions, classes and imports in every module of the standard library.

A real-input example: one task lists the files, a mapped task parses each
file on whichever worker has room (one task run per file, retried on
failure), and one task folds the per-file numbers into a summary.

Run it on an embedded fleet (a coordinator plus workers on this machine)::

    fleetflow run examples/stdlib_stats.py:stdlib_stats --workers 4

or on another tree::

    fleetflow run examples/stdlib_stats.py:stdlib_stats -p root=path/to/project

Outside a flow the tasks are plain functions, so they are tested as such
(see tests/client/test_example_stdlib_stats.py).
"""

from __future__ import annotations

import ast
import os
import sysconfig
import tokenize
import warnings

from fleetflow import flow, task, unmapped

SKIPPED_DIRS = frozenset({"site-packages", "__pycache__"})


def stdlib_root() -> str:
    """The standard library folder of the Python running this code."""
    return sysconfig.get_paths()["stdlib"]


@task
def list_sources(root: str | None = None) -> list[str]:
    """Every ``.py`` file under ``root``, sorted, skipping installed packages and caches.

    ``root`` defaults to the standard library of the worker that runs this.

    Raises:
        NotADirectoryError: ``root`` is not a folder (so a typo is not a summary of zeros).
    """
    root = root or stdlib_root()
    if not os.path.isdir(root):
        raise NotADirectoryError(f"root {root!r} is not a folder")
    paths = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
        paths.extend(os.path.join(folder, f) for f in files if f.endswith(".py"))
    return sorted(paths)


@task(resources={"cpu": 1, "memory": "256MB"}, retries=2, retry_delay_seconds=0.5)
def parse_module(path: str, root: str | None = None) -> dict:
    """Count what one module defines; a file that does not parse is reported, not raised.

    ``module`` is the path relative to ``root`` (default: the standard library).
    """
    root = root or stdlib_root()
    stats = {
        "module": os.path.relpath(path, root),
        "lines": 0,
        "functions": 0,
        "classes": 0,
        "imports": 0,
        "error": None,
    }
    try:
        with tokenize.open(path) as f:  # honours the file's coding cookie
            source = f.read()
        with warnings.catch_warnings():  # old escapes in test data are not our concern
            warnings.simplefilter("ignore")
            tree = ast.parse(source, filename=path)
    except (SyntaxError, ValueError, UnicodeDecodeError) as exc:
        stats["error"] = f"{type(exc).__name__}: {exc}"
        return stats
    stats["lines"] = len(source.splitlines())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            stats["functions"] += 1
        elif isinstance(node, ast.ClassDef):
            stats["classes"] += 1
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            stats["imports"] += 1
    return stats


@task
def summarize(stats: list[dict]) -> dict:
    """Totals over all modules, the ten largest by lines, and the files that did not parse."""
    parsed = [s for s in stats if not s.get("error")]
    broken = [s for s in stats if s.get("error")]
    largest = sorted(parsed, key=lambda s: (-s["lines"], s["module"]))[:10]
    return {
        "files": len(stats),
        "parsed": len(parsed),
        "unparsable": len(broken),
        "lines": sum(s["lines"] for s in parsed),
        "functions": sum(s["functions"] for s in parsed),
        "classes": sum(s["classes"] for s in parsed),
        "imports": sum(s["imports"] for s in parsed),
        "largest_modules": [
            {k: s[k] for k in ("module", "lines", "functions", "classes")} for s in largest
        ],
        "unparsable_files": [
            {"module": s["module"], "error": s["error"]}
            for s in sorted(broken, key=lambda s: s["module"])
        ],
    }


@flow
def stdlib_stats(root: str | None = None) -> dict:
    """Statistics of every module under ``root``.

    ``root`` defaults to the standard library of the workers (resolved where the
    tasks run, so a client on another machine needs no path of theirs).
    """
    paths = list_sources(root)  # one task run: the list of files
    stats = parse_module.map(paths, root=unmapped(root))  # one task run per file, in parallel
    return summarize(stats)  # fan-in: receives the list of per-file dicts, in order
