"""One schema for the settings of every fleetflow process.

The coordinator (``fleetflow_coordinator.settings.Settings``), each worker
(``fleetflow_worker.settings.WorkerSettings``) and each client
(:class:`ClientSettings`) have one frozen, keyword-only dataclass. Every field
is declared with :func:`setting`, which records its rules (range, choices,
whether it is a secret, how text is parsed). The same rules then serve every
way a value arrives:

- the dataclass checks them when it is built (:func:`validate`, called from
  ``__post_init__``), so ``Settings(lease_ttl_s=float("nan"))`` is refused;
- :func:`resolve` merges, per field, the command-line flags, the
  ``FLEETFLOW_<FIELD>`` environment variables, the configuration file
  (:mod:`fleetflow.config`) and the defaults, in that order of precedence,
  and remembers where each value came from (``fleetflow config show``);
- a bad value is refused with a :class:`SettingsError` that names where it
  came from (the flag, the variable, or the file and key), the field, and
  the rule or expected type.

Adding a setting is one line in the process's dataclass: the flag, the
variable and the file key follow from it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = [
    "ClientSettings",
    "CredentialSettings",
    "DEFAULT_COORDINATOR",
    "Rule",
    "Resolved",
    "SettingsError",
    "Source",
    "setting",
    "rule_of",
    "validate",
    "coerce",
    "resolve",
    "env_name",
    "flag_name",
    "mask",
    "check_address",
    "check_coordinator",
    "flags_from_click",
    "suggest",
]

#: Address clients and workers dial when none is given.
DEFAULT_COORDINATOR = "127.0.0.1:50051"
#: Prefix of every environment variable that sets a field.
ENV_PREFIX = "FLEETFLOW_"
#: How a secret is shown by ``fleetflow config show``.
MASK = "********"

_METADATA_KEY = "fleetflow"
_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})
_NO_DEFAULT: Any = dataclasses.MISSING

T = TypeVar("T")


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


def _hints(cls: type) -> dict[str, Any]:
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
    hints = _hints(type(obj))
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


# ------------------------------------------------------------------ resolving


@dataclass(frozen=True, slots=True)
class Source:
    """Where one setting's value came from.

    Attributes:
        kind: ``"flag"``, ``"env"``, ``"file"``, ``"profile"`` or ``"default"``.
        where: The flag (``--lease-ttl``), the variable, or ``FILE: KEY.PATH``.
    """

    kind: str
    where: str = ""

    def __str__(self) -> str:
        return self.kind if not self.where else f"{self.kind} {self.where}"


@dataclass(frozen=True)
class Resolved(Generic[T]):
    """Settings with the origin of each value.

    Attributes:
        settings: The validated settings object.
        sources: ``{field: Source}`` for every field.
    """

    settings: T
    sources: dict[str, Source]

    def rows(self) -> list[tuple[str, Any, str]]:
        """``(field, shown value, source)`` per field, secrets masked."""
        out = []
        for f in dataclasses.fields(self.settings):  # type: ignore[arg-type]
            value = getattr(self.settings, f.name)
            shown = mask(f.name, value, secret=rule_of(f).secret)
            out.append((f.name, shown, str(self.sources[f.name])))
        return out


_SECRET_WORDS = ("token", "password", "secret", "credential", "private")


def mask(key: str, value: Any, *, secret: bool = False) -> Any:
    """Hide a secret: a field marked ``secret``, or a key that names one.

    Inside tables (executor options), keys containing ``token``,
    ``password``, ``secret``, ``credential`` or ``private`` are masked too, and
    so is the password of a URL (``postgresql://USER:PASSWORD@HOST/DB``).
    """
    if value in (None, ""):
        return value
    if secret or any(w in key.lower() for w in _SECRET_WORDS):
        return MASK
    if isinstance(value, str) and "://" in value and "@" in value:
        # a URL with a password (--db postgresql://USER:PASSWORD@HOST/DB)
        scheme, _, rest = value.partition("://")
        userinfo, at, host = rest.rpartition("@")
        if ":" in userinfo:
            return f"{scheme}://{userinfo.partition(':')[0]}:{MASK}{at}{host}"
    if isinstance(value, Mapping):
        return {k: mask(str(k), v) for k, v in value.items()}
    return value


def suggest(key: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for a near miss among ``known``, else ``""``."""
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def resolve(
    cls: type[T],
    *,
    section: str | None = None,
    flags: Mapping[str, Any] | None = None,
    flag_names: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    config: Any = None,
    **overrides: Any,
) -> Resolved[T]:
    """Build a settings object from flags, environment, file and defaults.

    Precedence, per field: ``flags`` (and ``overrides``), then the
    ``FLEETFLOW_<FIELD>`` variable, then the configuration file's section
    (its active profile first), then the dataclass default.

    Args:
        cls: The settings dataclass.
        section: The configuration file's section for ``cls`` (``"worker"``);
            None reads no file.
        flags: ``{field: value}`` given on the command line; None values are
            ignored (not given).
        flag_names: ``{field: "--flag"}`` for error messages and sources;
            defaults to :func:`flag_name`.
        environ: The environment (default ``os.environ``).
        config: A :class:`fleetflow.config.Config` (or None for no file).
        **overrides: Values set in code, like flags.

    Returns:
        The settings and where each value came from.

    Raises:
        SettingsError: a value does not parse or breaks a rule, an unknown key
            is in the file's section; the message names the source.
    """
    environ = os.environ if environ is None else environ
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    names = {n: flag_name(f) for n, f in fields.items()}
    names.update(flag_names or {})
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}

    def take(name: str, raw: Any, source: Source, *, text: bool) -> None:
        if name == "executor" and config is not None and source.kind != "file":
            if isinstance(raw, str) and raw.strip():
                entry = config.executor(raw.strip())  # an entry's name means its type
                raw = entry.type if entry is not None else raw
        try:
            values[name] = coerce(raw, hints[name], rule_of(fields[name]), text=text)
        except ValueError as exc:
            shown = f"{source.where}={raw!r}" if source.kind == "env" else source.where
            raise SettingsError(name, f"{name}: {exc}", shown) from None
        sources[name] = source

    given = {k: v for k, v in {**(flags or {}), **overrides}.items() if v is not None}
    if "executor" in fields and "executor" not in given:
        env_executor = environ.get(env_name("executor"))
        if env_executor is not None:
            given["executor"] = env_executor
    if config is not None and section is not None:
        file_values = config.settings_values(section, set(fields), given)
        for key, (raw, where) in file_values.items():
            if key not in fields:
                raise SettingsError(
                    key,
                    f"unknown key {key!r} in [{section}]{suggest(key, fields)}; "
                    f"known keys: {', '.join(sorted(fields))}",
                    where,
                )
            take(key, raw, Source("file", where), text=False)
    for name in fields:
        raw = environ.get(env_name(name))
        if raw is not None:
            take(name, raw, Source("env", env_name(name)), text=True)
    for name, raw in {**(flags or {}), **overrides}.items():
        if name not in fields:
            raise SettingsError(name, f"{cls.__name__} has no setting {name!r}")
        if raw is None:
            continue
        take(name, raw, Source("flag", names[name]), text=isinstance(raw, str))
    for name in fields:
        sources.setdefault(name, Source("default"))
    try:
        settings = cls(**values)
    except SettingsError as exc:
        source = sources.get(exc.key)
        if source is None or source.kind == "default":
            raise
        where = source.where
        if source.kind == "env":
            where = f"{where}={environ.get(source.where)!r}"
        raise SettingsError(exc.key, exc.problem, where) from None
    return Resolved(settings, sources)


def flags_from_click(ctx: Any, cls: type) -> tuple[dict[str, Any], dict[str, str]]:
    """The options of a click command that were given on the command line.

    Only parameters named after a field of ``cls`` and set on the command
    line count (a click default or ``envvar`` is not a flag: the environment
    and defaults are applied by :func:`resolve` from the one schema).

    Args:
        ctx: The ``click.Context`` of the running command.
        cls: The settings dataclass.

    Returns:
        ``({field: value}, {field: "--flag"})`` for :func:`resolve`.
    """
    from click.core import ParameterSource

    names = {f.name for f in dataclasses.fields(cls)}
    flags: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for param in ctx.command.params:
        if param.name not in names:
            continue
        if ctx.get_parameter_source(param.name) is not ParameterSource.COMMANDLINE:
            continue
        value = ctx.params.get(param.name)
        if value is None or value == ():
            continue
        flags[param.name] = value
        spelled[param.name] = max(param.opts, key=len)
    return flags, spelled


# ------------------------------------------------------------------ the client


@dataclass(frozen=True, kw_only=True)
class CredentialSettings:
    """TLS and token settings of a process that dials a coordinator (client, worker).

    The variables are ``FLEETFLOW_TLS_CA``, ``FLEETFLOW_TLS_CLIENT_CERT``,
    ``FLEETFLOW_TLS_CLIENT_KEY``, ``FLEETFLOW_TOKEN_FILE`` and ``FLEETFLOW_TOKEN``
    (``CLIENT_`` keeps them apart from the coordinator's own certificate).
    Paths are taken relative to the working directory.
    """

    tls_ca: str | None = setting(
        None, help="PEM CA bundle the coordinator's certificate must chain to; turns TLS on."
    )
    tls_client_cert: str | None = setting(
        None, flag="--tls-cert", help="PEM client certificate (mutual TLS), with its key."
    )
    tls_client_key: str | None = setting(
        None, flag="--tls-key", help="PEM private key of the client certificate."
    )
    token_file: str | None = setting(None, help="File holding a token (fleetflow token).")
    token: str | None = setting(None, secret=True, help="A token; token_file wins over it.")

    def build_credentials(self) -> Any:
        """The :class:`fleetflow.credentials.Credentials` these settings describe.

        Raises:
            fleetflow.credentials.CredentialsError: the token file cannot be
                read or is empty, or a certificate comes without its key.
        """
        from fleetflow.credentials import Credentials, read_token_file

        token = read_token_file(self.token_file) if self.token_file else None
        if token is None and self.token:
            token = self.token.strip()
        return Credentials(
            tls_ca=self.tls_ca or None,
            tls_cert=self.tls_client_cert or None,
            tls_key=self.tls_client_key or None,
            token=token,
        )


@dataclass(frozen=True, kw_only=True)
class ClientSettings(CredentialSettings):
    """What a client (the Python ``Client``, the CLI) needs to reach a coordinator.

    Read from flags (``--coordinator``, ``--tls-ca``...), ``FLEETFLOW_*`` variables
    and the ``[client]`` section of the configuration file (of the active profile).
    """

    coordinator: str = setting(
        DEFAULT_COORDINATOR,
        help="Coordinator address HOST:PORT (several: A:P,B:P).",
    )

    def __post_init__(self) -> None:
        validate(self)

    def _check(self) -> None:
        check_coordinator("coordinator", self.coordinator)

    @classmethod
    def load(
        cls,
        flags: Mapping[str, Any] | None = None,
        *,
        flag_names: Mapping[str, str] | None = None,
        environ: Mapping[str, str] | None = None,
        config: Any = "auto",
        profile: str | None = None,
    ) -> Resolved[ClientSettings]:
        """Resolve the settings: flags, then environment, then file, then defaults.

        Args:
            flags: ``{field: value}`` from the command line (None: not given).
            flag_names: ``{field: "--flag"}`` as typed, for messages.
            environ: The environment (default ``os.environ``).
            config: A :class:`fleetflow.config.Config`; ``"auto"`` finds and
                reads the file in effect; None reads none.
            profile: Read this profile's ``[client]`` section instead of the
                active profile's (``flow_runners.default`` names one).

        Returns:
            The settings and where each value came from.

        Raises:
            SettingsError: a value is malformed, or the file's ``[client]``
                section has an unknown key.
        """
        if config == "auto":
            from fleetflow.config import load_config

            config = load_config(environ=environ)
        if config is not None and profile is not None:
            config = config.for_profile(profile)
        return resolve(
            cls,
            section="client",
            flags=flags,
            flag_names=flag_names,
            environ=environ,
            config=config,
        )
