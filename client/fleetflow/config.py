"""The configuration file: ``fleetflow.toml``, ``fleetflow.yaml`` or ``[tool.fleetflow]``.

Where it is found (the first that exists wins; files are not merged):

1. the path in ``FLEETFLOW_CONFIG`` (``fleetflow --config PATH`` sets it);
   a path that does not exist is an error;
2. the working directory: ``fleetflow.toml``, ``fleetflow.yaml`` (or
   ``.yml``), or ``pyproject.toml`` when it has a ``[tool.fleetflow]`` table
   (two of the first three at once are refused as ambiguous);
3. the user's configuration directory (``click.get_app_dir("fleetflow")``:
   ``~/.config/fleetflow/`` on Linux), same names.

Its shape (TOML shown; YAML has the same tree)::

    profile = "local"             # the active profile (FLEETFLOW_PROFILE wins)

    [coordinator]                 # fleetflow_coordinator.settings.Settings fields
    lease_ttl_s = 10

    [worker]                      # fleetflow_worker.settings.WorkerSettings fields
    executor = "cluster"          # an entry of `executors` (by name or type)

    [client]                      # fleetflow.settings.ClientSettings fields
    coordinator = "127.0.0.1:50051"

    [[executors]]
    name = "cluster"
    type = "dask"                 # process | thread | dask
    address = "tcp://dask-scheduler:8786"
    options = { timeout = "30s" } # keyword arguments of distributed.Client

    [flow_runners]
    default = "local"             # `fleetflow run` without --coordinator: "local"
                                  # (an embedded fleet) or a profile's [client]
    [flow_runners.local]
    workers = 4

    [profiles.prod.client]        # a profile holds the same sections; its values
    coordinator = "coord:50051"   # win over the top-level ones

Each process checks the sections it reads (the coordinator ``[coordinator]``,
a worker ``[worker]`` and ``executors``, a client ``[client]`` and
``flow_runners``) against its settings schema (:mod:`fleetflow.settings`);
``fleetflow config show`` checks them all. The top level, the profiles and
the executors list are checked whenever the file is read.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetflow.settings import SettingsError, check_address, suggest

__all__ = [
    "Config",
    "ConfigError",
    "ExecutorConfig",
    "FlowRunnerConfig",
    "EXECUTOR_TYPES",
    "SECTIONS",
    "find_config",
    "load_config",
    "flow_runner_target",
]

#: Names looked for in a directory, in this order.
FILE_NAMES = ("fleetflow.toml", "fleetflow.yaml", "fleetflow.yml")
#: Sections a file (and each profile) may have: ``{name: kind}``.
SECTIONS: dict[str, str] = {
    "coordinator": "table",
    "worker": "table",
    "client": "table",
    "executors": "list",
    "flow_runners": "table",
}
#: Keys of an ``executors`` entry besides ``name`` and ``type``, per type:
#: ``{type: {key: (python type, description)}}``.
EXECUTOR_TYPES: dict[str, dict[str, tuple[type | tuple[type, ...], str]]] = {
    "process": {},
    "thread": {},
    "dask": {
        "address": (str, "a string (the scheduler address, tcp://HOST:PORT)"),
        "options": (dict, "a table (keyword arguments of distributed.Client)"),
    },
}
#: How the worker's chosen ``executors`` entry fills its settings:
#: ``{entry key: WorkerSettings field}``. Keys whose field the worker's settings
#: do not have are ignored, so a new executor option is one line here.
EXECUTOR_FIELDS: dict[str, str] = {
    "type": "executor",
    "address": "dask_address",
    "options": "dask_options",
}
#: The flow runner that starts an embedded fleet.
LOCAL_RUNNER = "local"


class ConfigError(SettingsError):
    """The configuration file cannot be read, or its structure is wrong."""


@dataclass(frozen=True)
class ExecutorConfig:
    """One entry of the ``executors`` list.

    Attributes:
        name: How ``worker.executor`` refers to it (default: its type).
        type: ``process``, ``thread`` or ``dask``.
        options: The other keys of the entry (``address``, ``options``).
        where: ``FILE: executors[i]``, for messages.
    """

    name: str
    type: str
    options: dict[str, Any] = field(default_factory=dict)
    where: str = ""


@dataclass(frozen=True)
class FlowRunnerConfig:
    """Where ``fleetflow run`` sends a flow run when no coordinator is given.

    Attributes:
        default: ``"local"`` (an embedded fleet) or the name of a profile
            whose ``[client]`` section names the coordinator.
        local_workers: Worker processes of the embedded fleet (None: one
            per CPU).
        where: Where ``default`` was set, for messages.
    """

    default: str = LOCAL_RUNNER
    local_workers: int | None = None
    where: str = ""


def _user_dir() -> Path:
    import click

    return Path(click.get_app_dir("fleetflow"))


def _candidates(directory: Path) -> list[Path]:
    found = [directory / n for n in FILE_NAMES if (directory / n).is_file()]
    if len(found) > 1:
        names = " and ".join(str(p) for p in found)
        raise ConfigError("config", f"found both {names}; keep one", str(directory))
    pyproject = directory / "pyproject.toml"
    if not found and pyproject.is_file() and "fleetflow" in _read_toml(pyproject).get("tool", {}):
        found.append(pyproject)
    return found


def find_config(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> Path | None:
    """Return the configuration file in effect, or None.

    Raises:
        ConfigError: ``FLEETFLOW_CONFIG`` names no file, or a directory holds
            two candidate files.
    """
    environ = os.environ if environ is None else environ
    explicit = environ.get("FLEETFLOW_CONFIG")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError("FLEETFLOW_CONFIG", f"no such file: {explicit}", "FLEETFLOW_CONFIG")
        return path
    for directory in (cwd or Path.cwd(), _user_dir()):
        found = _candidates(directory)
        if found:
            return found[0]
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"not valid TOML: {exc}", str(path)) from None
    except OSError as exc:
        raise ConfigError("", f"cannot read: {exc.strerror}", str(path)) from None


def _read(path: Path) -> tuple[dict[str, Any], str]:
    """The file's fleetflow tree and the key prefix of its root."""
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError("", f"not valid YAML: {exc}", str(path)) from None
        except OSError as exc:
            raise ConfigError("", f"cannot read: {exc.strerror}", str(path)) from None
        if not isinstance(data, dict):
            raise ConfigError("", "the top level must be a mapping", str(path))
        return data, ""
    data = _read_toml(path)
    if path.name == "pyproject.toml":
        tool = data.get("tool", {}).get("fleetflow", {})
        if not isinstance(tool, dict):
            raise ConfigError("tool.fleetflow", "must be a table", f"{path}: tool.fleetflow")
        return tool, "tool.fleetflow."
    return data, ""


@dataclass
class Config:
    """A parsed configuration file with its active profile applied.

    Attributes:
        path: The file (None for no file: every section is empty).
        profile: The active profile, or None.
        profiles: Every profile the file defines.
    """

    path: Path | None = None
    profile: str | None = None
    profiles: tuple[str, ...] = ()
    #: ``{section: {key: (value, "FILE: key.path")}}`` after the profile overlay.
    _sections: dict[str, dict[str, tuple[Any, str]]] = field(default_factory=dict)
    #: ``{profile: {section: {key: (value, where)}}}`` for flow runners.
    _by_profile: dict[str, dict[str, dict[str, tuple[Any, str]]]] = field(default_factory=dict)
    _executors: list[ExecutorConfig] = field(default_factory=list)

    def section(self, name: str) -> dict[str, tuple[Any, str]]:
        """``{key: (value, "FILE: key.path")}`` of a section, profile applied."""
        return dict(self._sections.get(name, {}))

    def settings_values(
        self, section: str, fields: set[str], given: dict[str, Any]
    ) -> dict[str, tuple[Any, str]]:
        """A section's ``{key: (value, where)}`` as a settings class reads it.

        For the worker, the ``executors`` entry in effect adds its values:
        the entry named by ``executor`` (a flag or variable in ``given``, else
        the section's ``executor`` key; by name, then by type; else the first
        entry) sets ``executor`` to its type and fills the fields of
        :data:`EXECUTOR_FIELDS`. Nothing is added when the settings class has no
        ``executor`` field.

        Raises:
            ConfigError: ``executor`` names no entry and no type.
        """
        values = self.section(section)
        if section != "worker" or "executor" not in fields:
            return values
        raw = given.get("executor")
        if raw is None and "executor" in values:
            raw = values["executor"][0]
        if raw is not None and not isinstance(raw, str):
            where = values.get("executor", (None, "executor"))[1]
            raise ConfigError("executor", f"expected a string, got {raw!r}", where)
        entry = self.executor(raw)
        if entry is None:
            return values
        entry_values = {"type": entry.type, **entry.options}
        for key, value in entry_values.items():
            name = EXECUTOR_FIELDS.get(key)
            if name is None or name not in fields:
                continue
            if name == "executor" and "executor" in values:
                values[name] = (value, values[name][1])  # a name in [worker] becomes its type
            elif name not in values:
                values[name] = (value, f"{entry.where}.{key}")
        return values

    def for_profile(self, name: str) -> Config:
        """This file with another profile active.

        Raises:
            ConfigError: the file has no such profile.
        """
        if name == self.profile:
            return self
        if name not in self._by_profile or not name:
            raise ConfigError("profile", self._unknown_profile(name), str(self.path))
        return _apply(self.path, name, self.profiles, self._by_profile)

    def _unknown_profile(self, name: str) -> str:
        known = ", ".join(self.profiles) or "none"
        return f"no profile {name!r} (profiles in this file: {known})"

    @property
    def executors(self) -> list[ExecutorConfig]:
        """The ``executors`` list of the active profile (or the top level)."""
        return list(self._executors)

    def executor(self, name: str | None) -> ExecutorConfig | None:
        """The executor a worker uses: by name or type; the first entry if None.

        Raises:
            ConfigError: ``name`` matches no entry and is not a type.
        """
        if name is None:
            return self._executors[0] if self._executors else None
        for entry in self._executors:
            if entry.name == name:
                return entry
        for entry in self._executors:
            if entry.type == name:
                return entry
        if name in EXECUTOR_TYPES:
            return ExecutorConfig(name=name, type=name)
        names = ", ".join(e.name for e in self._executors) or "none in the file"
        raise ConfigError(
            "executor",
            f"no executor {name!r}: name an entry of `executors` ({names}) "
            f"or a type ({', '.join(EXECUTOR_TYPES)})",
            str(self.path or ""),
        )

    def flow_runner(self) -> FlowRunnerConfig:
        """The ``flow_runners`` section, checked.

        Raises:
            ConfigError: an unknown key, a wrong type, or a default that is
                neither ``local`` nor a profile of the file.
        """
        section = self.section("flow_runners")
        out = FlowRunnerConfig()
        for key, (value, where) in section.items():
            if key == "default":
                if not isinstance(value, str):
                    raise ConfigError(key, "expected a string (local or a profile name)", where)
                if value != LOCAL_RUNNER and value not in self.profiles:
                    raise ConfigError(key, self._unknown_profile(value) + " and not local", where)
                out = FlowRunnerConfig(value, out.local_workers, where)
            elif key == LOCAL_RUNNER:
                if not isinstance(value, dict):
                    raise ConfigError(key, "expected a table", where)
                for sub, workers in value.items():
                    if sub != "workers":
                        raise ConfigError(sub, "unknown key; known keys: workers", f"{where}.{sub}")
                    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
                        raise ConfigError(sub, "expected an integer >= 1", f"{where}.{sub}")
                    out = FlowRunnerConfig(out.default, workers, out.where)
            else:
                raise ConfigError(key, "unknown key; known keys: default, local", where)
        return out


def _check_tree(tree: Any, path: Path, prefix: str) -> dict[str, dict[str, tuple[Any, str]]]:
    """Check one level (the top or a profile) and index its sections."""
    out: dict[str, dict[str, tuple[Any, str]]] = {}
    for name, body in tree.items():
        where = f"{path}: {prefix}{name}"
        kind = SECTIONS.get(name)
        if kind is None:
            raise ConfigError(
                name,
                f"unknown section {name!r}{suggest(name, SECTIONS)}; known: {', '.join(SECTIONS)}",
                where,
            )
        if kind == "table":
            if not isinstance(body, dict):
                raise ConfigError(name, "expected a table", where)
            out[name] = {str(k): (v, f"{where}.{k}") for k, v in body.items()}
        else:
            if not isinstance(body, list):
                raise ConfigError(name, "expected a list of tables ([[executors]])", where)
            out[name] = {str(i): (v, f"{where}[{i}]") for i, v in enumerate(body)}
    return out


def _executors(section: dict[str, tuple[Any, str]]) -> list[ExecutorConfig]:
    entries: list[ExecutorConfig] = []
    for _, (entry, where) in section.items():
        if not isinstance(entry, dict):
            raise ConfigError("executors", "each entry must be a table", where)
        kind = entry.get("type")
        if kind not in EXECUTOR_TYPES:
            raise ConfigError(
                "type",
                f"expected one of {', '.join(EXECUTOR_TYPES)}, got {kind!r}",
                f"{where}.type",
            )
        name = entry.get("name", kind)
        if not isinstance(name, str) or not name:
            raise ConfigError("name", "expected a non-empty string", f"{where}.name")
        allowed = EXECUTOR_TYPES[kind]
        options: dict[str, Any] = {}
        for key, value in entry.items():
            if key in ("name", "type"):
                continue
            if key not in allowed:
                known = ", ".join(["name", "type", *allowed])
                raise ConfigError(
                    key, f"unknown key for a {kind} executor; known keys: {known}", f"{where}.{key}"
                )
            expected, described = allowed[key]
            if not isinstance(value, expected):
                raise ConfigError(key, f"expected {described}, got {value!r}", f"{where}.{key}")
            options[key] = value
        if kind == "dask" and "address" in options and "://" not in options["address"]:
            check_address("address", options["address"])
        if any(e.name == name for e in entries):
            raise ConfigError("name", f"two executors are named {name!r}", f"{where}.name")
        entries.append(ExecutorConfig(name=name, type=kind, options=options, where=where))
    return entries


def load_config(
    path: Path | str | None = None,
    *,
    profile: str | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Config:
    """Read the configuration file in effect and apply the active profile.

    Args:
        path: The file; None looks for one (:func:`find_config`).
        profile: The active profile; None takes ``FLEETFLOW_PROFILE``, then
            the file's ``profile`` key; no profile uses the top level alone.
        environ: The environment (default ``os.environ``).
        cwd: The directory to look in (default the working directory).

    Returns:
        The parsed file; an empty :class:`Config` when there is none.

    Raises:
        ConfigError: the file does not parse, has an unknown section or key
            at the top level or in a profile, or the profile is unknown.
    """
    environ = os.environ if environ is None else environ
    resolved = Path(path) if path is not None else find_config(environ, cwd)
    profile = profile or environ.get("FLEETFLOW_PROFILE") or None
    if resolved is None:
        if profile:
            raise ConfigError(
                "profile", f"profile {profile!r} asked for, but no configuration file was found"
            )
        return Config()
    tree, prefix = _read(resolved)
    top = dict(tree)
    profiles_tree = top.pop("profiles", {})
    file_profile = top.pop("profile", None)
    if not isinstance(profiles_tree, dict) or not all(
        isinstance(v, dict) for v in profiles_tree.values()
    ):
        raise ConfigError(
            "profiles",
            "expected a table of profiles ([profiles.NAME.SECTION])",
            f"{resolved}: {prefix}profiles",
        )
    if file_profile is not None and not isinstance(file_profile, str):
        raise ConfigError("profile", "expected a string", f"{resolved}: {prefix}profile")
    by_profile = {"": _check_tree(top, resolved, prefix)}
    for name, body in profiles_tree.items():
        by_profile[name] = _check_tree(body, resolved, f"{prefix}profiles.{name}.")
    names = tuple(n for n in by_profile if n)
    active = profile or file_profile
    if active is not None and active not in by_profile:
        known = ", ".join(names) or "none"
        raise ConfigError(
            "profile", f"no profile {active!r} (profiles in this file: {known})", str(resolved)
        )
    for other in names:  # every profile's executors are checked, not only the active one's
        if "executors" in by_profile[other]:
            _executors(by_profile[other]["executors"])
    return _apply(resolved, active, names, by_profile)


def _apply(
    path: Path | None,
    active: str | None,
    names: tuple[str, ...],
    by_profile: dict[str, dict[str, dict[str, tuple[Any, str]]]],
) -> Config:
    """Overlay the active profile's sections on the top-level ones."""
    config = Config(path=path, profile=active, profiles=names, _by_profile=by_profile)
    sections: dict[str, dict[str, tuple[Any, str]]] = {}
    for name in SECTIONS:
        merged = dict(by_profile[""].get(name, {}))
        if active and name in by_profile[active]:
            if SECTIONS[name] == "list":
                merged = {}  # a profile's list replaces the top-level one
            merged.update(by_profile[active][name])
        sections[name] = merged
    config._sections = sections
    config._executors = _executors(sections["executors"])
    return config


def flow_runner_target(environ: Mapping[str, str] | None = None) -> tuple[str | None, int | None]:
    """Where ``fleetflow run`` sends a flow run when no coordinator was given.

    Args:
        environ: The environment (default ``os.environ``).

    Returns:
        ``(None, workers)`` for an embedded local fleet (``workers``: the
        file's ``flow_runners.local.workers`` or None), or
        ``(address, None)``: the coordinator of the profile that
        ``flow_runners.default`` names (its ``[client]`` section, under the
        usual precedence).

    Raises:
        SettingsError: the file or that profile's client settings are invalid.
    """
    from fleetflow.settings import ClientSettings

    config = load_config(environ=environ)
    runner = config.flow_runner()
    if runner.default == LOCAL_RUNNER:
        return None, runner.local_workers
    client = ClientSettings.load(environ=environ, config=config, profile=runner.default)
    return client.settings.coordinator, None
