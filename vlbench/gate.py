"""``vlbench compare``: what the two sides are, and how the verdict is printed.

A side is named on the command line as

* ``ID`` or ``latest``: a finished run in the store;
* ``ID:A`` / ``ID:B``: one side of an interleaved A/B run (``vlbench run --baseline-plugin`` or
  ``--baseline-python``); ``vlbench compare ID`` alone compares its A (baseline) with its B;
* ``FILE.json``: a run exported with ``vlbench export`` (one run per file, or ``FILE.json:ID``).

A run still in progress, one that died or was interrupted, an export of another schema version,
and sides with no successful case in common are bad input (one line, exit status 2). The
statistics live in ``vlbench.compare``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from . import parse
from .case_keys import identity_key
from .compare import Comparison, StageComparison, compare_cases, estimate_run_noise, ranked
from .read_export import load_json, run_cases
from .results import CaseResult
from .store import RunActiveError, Store

SIDES = ("A", "B")


@dataclass(frozen=True)
class Side:
    label: str
    results: tuple[CaseResult, ...]
    run_id: int | None = None  # a store run
    side: str | None = None  # A or B of an interleaved run
    host: str | None = None


def _split(ref: str) -> tuple[str, str | None]:
    """'12:B' -> ('12', 'B'); 'x.json:3' -> ('x.json', '3'); anything else unsplit."""
    head, sep, tail = ref.rpartition(":")
    if sep and head and (tail in SIDES or (head.endswith(".json") and tail.isdigit())):
        return head, tail
    return ref, None


def ref_path(ref: str) -> str:
    """The run or file a reference names, without its ``:A`` / ``:B`` / ``:ID`` suffix:
    '12:B' -> '12', 'x.json:3' -> 'x.json' (the CLI opens the store only for non-files)."""
    return _split(ref)[0]


def load_side(ref: str, store: Store | None) -> Side:
    """Resolve one command-line reference (see the module docstring)."""
    head, tail = _split(ref)
    if head.endswith(".json"):
        return _json_side(Path(head), tail)
    if store is None:
        raise ValueError(f"no results database to read run {ref!r} from (pass --db)")
    run_id = store.resolve_run(head)
    run = store.get_run(run_id)
    if run.status == "running":
        raise RunActiveError(f"run {run_id} is still running (pid {run.pid} on {run.host}); "
                             "compare it when it has finished")
    if run.status != "finished":
        raise ValueError(f"run {run_id} did not finish ({run.status}); finish it with "
                         f"'vlbench run --resume {run_id}' before comparing")
    results = store.cases(run_id)
    sides = {r.spec.side for r in results}
    if tail is not None:
        if tail not in sides:
            raise ValueError(f"run {run_id} has no side {tail} (it is not an interleaved A/B "
                             "run)" if sides == {None} else f"run {run_id} has no side {tail}")
        results = [r for r in results if r.spec.side == tail]
        return Side(f"run {run_id} side {tail}", tuple(results), run_id, tail, run.host)
    if sides - {None}:
        raise ValueError(f"run {run_id} is an interleaved A/B run: compare its sides with "
                         f"'vlbench compare {run_id}' or name one, {run_id}:A or {run_id}:B")
    return Side(f"run {run_id}", tuple(results), run_id, None, run.host)


def _json_side(path: Path, run_ref: str | None) -> Side:
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    data = load_json(path)  # refuses other layouts and schema versions, one line
    runs = data["runs"]
    if run_ref is not None:
        runs = [r for r in runs if str(r["id"]) == run_ref]
    if len(runs) != 1:
        ids = ", ".join(str(r["id"]) for r in data["runs"]) or "none"
        raise ValueError(f"{path} holds runs {ids}: name one as {path}:ID")
    run = runs[0]
    if run["status"] != "finished":
        raise ValueError(f"{path}: run {run['id']} did not finish ({run['status']})")
    results = run_cases(path, run)  # checked: a damaged case names file, run and case
    if {r.spec.side for r in results} - {None}:
        raise ValueError(f"{path}: run {run['id']} is an interleaved A/B run; compare it from "
                         "the store")
    return Side(f"{path.name} (run {run['id']})", results, None, None, run.get("host"))


def interleaved_sides(ref: str, store: Store) -> tuple[Side, Side]:
    """``vlbench compare ID``: side A of an interleaved run against its side B."""
    head, tail = _split(ref)
    if tail is not None or head.endswith(".json"):
        raise ValueError("one reference compares the sides of an interleaved run: give its id; "
                         "otherwise give BASELINE and CURRENT")
    run_id = store.resolve_run(head)
    a, b = load_side(f"{run_id}:A", store), load_side(f"{run_id}:B", store)
    return a, b


def history_noise(store: Store, *, exclude: tuple[int, ...],
                  cases: tuple[CaseResult, ...] | list[CaseResult],
                  host: str | None = None) -> dict:
    """Run-level noise per (identity, stage) from the store's other finished, ordinary runs of
    these cases on the same host (``vlbench.compare.estimate_run_noise``); {} with fewer than
    three such runs."""
    wanted = {identity_key(r.spec) for r in cases}
    runs = []
    for run_id in store.run_ids():
        if run_id in exclude:
            continue
        run = store.get_run(run_id)
        if run.status != "finished" or (host is not None and run.host != host):
            continue
        results = [r for r in store.cases(run_id) if r.spec.side is None and r.spec.task is None]
        if any(identity_key(r.spec) in wanted for r in results):
            runs.append(results)
    return estimate_run_noise(runs) if len(runs) >= 3 else {}


def compare_refs(refs: list[str], store: Store | None, *, threshold: float, alpha: float,
                 run_noise: float | None) -> Comparison:
    """The comparison ``vlbench compare REF [REF]`` asks for."""
    for flag, value, check in (("--alpha", alpha, parse.probability),  # the flags' parsers
                               ("--threshold", threshold, parse.non_negative_float),
                               ("--run-noise", run_noise, parse.non_negative_float)):
        if value is not None:
            try:
                check(value)
            except parse.BadValue as exc:
                raise ValueError(f"{flag}: {exc}") from None
    if len(refs) == 1:
        if store is None:
            raise ValueError("comparing the sides of an interleaved run needs the store (--db)")
        base, cur = interleaved_sides(refs[0], store)
    else:
        base, cur = load_side(refs[0], store), load_side(refs[1], store)
    interleaved = (base.run_id is not None and base.run_id == cur.run_id
                   and {base.side, cur.side} == {"A", "B"})
    noise: float | dict | None = None
    if not interleaved:
        noise = math.log1p(run_noise) if run_noise is not None else None
        if noise is None and store is not None:
            exclude = tuple(i for i in (cur.run_id,) if i is not None)
            noise = history_noise(store, exclude=exclude, cases=cur.results,
                                  host=cur.host) or None
    return compare_cases(base.results, cur.results, threshold=threshold, alpha=alpha,
                         interleaved=interleaved, run_noise=noise,
                         what=f"{base.label} and {cur.label}", baseline_label=base.label,
                         current_label=cur.label)


def compare_runs(
    store: Store,
    baseline_id: int,
    current_id: int,
    threshold: float = 0.10,
    alpha: float = 0.01,
) -> list[StageComparison]:
    """Compare two stored runs per case and stage (the report's baseline section); the
    run-level noise comes from the store's other runs of the same cases where it can."""
    base, cur = store.cases(baseline_id), store.cases(current_id)
    return compare_cases(
        base, cur, threshold=threshold, alpha=alpha,
        run_noise=history_noise(store, exclude=(current_id,), cases=cur,
                                host=store.get_run(current_id).host) or None,
        what=f"baseline run {baseline_id} and run {current_id}",
    ).stages


# -- output ---------------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.1%}"


def _ratio(c: StageComparison) -> str:
    high = f"{c.ci_high:.3f}" if math.isfinite(c.ci_high) else "inf"
    return f"{c.ratio:.3f} [{c.ci_low:.3f}, {high}]"


def _case_label(c: StageComparison) -> str:
    return c.case_key.split("|", 1)[1] if "|" in c.case_key else c.case_key


def _summary_lines(cmp: Comparison, status: int) -> list[str]:
    median, worst = cmp.detectable_summary()
    design = "interleaved A/B" if cmp.interleaved else "separate runs"
    lines = [f"{cmp.baseline_label} (baseline) -> {cmp.current_label} (current): {design}; "
             f"threshold {cmp.threshold:.0%}, alpha {cmp.alpha:g}; {cmp.drift}",
             f"smallest detectable slowdown (flagged {95}% of the time): median {_pct(median)}, "
             f"worst {_pct(worst)} over {len(cmp.stages)} stage comparisons"]
    slower = [c for c in cmp.stages if c.verdict == "slower"]
    undecided = [c for c in cmp.stages if c.verdict == "inconclusive"]
    if slower:
        names = ", ".join(f"{c.model} {c.stage} ({c.ratio - 1:+.1%})" for c in ranked(slower))
        lines.append(f"SLOWER: {len(slower)} stage(s) slower beyond {cmp.threshold:.0%} at "
                     f"p < {cmp.alpha:g}: {names}")
    faster = cmp.count("faster")
    if faster:
        lines.append(f"faster: {faster} stage(s)")
    if undecided:
        reasons = sorted({c.reason for c in undecided})
        lines.append(f"INCONCLUSIVE: {len(undecided)} of {len(cmp.stages)} stage comparison(s) "
                     f"could not be decided: {'; '.join(reasons)}")
    lines += _machine_lines(cmp)
    if cmp.changes:
        lines.append(f"deterministic changes: {len(cmp.changes)} (parameters, FLOPs or workload "
                     "differ: the two sides do not run the same work)")
    if cmp.only_baseline or cmp.only_current:
        lines.append(f"cases on one side only: {len(cmp.only_baseline)} baseline, "
                     f"{len(cmp.only_current)} current (not compared)")
    lines.append(f"exit status {status}")
    return lines


def _machine_lines(cmp: Comparison) -> list[str]:
    """The comparisons the machine made inconclusive (``vlbench.contention.comparison_block``),
    counted, with each case's side and first reason."""
    blocked = sum(1 for c in cmp.stages if c.contention)
    if not blocked:
        return []
    cases = "; ".join(cmp.machine[:3])
    more = f"; and {len(cmp.machine) - 3} more case(s)" if len(cmp.machine) > 3 else ""
    return [f"MACHINE: {blocked} of {len(cmp.stages)} stage comparison(s) in "
            f"{len(cmp.machine)} case(s) inconclusive because a side was measured on a busy "
            f"machine or without a contention record, never slower, faster or same: "
            f"{cases}{more}; rerun on a quieter machine or with fewer --threads"]


def format_table(cmp: Comparison, status: int) -> str:
    rows = [("model", "case", "stage", "base ms", "cur ms", "ratio [CI]", "p", "rounds",
             "detect", "verdict")]
    for c in cmp.stages:
        rows.append((c.model, _case_label(c), ("  " if c.parent else "") + c.stage,
                     f"{c.baseline_ms:.2f}", f"{c.current_ms:.2f}", _ratio(c),
                     "n/a" if c.p_value is None else f"{c.p_value:.4f}",
                     f"{c.n_baseline}/{c.n_current}", _pct(c.detectable),
                     c.verdict.upper() if c.verdict in ("slower", "inconclusive")
                     else c.verdict))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    numeric = {3, 4, 6, 8}
    text = ["  ".join(v.rjust(w) if i in numeric else v.ljust(w)
                      for i, (v, w) in enumerate(zip(r, widths, strict=True))).rstrip()
            for r in rows]
    for ch in cmp.changes:
        text.append(f"changed: {ch.model} {_case_label_key(ch.case_key)} {ch.stage} {ch.what}: "
                    f"{ch.baseline} -> {ch.current}")
    return "\n".join([*text, "", *_summary_lines(cmp, status)])


def _case_label_key(key: str) -> str:
    return key.split("|", 1)[1] if "|" in key else key


def format_markdown(cmp: Comparison, status: int) -> str:
    """A summary for a CI job page (e.g. ``$GITHUB_STEP_SUMMARY``)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["## vlbench compare", ""]
    lines += [f"- {cell(line)}" for line in _summary_lines(cmp, status)]
    lines += ["", "| model | case | stage | baseline ms | current ms | ratio [CI] | p | rounds | "
              "detectable | verdict |", "|---|---|---|---:|---:|---|---:|---:|---:|---|"]
    for c in ranked(cmp.stages):
        p = "n/a" if c.p_value is None else f"{c.p_value:.4f}"
        verdict = f"**{c.verdict}**" if c.verdict == "slower" else c.verdict
        lines.append(f"| {cell(c.model)} | {cell(_case_label(c))} | {cell(c.stage)} | "
                     f"{c.baseline_ms:.2f} | {c.current_ms:.2f} | {_ratio(c)} | {p} | "
                     f"{c.n_baseline}/{c.n_current} | {_pct(c.detectable)} | {verdict} |")
    if cmp.changes:
        lines += ["", "| model | stage | what | baseline | current |", "|---|---|---|---:|---:|"]
        lines += [f"| {cell(ch.model)} | {cell(ch.stage)} | {cell(ch.what)} | {ch.baseline} | "
                  f"{ch.current} |" for ch in cmp.changes]
    return "\n".join(lines) + "\n"


def format_json(cmp: Comparison, status: int) -> str:
    def clean(value: object) -> object:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    data = clean(asdict(cmp))
    data["exit_status"] = status
    return json.dumps(data, indent=2, allow_nan=False)
