"""Where the coordinator-hosted result store lives for each kind of ``db`` setting.

A PostgreSQL URL is no path: its "parent folder" once made a folder named
``postgresql:`` in the working directory. The hosted store of a coordinator on
PostgreSQL lives in ``.fleetflow/results`` and the coordinator warns that a
standby taking over cannot read it.
"""

from __future__ import annotations

import os

from fleetflow_coordinator.results import ResultStore, hosted_root, is_database_url
from fleetflow_coordinator.settings import Settings
from structlog.testing import capture_logs


def test_hosted_root_for_each_kind_of_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hosted_root(str(tmp_path / "state" / "ff.db")) == str(tmp_path / "state" / "results")
    assert hosted_root(":memory:") is None
    for url in ("postgresql://postgres@127.0.0.1:5432/test", "postgres://u@h/db"):
        assert is_database_url(url)
        assert hosted_root(url) == str(tmp_path / ".fleetflow" / "results")
    assert not is_database_url("postgresql.db")


def test_a_coordinator_on_postgresql_hosts_results_in_its_working_directory_and_warns(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    settings = Settings(db="postgresql://postgres@127.0.0.1:5432/test")
    with capture_logs() as logs:
        store = ResultStore.from_settings(settings)
    try:
        assert store.hosted
        assert os.path.isdir(tmp_path / ".fleetflow" / "results")
        assert os.listdir(tmp_path) == [".fleetflow"], "nothing named after the URL"
        warnings = [e for e in logs if e["event"] == "result_store_not_shared"]
        assert len(warnings) == 1 and "result_store" in warnings[0]["advice"]
    finally:
        store.close()


def test_a_configured_result_store_gives_no_warning(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings(
        db="postgresql://postgres@127.0.0.1:5432/test", result_store=str(tmp_path / "shared")
    )
    with capture_logs() as logs:
        store = ResultStore.from_settings(settings)
    store.close()
    assert not [e for e in logs if e["event"] == "result_store_not_shared"]
    assert not (tmp_path / ".fleetflow").exists()
