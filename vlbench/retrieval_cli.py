"""What ``vlbench run`` prints after the table of a run with retrieval cases: the cost model
``cost(Q, N) = encode(N) + Q * query(N)`` fitted per model and direction, and where the models'
curves cross in N (for given Q) and in Q (for given N)."""

from __future__ import annotations

from collections.abc import Sequence

from .results import CaseResult
from .retrieval_cost import (
    TASK_TEXT,
    TASKS,
    CostCurve,
    cost_curves,
    crossovers,
    describe_n,
    describe_q,
)


def _ms(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def curve_rows(curves: Sequence[CostCurve]) -> list[str]:
    """One line per model and direction: the fitted terms and the per-query cost once cached."""
    header = (f"{'model':<26} {'dir':<4} {'strategy':<8} {'N measured':<18} "
              f"{'encode a ms':>11} {'b ms/item':>10} {'query a ms':>11} {'b ms/item':>10} "
              f"{'query ms at N max':>17} {'fit err':>7}")
    lines = [header, "-" * len(header)]
    for c in curves:
        ns = ",".join(str(p.n) for p in c.points)
        last = c.points[-1]
        if c.encode is not None and c.query is not None:
            err = max(c.encode.max_rel_error, c.query.max_rel_error)
            terms = (f"{_ms(c.encode.a):>11} {c.encode.b:>10.4g} {_ms(c.query.a):>11} "
                     f"{c.query.b:>10.4g}")
            fit = f"{err:>7.0%}"
        else:
            terms = f"{'one N measured: no fit':>45}"
            fit = f"{'-':>7}"
        lines.append(f"{c.label:<26} {c.task.removeprefix('retrieval-'):<4} {c.strategy:<8} "
                     f"{ns:<18} {terms} {_ms(last.query_ms):>17} {fit}")
    return lines


def retrieval_summary(results: list[CaseResult]) -> str:
    """The cost model and the crossovers, as text."""
    curves = cost_curves(results)
    if not curves:
        return "retrieval: no successful retrieval case, no cost model"
    lines = ["retrieval cost: cost(Q queries, N items) = encode(N) + Q * query(N); each fitted "
             "as a + b*N (ms, non-negative, on relative error); encode = the offline `gallery` "
             "step, query = one query once the gallery is cached (end to end)"]
    lines += curve_rows(curves)
    for task in TASKS:
        found = crossovers([c for c in curves if c.task == task])
        if not found:
            continue
        lines.append(f"\ncrossovers, {TASK_TEXT[task]}:")
        for c in found:
            lines.append(f"  {c.first.label} against {c.second.label}")
            lines.append("    gallery encoding counted free (per-query cost only): "
                         + describe_n(c, 1, c.n_gallery_free, gallery_free=True))
            for q, root in c.n_for_q:
                lines.append(f"    Q = {q:<6} " + describe_n(c, q, root))
            for n, root in c.q_for_n:
                lines.append(f"    N = {n:<6} " + describe_q(c, n, root))
    if not any(c.fitted for c in curves):
        lines.append("\ncrossovers need two gallery sizes or more per model (--batch-sizes)")
    return "\n".join(lines)
