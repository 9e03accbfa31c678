"""``--executor ray`` on a real Ray cluster of two one-CPU nodes on this machine
(``ray.cluster_utils.Cluster``), shared by the module: cases spread over both nodes, the store
holds each case once, a worker killed mid-case is recorded and resubmitted on the other node, an
interrupted run resumes, and the results equal the local executor's.

Skips locally when Ray is missing; fails when ``CI`` is set, since the ``test`` extra installs
it. Every test runs under a SIGALRM deadline, so a hung cluster fails the test instead of CI.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
import pytest

from vlbench.cli import main
from vlbench.launchers.ray_cluster import job_runtime_env
from vlbench.launchers.ray_dispatch import request_for
from vlbench.machine import usable_cores
from vlbench.options import LaunchOptions
from vlbench.report import write_report
from vlbench.report.devices import device_rows, device_tags, label_devices
from vlbench.report.html import Case
from vlbench.results import MEASURED_SETTINGS, CaseResult, CaseSpec
from vlbench.store import Store, case_key
from vlbench.table import results_table

#: seconds one test (or the cluster's start) may take before it fails
DEADLINE_S = 90
MODELS = "vilt-b32-tiny,clip-vit-b32-tiny"
FAST = ("--models", MODELS, "--batch-sizes", "1,2", "--warmup", "1", "--repeats", "3",
        "--min-time", "0", "--threads", "1", "--device", "cpu", "--no-progress")


@pytest.fixture(autouse=True)
def _deadline() -> Iterator[None]:
    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"test ran past its {DEADLINE_S} s deadline")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(DEADLINE_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@dataclass(frozen=True)
class RayCluster:
    address: str
    node_ids: frozenset[str]
    nodes: Any  # ray.cluster_utils.Cluster: a test adds and removes a node


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    try:
        import ray
        from ray.cluster_utils import Cluster
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("Ray tests cannot run under CI: ray is not installed "
                        "(pip install -e '.[test]')")
        pytest.skip("ray is not installed (pip install 'vlbench[ray]')")
    signal.alarm(DEADLINE_S)  # the start-up too: module fixtures run outside _deadline
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        nodes.add_node(num_cpus=1)
        nodes.wait_for_nodes()
        # the runtime environment vlbench ships to a remote cluster: exercised here too
        staging = tmp_path_factory.mktemp("ray-staging")
        ray.init(address=nodes.address, log_to_driver=False,
                 runtime_env=job_runtime_env((), staging))
        alive = frozenset(n["NodeID"] for n in ray.nodes() if n["Alive"])
        signal.alarm(0)
        assert len(alive) == 2
        yield RayCluster(nodes.address, alive, nodes)
    finally:
        signal.alarm(0)
        ray.shutdown()
        nodes.shutdown()


def _ray_run(db: Path, cluster: RayCluster, *extra: str) -> int:
    return main(["run", *FAST, *extra, "--executor", "ray", "--address", cluster.address,
                 "--db", str(db)])


@pytest.fixture(scope="module")
def ray_db(cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("ray") / "r.sqlite"
    signal.alarm(DEADLINE_S)
    try:
        assert _ray_run(db, cluster) == 0
    finally:
        signal.alarm(0)
    return db


def test_cases_spread_over_both_nodes_and_are_stored_once(
    ray_db: Path, cluster: RayCluster
) -> None:
    with Store.open(ray_db) as store:
        run = store.get_run(1)
        final, every = store.cases(1), store.cases(1, final_only=False)
    assert run.status == "finished"
    assert (run.settings["executor"], run.settings["ray_address"]) == ("ray", cluster.address)
    assert len(final) == len(every) == 4  # one attempt each, nothing lost or doubled
    assert len({case_key(r.spec) for r in final}) == 4
    assert all(r.status == "ok" for r in final), [r.message for r in final]
    assert {r.settings["ray"]["node_id"] for r in final} == cluster.node_ids
    for r in final:
        ray_info = r.settings["ray"]
        assert ray_info["attempt"] == 1
        assert ray_info["resources"] == {"CPU": 1.0}  # the whole of a one-CPU node
        assert ray_info["worker_pid"] != os.getpid()
        # the run's thread count, not Ray's default: torch and the OpenMP/MKL variables
        assert r.settings["threads"] == 1
        assert ray_info["thread_env"] == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        assert r.settings["env"]["hostname"] and r.settings["env"]["cpu_model"]


def test_results_equal_the_local_executors(ray_db: Path, tmp_path: Path) -> None:
    local_db = tmp_path / "local.sqlite"
    assert main(["run", *FAST, "--db", str(local_db)]) == 0
    with Store.open(ray_db) as store:
        on_ray = {case_key(r.spec): r for r in store.cases(1)}
    with Store.open(local_db) as store:
        here = {case_key(r.spec): r for r in store.cases(1)}

    def measured(r: CaseResult) -> tuple:
        stages = tuple((s.name, s.kind, s.parent, s.flops, s.params, s.calls) for s in r.stages)
        return (r.status, r.embedder, r.fusion, r.tokens, r.flops_total, r.params_total, stages)

    assert on_ray.keys() == here.keys()
    assert {k: measured(r) for k, r in on_ray.items()} == {k: measured(r) for k, r in here.items()}
    for key, r in on_ray.items():  # the same settings, apart from where and what was measured
        where = {"env", "ray", "worker_pid", *MEASURED_SETTINGS}
        assert {k: v for k, v in r.settings.items() if k not in where} == {
            k: v for k, v in here[key].settings.items() if k not in where}


def _measuring_workers() -> Iterator[psutil.Process]:
    """Ray workers measuring a case: titled 'ray::vlbench ...' by their task's name and
    started by a raylet (a subprocess a worker forks, git for instance, carries the title until
    it executes)."""
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if ((proc.info["cmdline"] or [""])[0].startswith("ray::vlbench ")
                    and "raylet" in proc.parent().name()):
                yield proc


class _Killer(threading.Thread):
    """SIGKILLs the first Ray worker seen measuring a case."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.victim: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.victim is None:
            for proc in _measuring_workers():
                proc.kill()
                self.victim = proc.pid
                return
            time.sleep(0.01)


def test_a_killed_worker_is_recorded_and_resubmitted_on_the_other_node(
    cluster: RayCluster, tmp_path: Path
) -> None:
    db = tmp_path / "r.sqlite"
    killer = _Killer()
    killer.start()
    try:
        # one case, long enough (1 s of timing) to be caught measuring
        code = main(["run", *FAST, "--models", "vilt-b32-tiny", "--batch-sizes", "1",
                     "--min-time", "1", "--executor", "ray", "--address", cluster.address,
                     "--db", str(db)])
    finally:
        killer.stop.set()
        killer.join(timeout=5)
    assert code == 0 and killer.victim is not None
    with Store.open(db) as store:
        attempts = store.cases(1, final_only=False)
        (final,) = store.cases(1)
    assert [a.status for a in attempts] == ["error", "ok"], [a.message for a in attempts]
    first, second = attempts
    assert first.spec == second.spec == final.spec and final.status == "ok"
    assert "WorkerCrashedError" in first.message and first.message.endswith("resubmitted")
    assert first.settings["ray"]["attempt"] == 1 and second.settings["ray"]["attempt"] == 2
    assert second.settings["ray"]["worker_pid"] != killer.victim
    # placed by vlbench on the node the first attempt did not die on
    assert first.settings["ray"]["node_id"] != second.settings["ray"]["node_id"]
    assert {first.settings["ray"]["node_id"], second.settings["ray"]["node_id"]} == (
        cluster.node_ids)


def test_threads_a_node_cannot_run_are_that_cases_recorded_error(
    cluster: RayCluster, tmp_path: Path
) -> None:
    """The driver does not refuse --threads beyond its own cores on Ray (a remote node may have
    more): each task checks the node it runs on and records why it cannot."""
    db = tmp_path / "r.sqlite"
    too_many = usable_cores() + 1  # every node of this cluster runs on this machine
    code = _ray_run(db, cluster, "--models", "vilt-b32-tiny", "--batch-sizes", "1",
                    "--threads", str(too_many))
    assert code == 1  # every case failed
    with Store.open(db) as store:
        (result,) = store.cases(1)
    assert result.status == "error" and result.end_to_end is None
    assert f"{too_many} threads exceed the" in result.message
    assert "usable core(s) of Ray node" in result.message


def test_an_interrupted_ray_run_resumes_without_losing_a_case(
    cluster: RayCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "r.sqlite"
    add_case = Store.add_case

    def commit_then_interrupt(self: Store, run_id: int, result: CaseResult) -> int:
        add_case(self, run_id, result)
        raise KeyboardInterrupt  # Ctrl-C right after the first case is committed

    monkeypatch.setattr(Store, "add_case", commit_then_interrupt)
    assert _ray_run(db, cluster) == 130
    monkeypatch.setattr(Store, "add_case", add_case)
    with Store.open(db) as store:
        assert store.get_run(1).status == "interrupted"
        (kept,) = store.cases(1)
    assert main(["run", "--resume", "--db", str(db), "--no-progress"]) == 0
    with Store.open(db) as store:
        run = store.get_run(1)
        final, every = store.cases(1), store.cases(1, final_only=False)
    assert run.status == "finished" and run.settings["executor"] == "ray"
    assert len(final) == len(every) == 4  # the kept case was not measured again
    assert all(r.status == "ok" for r in final)
    assert kept.to_dict() in [r.to_dict() for r in final]


def _measuring(raylet: int) -> bool:
    """Whether a worker of the node whose raylet is ``raylet`` is measuring a case."""
    return any(p.ppid() == raylet for p in _measuring_workers())


def test_a_dead_node_costs_an_attempt_and_the_case_moves(
    cluster: RayCluster, tmp_path: Path
) -> None:
    """A third node joins, takes one of three cases, and dies under it: the case is recorded
    with the reason and measured again on a surviving node. (Last of the cluster tests: the
    cluster keeps a dead node.)"""
    extra = cluster.nodes.add_node(num_cpus=1)
    cluster.nodes.wait_for_nodes()
    (raylet,) = [p.process.pid for p in extra.all_processes["raylet"]]

    def remove_while_measuring() -> None:
        deadline = time.monotonic() + 60
        while not _measuring(raylet) and time.monotonic() < deadline:
            time.sleep(0.01)
        cluster.nodes.remove_node(extra)

    remover = threading.Thread(target=remove_while_measuring, daemon=True)
    remover.start()
    db = tmp_path / "r.sqlite"
    code = main(["run", *FAST, "--models", "vilt-b32-tiny", "--batch-sizes", "1,2,3",
                 "--min-time", "1", "--executor", "ray", "--address", cluster.address,
                 "--db", str(db)])
    remover.join(timeout=5)
    assert code == 0
    with Store.open(db) as store:
        final, every = store.cases(1), store.cases(1, final_only=False)
    assert [r.status for r in final] == ["ok"] * 3
    (lost,) = [r for r in every if r.status != "ok"]
    assert lost.settings["ray"]["node_id"] == extra.node_id
    assert "NodeDiedError" in lost.message and lost.message.endswith("resubmitted")
    (moved,) = [r for r in final if r.spec == lost.spec]
    assert moved.settings["ray"]["attempt"] == 2
    assert moved.settings["ray"]["node_id"] in cluster.node_ids
    assert {r.settings["ray"]["node_id"] for r in every} == cluster.node_ids | {extra.node_id}


def test_executor_ray_without_ray_is_one_line_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    db = tmp_path / "r.sqlite"
    code = main(["run", *FAST, "--executor", "ray", "--db", str(db)])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and not db.exists()
    assert len(err.splitlines()) == 1
    assert err.startswith("vlbench: error:") and "pip install 'vlbench[ray]'" in err


def test_an_address_nothing_answers_is_one_line_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Checked before Ray is asked (whose own retries take minutes), and nothing is stored."""
    monkeypatch.setattr("vlbench.cli.run.check_ray_available", lambda: None)
    db = tmp_path / "r.sqlite"
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = main(["run", *FAST, "--executor", "ray", "--address", f"127.0.0.1:{port}",
                 "--db", str(db)])
    err = capsys.readouterr().err
    assert code == 2 and not db.exists() and len(err.splitlines()) == 1
    assert "nothing answers there" in err


def test_a_case_asks_for_a_whole_gpu_or_a_whole_node() -> None:
    cpu = CaseSpec("vilt-b32-tiny", 1, (64, 96), 8, "fp32", "cpu")
    gpu = replace(cpu, device="cuda:3")
    alone, shared = LaunchOptions(threads=2), LaunchOptions(threads=2, allow_shared=True)
    gpu_node, cpu_node = {"CPU": 16.0, "GPU": 8.0}, {"CPU": 8.0}
    assert request_for(gpu, gpu_node, alone) == {"CPU": 1.0, "GPU": 1.0}
    assert request_for(gpu, cpu_node, alone) is None
    assert request_for(cpu, cpu_node, alone) == {"CPU": 8.0}
    assert request_for(cpu, cpu_node, shared) == {"CPU": 2.0}  # four cases share the node
    assert request_for(cpu, {"CPU": 1.0}, shared) == {"CPU": 1.0}
    assert request_for(cpu, {"GPU": 1.0}, alone) is None


def test_the_runtime_env_ships_vlbench_and_the_plugin_files(tmp_path: Path) -> None:
    plugins = [tmp_path / "a" / "mine.py", tmp_path / "b" / "mine.py"]
    for i, path in enumerate(plugins):
        path.parent.mkdir()
        path.write_text(f"VALUE = {i}\n")
    env = job_runtime_env([str(p) for p in plugins], tmp_path / "staging")
    shipped = [Path(m) for m in env["py_modules"]]
    assert [p.name for p in shipped] == ["vlbench", "architectures", "feature_extractors",
                                        "benchmarks", "vlbench_ray_plugins"]
    assert all(p.is_dir() for p in shipped)
    assert sorted(f.name for f in shipped[-1].glob("p*_mine.py")) == ["p0_mine.py", "p1_mine.py"]
    assert (shipped[-1] / "p1_mine.py").read_text() == "VALUE = 1\n"


def _on(result: CaseResult, gpu: str | None, host: str) -> CaseResult:
    env = {"hostname": host, "cpu_model": "Xeon", "cpu_count": 16,
           "cuda": {"name": gpu, "driver_version": "580.1"} if gpu else None}
    return replace(result, settings={**result.settings, "env": env})


def test_a_run_over_mixed_gpus_is_reported_per_device(ray_db: Path, tmp_path: Path) -> None:
    """The same store's results, relabelled as if two GPU models had measured them: every case,
    headline bar and table row names its device, and the devices table lists both."""
    with Store.open(ray_db) as store:
        results = store.cases(1)
    gpu = {1: "NVIDIA A100", 2: "NVIDIA H100"}  # batch 1 on one model of GPU, batch 2 on another
    mixed = [_on(r, gpu[r.spec.batch_size], f"node{r.spec.batch_size}") for r in results]
    db = tmp_path / "mixed.sqlite"
    with Store.open(db) as store:
        run_id = store.start_run(label="mixed", suite="smoke", command="vlbench run", env={},
                                 settings={})
        for r in mixed:
            store.add_case(run_id, r)
        store.finish_run(run_id)
        html = write_report(store, [run_id], out=tmp_path / "report.html").read_text()
    cases = label_devices([Case(1, r, r.spec.model) for r in mixed])
    assert [c.device for c in cases] == [gpu[r.spec.batch_size] for r in mixed]
    assert all(c.label.endswith(f"[{c.device}]") for c in cases)
    rows = device_rows(cases)
    assert sorted((r.device, r.hosts, r.cases) for r in rows) == [
        ("NVIDIA A100", ("node1",), 2), ("NVIDIA H100", ("node2",), 2)]
    assert 'id="devices-table"' in html and html.count('class="device-row"') == 2
    assert "vilt-b32-tiny [NVIDIA A100]" in html and "vilt-b32-tiny [NVIDIA H100]" in html
    table = results_table(mixed)
    assert "vilt-b32-tiny [NVIDIA A100]" in table and "vilt-b32-tiny [NVIDIA H100]" in table
    # one device: labels, tables and the report read as before
    same = [_on(r, "NVIDIA H100", f"node{i}") for i, r in enumerate(results)]
    assert device_tags(same) == [""] * len(same)
    assert label_devices([Case(1, r, r.spec.model) for r in same])[0].device is None
    assert device_rows([Case(1, r, r.spec.model) for r in same]) == []


def test_local_results_carry_no_device_of_their_own() -> None:
    spec = CaseSpec("vilt-b32-tiny", 1, (64, 96), 8, "fp32", "cpu")
    local = CaseResult(spec=spec, status="ok", settings={"threads": 2})
    assert device_tags([local, local]) == ["", ""]
    assert label_devices([Case(1, local, "vilt-b32-tiny")])[0].label == "vilt-b32-tiny"
