"""deploy/kubernetes: valid against the Kubernetes schemas, and true to the real programs.

Every object the kustomize base builds is validated (strictly: unknown fields are
errors) with ``kubernetes-validate``, which carries the schemas in its wheel, so this
runs offline. Then the commands, ports, environment and probes the manifests name are
run against a real coordinator and worker started from those very commands (ports
and paths mapped to the test's own), and the KEDA trigger's URL and value location
are read from that coordinator.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import kubernetes_validate
import pytest
import yaml
from fleetflow import Client
from fleetflow.resources import parse_quantity
from fleetflow_worker.settings import WorkerSettings
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes"
FLOWS = Path(__file__).resolve().parent / "deploy_flows.py"
#: Oldest Kubernetes the base supports (gRPC probes are GA since 1.27) and the newest known.
VERSIONS = ("1.27.0", kubernetes_validate.utils.latest_version())


def _local_build() -> list[dict]:
    """What ``kubectl kustomize`` makes of this base: its resources, with its labels."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert set(kustomization) <= {"apiVersion", "kind", "labels", "resources"}, kustomization
    labels: dict[str, str] = {}
    for entry in kustomization.get("labels", []):
        assert not entry.get("includeSelectors"), "selectors must not change with labels"
        labels.update(entry["pairs"])
    objects = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((BASE / name).read_text()):
            if doc:
                doc["metadata"].setdefault("labels", {}).update(labels)
                objects.append(doc)
    return objects


@pytest.fixture(scope="module")
def objects() -> dict[str, dict]:
    built = _local_build()
    kubectl = shutil.which("kubectl")
    if kubectl:  # the real kustomize, as `kubectl apply -k` uses it
        done = subprocess.run(
            [kubectl, "kustomize", str(BASE)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        real = [d for d in yaml.safe_load_all(done.stdout) if d]
        key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
        assert sorted(map(key, real)) == sorted(map(key, built))
        assert {key(d): d for d in real} == {key(d): d for d in built}
        built = real
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in built}


def test_every_kubernetes_object_validates_strictly(objects):
    checked = []
    for obj in objects.values():
        if obj["apiVersion"].startswith("keda.sh/"):
            continue  # a custom resource: checked in test_keda_scaled_object
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        checked.append(obj["kind"])
    assert sorted(checked) == [
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "StatefulSet",
    ]


def test_a_broken_manifest_is_caught(objects):
    """The validation is real: a misspelt field fails it."""
    broken = json.loads(json.dumps(objects["Deployment/fleetflow-worker"]))
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def _container(obj: dict) -> dict:
    (container,) = obj["spec"]["template"]["spec"]["containers"]
    return container


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def _ports(container: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def test_ports_services_and_probes_agree(objects):
    coordinator = objects["StatefulSet/fleetflow-coordinator"]
    container = _container(coordinator)
    command = container["command"]
    ports = _ports(container)
    assert ports["grpc"] == int(_flag(command, "--listen").rpartition(":")[2])
    assert ports["http"] == int(_flag(command, "--http").rpartition(":")[2])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"], probe
    service = objects["Service/fleetflow-coordinator"]
    assert service["spec"]["selector"] == coordinator["spec"]["selector"]["matchLabels"]
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports and port["port"] == ports[port["targetPort"]]
    # the database lives on the claim
    (claim,) = coordinator["spec"]["volumeClaimTemplates"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    assert Path(_flag(command, "--db")).parent == Path(mount["mountPath"])
    worker = objects["Deployment/fleetflow-worker"]
    host, _, port = _flag(_container(worker)["command"], "--coordinator").rpartition(":")
    assert host == service["metadata"]["name"] and int(port) == ports["grpc"]
    pdb = objects["PodDisruptionBudget/fleetflow-worker"]
    assert pdb["spec"]["selector"] == worker["spec"]["selector"]


def test_worker_grace_period_covers_its_drain(objects):
    worker = objects["Deployment/fleetflow-worker"]
    command = _container(worker)["command"]
    drain = float(_flag(command, "--drain-grace"))
    flush = WorkerSettings.__dataclass_fields__["flush_timeout_s"].default
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= drain + flush, (grace, drain, flush)


def test_keda_scaled_object(objects):
    scaled = objects["ScaledObject/fleetflow-worker"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= {
        "scaleTargetRef",
        "minReplicaCount",
        "maxReplicaCount",
        "pollingInterval",
        "cooldownPeriod",
        "advanced",
        "triggers",
    }
    assert spec["scaleTargetRef"] == {"name": "fleetflow-worker"}
    assert "Deployment/fleetflow-worker" in objects
    assert 0 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "metrics-api" and trigger["metricType"] == "AverageValue"
    meta = trigger["metadata"]
    assert set(meta) == {"url", "valueLocation", "targetValue", "activationTargetValue"}
    # targetValue is one worker's CPUs: what the worker offers (FLEETFLOW_CPU = limits.cpu)
    container = _container(objects["Deployment/fleetflow-worker"])
    cpu = parse_quantity(container["resources"]["limits"]["cpu"], "cpu")
    assert float(meta["targetValue"]) == cpu
    url = urlsplit(meta["url"])
    service = objects["Service/fleetflow-coordinator"]
    assert url.hostname == service["metadata"]["name"]
    assert url.port in [p["port"] for p in service["spec"]["ports"] if p["name"] == "http"]
    # the HPA KEDA creates: validate its behaviour block against the real schema
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "keda-hpa-fleetflow-worker"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
            "maxReplicas": spec["maxReplicaCount"],
            "behavior": spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
        },
    }
    kubernetes_validate.validate(hpa, VERSIONS[-1], strict=True)


# ---------------------------------------------------------------- real processes


def _env(container: dict, pod: str) -> dict[str, str]:
    """The container's environment as the kubelet would set it (downward API resolved)."""
    out = {}
    limits = container.get("resources", {}).get("limits", {})
    for var in container.get("env", []):
        if "value" in var:
            out[var["name"]] = var["value"]
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name"
            out[var["name"]] = pod
        else:
            ref = source["resourceFieldRef"]
            kind = ref["resource"].split(".")[1]
            amount = parse_quantity(limits[kind], kind) / parse_quantity(ref["divisor"], kind)
            out[var["name"]] = str(math.ceil(amount))
    return out


def _process_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETFLOW_")}
    paths = [str(ROOT / p) for p in ("client", "coordinator", "worker")]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def _run(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    assert command[0] == "fleetflow"
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "fleetflow.cli", *command[1:]],
            env=_process_env(env),
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen, timeout: float) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(5)
    return proc.returncode


def _replace(command: list[str], flag: str, value: str) -> list[str]:
    out = list(command)
    out[out.index(flag) + 1] = value
    return out


def _wait(predicate, timeout: float, what: str, log: Path):
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout} s; log:\n{log.read_text()[-3000:]}")


def _demand(url: str, http_port: int) -> dict:
    parts = urlsplit(url)
    local = f"http://127.0.0.1:{http_port}{parts.path}?{parts.query}"
    with urllib.request.urlopen(local, timeout=10) as response:
        return json.loads(response.read())


def _value_at(data: dict, location: str) -> float:
    for part in location.split("."):
        data = data[part]
    assert isinstance(data, int | float), data
    return float(data)


@pytest.mark.slow
def test_the_manifests_commands_run_against_a_real_coordinator(objects, tmp_path):
    coordinator_obj = objects["StatefulSet/fleetflow-coordinator"]
    container = _container(coordinator_obj)
    command = list(container["command"])
    # Map the pod's fixed ports and volume to this test's own (port 0, tmp_path); the
    # hosts stay as written (0.0.0.0: what a pod must listen on to be reachable).
    command = _replace(command, "--listen", _flag(command, "--listen").rpartition(":")[0] + ":0")
    command = _replace(command, "--http", _flag(command, "--http").rpartition(":")[0] + ":0")
    command = _replace(command, "--db", str(tmp_path / "fleetflow.db"))
    command += ["--port-file", "port", "--http-port-file", "http-port"]
    log = tmp_path / "coordinator.log"
    coordinator = _run(command, _env(container, "fleetflow-coordinator-0"), log)
    worker = None
    try:
        port = int(_wait(lambda: _read(tmp_path / "port"), 30, "coordinator serving", log))
        http_port = int((tmp_path / "http-port").read_text())
        address = f"127.0.0.1:{port}"
        # The probes: what the kubelet's gRPC probe asks (grpc.health.v1.Health/Check, "").
        with grpc.insecure_channel(address) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        # KEDA's trigger: the URL exists and valueLocation is a number; zero with no work.
        meta = objects["ScaledObject/fleetflow-worker"]["spec"]["triggers"][0]["metadata"]
        assert _value_at(_demand(meta["url"], http_port), meta["valueLocation"]) == 0
        # Work queued before any worker exists: the signal asks to scale from zero.
        sys.path.insert(0, str(FLOWS.parent))
        import deploy_flows

        with Client(address) as client:
            run = client.submit(deploy_flows.naps, n=3, seconds=30.0)
            demand = _wait(
                lambda: _value_at(_demand(meta["url"], http_port), meta["valueLocation"]),
                20,
                "queued demand",
                log,
            )
            assert demand == 3.0  # three cpu=1 task runs
            # The worker's command and environment, as the Deployment gives them.
            worker_obj = objects["Deployment/fleetflow-worker"]
            wcontainer = _container(worker_obj)
            wcommand = _replace(wcontainer["command"], "--coordinator", address)
            wcommand = _replace(wcommand, "--module", str(FLOWS))
            wlog = tmp_path / "worker.log"
            worker = _run(wcommand, _env(wcontainer, "fleetflow-worker-abc12"), wlog)
            workers = _wait(lambda: client.list_workers(), 60, "worker registered", wlog)
            (info,) = workers
            limits = wcontainer["resources"]["limits"]
            assert info.worker_id == "fleetflow-worker-abc12"
            assert info.capacity["cpu"] == parse_quantity(limits["cpu"], "cpu")
            assert info.capacity["memory"] == parse_quantity(limits["memory"], "memory")
            # Running work still counts (two slots run, one waits): no scale-down mid-run.
            _wait(
                lambda: _demand(meta["url"], http_port)["running_slots"] == 2,
                30,
                "two running slots",
                wlog,
            )
            assert _value_at(_demand(meta["url"], http_port), meta["valueLocation"]) == 3.0
            client.cancel(run.id)
        # SIGTERM: the worker drains and exits 0 well inside its grace period.
        grace = worker_obj["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        started = time.monotonic()
        assert _stop(worker, grace) == 0, wlog.read_text()[-3000:]
        assert time.monotonic() - started < grace
        worker = None
        assert _stop(coordinator, 30) == 0, log.read_text()[-3000:]
    finally:
        if worker is not None:
            _stop(worker, 5)
        _stop(coordinator, 5)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""
