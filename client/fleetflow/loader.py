"""Import user code named on a command line: a module name or a ``.py`` file.

Clients, workers and the CLI load the same user file under the same module
name (the file's stem), so objects pickled by reference (custom exception
classes, helper functions) resolve on both sides.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["load_module", "load_target"]


def load_module(spec: str) -> ModuleType:
    """Import a module by dotted name or by file path.

    A path (it ends in ``.py`` or names an existing file) is imported under
    its stem, and its folder is put first on ``sys.path`` so that it can
    import its neighbours, as ``python FILE`` would allow.

    Args:
        spec: ``"pkg.module"`` or ``"path/to/file.py"``.

    Raises:
        FileNotFoundError: the path does not exist.
        ImportError: the module cannot be imported.
    """
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"no such Python file: {spec}")
        path = path.resolve()
        name = path.stem
        existing = sys.modules.get(name)
        if existing is not None and getattr(existing, "__file__", None) == str(path):
            return existing
        folder = str(path.parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ImportError(f"cannot import {spec}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module
    return importlib.import_module(spec)


def load_target(target: str) -> tuple[ModuleType, object]:
    """Resolve ``"FILE_OR_MODULE:ATTR"`` to ``(module, object)``.

    Raises:
        ValueError: ``target`` has no ``:ATTR`` part.
        AttributeError: the module has no such attribute.
    """
    module_part, sep, attr = target.rpartition(":")
    if not sep or not module_part or not attr:
        raise ValueError(f"expected FILE_OR_MODULE:NAME, got {target!r}")
    module = load_module(module_part)
    try:
        return module, getattr(module, attr)
    except AttributeError:
        raise AttributeError(f"{module_part} has no attribute {attr!r}") from None
