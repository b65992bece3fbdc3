"""``/metrics`` of a real coordinator parses with prometheus-client and matches a real run."""

from __future__ import annotations

import urllib.request

import pytest
from fleetflow import Client
from fleetflow.loader import load_module
from prometheus_client.parser import text_string_to_metric_families

from .fleet import FLOWS, wait_until

pytestmark = pytest.mark.slow

flows = load_module(str(FLOWS))


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_counters_match_a_real_run(fleet, tmp_path):
    fleet.start_coordinator()
    fleet.start_worker()
    fleet.start_worker()
    with Client(fleet.address) as client:
        wait_until(lambda: len(client.list_workers()) == 2, 30, what="two workers")
        mapped = client.submit(flows.map_inc, n=50)
        assert mapped.result(timeout=60) == list(range(1, 51))
        ledger = tmp_path / "flaky.ledger"
        flaky = client.submit(flows.flaky_flow, ledger=str(ledger), failures=1, retries=1)
        assert flaky.result(timeout=60) == "recovered"
        events = list(client.watch(mapped.id)) + list(client.watch(flaky.id))

    m = scrape(fleet.http_url)
    # 50 inc + 1 collect + 2 attempts of flaky: every lease, every accepted outcome.
    assert m[("fleetflow_leases_granted_total", ())] == 53
    assert m[("fleetflow_outcomes_reported_total", (("ack", "accepted"),))] == 53
    assert m[("fleetflow_flow_runs_submitted_total", ())] == 2
    assert m[("fleetflow_task_runs", (("state", "COMPLETED"),))] == 52
    assert m[("fleetflow_task_runs", (("state", "RUNNING"),))] == 0
    assert m[("fleetflow_flow_runs", (("state", "COMPLETED"),))] == 2
    assert m[("fleetflow_workers_connected", ())] == 2
    assert m[("fleetflow_worker_registrations_total", ())] >= 2
    assert m[("fleetflow_heartbeats_received_total", ())] >= 1
    assert m[("fleetflow_workers_lost_total", ())] == 0

    by_kind: dict[str, int] = {}
    for event in events:
        by_kind[event.kind] = by_kind.get(event.kind, 0) + 1
    for kind, count in by_kind.items():
        assert m[("fleetflow_events_published_total", (("kind", kind),))] == count, kind
    published = sum(v for (name, _), v in m.items() if name == "fleetflow_events_published_total")
    assert published == len(events)

    def histogram_count(name: str, **labels: str) -> float:
        return m[(f"{name}_count", tuple(sorted(labels.items())))]

    duration = "fleetflow_task_run_duration_seconds"
    assert histogram_count(duration, task="flows:inc", outcome="completed") == 50
    assert histogram_count(duration, task="flows:flaky", outcome="retrying") == 1
    assert histogram_count(duration, task="flows:flaky", outcome="completed") == 1
    assert (
        m[(f"{duration}_bucket", (("le", "+Inf"), ("outcome", "completed"), ("task", "flows:inc")))]
        == 50
    )
    assert histogram_count("fleetflow_task_run_queue_wait_seconds", task="flows:inc") == 50

    ages = [v for (name, _), v in m.items() if name == "fleetflow_worker_heartbeat_age_seconds"]
    assert len(ages) == 2 and all(0 <= age < 3.0 for age in ages)
    cpus = [
        v
        for (name, labels), v in m.items()
        if name == "fleetflow_worker_capacity" and ("resource", "cpu") in labels
    ]
    assert cpus == [2.0, 2.0]
    assert ("fleetflow_store_last_commit_seconds", ()) in m
