"""GPU discovery, restriction and device assignment, against a fake NVML."""

from __future__ import annotations

import importlib.util
import itertools
import random

import pytest
from fake_nvml import FakeDevice, FakeNvml, install, uninstall
from fleetflow_worker.devices import DeviceAllocator
from fleetflow_worker.gpus import Gpu, GpuSelectionError, discover_gpus, plan_gpus

GiB = 2**30


@pytest.fixture
def four_gpus(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    devices = [
        FakeDevice(name=f"NVIDIA Fake {i}", memory_bytes=(i + 1) * 10 * GiB) for i in range(4)
    ]
    return install(monkeypatch, FakeNvml(devices))


# ----------------------------------------------------------------- discovery


def test_discovery_reports_count_memory_and_model(four_gpus):
    found = discover_gpus()
    assert [g.id for g in found] == ["0", "1", "2", "3"]
    assert [g.memory_bytes for g in found] == [10 * GiB, 20 * GiB, 30 * GiB, 40 * GiB]
    assert found[2].name == "NVIDIA Fake 2"
    assert found[2].uuid == four_gpus.devices[2].uuid
    assert four_gpus.inits == four_gpus.shutdowns == 1
    plan = plan_gpus(environ={})
    assert plan.capacity == {"gpu": 4.0, "gpu_memory": 100.0 * GiB}


def test_no_bindings_no_library_or_no_driver_means_no_gpus_and_no_error(monkeypatch):
    uninstall(monkeypatch)
    assert discover_gpus() == []
    assert plan_gpus(environ={}).capacity == {}
    install(monkeypatch, FakeNvml(broken=True))
    assert discover_gpus() == []
    assert plan_gpus(environ={}).capacity == {}


@pytest.mark.skipif(importlib.util.find_spec("pynvml") is None, reason="nvidia-ml-py not installed")
def test_the_real_bindings_without_a_driver_mean_no_gpus(monkeypatch):
    monkeypatch.delitem(__import__("sys").modules, "pynvml", raising=False)
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        assert discover_gpus() == []  # this machine has no NVIDIA driver
    else:  # pragma: no cover - a GPU machine
        pynvml.nvmlShutdown()
        assert len(discover_gpus()) == pynvml_count()


def pynvml_count() -> int:  # pragma: no cover - a GPU machine
    import pynvml

    pynvml.nvmlInit()
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


def test_a_failing_call_after_init_means_no_gpus(monkeypatch, four_gpus):
    def boom(index):
        raise four_gpus.NVMLError("GPU is lost")

    monkeypatch.setattr(four_gpus, "nvmlDeviceGetHandleByIndex", boom)
    assert discover_gpus() == []
    assert four_gpus.shutdowns == four_gpus.inits == 1


# ---------------------------------------------------------------- restriction


def test_cuda_visible_devices_restricts_and_names_the_devices(four_gpus):
    plan = plan_gpus(environ={"CUDA_VISIBLE_DEVICES": "2,0"})
    assert [d.id for d in plan.devices] == ["2", "0"]
    assert plan.capacity == {"gpu": 2.0, "gpu_memory": 40.0 * GiB}
    uuid = four_gpus.devices[3].uuid
    plan = plan_gpus(environ={"CUDA_VISIBLE_DEVICES": uuid[:12]})
    assert [(d.id, d.index) for d in plan.devices] == [(uuid[:12], 3)]
    # CUDA stops at the first entry it cannot resolve
    assert [d.id for d in plan_gpus(environ={"CUDA_VISIBLE_DEVICES": "1,9,2"}).devices] == ["1"]
    assert plan_gpus(environ={"CUDA_VISIBLE_DEVICES": ""}).capacity == {}


def test_gpus_flag_restricts_within_what_is_visible(four_gpus):
    assert [d.id for d in plan_gpus("0,2", environ={}).devices] == ["0", "2"]
    assert plan_gpus("none", environ={}).capacity == {}
    assert plan_gpus("all", environ={}).capacity["gpu"] == 4
    uuid = four_gpus.devices[1].uuid
    assert [d.index for d in plan_gpus(uuid, environ={}).devices] == [1]
    with pytest.raises(GpuSelectionError, match="--gpus 3: no such visible GPU"):
        plan_gpus("3", environ={"CUDA_VISIBLE_DEVICES": "0,1"})
    with pytest.raises(GpuSelectionError):
        plan_gpus("0,,1", environ={})


def test_resource_override_wins_over_discovery(four_gpus):
    plan = plan_gpus(override=2, environ={})
    assert plan.slots == ("0", "1") and plan.capacity == {"gpu": 2.0, "gpu_memory": 30.0 * GiB}
    assert plan_gpus(override=0, environ={}).capacity == {}
    # more than there are: the devices are shared round-robin, as the operator asked
    plan = plan_gpus("1", override=3, environ={})
    assert plan.slots == ("1", "1", "1") and plan.capacity["gpu"] == 3


def test_without_nvml_an_override_or_selection_is_trusted(monkeypatch):
    uninstall(monkeypatch)
    assert plan_gpus(override=2, environ={}).slots == ("0", "1")
    assert plan_gpus(override=2, environ={"CUDA_VISIBLE_DEVICES": "3,5"}).slots == ("3", "5")
    assert plan_gpus("1,2", environ={}).slots == ("1", "2")
    assert plan_gpus(override=2, environ={}).capacity == {"gpu": 2.0}  # memory unknown


# ----------------------------------------------------------------- assignment


def test_whole_device_requests_never_share():
    alloc = DeviceAllocator(["0", "1", "2"])
    a = alloc.acquire(1)
    b = alloc.acquire(2)
    assert a is not None and b is not None
    assert set(a.ids).isdisjoint(b.ids) and len(b.ids) == 2
    assert alloc.acquire(1) is None and alloc.acquire(0.1) is None
    alloc.release(a)
    c = alloc.acquire(1)
    assert c is not None and c.ids == a.ids and c.visible_devices == a.visible_devices


def test_fractional_requests_are_packed_before_a_new_device_is_taken():
    alloc = DeviceAllocator(["0", "1"])
    halves = [alloc.acquire(0.5) for _ in range(2)]
    assert [h.ids for h in halves] == [("0",), ("0",)]  # type: ignore[union-attr]
    quarter = alloc.acquire(0.25)
    assert quarter is not None and quarter.ids == ("1",)
    assert alloc.acquire(1) is None  # device 1 is partly held: no whole device left
    assert alloc.acquire(0.75).ids == ("1",)  # type: ignore[union-attr]
    assert alloc.acquire(0.01) is None
    for held in [*halves, quarter]:
        alloc.release(held)  # type: ignore[arg-type]
    assert alloc.acquire(1).ids == ("0",)  # type: ignore[union-attr]


def test_fractions_that_fit_the_count_but_not_the_devices_wait():
    alloc = DeviceAllocator(["0", "1"])
    held = [alloc.acquire(0.6), alloc.acquire(0.6)]
    assert sorted(h.ids for h in held) == [("0",), ("1",)]  # type: ignore[union-attr]
    assert alloc.acquire(0.6) is None  # 1.8 <= 2 counted, but no device has 0.6 left
    alloc.release(held[0])  # type: ignore[arg-type]
    assert alloc.acquire(0.6) is not None


def test_preferred_devices_come_first():
    alloc = DeviceAllocator(["0", "1", "2", "3"])
    assert alloc.acquire(1, prefer=["2"]).ids == ("2",)  # type: ignore[union-attr]
    assert alloc.acquire(2, prefer=["3", "2"]).ids == ("0", "3")  # type: ignore[union-attr]
    assert alloc.acquire(0.5, prefer=["1"]).ids == ("1",)  # type: ignore[union-attr]


def test_zero_is_no_devices_and_too_much_never_fits():
    alloc = DeviceAllocator(["0"])
    assert alloc.acquire(0).ids == () and alloc.in_use == 0  # type: ignore[union-attr]
    assert alloc.acquire(2) is None
    assert DeviceAllocator([]).acquire(0.5) is None


def test_an_oversubscribed_device_is_listed_once():
    alloc = DeviceAllocator(["0", "0"])
    held = alloc.acquire(2)
    assert held is not None and held.ids == ("0",) and held.visible_devices == "0"


@pytest.mark.parametrize("seed", range(20))
def test_random_acquire_release_never_overcommits_a_device(seed):
    rng = random.Random(seed)
    alloc = DeviceAllocator([str(i) for i in range(3)])
    held = []
    for _ in range(200):
        if held and rng.random() < 0.45:
            alloc.release(held.pop(rng.randrange(len(held))))
        else:
            amount = rng.choice([0.25, 0.5, 0.3, 1, 2])
            got = alloc.acquire(amount)
            if got is not None:
                held.append(got)
        per_device: dict[str, float] = {}
        whole: list[str] = []
        for a in held:
            for slot, share in a.shares:
                per_device[alloc.slots[slot]] = per_device.get(alloc.slots[slot], 0) + share
                if share >= 1:
                    whole.append(alloc.slots[slot])
        assert all(v <= 1 + 1e-6 for v in per_device.values())
        assert len(whole) == len(set(whole))
        for w in whole:  # a whole device holds nothing else
            assert per_device[w] == pytest.approx(1.0)
    for a in held:
        alloc.release(a)
    assert alloc.in_use == pytest.approx(0.0)
    assert list(itertools.chain(alloc.used)) == pytest.approx([0.0] * 3)


def test_gpu_dataclass_defaults_mean_unknown():
    gpu = Gpu(id="0")
    assert gpu.index == -1 and gpu.memory_bytes == 0 and gpu.name == ""


# ------------------------------------------------- the worker and its flags


def _worker(sample_tasks, sample_tasks_path, **settings):
    from fleetflow_worker import Worker, WorkerSettings

    return Worker(WorkerSettings(cpu=2, memory=1e9, **settings), sample_tasks, [sample_tasks_path])


def test_the_worker_offers_discovered_gpus(four_gpus, sample_tasks, sample_tasks_path):
    worker = _worker(sample_tasks, sample_tasks_path)
    assert worker.capacity == {"cpu": 2.0, "memory": 1e9, "gpu": 4.0, "gpu_memory": 100.0 * GiB}
    worker = _worker(sample_tasks, sample_tasks_path, gpus="1,3")
    assert worker.capacity["gpu"] == 2 and worker.capacity["gpu_memory"] == 60.0 * GiB
    assert [d.name for d in worker.gpus.devices] == ["NVIDIA Fake 1", "NVIDIA Fake 3"]
    worker = _worker(sample_tasks, sample_tasks_path, gpus="none")
    assert worker.capacity == {"cpu": 2.0, "memory": 1e9}
    worker = _worker(sample_tasks, sample_tasks_path, resources={"gpu": 1})
    assert worker.capacity == {"cpu": 2.0, "memory": 1e9, "gpu": 1.0, "gpu_memory": 10.0 * GiB}


def test_a_worker_without_nvml_offers_no_gpus(sample_tasks, sample_tasks_path):
    worker = _worker(sample_tasks, sample_tasks_path)  # conftest: no pynvml
    assert worker.capacity == {"cpu": 2.0, "memory": 1e9}


def test_cli_gpus_option(four_gpus, sample_tasks_path, monkeypatch):
    from click.testing import CliRunner
    from fleetflow_worker import cli

    monkeypatch.setattr(cli, "configure_logging", lambda level: None)
    result = CliRunner().invoke(cli.command, ["--module", sample_tasks_path, "--gpus", "7"])
    assert result.exit_code == 2, result.output
    assert "--gpus 7: no such visible GPU (visible: 0,1,2,3)" in result.output
    result = CliRunner().invoke(cli.command, ["--module", sample_tasks_path, "--gpus", "0,,1"])
    assert result.exit_code == 2 and "gpus" in result.output

    seen = {}

    class Recorder:
        def __init__(self, settings, tasks, module_specs):
            seen["settings"] = settings

        async def run(self):
            pass

        def stop(self, *, force=False):
            pass

    monkeypatch.setattr(cli, "Worker", Recorder)
    result = CliRunner().invoke(cli.command, ["--module", sample_tasks_path, "--gpus", "0,2"])
    assert result.exit_code == 0, result.output
    assert seen["settings"].gpus == "0,2"
    monkeypatch.setenv("FLEETFLOW_GPUS", "none")
    result = CliRunner().invoke(cli.command, ["--module", sample_tasks_path])
    assert result.exit_code == 0, result.output
    assert seen["settings"].gpus == "none"


def test_the_plan_describes_each_device_for_people(four_gpus):
    assert plan_gpus("0,3", environ={}).describe() == [
        "0: NVIDIA Fake 0 (10 GiB)",
        "3: NVIDIA Fake 3 (40 GiB)",
    ]


# ------------------------------------------------------ review: bad input, edges


def test_float_residue_is_no_share_once_everything_is_released():
    alloc = DeviceAllocator(["0"])
    tenths = [alloc.acquire(0.1) for _ in range(10)]  # 0.1 * 10 on one device
    assert all(t is not None for t in tenths) and alloc.acquire(0.1) is None
    for held in tenths:
        alloc.release(held)  # type: ignore[arg-type]
    a, b = alloc.acquire(0.1), alloc.acquire(0.2)
    alloc.release(a)  # type: ignore[arg-type]
    alloc.release(b)  # type: ignore[arg-type]
    # 0.1 + 0.2 - 0.1 - 0.2 is 2.8e-17 in floats: still "not given back" before
    assert alloc.used == [0.0] and alloc.in_use == 0


def test_could_hold_says_which_requests_these_devices_can_ever_hold():
    two = DeviceAllocator(["0", "1"])
    assert two.could_hold(0) and two.could_hold(0.5) and two.could_hold(2)
    assert two.could_hold(1.5) and not two.could_hold(2.5) and not two.could_hold(3)
    assert not DeviceAllocator([]).could_hold(0.5) and DeviceAllocator([]).could_hold(0)


@pytest.mark.parametrize("text", ["abc", "-1", "all,0", "0,none", "0,,1", "GPU-", "1.5", "²"])
def test_gpus_that_are_not_device_ids_are_refused_naming_the_field(text, monkeypatch):
    from fleetflow.settings import SettingsError
    from fleetflow_worker import WorkerSettings
    from fleetflow_worker.gpus import parse_gpu_selection

    uninstall(monkeypatch)  # without NVML any id used to be trusted as given
    with pytest.raises(GpuSelectionError, match="--gpus expects"):
        parse_gpu_selection(text)
    with pytest.raises(SettingsError, match="gpus"):
        WorkerSettings(gpus=text)


def test_gpus_accepts_indexes_and_uuids():
    from fleetflow_worker.gpus import parse_gpu_selection

    assert parse_gpu_selection(" 0 , 2 ") == ["0", "2"]
    assert parse_gpu_selection("GPU-1234,MIG-abcd") == ["GPU-1234", "MIG-abcd"]
    assert parse_gpu_selection("ALL") is None and parse_gpu_selection("None") == []


@pytest.mark.parametrize("amount", [0.5, 1.5])
def test_a_worker_refuses_a_gpu_capacity_no_whole_devices_back(amount):
    # gpu=0.5 gave the coordinator room for a gpu=0.5 attempt but the worker no
    # device slot: the attempt waited in the worker for ever.
    from fleetflow.settings import SettingsError
    from fleetflow_worker import WorkerSettings

    with pytest.raises(SettingsError, match=r"resources\['gpu'\] must be a whole number"):
        WorkerSettings(resources={"gpu": amount})
    assert WorkerSettings(resources={"gpu": 2.0}).capacity["gpu"] == 2


def test_sampler_open_pairs_its_init_when_a_device_cannot_be_opened(monkeypatch, four_gpus):
    from fleetflow_worker._gpu_usage import GpuSampler

    def lost(index):
        raise four_gpus.NVMLError("GPU is lost")

    plan = plan_gpus(environ={})
    monkeypatch.setattr(four_gpus, "nvmlDeviceGetHandleByIndex", lost)
    sampler = GpuSampler(plan.devices)
    assert not sampler.open() and not sampler.active
    assert four_gpus.inits == four_gpus.shutdowns


def test_a_device_listed_twice_in_cuda_visible_devices_is_offered_once(four_gpus, monkeypatch):
    # Before: "0,0,1" offered gpu=3 with device 0 in two slots, so two gpu=1
    # attempts could get "0" both (as could "0,GPU-<uuid of 0>" under two ids).
    plan = plan_gpus(environ={"CUDA_VISIBLE_DEVICES": "0,0,1"})
    assert plan.slots == ("0", "1") and plan.capacity["gpu"] == 2
    uuid0 = four_gpus.devices[0].uuid
    assert plan_gpus(environ={"CUDA_VISIBLE_DEVICES": f"0,{uuid0},2"}).slots == ("0", "2")
    uninstall(monkeypatch)  # without NVML the indexes are trusted, still once each
    assert plan_gpus(environ={"CUDA_VISIBLE_DEVICES": "3,3"}, override=1).slots == ("3",)
    alloc = DeviceAllocator(plan_gpus(environ={"CUDA_VISIBLE_DEVICES": "1,1"}).slots)
    assert alloc.acquire(1) is not None and alloc.acquire(1) is None


def test_utilisation_is_the_mean_of_nvmls_samples_not_of_our_polls(monkeypatch, four_gpus):
    """NVML samples at its own pace: a poll with no new sample is no 0 % sample."""
    import os
    from types import SimpleNamespace

    import psutil
    from fleetflow_worker._gpu_usage import GpuMeter, GpuSampler
    from fleetflow_worker._usage import AttemptUsage

    me = os.getpid()
    clock = {"ts": 10**18, "poll": 0}

    def every_other_poll(handle, since):  # a busy device, sampled every second poll
        if handle is not four_gpus.devices[0]:
            raise four_gpus.NVMLError_NotFound("Not Found")  # nothing runs there
        clock["poll"] += 1
        if clock["poll"] % 2:
            raise four_gpus.NVMLError_NotFound("Not Found")
        clock["ts"] += 2
        return [  # two sample times since the last poll, 80 % at each
            SimpleNamespace(pid=me, smUtil=80, memUtil=0, timeStamp=clock["ts"] - 1),
            SimpleNamespace(pid=me, smUtil=80, memUtil=0, timeStamp=clock["ts"]),
        ]

    plan = plan_gpus(environ={})
    sampler = GpuSampler(plan.devices)
    assert sampler.open()
    try:
        monkeypatch.setattr(four_gpus, "nvmlDeviceGetProcessUtilization", every_other_poll)
        meter = GpuMeter(sampler, ["0"])
        meter.attach(psutil.Process(me))
        for _ in range(6):
            meter.sample()
        # Before: polls without a new sample counted 0 % and two sample times
        # were summed (160 -> 100): (0 + 100) / 2 = 50.
        assert meter.usage(AttemptUsage()).gpu_utilization_percent == pytest.approx(80)
        idle = GpuMeter(sampler, ["1"])  # never a sample on its device: idle, 0 %
        idle.attach(psutil.Process(me))
        idle.sample()
        assert idle.usage(AttemptUsage()).gpu_utilization_percent == 0
    finally:
        sampler.close()
