"""The rules of the settings schema: declaring a field, coercing text, validating values.

:mod:`fleetflow.settings` re-exports everything public here; import from
there. Kept apart so the schema's rules (this module) and the way values are
merged from flags, environment and file (``settings.resolve``) can change
independently.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ENV_PREFIX",
    "Rule",
    "SettingsError",
    "check_address",
    "check_coordinator",
    "coerce",
    "env_name",
    "flag_name",
    "rule_of",
    "setting",
    "type_hints",
    "validate",
]

#: Prefix of every environment variable that sets a field.
ENV_PREFIX = "FLEETFLOW_"

_METADATA_KEY = "fleetflow"
_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})
_NO_DEFAULT: Any = dataclasses.MISSING


class SettingsError(ValueError):
    """A setting is malformed or out of range.

    Attributes:
        key: The field (``lease_ttl_s``), or the file key path for file errors.
        source: Where the value came from (``--lease-ttl``,
            ``FLEETFLOW_LEASE_TTL_S``, ``fleetflow.toml: coordinator.lease_ttl_s``),
            or ``""`` when it was passed in code.
        problem: What is wrong, including the rule or the expected type.
    """

    def __init__(self, key: str, problem: str, source: str = "") -> None:
        self.key = key
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}" if source else f"{key}: {problem}")


@dataclass(frozen=True, slots=True)
class Rule:
    """The rules of one setting, kept in its dataclass field's metadata.

    Attributes:
        help: One line for ``--help`` and ``fleetflow config show``.
        ge: Smallest allowed value (numbers), inclusive.
        gt: Values must be greater than this (numbers).
        le: Largest allowed value (numbers), inclusive.
        choices: The allowed values (compared case-insensitively for strings,
            which are stored as given in ``choices``).
        secret: Masked by ``fleetflow config show``.
        flag: The command-line spelling, when not derived from the name.
        parse: Turns a value as it arrives (text from a flag or a variable,
            or a TOML/YAML value) into the field's value; raises ValueError
            with a message that says what was expected.
        allow_infinite: Floats may be ``inf`` (never NaN).
    """

    help: str = ""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    choices: tuple[Any, ...] | None = None
    secret: bool = False
    flag: str | None = None
    parse: Callable[[Any], Any] | None = None
    allow_infinite: bool = False


def setting(
    default: Any = _NO_DEFAULT,
    *,
    factory: Callable[[], Any] | None = None,
    help: str = "",  # noqa: A002 - click's spelling
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    choices: Iterable[Any] | None = None,
    secret: bool = False,
    flag: str | None = None,
    parse: Callable[[Any], Any] | None = None,
    allow_infinite: bool = False,
) -> Any:
    """Declare a settings field with its default and rules.

    Args:
        default: The default value (immutable), or nothing with ``factory``.
        factory: Computes the default when the settings are built (for
            defaults that depend on the machine, such as the CPU count).
        help: One line of documentation.
        ge: Inclusive lower bound for numbers.
        gt: Exclusive lower bound for numbers.
        le: Inclusive upper bound for numbers.
        choices: The allowed values.
        secret: Mask the value in ``fleetflow config show``.
        flag: The command-line flag, if not ``--`` plus the name with a
            trailing ``_s`` dropped and ``_`` as ``-``.
        parse: Converter for values as they arrive (see :class:`Rule`).
        allow_infinite: Let a float be ``inf``.

    Returns:
        A :func:`dataclasses.field` carrying a :class:`Rule`.
    """
    rule = Rule(
        help=help,
        ge=ge,
        gt=gt,
        le=le,
        choices=None if choices is None else tuple(choices),
        secret=secret,
        flag=flag,
        parse=parse,
        allow_infinite=allow_infinite,
    )
    metadata = {_METADATA_KEY: rule}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def rule_of(f: dataclasses.Field[Any]) -> Rule:
    """The :class:`Rule` of a field (an empty one for a plain field)."""
    return f.metadata.get(_METADATA_KEY) or Rule()


def env_name(name: str) -> str:
    """``lease_ttl_s`` -> ``FLEETFLOW_LEASE_TTL_S``."""
    return ENV_PREFIX + name.upper()


def flag_name(f: dataclasses.Field[Any]) -> str:
    """The command-line flag of a field: ``lease_ttl_s`` -> ``--lease-ttl``."""
    rule = rule_of(f)
    if rule.flag:
        return rule.flag
    name = f.name[:-2] if f.name.endswith("_s") else f.name
    return "--" + name.replace("_", "-")


# ----------------------------------------------------------------- type rules


def type_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of the dataclass ``cls`` (``{field name: type}``)."""
    return typing.get_type_hints(cls)


def _optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(hint, False)``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _describe(hint: Any) -> str:
    """The expected type in words, for error messages."""
    base, optional = _optional(hint)
    origin = typing.get_origin(base)
    if base is bool:
        text = "a boolean (true/false)"
    elif base is int:
        text = "an integer"
    elif base is float:
        text = "a number"
    elif base is str:
        text = "a string"
    elif origin is tuple:
        text = "a list of strings"
    elif origin in (dict, Mapping) or base in (dict, Mapping):
        text = "a table (mapping)"
    else:
        text = getattr(base, "__name__", str(base))
    return f"{text} or nothing" if optional else text


def _what(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string"}.get(type(value))
    if kind is None:
        kind = "list" if isinstance(value, list | tuple) else type(value).__name__
        if isinstance(value, Mapping):
            kind = "table"
    return f"{value!r} ({kind})"


def coerce(value: Any, hint: Any, rule: Rule, *, text: bool) -> Any:
    """Convert one incoming value to a field's type.

    Args:
        value: The value as it arrived.
        hint: The field's resolved type hint.
        rule: The field's rule (its ``parse`` runs first when set).
        text: True when the value came as text (a flag or an environment
            variable), which may spell numbers, booleans and lists.

    Returns:
        The converted value.

    Raises:
        ValueError: the value does not fit; the message names the expected type.
    """
    base, optional = _optional(hint)
    if value is None:
        if optional:
            return None
        raise ValueError(f"expected {_describe(hint)}, got nothing")
    if optional and text and isinstance(value, str) and value.strip().lower() in ("", "none"):
        return None
    if rule.parse is not None:
        return rule.parse(value)
    expected = f"expected {_describe(hint)}, got {_what(value)}"
    origin = typing.get_origin(base)
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and text:
            lowered = value.strip().lower()
            if lowered in _TRUE | _FALSE or not lowered:
                return lowered in _TRUE  # an empty variable is false
        raise ValueError(expected)
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and text:
            try:
                return int(value.strip())
            except ValueError:
                raise ValueError(expected) from None
        raise ValueError(expected)
    if base is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and text:
            try:
                return float(value.strip())
            except ValueError:
                raise ValueError(expected) from None
        raise ValueError(expected)
    if base is str:
        if isinstance(value, str):
            return value
        raise ValueError(expected)
    if origin is tuple:
        if isinstance(value, str) and text:
            return tuple(p.strip() for p in value.split(",") if p.strip())
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ValueError(expected)
    if origin in (dict, Mapping) or base in (dict, Mapping):
        if isinstance(value, Mapping):
            return dict(value)
        raise ValueError(expected)
    return value


# ------------------------------------------------------------------ validation


def _check_value(name: str, value: Any, hint: Any, rule: Rule) -> None:
    base, optional = _optional(hint)
    if value is None:
        if optional:
            return
        raise SettingsError(name, f"{name} must be {_describe(hint)}, got None")
    if base is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SettingsError(name, f"{name} must be a number, got {_what(value)}")
        if math.isnan(value) or (math.isinf(value) and not rule.allow_infinite):
            raise SettingsError(name, f"{name} must be a finite number, got {value!r}")
    elif base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingsError(name, f"{name} must be an integer, got {_what(value)}")
    elif base is bool:
        if not isinstance(value, bool):
            raise SettingsError(name, f"{name} must be a boolean, got {_what(value)}")
    elif base is str and not isinstance(value, str):
        raise SettingsError(name, f"{name} must be a string, got {_what(value)}")
    elif (
        isinstance(base, type)
        and base.__module__ not in ("builtins", "typing", "collections.abc")
        and not isinstance(value, base)
    ):  # an object such as Credentials: set in code, never from text
        raise SettingsError(name, f"{name} must be a {base.__name__}, got {_what(value)}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if rule.ge is not None and not value >= rule.ge:
            raise SettingsError(name, f"{name} must be >= {rule.ge:g}, got {value!r}")
        if rule.gt is not None and not value > rule.gt:
            raise SettingsError(name, f"{name} must be > {rule.gt:g}, got {value!r}")
        if rule.le is not None and not value <= rule.le:
            raise SettingsError(name, f"{name} must be <= {rule.le:g}, got {value!r}")
    if rule.choices is not None:
        allowed = {c.lower() if isinstance(c, str) else c for c in rule.choices}
        probe = value.lower() if isinstance(value, str) else value
        if probe not in allowed:
            listed = ", ".join(str(c) for c in rule.choices)
            raise SettingsError(name, f"{name} must be one of {listed}, got {value!r}")


def validate(obj: Any) -> None:
    """Check every field of a settings dataclass against its rule.

    Called from each settings class's ``__post_init__``; a class may add rules
    that involve several fields in a ``_check()`` method, called last.

    Raises:
        SettingsError: the first field that breaks its rule (``key`` names it).
    """
    hints = type_hints(type(obj))
    for f in dataclasses.fields(obj):
        _check_value(f.name, getattr(obj, f.name), hints[f.name], rule_of(f))
    check = getattr(obj, "_check", None)
    if check is not None:
        check()


def check_address(name: str, value: str) -> None:
    """Refuse an address that is not ``HOST:PORT`` with a port in 0..65535.

    Several comma-separated addresses are accepted (``A:P,B:P``).

    Raises:
        SettingsError: naming ``name``.
    """
    for part in value.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise SettingsError(name, f"{name} must be HOST:PORT, got {value!r}")


def check_coordinator(name: str, value: str) -> None:
    """Refuse a coordinator address that is not ``HOST:PORT[,HOST:PORT...]`` (port 1..65535).

    Raises:
        SettingsError: naming ``name`` and the bad entry.
    """
    from fleetflow.addresses import parse_addresses

    try:
        parse_addresses(value)
    except ValueError as exc:
        raise SettingsError(name, f"{name}: {exc}") from None
