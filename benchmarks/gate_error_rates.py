"""The regression gate's error rates, measured on real runs of this machine and in a simulation
whose noise model is fitted to those runs (issue: CI regression gate, item 7).

    python -m benchmarks.gate_error_rates measure --out DIR    # real runs (resumable), 1-2 h
    python -m benchmarks.gate_error_rates analyze --out DIR    # comparisons, fit, simulation

``measure`` runs, through the real CLI, a tiny suite (``MODELS``: the example plugin model and a
tiny preset) into three stores under DIR, continuing where it stopped:

* ``sequential.db``: ``--runs + 1`` ordinary runs with ``--rounds``, back to back;
* ``aa.db``: ``--aa-runs`` interleaved A/A runs, both sides loading identical copies of the plugin;
* ``trials.db``: ``--trials`` interleaved A/B runs, side B's plugin copy doing one more MLP pass in
  ``visual.refine`` (a stage of a few milliseconds here) and nothing else.

Every run uses one torch thread: on a 2-core machine shared with other work, a two-thread pool
waits at every barrier for a descheduled thread, and a first attempt with the default two threads
saw round medians of one case vary 60-fold while other jobs ran.

``analyze`` compares consecutive sequential runs (run-level noise from the store's other runs, as
``vlbench compare`` does), each A/A run's sides, and each trial's sides; fits a noise model to the
round medians (per stage: run-level offset sd, within-run sd and lag-1 autocorrelation, on the log
scale) and simulates comparisons from it: sequential and interleaved A/A false positives, and
detection of a 15% slowdown. It writes ``benchmarks/results/gate_error_rates.json`` (or
``--json``) and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from vlbench.compare import compare_cases, compare_rounds, detectable_slowdown, round_values
from vlbench.gate import history_noise
from vlbench.store import Store

PLUGIN = Path(__file__).resolve().parents[1] / "docs" / "examples" / "vlbench_plugin_example.py"
MODELS = "conv-stem-vilt,vilt-b32-tiny"
TIMING = ["--repeats", "10", "--min-time", "0.1", "--warmup", "2", "--threads", "1"]
SLOWDOWN = 0.15
EXTRA_STAGE = "visual.refine"


def _vlbench(db: Path, *args: str) -> None:
    command = [sys.executable, "-m", "vlbench.cli", "run", "--db", str(db), "--no-progress",
               "--models", MODELS, *TIMING, *args]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def _finished(db: Path) -> int:
    if not db.exists():
        return 0
    with Store.open(db) as store:
        return sum(1 for i in store.run_ids() if store.get_run(i).status == "finished")


def measure(out: Path, runs: int, aa_runs: int, trials: int, rounds: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    a, a_copy, b = out / "plugin_a.py", out / "plugin_a_copy.py", out / "plugin_b.py"
    text = PLUGIN.read_text()
    a.write_text(text)
    a_copy.write_text(text)
    b.write_text(text.replace("REFINE_PASSES = 2", "REFINE_PASSES = 3"))
    plans = [
        ("sequential.db", runs + 1, ["--plugin", str(a), "--rounds", str(rounds)]),
        ("aa.db", aa_runs, ["--plugin", str(a_copy), "--baseline-plugin", str(a),
                         "--rounds", str(rounds)]),
        ("trials.db", trials, ["--plugin", str(b), "--baseline-plugin", str(a),
                               "--rounds", str(rounds)]),
    ]
    # phases alternate run by run, so the three kinds see the same hours of the machine
    while True:
        pending = [(db, args) for db, total, args in plans if _finished(out / db) < total]
        if not pending:
            break
        for db, args in pending:
            began = time.perf_counter()
            _vlbench(out / db, *args)
            print(f"{db}: run {_finished(out / db)} in {time.perf_counter() - began:.0f} s",
                  flush=True)


# -- analysis -------------------------------------------------------------------------------------


def _runs(db: Path) -> list[tuple[int, list]]:
    with Store.open(db) as store:
        return [(i, store.cases(i)) for i in store.run_ids()
                if store.get_run(i).status == "finished"]


def _flags(comparison) -> list[str]:  # noqa: ANN001
    return [f"{c.model}:{c.stage}" for c in comparison.stages if c.verdict == "slower"]


def real_comparisons(out: Path) -> dict:
    seq = _runs(out / "sequential.db")
    results: dict = {"sequential": [], "interleaved_aa": [], "trials": []}
    with Store.open(out / "sequential.db") as store:
        for (_, base), (cur_id, cur) in zip(seq, seq[1:], strict=False):
            noise = history_noise(store, exclude=(cur_id,), cases=cur) or None
            cmp = compare_cases(base, cur, run_noise=noise)
            results["sequential"].append(_summary(cmp))
    for db, key in (("aa.db", "interleaved_aa"), ("trials.db", "trials")):
        for _, cases in _runs(out / db):
            a = [c for c in cases if c.spec.side == "A"]
            b = [c for c in cases if c.spec.side == "B"]
            results[key].append(_summary(compare_cases(a, b, interleaved=True)))
    return results


def _summary(cmp) -> dict:  # noqa: ANN001
    return {"flagged": _flags(cmp), "inconclusive": cmp.count("inconclusive"),
            "stages": len(cmp.stages),
            "detectable_median": cmp.detectable_summary()[0],
            "detectable_worst": cmp.detectable_summary()[1]}


def fit_noise(out: Path) -> dict[str, dict[str, float]]:
    """Per model:stage, on log round medians: run-level offset sd (between-run spread of run means
    less the within-run share), within-run sd, lag-1 autocorrelation of rounds within a run."""
    series: dict[str, list[np.ndarray]] = defaultdict(list)
    for _, cases in _runs(out / "sequential.db"):
        for key, stages in round_values(cases).items():
            model = key.split("|", 1)[0]
            for stage, values in stages.items():
                series[f"{model}:{stage}"].append(np.log(np.asarray(values)))
    for _, cases in _runs(out / "aa.db"):  # A/A sides: two more series per run, same time span
        for side in ("A", "B"):
            for key, stages in round_values([c for c in cases if c.spec.side == side]).items():
                model = key.split("|", 1)[0]
                for stage, values in stages.items():
                    series[f"{model}:{stage}"].append(np.log(np.asarray(values)))
    model = {}
    for name, runs in series.items():
        runs = [r for r in runs if len(r) >= 3]
        if len(runs) < 3:
            continue
        # robust scales (MAD): one round of a contended machine must not set the noise level
        within = float(np.median([_mad_sd(r) for r in runs]))
        means = np.array([float(np.median(r)) for r in runs])
        n = np.mean([len(r) for r in runs])
        offset = math.sqrt(max(0.0, _mad_sd(means) ** 2 - within**2 / n))
        centred = [r - r.mean() for r in runs]
        num = sum(float((c[1:] * c[:-1]).sum()) for c in centred)
        den = sum(float((c * c).sum()) for c in centred)
        phi = max(-0.9, min(0.9, num / den if den > 0 else 0.0))
        model[name] = {"offset_sd": offset, "within_sd": within, "phi": phi}
    return model


def _mad_sd(values: np.ndarray) -> float:
    """Standard deviation estimated from the median absolute deviation (normal consistency)."""
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def _ar1(rng: np.random.Generator, n: int, sd: float, phi: float) -> np.ndarray:
    x = np.empty(n)
    x[0] = rng.normal(0, sd)
    innovation = sd * math.sqrt(1 - phi**2)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + rng.normal(0, innovation)
    return x


def simulate(noise: dict[str, dict[str, float]], rounds: int, trials: int, seed: int = 0) -> dict:
    """Comparisons drawn from the fitted model, per stage: A/A and 15% slower, both modes.

    Sequential: each side is its own run (own offset, own AR(1) rounds); the gate gets the fitted
    offset sd as its run-level noise, as it would from a store of past runs. Interleaved: one run,
    one offset shared by both sides, AR(1) over the 2 x rounds alternating slots.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, p in sorted(noise.items()):
        counts = defaultdict(int)
        for _ in range(trials):
            for slow, tag in ((0.0, "aa"), (math.log1p(SLOWDOWN), "slow")):
                base = rng.normal(0, p["offset_sd"]) + _ar1(rng, rounds, p["within_sd"], p["phi"])
                cur = (rng.normal(0, p["offset_sd"]) + slow
                       + _ar1(rng, rounds, p["within_sd"], p["phi"]))
                seq = compare_rounds(np.exp(base), np.exp(cur), interleaved=False,
                                     run_noise=p["offset_sd"])
                counts[f"sequential_{tag}_{seq['verdict']}"] += 1
                slots = _ar1(rng, 2 * rounds, p["within_sd"], p["phi"])
                a, b = slots[0::2], slots[1::2] + slow
                inter = compare_rounds(np.exp(a), np.exp(b), interleaved=True)
                counts[f"interleaved_{tag}_{inter['verdict']}"] += 1
        out[name] = {**p, **{k: v / trials for k, v in counts.items()}}
    return out


def analyze(out: Path, json_path: Path, rounds: int, sim_trials: int,
            sim_rounds: int | None = None) -> dict:
    real = real_comparisons(out)
    noise = fit_noise(out)
    sim_rounds = sim_rounds or rounds
    sim = simulate(noise, sim_rounds, sim_trials)

    def rate(key: str) -> float:
        return float(np.mean([s.get(key, 0.0) for s in sim.values()])) if sim else math.nan

    def worst(key: str, lowest: bool = False) -> float:
        values = [s.get(key, 0.0) for s in sim.values()]
        return (min(values) if lowest else max(values)) if values else math.nan

    trial_flags = [t["flagged"] for t in real["trials"]]
    extra = [f for f in sorted({f for fl in trial_flags for f in fl})]
    by_rounds = {
        n: {"interleaved_median": float(np.median([
                detectable_slowdown(n, n, p["within_sd"], 0.0, 0.01) for p in noise.values()])),
            "sequential_median": float(np.median([
                detectable_slowdown(n, n, p["within_sd"], p["offset_sd"], 0.01)
                for p in noise.values()]))}
        for n in (4, 5, 6, 8, 10, 15, 20)} if noise else {}
    report = {
        "rounds": rounds,
        "detectable_by_rounds": by_rounds,
        "real": real,
        "real_summary": {
            "sequential_comparisons": len(real["sequential"]),
            "sequential_flagged": sum(1 for r in real["sequential"] if r["flagged"]),
            "interleaved_aa_comparisons": len(real["interleaved_aa"]),
            "interleaved_aa_flagged": sum(1 for r in real["interleaved_aa"] if r["flagged"]),
            "trials": len(trial_flags),
            "trials_extra_stage_flagged": sum(
                1 for fl in trial_flags if f"conv-stem-vilt:{EXTRA_STAGE}" in fl),
            "trials_stages_ever_flagged": extra,
        },
        "noise_model": noise,
        "simulation": {
            "rounds": sim_rounds,
            "trials_per_stage": sim_trials,
            "sequential_aa_false_positive_mean": rate("sequential_aa_slower"),
            "sequential_aa_false_positive_worst": worst("sequential_aa_slower"),
            "interleaved_aa_false_positive_mean": rate("interleaved_aa_slower"),
            "interleaved_aa_false_positive_worst": worst("interleaved_aa_slower"),
            "interleaved_15pct_detected_mean": rate("interleaved_slow_slower"),
            "interleaved_15pct_detected_worst": worst("interleaved_slow_slower", lowest=True),
            "sequential_15pct_detected_mean": rate("sequential_slow_slower"),
            "per_stage": sim,
        },
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2))
    return report


def _print(report: dict) -> None:
    r, s = report["real_summary"], report["simulation"]
    print(f"real, {report['rounds']} rounds per side:")
    print(f"  sequential A/A: {r['sequential_flagged']} of {r['sequential_comparisons']} "
          "comparisons flagged")
    print(f"  interleaved A/A: {r['interleaved_aa_flagged']} of "
          f"{r['interleaved_aa_comparisons']} flagged")
    print(f"  plugin trials: {EXTRA_STAGE} flagged in {r['trials_extra_stage_flagged']} of "
          f"{r['trials']}; stages ever flagged: {', '.join(r['trials_stages_ever_flagged'])}")
    print(f"simulated ({s['trials_per_stage']} comparisons per stage and mode, "
          f"{s['rounds']} rounds per side):")
    for key in ("sequential_aa_false_positive", "interleaved_aa_false_positive",
                "interleaved_15pct_detected"):
        print(f"  {key}: mean {s[key + '_mean']:.3f}, worst stage {s[key + '_worst']:.3f}")
    print(f"  sequential_15pct_detected: mean {s['sequential_15pct_detected_mean']:.3f}")
    print("smallest detectable slowdown (median stage, fitted noise, alpha 0.01, 95% power):")
    for n, d in report["detectable_by_rounds"].items():
        print(f"  {n:>2} rounds per side: interleaved {d['interleaved_median']:.1%}, "
              f"separate runs {d['sequential_median']:.1%}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gate_error_rates")
    parser.add_argument("step", choices=["measure", "analyze"])
    parser.add_argument("--out", type=Path, default=Path("gate-runs"))
    parser.add_argument("--runs", type=int, default=20, help="sequential A/A comparisons")
    parser.add_argument("--aa-runs", type=int, default=10, help="interleaved A/A runs")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--sim-trials", type=int, default=1000)
    parser.add_argument("--sim-rounds", type=int, help="rounds per side in the simulation "
                        "(default: --rounds, as measured)")
    parser.add_argument("--json", type=Path,
                        default=Path("benchmarks/results/gate_error_rates.json"))
    args = parser.parse_args(argv)
    os.environ.pop("VLBENCH_NO_ISOLATION", None)  # rounds and sides need worker processes
    if args.step == "measure":
        measure(args.out, args.runs, args.aa_runs, args.trials, args.rounds)
    else:
        _print(analyze(args.out, args.json, args.rounds, args.sim_trials, args.sim_rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
