"""The readable table printed at the end of a run."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from .contention import PEAK_INVALID, case_label, contended_cases, state, valid_share
from .devices import device_tags
from .results import STAGE_GAP_LIMIT, CaseResult, CaseSpec, stage_gap


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def results_table(results: Sequence[CaseResult]) -> str:
    """One row per case: end-to-end, the stage sum, the top-level stages, the fusion's achieved
    GFLOP/s and share of the matmul peak, FLOPs, memory."""
    if any(r.spec.task is not None for r in results):  # retrieval cases: a table of their own
        plain = [r for r in results if r.spec.task is None]
        tasks = "\n".join(retrieval_table([r for r in results if r.spec.task is not None]))
        return f"{results_table(plain)}\n\n{tasks}" if plain else tasks
    tags = device_tags(results)  # a run over several devices names each case's device
    # an interleaved A/B run's side, and the device, after the name; long variant names widen it
    labels = [r.spec.model + (f" [{r.spec.side}]" if r.spec.side else "") + tag
              for r, tag in zip(results, tags, strict=True)]
    w = max([26, *map(len, labels)])
    header = (f"{'model':<{w}} {'b':>3} {'input':>13} {'how':<15} {'tokens':>8} {'e2e ms':>9} "
              f"{'cv':>6} {'sum ms':>9} {'visual':>8} {'text':>7} {'fusion':>8} "
              f"{'fus GF/s %pk':>12} {'GFLOPs':>8} {'params M':>9} {'peak MB':>8} "
              f"{'samples/s':>9} {'machine':<7}")
    lines = [header, "-" * len(header)]
    stops = []
    for r, label in zip(results, labels, strict=True):
        s = dataclasses.replace(r.spec, model=label)
        size = f"{s.image_size[0]}x{s.image_size[1]}+{s.text_len}"
        if r.status == "oom":
            stops.append(f"{s.model} {size}: stopped at batch {s.batch_size}: oom; "
                         "larger batch sizes not run")
        how = case_how(s)
        if r.status != "ok" or r.end_to_end is None:
            lines.append(f"{s.model:<{w}} {s.batch_size:>3} {size:>13} {how:<15} "
                         f"{r.status.upper()}: {r.message}")
            continue
        top = {st.name: st.timing.median_ms for st in r.stages if st.parent is None and st.timing}
        tokens = f"{r.tokens.get('image', '?')}+{r.tokens.get('text', '?')}"
        gap = stage_gap(r)
        flag = "!" if gap is not None and abs(gap) > STAGE_GAP_LIMIT else " "
        unstable = "*" if r.end_to_end.unstable else " "
        peak = f"{r.peak_mem_bytes / 2**20:.0f}" if r.peak_mem_bytes else "-"
        lines.append(
            f"{s.model:<{w}} {s.batch_size:>3} {size:>13} {how:<15} {tokens:>8} "
            f"{_ms(r.end_to_end.median_ms):>8}{unstable} {r.end_to_end.cv:>6.1%} "
            f"{_ms(r.stage_sum_ms):>8}{flag} {_ms(top.get('visual')):>8} "
            f"{_ms(top.get('text')):>7} {_ms(top.get('fusion')):>8} "
            f"{_achieved(r, 'fusion'):>12} "
            f"{r.flops_total / 1e9:>8.2f} {r.params_total / 1e6:>9.2f} {peak:>8} "
            f"{samples_per_s(r):>9.1f} {state(r.contention):<7}"
        )
    lines.append("")
    lines.append("medians of the timed iterations; e2e without hooks, stages with hooks; "
                 f"* unstable (cv > 10%); ! stage sum off end-to-end by > {STAGE_GAP_LIMIT:.0%}; "
                 "how: precision, mode, threads (tN) when the case sets them, d2: detectron2's "
                 "detector; fus GF/s %pk: the "
                 "fusion's achieved GFLOP/s and share of the run's matmul peak; compiled cases "
                 "are timed end to end only")
    lines.extend(stops)
    lines.extend(contention_lines(results))
    return "\n".join(lines)


def contention_lines(results: Sequence[CaseResult]) -> list[str]:
    """The legend of the machine column, and each case measured on a busy machine with why."""
    lines = [f"machine: busy = contended while measured (figures suspect; {PEAK_INVALID} where a "
             "share of the matmul peak would exceed 100%), quiet, or not measured"]
    for r in contended_cases(results):
        lines.append(f"  busy: {case_label(r)}: {'; '.join(r.contention.reasons)}")
    return lines


def samples_per_s(result: CaseResult) -> float:
    """Throughput: image-text pairs per second at the end-to-end median."""
    return result.spec.batch_size / (result.end_to_end.median_ms / 1000)


def case_how(spec: CaseSpec) -> str:
    """'fp32', 'bf16 compile', 'fp32 t2', 'fp32 d2': precision, mode when not eager, threads
    when set, d2 when the region detector is detectron2's."""
    parts = [spec.precision]
    if spec.mode != "eager":
        parts.append(spec.mode)
    if spec.threads is not None:
        parts.append(f"t{spec.threads}")
    if getattr(spec, "region_backend", None) == "detectron2":
        parts.append("d2")
    return " ".join(parts)


def case_text(spec: CaseSpec) -> str:
    """'b1 384x640 fp32 d2': batch, image and how, as the report's sections name a case."""
    return f"b{spec.batch_size} {spec.image_size[0]}x{spec.image_size[1]} {case_how(spec)}"


def _achieved(result: CaseResult, name: str) -> str:
    stage = next((st for st in result.stages if st.name == name), None)
    if stage is None or stage.achieved_flops_per_s is None:
        return "-"
    share = f" {stage.peak_share:.0%}" if stage.peak_share is not None else ""
    if stage.peak_share is not None and not valid_share(stage.peak_share):
        share = f" {PEAK_INVALID}"  # never a share above 100% as a figure
    return f"{stage.achieved_flops_per_s / 1e9:.1f}{share}"


def retrieval_table(results: Sequence[CaseResult]) -> list[str]:
    """Retrieval cases (``vlbench.retrieval``): one row per model, direction and gallery size N,
    with the per-query time once the gallery is cached beside the offline gallery step; not
    the forward table's columns, whose stage names and samples/s would mislead here."""
    header = (f"{'model':<26} {'dir':<4} {'N':>6} {'k':>7} {'input':>13} {'how':<6} "
              f"{'query ms':>9} {'cv':>6} {'gallery ms':>11} {'ms/item':>8} {'gal batch':>9} "
              f"{'pair batch':>10} {'GFLOPs/q':>8} {'params M':>9} {'cache MB':>8} "
              f"{'peak MB':>8} {'machine':<7}")
    lines = [header, "-" * len(header)]
    for r in results:
        s = r.spec
        size = f"{s.image_size[0]}x{s.image_size[1]}+{s.text_len}"
        info = r.settings.get("retrieval", {})
        where = (f"{s.model:<26} {(s.task or '').removeprefix('retrieval-'):<4} "
                 f"{s.batch_size:>6} {_rerank_k(s.rerank_k, info.get('k')):>7}")
        if r.status != "ok" or r.end_to_end is None:
            lines.append(f"{where} {size:>13} {case_how(s):<6} {r.status.upper()}: {r.message}")
            continue
        gallery = next((st.timing.median_ms for st in r.stages
                        if st.name == "gallery" and st.timing), None)
        pair = info.get("pair_batch")
        peak = f"{r.peak_mem_bytes / 2**20:.0f}" if r.peak_mem_bytes else "-"
        cache = f"{info['cached_bytes'] / 2**20:.1f}" if info.get("cached_bytes") else "-"
        unstable = "*" if r.end_to_end.unstable else " "
        lines.append(
            f"{where} {size:>13} {case_how(s):<6} {_ms(r.end_to_end.median_ms):>8}{unstable} "
            f"{r.end_to_end.cv:>6.1%} {_ms(gallery):>11} "
            f"{_ms(r.end_to_end.median_ms / s.batch_size):>8} "
            f"{info.get('gallery_batch', '-'):>9} {pair if pair is not None else '-':>10} "
            f"{r.flops_total / 1e9:>8.2f} {r.params_total / 1e6:>9.2f} {cache:>8} {peak:>8} "
            f"{state(r.contention):<7}")
    lines += ["", "retrieval: query = ranking the N cached items for one query (medians, end to "
              "end); gallery = the offline step, once per gallery (a dual encoder's embeddings, a "
              "fusion model's embedder tokens, a re-ranking's ITC embeddings and token "
              "sequences: cache MB); k = a re-ranking's candidates fused per query (used/asked "
              "where clamped to N); ms/item = query / N; batches: the largest that fit, found by "
              "trying; * unstable (cv > 10%)", *contention_lines(results)]
    return lines


def _rerank_k(asked: int | None, used: int | None) -> str:
    """'-' (not a re-ranking), '16', or '10/256' (clamped to the gallery's 10 items)."""
    if asked is None:
        return "-"
    return str(asked) if used is None or used == asked else f"{used}/{asked}"
