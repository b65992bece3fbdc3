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
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from fleetflow import Client
from fleetflow.credentials import Credentials
from fleetflow.resources import parse_quantity
from fleetflow_worker.settings import WorkerSettings

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
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        argv = container[probe]["exec"]["command"]
        assert argv[:3] == ["python", "-m", "fleetflow_coordinator.probe"], probe
        assert int(argv[3].rpartition(":")[2]) == ports["grpc"], probe
        assert str(Path(_flag(argv, "--tls-ca")).parent) in mounts, probe
        assert _flag(argv, "--server-name") == "fleetflow-coordinator", probe
    # TLS files and the auth file come from mounted Secrets
    for flag in ("--tls-cert", "--tls-key", "--auth-file"):
        assert str(Path(_flag(command, flag)).parent) in mounts, flag
    assert _flag(command, "--allowed-host") == "fleetflow-coordinator"
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
    assert set(meta) == {
        "url",
        "valueLocation",
        "targetValue",
        "activationTargetValue",
        "authMode",
    }
    assert trigger["authenticationRef"] == {"name": "fleetflow-demand"}
    assert "TriggerAuthentication/fleetflow-demand" in objects
    # targetValue is one worker's CPUs: what the worker offers (FLEETFLOW_CPU = limits.cpu)
    container = _container(objects["Deployment/fleetflow-worker"])
    cpu = parse_quantity(container["resources"]["limits"]["cpu"], "cpu")
    assert float(meta["targetValue"]) == cpu
    url = urlsplit(meta["url"])
    service = objects["Service/fleetflow-coordinator"]
    assert url.scheme == "https" and url.hostname == service["metadata"]["name"]
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

DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"


def _doc_commands() -> tuple[list[list[str]], dict[str, dict[str, str]]]:
    """The guide's `fleetflow certs/token` commands and its Secrets: {name: {key: file}}."""
    text = DEPLOYMENT_DOC.read_text()
    block = text[text.index("fleetflow certs pki") :]
    block = block[: block.index("```")]
    commands, secrets = [], {}
    for line in block.splitlines():
        words = line.split()
        if words[:1] == ["fleetflow"]:
            commands.append(words)
        elif words[:4] == ["kubectl", "create", "secret", "generic"]:
            secrets[words[4]] = dict(
                w.removeprefix("--from-file=").split("=", 1) for w in words[5:]
            )
    return commands, secrets


def _pod_files(obj: dict, secrets: dict, pki: Path, root: Path) -> Path:
    """Lay out a pod's secret volumes under ``root`` as the kubelet would mount them."""
    spec = obj["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in _container(obj).get("volumeMounts", []):
        volume = volumes.get(mount["name"], {})
        if "secret" not in volume:
            continue
        secret = volume["secret"]
        files = secrets[secret["secretName"]]  # the guide creates every Secret used
        items = secret.get("items") or [{"key": k, "path": k} for k in files]
        target = root / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        for item in items:
            shutil.copy(pki.parent / files[item["key"]], target / item["path"])
    return root


def _mapped(value: str, root: Path) -> str:
    """A pod path (/etc/fleetflow/..., /var/lib/fleetflow/...) under the test's root."""
    for prefix in ("/etc/fleetflow", "/var/lib/fleetflow"):
        if value.startswith(prefix):
            return str(root / value.lstrip("/"))
    return value


def _env(container: dict, pod: str, root: Path) -> dict[str, str]:
    """The container's environment as the kubelet would set it (downward API resolved)."""
    out = {}
    limits = container.get("resources", {}).get("limits", {})
    for var in container.get("env", []):
        if "value" in var:
            out[var["name"]] = _mapped(var["value"], root)
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


def _command(command: list[str]) -> list[str]:
    """A container command as this test runs it: `fleetflow` and `python` from here."""
    if command[0] == "fleetflow":
        return [sys.executable, "-m", "fleetflow.cli", *command[1:]]
    assert command[0] == "python", command
    return [sys.executable, *command[1:]]


def _run(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as fh:
        return subprocess.Popen(
            _command(command),
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


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def _value_at(data: dict, location: str) -> float:
    for part in location.split("."):
        data = data[part]
    assert isinstance(data, int | float), data
    return float(data)


@pytest.mark.slow
def test_the_manifests_commands_run_against_a_real_coordinator(objects, tmp_path):
    # The Secrets, made with the guide's own commands.
    commands, secrets = _doc_commands()
    for words in commands:
        done = subprocess.run(
            [sys.executable, "-m", "fleetflow.cli", *words[1:]],
            cwd=tmp_path, env=_process_env({}), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, (words, done.stderr)
    pki = tmp_path / "pki"
    used = {
        v["secret"]["secretName"]
        for o in objects.values()
        if o["kind"] in ("StatefulSet", "Deployment")
        for v in o["spec"]["template"]["spec"].get("volumes", [])
        if "secret" in v
    }
    auth = objects["TriggerAuthentication/fleetflow-demand"]["spec"]["secretTargetRef"]
    used |= {ref["name"] for ref in auth}
    assert used <= set(secrets), f"the guide creates no Secret {used - set(secrets)}"
    for ref in auth:
        assert ref["key"] in secrets[ref["name"]]
    keda_token = (pki.parent / secrets["fleetflow-keda-token"]["token"]).read_text().strip()

    coordinator_obj = objects["StatefulSet/fleetflow-coordinator"]
    container = _container(coordinator_obj)
    root = _pod_files(coordinator_obj, secrets, pki, tmp_path / "coordinator-pod")
    command = [_mapped(word, root) for word in container["command"]]
    # Map the pod's fixed ports to this test's own (port 0); the hosts stay as written
    # (0.0.0.0: what a pod listens on), so the coordinator's security checks apply.
    command = _replace(command, "--listen", _flag(command, "--listen").rpartition(":")[0] + ":0")
    command = _replace(command, "--http", _flag(command, "--http").rpartition(":")[0] + ":0")
    (root / "var/lib/fleetflow").mkdir(parents=True)
    command += ["--port-file", "port", "--http-port-file", "http-port"]
    log = tmp_path / "coordinator.log"
    coordinator = _run(command, _env(container, "fleetflow-coordinator-0", root), log)
    worker = None
    try:
        port = int(_wait(lambda: _read(tmp_path / "port"), 30, "coordinator serving", log))
        http_port = int((tmp_path / "http-port").read_text())
        address = f"127.0.0.1:{port}"
        # The probes, as the kubelet runs them in the container.
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            argv = [_mapped(w, root) for w in container[probe]["exec"]["command"]]
            argv = [f"127.0.0.1:{port}" if w == "127.0.0.1:50051" else w for w in argv]
            done = subprocess.run(
                _command(argv), env=_process_env({}), capture_output=True, text=True,
                timeout=container[probe]["timeoutSeconds"] + 30,
            )  # fmt: skip
            assert done.returncode == 0, (probe, done.stderr)
        # KEDA's request: HTTPS checked against the CA, the Service's name as Host, the
        # viewer token as bearer; the value location is a number, zero with no work.
        meta = objects["ScaledObject/fleetflow-worker"]["spec"]["triggers"][0]["metadata"]
        ca = root / "etc/fleetflow/tls/ca.crt"

        def demand(token: str | None = keda_token) -> dict:
            parts = urlsplit(meta["url"])
            request = urllib.request.Request(
                f"{parts.scheme}://127.0.0.1:{http_port}{parts.path}?{parts.query}",
                headers={"Host": parts.netloc}
                | ({"Authorization": f"Bearer {token}"} if token else {}),
            )
            context = ssl.create_default_context(cafile=str(ca))
            with urllib.request.urlopen(request, timeout=10, context=context) as response:
                return json.loads(response.read())

        assert meta["authMode"] == "bearer"
        assert _value_at(demand(), meta["valueLocation"]) == 0
        with pytest.raises(urllib.error.HTTPError) as refused:
            demand(token=None)
        refused.value.close()  # the error holds the response and its TLS socket
        assert refused.value.code == 401
        # Work queued before any worker exists: the signal asks to scale from zero.
        sys.path.insert(0, str(FLOWS.parent))
        import deploy_flows

        client_token = (pki / "me.token").read_text().strip()
        credentials = Credentials(tls_ca=str(ca), token=client_token)
        with Client(address, credentials=credentials) as client:
            run = client.submit(deploy_flows.naps, n=3, seconds=30.0)
            queued = _wait(lambda: _value_at(demand(), meta["valueLocation"]), 20, "demand", log)
            assert queued == 3.0  # three cpu=1 task runs
            # The worker's command, environment and volumes, as the Deployment gives them.
            worker_obj = objects["Deployment/fleetflow-worker"]
            wcontainer = _container(worker_obj)
            wroot = _pod_files(worker_obj, secrets, pki, tmp_path / "worker-pod")
            assert sorted(p.name for p in (wroot / "etc/fleetflow/tls").iterdir()) == ["ca.crt"]
            wcommand = _replace(wcontainer["command"], "--coordinator", address)
            wcommand = _replace(wcommand, "--module", str(FLOWS))
            wlog = tmp_path / "worker.log"
            wenv = _env(wcontainer, "fleetflow-worker-abc12", wroot)
            worker = _run(wcommand, wenv, wlog)
            workers = _wait(lambda: client.list_workers(), 60, "worker registered", wlog)
            (info,) = workers
            limits = wcontainer["resources"]["limits"]
            assert info.worker_id == "fleetflow-worker-abc12"
            assert info.capacity["cpu"] == parse_quantity(limits["cpu"], "cpu")
            assert info.capacity["memory"] == parse_quantity(limits["memory"], "memory")
            # Running work still counts (two slots run, one waits): no scale-down mid-run.
            _wait(lambda: demand()["running_slots"] == 2, 30, "two running slots", wlog)
            assert _value_at(demand(), meta["valueLocation"]) == 3.0
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
