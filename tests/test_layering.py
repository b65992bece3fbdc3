"""The module map of docs/architecture.md, checked: which module may import which (an AST check).

Reads every source file's imports (module level and inside functions) without
importing anything, and checks the rules of "Module map": the direction between
the three packages, the pure core's imports, and the layers inside the core.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = {
    "fleetflow": "client",
    "fleetflow_coordinator": "coordinator",
    "fleetflow_worker": "worker",
}

#: The standard-library modules the pure core may use: no clock, no randomness,
#: no I/O, no threads, no event loop, no logging.
CORE_STDLIB = {
    "__future__",
    "bisect",
    "collections",
    "dataclasses",
    "enum",
    "heapq",
    "itertools",
    "math",
    "typing",
}

#: Inside the core: {module: core modules it may import}. A new module is added
#: here and to docs/architecture.md ("Module map") together.
CORE_LAYERS = {
    "model": set(),
    "retry": set(),
    "table": {"model"},
    "spec": {"model", "retry"},
    "messages": {"model"},
    "queries": {"model"},
    "versions": {"model"},
    "placement": {"model", "messages", "table", "versions"},
    "unschedulable": {"model", "table", "versions"},
    "workers": {"model", "table"},
    "transitions": {"model", "placement", "retry", "table"},
    "restore": {"model", "spec"},
    "invariants": {"model", "table"},
    "scheduler": {
        "model",
        "messages",
        "table",
        "spec",
        "placement",
        "unschedulable",
        "workers",
        "transitions",
        "restore",
        "invariants",
        "retry",
    },
    "__init__": {"model", "scheduler", "spec", "messages", "table", "invariants"},
}

#: {package: packages it must never import}
FORBIDDEN = {
    "fleetflow": {"fleetflow_coordinator", "fleetflow_worker"},
    "fleetflow_worker": {"fleetflow_coordinator"},
    "fleetflow_coordinator": {"fleetflow_worker"},
}


def _modules(package: str) -> list[tuple[str, Path]]:
    base = ROOT / SOURCE_ROOTS[package]
    out = []
    for path in sorted((base / package).rglob("*.py")):
        if "api" in path.relative_to(base / package).parts[:1]:
            continue  # generated protocol code
        parts = path.relative_to(base).with_suffix("").parts
        out.append((".".join(parts), path))
    return out


def _imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    package = module.rsplit(".", 1)[0] if not path.name == "__init__.py" else module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this package
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            for alias in node.names:  # "from pkg import submodule"
                found.add(f"{name}.{alias.name}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_point_one_way(package):
    bad = []
    for module, path in _modules(package):
        for name in _imports(path, module):
            if name.split(".")[0] in FORBIDDEN[package]:
                bad.append(f"{module} imports {name}")
    assert not bad, bad


def _private(name: str) -> bool:
    """Whether an imported dotted name reaches a private module or name (``_x``, not ``__x__``)."""
    return any(part.startswith("_") and not part.endswith("__") for part in name.split("."))


#: The packages that use the client package only through its public modules
#: (fleetflow.execution, fleetflow.startup, fleetflow.store, ...), never
#: ``fleetflow._task`` and the like.
PUBLIC_CLIENT_ONLY = ("fleetflow_coordinator", "fleetflow_worker")


@pytest.mark.parametrize("package", PUBLIC_CLIENT_ONLY)
def test_the_client_package_is_used_through_public_modules(package):
    bad = []
    for module, path in _modules(package):
        for name in _imports(path, module):
            if name.split(".")[0] == "fleetflow" and _private(name):
                bad.append(f"{module} imports {name}: use a public module (fleetflow.execution)")
    assert not bad, bad


def test_the_core_is_pure_and_layered():
    core = "fleetflow_coordinator.core"
    seen = set()
    bad = []
    for module, path in _modules("fleetflow_coordinator"):
        if not module.startswith(core + "."):
            continue
        short = module.removeprefix(core + ".")
        seen.add(short)
        if short not in CORE_LAYERS:
            bad.append(f"{module}: not in the module map (CORE_LAYERS and docs/architecture.md)")
            continue
        for name in _imports(path, module):
            if name.startswith(core + "."):
                target = name.removeprefix(core + ".").split(".")[0]
                if target in CORE_LAYERS and target not in CORE_LAYERS[short] | {short}:
                    bad.append(f"{module} imports core.{target}")
            elif name == core:
                if short != "__init__":
                    bad.append(f"{module} imports the core package from inside it")
            elif name.split(".")[0] not in CORE_STDLIB:
                bad.append(f"{module} imports {name}: the core is pure ({sorted(CORE_STDLIB)})")
    assert not bad, bad
    assert seen == set(CORE_LAYERS), set(CORE_LAYERS) - seen


def test_the_map_is_in_the_docs():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert "## Module map" in doc
    for short in CORE_LAYERS:
        if short != "__init__":
            assert f"`core/{short}.py`" in doc, f"core/{short}.py is missing from the module map"


def test_the_check_sees_a_violation(tmp_path):
    # The AST reader resolves relative imports and "from x import y" submodules.
    path = tmp_path / "mod.py"
    path.write_text("from . import scheduler\nfrom ..store import rows\nimport time\n")
    found = _imports(path, "fleetflow_coordinator.core.mod")
    assert "fleetflow_coordinator.core.scheduler" in found
    assert "fleetflow_coordinator.store.rows" in found
    assert "time" in found
    # A private module or name of another package is seen; dunders are not private.
    path.write_text("from fleetflow import _task\nfrom fleetflow.execution import Task\n")
    found = _imports(path, "fleetflow_worker.mod")
    assert [n for n in sorted(found) if _private(n)] == ["fleetflow._task"]
    assert not _private("fleetflow.__init__")


#: Issue 19: no hand-written module in the three packages grows past this many lines
#: (generated protocol code aside); split it along a seam instead.
MAX_MODULE_LINES = 600


def test_no_hand_written_module_is_over_600_lines():
    over = {}
    for root in SOURCE_ROOTS.values():
        for path in (ROOT / root).rglob("*.py"):
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")):
                continue
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > MAX_MODULE_LINES:
                over[str(path.relative_to(ROOT))] = lines
    assert not over, f"over {MAX_MODULE_LINES} lines: {over}"


#: Where a process may run gRPC: the three packages, the tests and the benchmarks.
FORK_CHECKED = (*SOURCE_ROOTS.values(), "tests", "benchmarks")


def _forks(tree: ast.AST) -> list[int]:
    """Lines that fork the running process: ``os.fork()``, a ``preexec_fn``, a "fork" context."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        named = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        first = node.args[0] if node.args else None
        fork_context = named in {"get_context", "set_start_method"} and (
            isinstance(first, ast.Constant) and first.value == "fork"
        )
        if named in {"fork", "forkpty"} or fork_context:
            lines.append(node.lineno)
        elif any(k.arg == "preexec_fn" for k in node.keywords):
            lines.append(node.lineno)
    return lines


def test_no_code_forks_a_process_that_may_run_grpc():
    """Child processes start by exec (subprocess without ``preexec_fn``) or from a forkserver.

    gRPC's fork handlers, run in a child forked while another thread is inside
    gRPC, sometimes abort that child before it reaches exec (SIGABRT,
    "epoll_wait error: Bad file descriptor"): a test's coordinator started with
    ``preexec_fn`` died that way. ``subprocess`` forks only for a
    ``preexec_fn`` (it uses vfork otherwise, which runs no fork handlers).
    """
    found = {}
    for folder in FORK_CHECKED:
        for path in (ROOT / folder).rglob("*.py"):
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py")) or ".venv" in path.parts:
                continue
            lines = _forks(ast.parse(path.read_text(encoding="utf-8")))
            if lines:
                found[str(path.relative_to(ROOT))] = lines
    assert not found, f"fork the running process: {found}"
    caught = "subprocess.Popen(a, preexec_fn=f)\nos.fork()\nmp.get_context('fork')\n"
    assert _forks(ast.parse(caught + "mp.get_context('forkserver')")) == [1, 2, 3]
