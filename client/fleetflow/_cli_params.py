"""``--param NAME=VALUE`` values of ``fleetflow run``, converted to a flow's parameters.

``convert_param`` turns one value into the parameter's annotated type;
``parse_params`` checks names against the flow's signature.
"""

from __future__ import annotations

import inspect
import json
import math
import types
import typing
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import Any

import click

from fleetflow._task import Flow

__all__ = ["FiniteFloatRange", "check_required", "convert_param", "parse_params"]

_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})
_SCALARS: dict[str, type] = {
    "int": int,
    "float": float,
    "bool": bool,
    "str": str,
    "Path": Path,
    "pathlib.Path": Path,
}


def _type_hints(fn: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable hints fall back to raw annotations
        return {}


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(annotation, False)``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _auto(raw: str) -> Any:
    """JSON when it parses (numbers, lists, objects, true/false/null), else the string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def convert_param(name: str, raw: str, annotation: Any = inspect.Parameter.empty) -> Any:
    """Convert one ``--param`` value to the flow parameter's annotated type.

    ``int``, ``float``, ``bool``, ``str`` and ``Path`` (also ``X | None``, where
    ``none``/``null`` give None) convert directly; any other or no annotation
    parses ``raw`` as JSON and falls back to the string itself.

    Args:
        name: Parameter name, for error messages.
        raw: The text after ``NAME=``.
        annotation: The parameter's annotation (a type, or a string when the
            hints could not be resolved).

    Returns:
        The converted value.

    Raises:
        click.BadParameter: ``raw`` does not fit the annotated type.
    """
    annotation, optional = _unwrap_optional(annotation)
    if optional and raw.strip().lower() in ("none", "null"):
        return None
    if isinstance(annotation, str):
        annotation = _SCALARS.get(annotation.strip(), inspect.Parameter.empty)
    if annotation is bool:
        lowered = raw.strip().lower()
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE
        raise click.BadParameter(
            f"{name}={raw!r}: expected a boolean (true/false)", param_hint="--param"
        )
    if annotation in (int, float):
        try:
            return annotation(raw)
        except ValueError:
            raise click.BadParameter(
                f"{name}={raw!r}: expected {annotation.__name__}", param_hint="--param"
            ) from None
    if annotation is str:
        return raw
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        return annotation(raw)
    return _auto(raw)


def parse_params(flow: Flow, pairs: Sequence[str]) -> dict[str, Any]:
    """Turn ``NAME=VALUE`` strings into keyword parameters of ``flow``.

    Args:
        flow: The flow whose signature and type hints drive the conversion.
        pairs: ``--param`` values as typed.

    Returns:
        ``{name: value}`` ready for ``flow.build(**params)``.

    Raises:
        click.BadParameter: a pair has no ``=``, names no parameter of the
            flow, or its value does not fit the parameter's type.
    """
    parameters = flow.signature.parameters
    hints = _type_hints(flow.fn)
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="--param")
        param = parameters.get(name)
        by_keyword = param is not None and param.kind in (
            param.POSITIONAL_OR_KEYWORD,
            param.KEYWORD_ONLY,
        )
        if by_keyword:
            out[name] = convert_param(name, raw, hints.get(name, param.annotation))  # type: ignore[union-attr]
        elif param is None and takes_kwargs:
            out[name] = _auto(raw)
        else:
            known = ", ".join(
                p.name
                for p in parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            )
            raise click.BadParameter(
                f"flow {flow.name!r} has no parameter {name!r} (it takes: {known or 'none'})",
                param_hint="--param",
            )
    return out


def check_required(flow: Flow, params: dict[str, Any]) -> None:
    """Refuse a run that leaves a parameter without a default unset.

    Raises:
        click.BadParameter: naming every missing parameter and how to pass it.
    """
    missing = [
        p.name
        for p in flow.signature.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.default is p.empty
        and p.name not in params
    ]
    if missing:
        raise click.BadParameter(
            f"flow {flow.name!r} needs {', '.join(repr(m) for m in missing)}: pass "
            + " ".join(f"-p {m}=VALUE" for m in missing),
            param_hint="--param",
        )


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses NaN and infinities.

    NaN passes every comparison a range makes (``nan > 0`` and ``nan < 0``
    are both false), so ``--timeout nan`` was accepted and meant "never",
    and ``--cpu nan`` reached the embedded fleet, which failed to start.
    """

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number
