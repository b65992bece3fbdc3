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
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fleetflow._rules import (
    ENV_PREFIX,
    Rule,
    SettingsError,
    check_address,
    check_coordinator,
    coerce,
    env_name,
    flag_name,
    rule_of,
    setting,
    type_hints,
    validate,
)

__all__ = [
    "ENV_PREFIX",
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
#: How a secret is shown by ``fleetflow config show``.
MASK = "********"


T = TypeVar("T")


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
    hints = type_hints(cls)
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
