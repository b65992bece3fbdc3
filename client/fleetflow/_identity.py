"""Task identity: a task's name, its code fingerprint, and the one-name-one-definition rule.

A task's name is ``module:qualname`` unless ``@task(name=...)`` gives one. The
module of a function defined in a script run as ``python FILE`` (``__main__``)
is the file's stem, and ``python -m pkg.mod`` gives ``pkg.mod``: the names
workers get when they load the same code with ``--module``.

Two live definitions that would share a name in one process are refused
(:class:`DuplicateTaskError`), naming both files and lines. Making the same
definition again is not a clash: a module executed again at the same line
(``importlib.reload``, a file loaded twice), or a factory called again at the
same line with equal plain values. A definition whose ``Task`` was garbage collected frees
its name.

The fingerprint (:func:`fingerprint`) identifies what a task runs: the task's
name, the text of its function (or, without source, its bytecode, constants
and names, nested code included), its signature with defaults, and the values
its closure captured. See docs/architecture.md, "Task identity and versions".
"""

from __future__ import annotations

import hashlib
import inspect
import sys
import textwrap
import types
import weakref
from pathlib import Path
from typing import Any

from fleetflow.errors import DuplicateTaskError

__all__ = [
    "DuplicateTaskError",
    "default_task_name",
    "fingerprint",
    "live_tasks",
    "register",
    "where",
]

#: Hex digits of a fingerprint (64 bits of SHA-256).
FINGERPRINT_CHARS = 16

#: How deep :func:`_stable` looks into nested values and code objects.
_MAX_DEPTH = 8
#: How many items of one container :func:`_stable` looks at.
_MAX_ITEMS = 256


def default_task_name(fn: Any) -> str:
    """``module:qualname`` of a function, with ``__main__`` named as workers load it."""
    module = getattr(fn, "__module__", None) or "__main__"
    if module == "__main__":
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        main_file = getattr(main, "__file__", None)
        if spec is not None and spec.name and spec.name != "__main__":
            module = spec.name.removesuffix(".__main__")
        elif main_file:
            module = Path(main_file).stem
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if not qualname:
        qualname = type(fn).__qualname__
    return f"{module}:{qualname}"


def where(fn: Any) -> str:
    """``file:line`` where a function is defined, or its repr when unknown."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return repr(fn)
    return f"{code.co_filename}:{code.co_firstlineno}"


def fingerprint(name: str, fn: Any, signature: inspect.Signature | None) -> str:
    """The code version of a task: what a worker must run to give the client's result.

    Hashes the task name, the function's source text (dedented; its bytecode,
    constants and names, nested code included, when there is no source), the
    signature with its defaults and annotations, and the closure's values.
    Values are described by :func:`_stable`, so the same code gives the same
    fingerprint in every process and on every Python version when the source
    is available. Computed when the task is defined: a file edited later does
    not change the fingerprint of the code already loaded.
    """
    h = hashlib.sha256()
    h.update(name.encode())
    h.update(b"\0")
    h.update(_code_text(fn).encode())
    h.update(b"\0")
    if signature is not None:
        h.update(_signature_text(signature).encode())
    h.update(b"\0")
    h.update(_closure_text(fn).encode())
    return h.hexdigest()[:FINGERPRINT_CHARS]


def _code_text(fn: Any) -> str:
    try:
        return "src:" + textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        if code is None:
            return "obj:" + _stable(fn, 0)
        return "code:" + _code_digest(code, 0)


def _code_digest(code: types.CodeType, depth: int) -> str:
    """Bytecode, names and constants of a code object and the code nested in it."""
    if depth > _MAX_DEPTH:
        return "..."
    consts = [
        _code_digest(c, depth + 1) if isinstance(c, types.CodeType) else _stable(c, depth + 1)
        for c in code.co_consts
    ]
    parts = [
        code.co_code.hex(),
        repr(code.co_names),
        repr(code.co_varnames),
        repr(code.co_freevars),
        repr(code.co_cellvars),
        repr((code.co_argcount, code.co_kwonlyargcount, code.co_flags)),
        "|".join(consts),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _signature_text(signature: inspect.Signature) -> str:
    parts = []
    for p in signature.parameters.values():
        default = "" if p.default is p.empty else "=" + _stable(p.default, 0)
        annotation = "" if p.annotation is p.empty else ":" + _stable(p.annotation, 0)
        parts.append(f"{p.kind.name}:{p.name}{annotation}{default}")
    if signature.return_annotation is not signature.empty:
        parts.append("->" + _stable(signature.return_annotation, 0))
    return ",".join(parts)


def _closure_text(fn: Any) -> str:
    cells = getattr(fn, "__closure__", None) or ()
    names = getattr(getattr(fn, "__code__", None), "co_freevars", ())
    out = []
    for cell_name, cell in zip(names, cells, strict=False):
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            value = "<empty>"
        out.append(f"{cell_name}={_stable(value, 0)}")
    return ",".join(out)


_PLAIN = (type(None), bool, int, float, complex, str, bytes)


def _stable(value: Any, depth: int) -> str:
    """A description of a value that is the same in every process (no addresses).

    Plain data is written out; containers item by item (bounded); functions
    by their code; classes and modules by name; other objects by their type
    only (two instances of one class look alike).
    """
    if depth > _MAX_DEPTH:
        return "..."
    if isinstance(value, _PLAIN):
        return repr(value)
    if isinstance(value, (list, tuple)):
        items = ",".join(_stable(v, depth + 1) for v in value[:_MAX_ITEMS])
        return f"{type(value).__name__}[{items}]"
    if isinstance(value, (set, frozenset)):
        items = sorted(_stable(v, depth + 1) for v in list(value)[:_MAX_ITEMS])
        return f"{type(value).__name__}{{{','.join(items)}}}"
    if isinstance(value, dict):
        pairs = sorted(
            f"{_stable(k, depth + 1)}:{_stable(v, depth + 1)}"
            for k, v in list(value.items())[:_MAX_ITEMS]
        )
        return "dict{" + ",".join(pairs) + "}"
    if isinstance(value, types.FunctionType):
        return f"fn:{value.__qualname__}:{_code_digest(value.__code__, depth + 1)}"
    if isinstance(value, type):
        return f"class:{value.__module__}.{value.__qualname__}"
    if isinstance(value, types.ModuleType):
        return f"module:{value.__name__}"
    if isinstance(value, types.CodeType):
        return "code:" + _code_digest(value, depth + 1)
    kind = type(value)
    return f"<{kind.__module__}.{kind.__qualname__}>"


def _is_plain(value: Any, depth: int = 0) -> bool:
    """Whether :func:`_stable` describes the value completely (equal text: equal value)."""
    if depth > _MAX_DEPTH:
        return False
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (list, tuple, set, frozenset)):
        return len(value) <= _MAX_ITEMS and all(_is_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return len(value) <= _MAX_ITEMS and all(
            _is_plain(k, depth + 1) and _is_plain(v, depth + 1) for k, v in value.items()
        )
    return isinstance(value, (type, types.ModuleType))


def _closure_is_plain(fn: Any) -> bool:
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if not _is_plain(value):
            return False
    return True


#: {task name: (weak reference to the Task, its fingerprint, file:line, call site)}
_REGISTRY: dict[str, tuple[weakref.ref, str, str, str]] = {}

_PACKAGE_DIR = str(Path(__file__).resolve().parent)


def _call_site() -> str:
    """``file:line`` that called the function making a nested task (the factory's caller)."""
    frame = sys._getframe(1)
    for _ in range(64):  # skip fleetflow's own frames, then the factory's
        if frame is None or not frame.f_code.co_filename.startswith(_PACKAGE_DIR):
            break
        frame = frame.f_back
    if frame is not None:
        frame = frame.f_back
    return "?" if frame is None else f"{frame.f_code.co_filename}:{frame.f_lineno}"


def register(task: Any) -> None:
    """Claim ``task.name`` for this definition in this process.

    Raises:
        DuplicateTaskError: a different live definition holds the name.
    """
    fn = task.fn
    here = where(fn)
    nested = "<locals>" in (getattr(fn, "__qualname__", "") or "")
    site = _call_site() if nested else ""
    entry = _REGISTRY.get(task.name)
    if entry is not None:
        ref, version, there, there_site = entry
        held = ref()
        if held is not None and held is not task and held.fn is not fn:
            # The same place again: a module executed again (reload), or a
            # factory called again with equal plain values. Anything else is
            # another definition.
            if here != there:
                raise DuplicateTaskError(task.name, there, here, factory=False)
            if nested and not (version == task.fingerprint and _closure_is_plain(fn)):
                raise DuplicateTaskError(
                    task.name,
                    f"{there} (called from {there_site})",
                    f"{here} (called from {site})",
                    factory=True,
                )
    _REGISTRY[task.name] = (weakref.ref(task), task.fingerprint, here, site)


def live_tasks() -> list[Any]:
    """Every task defined in this process that is still alive, one per name.

    Holds tasks no module-level name holds too: defined in a class body, made
    by a factory into a dict or list, or imported by a module under another name.
    """
    return [task for ref, *_ in list(_REGISTRY.values()) if (task := ref()) is not None]
