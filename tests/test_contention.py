"""Contention (vlbench.contention, vlbench.sampler): the rule on synthetic observations, the
/proc readers on a fake /proc, and real cases measured beside busy processes that this file
starts and stops (each bounded in time): a contended case is flagged in the record, the table,
the export and the report; the check before a run speaks up and ``--require-quiet`` refuses; and
the gate never calls a comparison involving a busy or unmeasured case slower, faster or same.

Whether a case is *uncontended* is asserted on synthetic observations only: the machine these
tests run on is shared, so a quiet machine cannot be promised; a loaded one can be made."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from contention_records import BUSY, QUIET

from vlbench.cli import main
from vlbench.compare import compare_cases
from vlbench.contention import (
    PEAK_INVALID,
    Observation,
    advice,
    assess,
    comparison_block,
    merge_rounds,
    state,
)
from vlbench.export import case_row, export_csv
from vlbench.gate import format_table
from vlbench.measure import run_case
from vlbench.options import MeasureOptions, TimingOptions
from vlbench.read_export import case_from_row
from vlbench.report import render_markdown, write_report
from vlbench.results import CaseResult, CaseSpec, StageResult
from vlbench.sampler import (
    Sampler,
    machine_load,
    online_cpus,
    procs_running,
    steal_ticks,
    task_running,
)
from vlbench.stats import summarize
from vlbench.store import Store
from vlbench.table import results_table

REPO = Path(__file__).resolve().parents[1]
#: a busy process: spins until its deadline (argv[1] seconds), whatever happens to the test
SPIN = ("import sys, time\nend = time.monotonic() + float(sys.argv[1])\n"
        "while time.monotonic() < end: pass")
#: more spinners than this 2-core machine has cores: with them running, contention is certain
SPINNERS = 4
TINY = CaseSpec("vilt-b32-tiny", 1, (64, 96), 8, "fp32", "cpu", threads=1)
FAST = MeasureOptions(timing=TimingOptions(warmup=1, min_repeats=3, min_time_s=0.5))


@contextlib.contextmanager
def busy_processes(count: int = SPINNERS, seconds: float = 60.0) -> Iterator[None]:
    """``count`` spinning processes, each ending by itself after ``seconds``, killed on exit."""
    procs = [subprocess.Popen([sys.executable, "-c", SPIN, str(seconds)]) for _ in range(count)]
    try:
        time.sleep(0.3)  # running before the measurement starts
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def _seen(others: tuple[int, ...] = (0, 0, 1, 0, 0, 0, 0, 1, 0, 0), cores: int = 2,
          run_delay: float | None = 0.01, steal: float | None = 0.0) -> Observation:
    return Observation(others=others, cores=cores, wall_s=2.0, cpu_s=3.8, involuntary=12,
                       run_delay=run_delay, steal=steal)


# -- the rule ------------------------------------------------------------------------------------


def test_a_quiet_machine_is_not_contended() -> None:
    record = assess(_seen(), threads=2, peak_before=1e11, peak_after=0.95e11)
    assert not record.contended and record.reasons == () and state(record) == "quiet"
    assert record.runnable_others == pytest.approx(0.2) and record.runnable_others_max == 1
    assert record.excess == pytest.approx(0.2)  # blips under the 0.5 limit
    assert record.cpu_util == pytest.approx(3.8 / (2.0 * 2))


def test_other_tasks_on_the_free_cores_do_not_contend() -> None:
    """One thread on two cores leaves one free: one other runnable task fits beside it, two do
    not."""
    one = assess(_seen(others=(1,) * 10), threads=1, peak_before=None, peak_after=None)
    assert not one.contended and one.excess == 0
    two = assess(_seen(others=(2,) * 10), threads=1, peak_before=None, peak_after=None)
    assert two.contended and two.excess == 1
    assert two.reasons == ("run queue: 2.0 other runnable tasks on average against 1 free of "
                           "2 cores (1 thread)",)


@pytest.mark.parametrize(("change", "reason"), [
    ({"others": (3,) * 10}, "run queue: 3.0 other runnable tasks"),
    ({"run_delay": 0.2}, "run delay: threads waited for a CPU 20%"),
    ({"steal": 0.08}, "CPU steal 8%"),
])
def test_each_signal_over_its_limit_contends(change: dict, reason: str) -> None:
    record = assess(_seen(**change), threads=2, peak_before=1e11, peak_after=1e11)
    assert record.contended and len(record.reasons) == 1
    assert record.reasons[0].startswith(reason)


@pytest.mark.parametrize(("after", "contended"), [(0.7e11, True), (0.85e11, False),
                                                  (1.2e11, False), (1.5e11, True)])
def test_the_peak_measured_again_must_agree(after: float, contended: bool) -> None:
    """A peak 30% lower after the case, or 50% higher (the one before was measured busy: the
    232% shares of the issue), makes the shares of peak untrustworthy."""
    record = assess(_seen(), threads=2, peak_before=1e11, peak_after=after)
    assert record.contended is contended
    if contended:
        assert record.reasons[0].startswith(f"matmul peak {after / 1e9:.0f} GFLOP/s after")


def test_without_proc_only_the_peak_is_judged() -> None:
    seen = Observation(others=(), cores=8, wall_s=1.0, cpu_s=1.0, involuntary=None,
                       run_delay=None, steal=None)
    record = assess(seen, threads=4, peak_before=1e11, peak_after=1e11)
    assert not record.contended and record.runnable_others is None and record.samples == 0


def test_rounds_pool_to_busy_if_any_round_was() -> None:
    assert merge_rounds([(0, QUIET), (1, QUIET)]) == QUIET
    pooled = merge_rounds([(0, QUIET), (1, BUSY), (2, QUIET)])
    assert pooled is not None and pooled.contended
    assert pooled.reasons[0].startswith("round 2: run queue")
    assert merge_rounds([(0, QUIET), (1, None)]) is None  # one round unknown: not quiet
    assert state(None) == "not measured"


# -- /proc ---------------------------------------------------------------------------------------

STAT = """cpu  100 0 50 800 0 0 0 50 0 0
cpu0 50 0 25 400 0 0 0 25 0 0
cpu1 50 0 25 400 0 0 0 25 0 0
intr 1 2 3
procs_running 7
procs_blocked 0
"""


def test_proc_parsers() -> None:
    assert procs_running(STAT) == 7 and online_cpus(STAT) == 2
    assert steal_ticks(STAT) == (50, 1000)
    assert task_running("12 (python3) R 1 2 3") and not task_running("12 (x) S 1")
    assert not task_running("12 (a) R (b) S 1 2")  # the state follows the last parenthesis


def _fake_proc(root: Path, states: dict[int, str]) -> Path:
    (root / "self" / "task").mkdir(parents=True)
    (root / "stat").write_text(STAT)
    for tid, letter in states.items():
        task = root / "self" / "task" / str(tid)
        task.mkdir()
        task.joinpath("stat").write_text(f"{tid} (python) {letter} 1 1 1")
        task.joinpath("schedstat").write_text("1000000 10000 5")
    other = root / "4242"
    other.mkdir()
    other.joinpath("stat").write_text("4242 (spin (x)) R " + " ".join(["0"] * 20))
    return root


def test_the_sampler_takes_its_own_threads_off_the_run_queue(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, {1: "R", 2: "R", 3: "S"})
    with Sampler(proc, interval_s=0.01) as sampler:
        time.sleep(0.1)
    seen = sampler.observation()
    assert seen.cores == 2 and len(seen.others) >= 3
    assert set(seen.others) == {5}  # 7 runnable, 2 of them this process's
    assert seen.steal is None  # the fake counters did not move
    assert seen.run_delay is None


def test_the_check_before_a_run_on_a_quiet_and_a_busy_fake_machine(tmp_path: Path) -> None:
    quiet = _fake_proc(tmp_path / "q", {1: "R"})
    (quiet / "stat").write_text(STAT.replace("procs_running 7", "procs_running 1"))
    load = machine_load(2, window_s=0.05, proc=quiet)
    assert load is not None and not load.busy and load.runnable_others == 0
    busy = machine_load(2, window_s=0.05, proc=_fake_proc(tmp_path / "b", {1: "R"}))
    assert busy is not None and busy.busy and busy.runnable_others == 6
    assert busy.line().startswith("machine busy: 6.0 runnable tasks besides vlbench on average "
                                  "against 0 free of 2 cores for 2 threads")


# -- real cases beside busy processes ------------------------------------------------------------


@pytest.fixture(scope="module")
def contended() -> CaseResult:
    """A tiny case measured beside more spinning processes than the machine has cores."""
    with busy_processes():
        result = run_case(TINY, FAST)
    assert result.status == "ok", result.message
    return result


def test_a_case_beside_busy_processes_is_flagged(contended: CaseResult) -> None:
    record = contended.contention
    assert record is not None and record.contended, record
    assert any(r.startswith("run queue") for r in record.reasons), record.reasons
    assert record.runnable_others >= SPINNERS - 1 and record.samples >= 5
    assert record.threads == 1 and record.peak_before and record.peak_after
    assert state(record) == "busy"


def test_the_sampler_sees_busy_processes() -> None:
    with busy_processes(), Sampler() as sampler:
        time.sleep(0.5)
    seen = sampler.observation()
    assert min(seen.others) >= SPINNERS - 1 and len(seen.others) >= 5


def test_a_contended_case_in_table_export_and_report(contended: CaseResult,
                                                     tmp_path: Path) -> None:
    table = results_table([contended])
    assert "busy" in table.splitlines()[2]  # the case's row
    assert f"  busy: vilt-b32-tiny b1 64x96+8 fp32: {contended.contention.reasons[0]}" in table
    row = case_row(contended)
    assert row["contention"]["contended"] is True and row["contention"]["reasons"]
    assert case_from_row(json.loads(json.dumps(row))).contention == contended.contention
    with Store.open(tmp_path / "r.db") as store:
        run = store.start_run(label=None, suite=None, command="x", env={}, settings={})
        store.add_case(run, contended)
        store.finish_run(run)
        assert store.cases(run)[0].contention == contended.contention  # stored with the case
        csv_text = export_csv(store, [run])
        page = write_report(store, [run], out=tmp_path / "r.html").read_text()
        text = render_markdown(store, [run])
    header, first = csv_text.splitlines()[:2]
    assert header.endswith("contended,contention_reasons") and ",True," in first
    assert 'id="machine"' in page and 'class="flag bad"' in page
    assert contended.contention.reasons[0] in page
    assert "**busy**: vilt-b32-tiny" in text and "(busy machine)" in text  # headline time
    assert advice([contended]).startswith("contention: 1 of 1 case(s) ran on a busy machine")


def test_a_share_of_peak_above_100_percent_is_never_a_figure(contended: CaseResult,
                                                             tmp_path: Path) -> None:
    fusion = next(s for s in contended.stages if s.name == "fusion")
    over = dataclasses.replace(
        contended, stages=tuple(dataclasses.replace(s, peak_share=2.32) if s is fusion else s
                                for s in contended.stages))
    table = results_table([over])
    assert PEAK_INVALID in table and "232%" not in table
    assert case_row(over)["stages"]["fusion"]["peak_invalid"] is True
    with Store.open(tmp_path / "p.db") as store:
        run = store.start_run(label=None, suite=None, command="x", env={}, settings={})
        store.add_case(run, over)
        store.finish_run(run)
        page = write_report(store, [run], out=tmp_path / "p.html").read_text()
    assert PEAK_INVALID in page and "232.0%" not in page


def test_the_run_command_before_and_after(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Beside busy processes: one line before the run, the busy flag in its table and one line
    after it; with --require-quiet, exit 75 and nothing stored."""
    db = tmp_path / "cli.db"
    flags = ("run", "--db", str(db), "--models", "vilt-b32-tiny", "--image-size", "64x96",
             "--text-len", "8", "--batch-sizes", "1", "--warmup", "1", "--repeats", "2",
             "--min-time", "0.3", "--threads", "1", "--no-progress", "--device", "cpu")
    with busy_processes():
        capsys.readouterr()
        assert main([*flags, "--require-quiet"]) == 75
        refused = capsys.readouterr()
        with Store.open(db) as store:
            assert store.run_ids() == []  # refused: no run started
        assert main(list(flags)) == 0
        ran = capsys.readouterr()
    assert refused.err.startswith("vlbench: error: machine busy: ")
    assert "--require-quiet: not starting" in refused.err and refused.out == ""
    assert ran.err.startswith("machine busy: ") and "'--require-quiet' refuses" in ran.err
    assert "contention: 1 of 1 case(s) ran on a busy machine (vilt-b32-tiny b1 64x96+8 fp32)" \
        in ran.err and "--threads" in ran.err
    assert "  busy: vilt-b32-tiny b1 64x96+8 fp32: " in ran.out
    with Store.open(db) as store:
        run = store.get_run(store.latest_run_id())
        assert run.settings["machine_at_start"]["busy"] is True
        assert store.cases(run.id)[0].contention.contended


# -- the gate ------------------------------------------------------------------------------------


def _rounds(median: float, busy: set[int] = frozenset(), record=QUIET,  # noqa: ANN001
            n: int = 6) -> list[CaseResult]:
    out = []
    for i in range(n):
        samples = tuple(median * f * (1 + 0.002 * i) for f in (0.99, 1.0, 1.01))
        stage = StageResult(name="visual", kind="patch", parent=None, timing=summarize(samples),
                            calls=1, flops=10, params=5, samples_ms=samples)
        out.append(CaseResult(
            spec=CaseSpec("m", 1, (32, 32), 4, "fp32", "cpu", round=i), status="ok",
            end_to_end=summarize(samples), end_to_end_samples_ms=samples, stages=(stage,),
            flops_total=10, params_total=5, contention=BUSY if i in busy else record))
    return out


@pytest.mark.parametrize("factor", [1.5, 0.5, 1.0])
def test_a_busy_round_makes_every_verdict_inconclusive(factor: float) -> None:
    """Slower, faster or same by the rounds alone: with one busy round on either side, the
    verdict is inconclusive, counted, and fails under --strict."""
    quiet = compare_cases(_rounds(100.0), _rounds(100.0 * factor), interleaved=True)
    expected = {1.5: "slower", 0.5: "faster", 1.0: "same"}[factor]
    assert {c.verdict for c in quiet.stages} == {expected} and not quiet.machine
    for base_busy, cur_busy in (({2}, set()), (set(), {0})):
        cmp = compare_cases(_rounds(100.0, base_busy), _rounds(100.0 * factor, cur_busy),
                            interleaved=True)
        assert {c.verdict for c in cmp.stages} == {"inconclusive"}
        assert all(c.contention.startswith("measured on a busy machine") for c in cmp.stages)
        assert all(f"the rounds alone: {expected}" in c.reason for c in cmp.stages)
        assert cmp.exit_status() == 0 and cmp.exit_status(strict=True) == 1
        assert len(cmp.machine) == 1 and "1 of 6 round(s) busy, run queue" in cmp.machine[0]
        text = format_table(cmp, cmp.exit_status())
        assert "MACHINE: 2 of 2 stage comparison(s) in 1 case(s) inconclusive" in text
        assert "SLOWER" not in text


def test_an_unmeasured_side_is_never_read_as_quiet() -> None:
    cmp = compare_cases(_rounds(100.0, record=None), _rounds(200.0), interleaved=True)
    assert {c.verdict for c in cmp.stages} == {"inconclusive"}
    assert cmp.stages[0].contention == ("contention not measured (baseline: stored before "
                                        "vlbench measured it)")
    assert comparison_block({"baseline": _rounds(1.0), "current": _rounds(1.0)}) == ("", "")


def test_a_measured_contended_case_against_a_quiet_baseline(contended: CaseResult) -> None:
    """The real busy record in five rounds against a quiet baseline three times faster."""
    current = [dataclasses.replace(contended, spec=dataclasses.replace(contended.spec, round=i))
               for i in range(5)]
    baseline = [dataclasses.replace(
        r, contention=QUIET, end_to_end=summarize([v / 3 for v in r.end_to_end_samples_ms]))
        for r in current]
    cmp = compare_cases(baseline, current, interleaved=True)
    assert cmp.stages and {c.verdict for c in cmp.stages} == {"inconclusive"}
    assert cmp.exit_status(strict=True) == 1


def test_a_store_of_the_previous_release_compares_inconclusive(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "v2.sqlite"
    db.write_bytes((REPO / "tests" / "data" / "store_v2.db").read_bytes())
    assert main(["compare", "3", "3", "--db", str(db), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["stages"] and all(s["verdict"] == "inconclusive" for s in data["stages"])
    assert all(s["contention"].startswith("contention not measured") for s in data["stages"])
    assert main(["compare", "3", "3", "--db", str(db), "--strict"]) == 1


def test_no_samples_fall_below_the_rule_by_accident() -> None:
    """The run-queue rule averages over samples: a single burst is not contention, a sustained
    half core is."""
    burst = assess(_seen(others=(0,) * 19 + (6,)), threads=2, peak_before=None, peak_after=None)
    assert not burst.contended and burst.excess == pytest.approx(0.3)
    half = assess(_seen(others=(0, 1) * 10), threads=2, peak_before=None, peak_after=None)
    assert half.contended and half.excess == pytest.approx(0.5)
