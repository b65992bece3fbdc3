"""One schema per process: the same rules for code, flags, environment and file."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest
from fleetflow.config import ConfigError, load_config
from fleetflow.settings import ClientSettings, SettingsError, Source, resolve, setting, validate
from fleetflow_coordinator.settings import Settings
from fleetflow_worker.settings import WorkerSettings


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"lease_ttl_s": math.nan}, "lease_ttl_s must be a finite number"),
        ({"lease_ttl_s": math.inf}, "lease_ttl_s must be a finite number"),
        ({"lease_ttl_s": -1.0}, "lease_ttl_s must be > 0"),
        ({"heartbeat_interval_s": 0.0}, "heartbeat_interval_s must be > 0"),
        ({"lease_ttl_s": 1.0, "heartbeat_interval_s": 1.0}, "must exceed heartbeat_interval_s"),
        ({"tick_interval_s": 0.0}, "tick_interval_s must be > 0"),
        ({"max_infra_failures": 0}, "max_infra_failures must be >= 1"),
        ({"max_result_bytes": 0}, "max_result_bytes must be >= 1"),
        ({"commit_max_changes": 0}, "commit_max_changes must be >= 1"),
        ({"unschedulable_timeout_s": -5.0}, "unschedulable_timeout_s must be >= 0"),
        ({"synchronous": "OFF"}, "synchronous must be one of NORMAL, FULL"),
        ({"listen": "localhost"}, "listen must be HOST:PORT"),
        ({"listen": "127.0.0.1:99999"}, "listen must be HOST:PORT"),
        ({"http": "8265"}, "http must be HOST:PORT"),
        ({"db": ""}, "db must not be empty"),
        ({"concurrency_limits": "db=x"}, "expected TAG=N"),
        ({"max_infra_failures": 2.5}, "max_infra_failures must be an integer"),
        ({"lease_ttl_s": "10"}, "lease_ttl_s must be a number"),
    ],
)
def test_coordinator_settings_refuse_out_of_range_values(kwargs, words):
    with pytest.raises(SettingsError, match=words):
        Settings(**kwargs)


def test_coordinator_settings_accept_the_documented_specials():
    assert Settings(http="off").http == "off"
    assert Settings(http="").http == ""
    assert Settings(synchronous="full").synchronous == "full"
    assert Settings(retention_s=math.inf).retention_s == math.inf
    assert Settings(unschedulable_timeout_s=0).unschedulable_timeout_s == 0
    assert Settings(db=":memory:").limits() == {}


def test_environment_values_are_named_in_errors():
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"FLEETFLOW_LEASE_TTL_S": "nan"})
    assert str(err.value).startswith("FLEETFLOW_LEASE_TTL_S='nan': ")
    assert "finite" in str(err.value)
    with pytest.raises(SettingsError, match=r"FLEETFLOW_MAX_INFRA_FAILURES='two'.*an integer"):
        Settings.from_env({"FLEETFLOW_MAX_INFRA_FAILURES": "two"})


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_precedence_flags_then_environment_then_file_then_defaults(tmp_path):
    path = write(
        tmp_path,
        "fleetflow.toml",
        '[coordinator]\nlease_ttl_s = 20\nretention_s = 60\ndb = "file.db"\n',
    )
    config = load_config(path, environ={})
    resolved = Settings.load(
        {"lease_ttl_s": 40.0},
        flag_names={"lease_ttl_s": "--lease-ttl"},
        environ={"FLEETFLOW_LEASE_TTL_S": "30", "FLEETFLOW_RETENTION_S": "90"},
        config=config,
    )
    s = resolved.settings
    assert (s.lease_ttl_s, s.retention_s, s.db, s.tick_interval_s) == (40.0, 90.0, "file.db", 0.05)
    assert resolved.sources["lease_ttl_s"] == Source("flag", "--lease-ttl")
    assert resolved.sources["retention_s"] == Source("env", "FLEETFLOW_RETENTION_S")
    assert resolved.sources["db"] == Source("file", f"{path}: coordinator.db")
    assert resolved.sources["tick_interval_s"] == Source("default")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            '[coordinator]\nlease_ttl_s = "ten"\n',
            "coordinator.lease_ttl_s: lease_ttl_s: expected a number, got 'ten' (string)",
        ),
        (
            "[coordinator]\nlease_tll_s = 5\n",
            "unknown key 'lease_tll_s' in [coordinator] (did you mean 'lease_ttl_s'?)",
        ),
        ("[coordinator]\nmax_infra_failures = true\n", "expected an integer, got True (boolean)"),
        (
            "[coordinator]\nlease_ttl_s = nan\n",
            "coordinator.lease_ttl_s: lease_ttl_s must be a finite number",
        ),
        ("[coordinator]\nlease_ttl_s = -3\n", "coordinator.lease_ttl_s: lease_ttl_s must be > 0"),
    ],
)
def test_file_errors_name_the_file_the_key_and_the_expected_type(tmp_path, text, words):
    path = write(tmp_path, "fleetflow.toml", text)
    with pytest.raises(SettingsError) as err:
        Settings.load(environ={}, config=load_config(path, environ={}))
    assert str(err.value).startswith(str(path))
    assert words in str(err.value)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[coordinater]\n", "unknown section 'coordinater' (did you mean 'coordinator'?)"),
        ("coordinator = 3\n", "coordinator: expected a table"),
        (
            "[[executors]]\ntype = 'spark'\n",
            "executors[0].type: expected one of process, thread, dask, got 'spark'",
        ),
        (
            "[[executors]]\ntype = 'dask'\nadress = 'x'\n",
            "executors[0].adress: unknown key for a dask executor",
        ),
        (
            "[[executors]]\ntype = 'dask'\naddress = 8786\n",
            "executors[0].address: expected a string",
        ),
        (
            "[[executors]]\ntype = 'thread'\n[[executors]]\ntype = 'thread'\n",
            "two executors are named 'thread'",
        ),
        ("profile = 'prod'\n", "no profile 'prod' (profiles in this file: none)"),
        (
            "[profiles.prod.workers]\n",
            "profiles.prod.workers: unknown section 'workers' (did you mean 'worker'?)",
        ),
        ("[coordinator\n", "not valid TOML"),
    ],
)
def test_structural_errors_are_refused_when_the_file_is_read(tmp_path, text, words):
    path = write(tmp_path, "fleetflow.toml", text)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert str(path) in str(err.value)
    assert words in str(err.value)


def test_profiles_overlay_the_top_level(tmp_path):
    path = write(
        tmp_path,
        "fleetflow.toml",
        'profile = "dev"\n'
        '[client]\ncoordinator = "top:1"\n'
        '[worker]\ncpu = 2\nmemory = "1Gi"\n'
        '[profiles.dev.client]\ncoordinator = "dev:2"\n'
        '[profiles.prod.client]\ncoordinator = "prod:3"\n'
        "[profiles.prod.worker]\ncpu = 8\n",
    )
    dev = load_config(path, environ={})
    assert dev.profile == "dev" and dev.profiles == ("dev", "prod")
    assert ClientSettings.load(environ={}, config=dev).settings.coordinator == "dev:2"
    prod = load_config(path, environ={"FLEETFLOW_PROFILE": "prod"})
    worker = WorkerSettings.load(environ={}, config=prod)
    assert (worker.settings.cpu, worker.settings.memory) == (8.0, 2.0**30)
    assert worker.sources["cpu"].where == f"{path}: profiles.prod.worker.cpu"
    assert worker.sources["memory"].where == f"{path}: worker.memory"
    assert ClientSettings.load(environ={}, config=dev, profile="prod").settings.coordinator == (
        "prod:3"
    )
    with pytest.raises(ConfigError, match="no profile 'stage'"):
        load_config(path, environ={"FLEETFLOW_PROFILE": "stage"})


def test_worker_settings_from_file_and_environment(tmp_path):
    path = write(
        tmp_path,
        "fleetflow.yaml",
        "worker:\n  resources: {gpu: 1, scratch: 10Gi}\n  pools: [gpu, default]\n"
        "  max_concurrency: 7\n",
    )
    resolved = WorkerSettings.load(
        environ={"FLEETFLOW_CPU": "3", "FLEETFLOW_MEMORY": "2Gi", "FLEETFLOW_POOL": "x"},
        config=load_config(path, environ={}),
    )
    s = resolved.settings
    assert s.capacity == {"cpu": 3.0, "memory": 2.0**31, "gpu": 1.0, "scratch": 10 * 2.0**30}
    assert s.pools == ("gpu", "default") and s.max_concurrency == 7
    assert resolved.sources["cpu"] == Source("env", "FLEETFLOW_CPU")
    with pytest.raises(SettingsError, match="FLEETFLOW_POOLS='': pools must be non-empty"):
        WorkerSettings.load(environ={"FLEETFLOW_POOLS": ""}, config=None)
    with pytest.raises(SettingsError, match="FLEETFLOW_TASK_NICE='25': task_nice must be <= 19"):
        WorkerSettings.load(environ={"FLEETFLOW_TASK_NICE": "25"}, config=None)


def test_pyproject_tool_table_and_discovery(tmp_path, monkeypatch):
    write(
        tmp_path,
        "pyproject.toml",
        '[project]\nname = "x"\n[tool.fleetflow.client]\ncoordinator = "py:9"\n',
    )
    config = load_config(environ={}, cwd=tmp_path)
    assert config.path == tmp_path / "pyproject.toml"
    resolved = ClientSettings.load(environ={}, config=config)
    assert resolved.settings.coordinator == "py:9"
    assert resolved.sources["coordinator"].where.endswith(
        "pyproject.toml: tool.fleetflow.client.coordinator"
    )
    # fleetflow.toml in the same directory wins over pyproject.toml
    write(tmp_path, "fleetflow.toml", '[client]\ncoordinator = "toml:1"\n')
    assert load_config(environ={}, cwd=tmp_path).path == tmp_path / "fleetflow.toml"
    write(tmp_path, "fleetflow.yaml", "client: {}\n")
    with pytest.raises(ConfigError, match="found both"):
        load_config(environ={}, cwd=tmp_path)
    # FLEETFLOW_CONFIG wins over the directory; a missing file is an error
    other = write(tmp_path, "elsewhere.toml", '[client]\ncoordinator = "env:2"\n')
    assert load_config(environ={"FLEETFLOW_CONFIG": str(other)}, cwd=tmp_path).path == other
    with pytest.raises(ConfigError, match="no such file"):
        load_config(environ={"FLEETFLOW_CONFIG": str(tmp_path / "nope.toml")})


def test_the_user_config_directory_is_the_last_place(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    (tmp_path / "xdg" / "fleetflow").mkdir(parents=True)
    user = write(
        tmp_path / "xdg" / "fleetflow", "fleetflow.toml", '[client]\ncoordinator = "u:1"\n'
    )
    empty = tmp_path / "project"
    empty.mkdir()
    assert load_config(environ={}, cwd=empty).path == user
    assert load_config(environ={}, cwd=tmp_path / "xdg" / "fleetflow").path == user


def test_no_file_is_no_config(tmp_path):
    config = load_config(environ={}, cwd=tmp_path)
    assert config.path is None and config.section("coordinator") == {}
    assert Settings.load(environ={}, config=config).settings == Settings()
    with pytest.raises(ConfigError, match="no configuration file was found"):
        load_config(environ={"FLEETFLOW_PROFILE": "prod"}, cwd=tmp_path)


def test_secrets_are_masked():
    from fleetflow.settings import MASK, mask

    assert mask("options", {"token": "abc", "timeout": 3}) == {"token": MASK, "timeout": 3}
    assert mask("password", "hunter2") == MASK
    assert mask("token", None) is None
    assert mask("cpu", 3) == 3
    assert mask("db", "postgresql://ff:pw@db:5432/x") == f"postgresql://ff:{MASK}@db:5432/x"
    assert mask("db", "postgresql://ff@db/x") == "postgresql://ff@db/x"


# The worker's executor fields (``fleetflow worker --executor``) are filled from the
# chosen ``executors`` entry; a stand-in settings class with those fields checks the
# wiring, so that the worker's own class only has to declare them.


@dataclass(frozen=True, kw_only=True)
class ExecutorSettings:
    executor: str = setting("process", choices=("process", "thread", "dask"))
    dask_address: str | None = setting(None)
    dask_options: dict = setting(factory=dict)
    cpu: float = setting(1.0, gt=0)

    def __post_init__(self) -> None:
        validate(self)


EXECUTORS = """
[[executors]]
name = "local-threads"
type = "thread"

[[executors]]
name = "cluster"
type = "dask"
address = "tcp://10.1.2.3:8786"
options = { timeout = 30 }
"""


def executor_settings(tmp_path, text, **kwargs):
    path = write(tmp_path, "fleetflow.toml", text)
    return resolve(
        ExecutorSettings, section="worker", config=load_config(path, environ={}), **kwargs
    )


def test_the_first_executors_entry_is_the_default(tmp_path):
    resolved = executor_settings(tmp_path, EXECUTORS, environ={})
    assert resolved.settings.executor == "thread"
    assert resolved.sources["executor"].where.endswith("executors[0].type")


def test_worker_executor_names_an_entry_and_gets_its_options(tmp_path):
    resolved = executor_settings(
        tmp_path, '[worker]\nexecutor = "cluster"\n' + EXECUTORS, environ={}
    )
    s = resolved.settings
    assert (s.executor, s.dask_address, s.dask_options) == (
        "dask",
        "tcp://10.1.2.3:8786",
        {"timeout": 30},
    )
    assert resolved.sources["executor"].where.endswith("worker.executor")
    assert resolved.sources["dask_address"].where.endswith("executors[1].address")


def test_a_flag_or_variable_picks_the_entry_by_name_or_type(tmp_path):
    by_flag = executor_settings(tmp_path, EXECUTORS, environ={}, flags={"executor": "dask"})
    assert (by_flag.settings.executor, by_flag.settings.dask_address) == (
        "dask",
        "tcp://10.1.2.3:8786",
    )
    by_env = executor_settings(tmp_path, EXECUTORS, environ={"FLEETFLOW_EXECUTOR": "cluster"})
    assert by_env.settings.executor == "dask"
    assert by_env.sources["executor"].kind == "env"
    with pytest.raises(ConfigError, match="no executor 'spark'"):
        executor_settings(tmp_path, EXECUTORS, environ={}, flags={"executor": "spark"})
    plain = executor_settings(tmp_path, "", environ={}, flags={"executor": "thread"})
    assert plain.settings.executor == "thread" and plain.settings.dask_address is None


def test_credentials_come_from_the_file_too(tmp_path, monkeypatch):
    from fleetflow.credentials import Credentials

    (tmp_path / "me.token").write_text("tok-123\n")
    path = write(
        tmp_path,
        "fleetflow.toml",
        f'[client]\ntls_ca = "{tmp_path}/ca.pem"\ntoken_file = "{tmp_path}/me.token"\n'
        f'[worker]\ntoken = "worker-secret"\ntls_ca = "{tmp_path}/ca.pem"\n',
    )
    monkeypatch.setenv("FLEETFLOW_CONFIG", str(path))
    for name in ("FLEETFLOW_TLS_CA", "FLEETFLOW_TOKEN", "FLEETFLOW_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    credentials = Credentials.from_options()
    assert (credentials.tls_ca, credentials.token) == (f"{tmp_path}/ca.pem", "tok-123")
    # an option still wins over the file
    assert Credentials.from_options(tls_ca="other.pem").tls_ca == "other.pem"
    worker = WorkerSettings.load().settings
    assert worker.credentials.token == "worker-secret"
    assert worker.credentials.tls_ca == f"{tmp_path}/ca.pem"
    shown = dict((name, value) for name, value, _ in WorkerSettings.load().rows())
    assert shown["token"] == "********" and "worker-secret" not in repr(shown)
