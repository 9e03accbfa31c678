"""The regions waterfall: how much of the ViLT paper's region/patch gap (~60x, 2019 practice) is
the detector's design and how much is that practice.

A run of the ``regions`` suite measures a region model in its faithful bottom-up-attention
configuration and with one change at a time -- class-agnostic NMS, 100 proposals, an FPN head
with a light box head, bf16, ``torch.compile`` of the fusion, region features precomputed -- beside
a patch model (ViLT-B/32). Since the savings depend on the order, both views are built: the
**cumulative** waterfall (each change on top of the previous ones, in ``CHANGES``'s order) and
**each change alone** from the faithful baseline. Every step's end-to-end time is divided by the
same run's patch model at fp32, eager: one yardstick for every bar.

Steps are found in a run by name only (nothing here imports model code): a step is a
configuration -- visual-config overrides, precision, mode, precomputed or not -- and its model is
the base's variant name in ``architectures.variants``'s canonical spelling (fields sorted,
values as written here; a test holds the two spellings equal). A step that was skipped (a GPU-only
step on a CPU) shows its recorded reason; the cumulative chain then goes on from the last step
measured, and a later step measured without the skipped change says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from vlbench import paper
from vlbench.results import CaseResult, is_skipped


@dataclass(frozen=True)
class Change:
    """One practice a region pipeline can change, as the config delta it makes."""

    key: str
    label: str  # what changes, from → to
    short: str  # the step's name in charts and notes
    overrides: tuple[tuple[str, str], ...] = ()  # visual-config fields, canonical values
    precision: str | None = None
    mode: str | None = None
    precomputed: bool = False


#: the changes, in the cumulative waterfall's order (the issue's)
CHANGES: tuple[Change, ...] = (
    Change("nms", "per-class NMS over 1600 classes → class-agnostic NMS",
           "class-agnostic NMS", (("nms", "class-agnostic"),)),
    Change("proposals", "300 → 100 proposals into the box head", "100 proposals",
           (("post_nms_top_n", "100"),)),
    Change("fpn", "res5 C4 head on 14x14 RoIs → FPN with a 2-fc box head on 7x7 RoIs",
           "FPN + light head", (("head", "fpn"),)),
    Change("bf16", "fp32 → bf16 autocast (whole model)", "bf16", precision="bf16"),
    Change("compile", "eager → torch.compile of the fusion", "compile fusion",
           mode="compile-fusion"),
    Change("precomputed", "detector → region features precomputed offline", "precomputed",
           precomputed=True),
)
FAITHFUL = ("per-class NMS over 1600 classes, 300 proposals, res5 C4 head on 14x14 RoIs, fp32, "
            "eager (bottom-up attention, as the paper timed it)")


def precomputed_name(base: str) -> str:
    """The ``-precomputed`` twin's name: ``uniter-base`` -> ``uniter-base-precomputed``,
    ``uniter-base-tiny`` -> ``uniter-base-precomputed-tiny`` (``architectures.presets``)."""
    stem, tiny = (base[: -len("-tiny")], "-tiny") if base.endswith("-tiny") else (base, "")
    return f"{stem}-precomputed{tiny}"


@dataclass(frozen=True)
class Config:
    """A point of the waterfall: overrides (sorted), precision, mode, precomputed or not."""

    overrides: tuple[tuple[str, str], ...] = ()
    precision: str = "fp32"
    mode: str = "eager"
    precomputed: bool = False

    def plus(self, change: Change) -> Config:
        merged = dict(self.overrides) | dict(change.overrides)
        return Config(tuple(sorted(merged.items())), change.precision or self.precision,
                      change.mode or self.mode, self.precomputed or change.precomputed)

    def model(self, base: str) -> str:
        """The case's model name: the precomputed twin (no detector: overrides do not apply),
        or the base with its overrides in canonical spelling."""
        if self.precomputed:
            return precomputed_name(base)
        if not self.overrides:
            return base
        return base + "[" + ",".join(f"{k}={v}" for k, v in self.overrides) + "]"

    @property
    def how(self) -> str:
        return f"{self.precision} {self.mode}"


@dataclass(frozen=True)
class Step:
    """One bar: the configuration it stands for and the stored case found for it (if any)."""

    label: str  # "faithful", "+ 100 proposals" (cumulative), "100 proposals" (alone)
    what: str  # what the step changes, from → to
    config: Config
    model: str
    result: CaseResult | None
    note: str = ""  # e.g. measured without a change that was skipped before it

    @property
    def status(self) -> str:
        """ok, skipped (by design, with a reason), failed, or missing (not in this run)."""
        if self.result is None:
            return "missing"
        if self.result.status == "ok" and self.result.end_to_end is not None:
            return "ok"
        return "skipped" if is_skipped(self.result) else "failed"

    @property
    def ms(self) -> float | None:
        ok = self.status == "ok" and self.result is not None and self.result.end_to_end
        return self.result.end_to_end.median_ms if ok else None

    @property
    def reason(self) -> str:
        """Why there is no time: the recorded message, or that the run has no such case."""
        if self.result is None:
            return f"not in this run ({self.model} {self.config.how})"
        return self.result.message if self.status != "ok" else ""


@dataclass(frozen=True)
class Waterfall:
    """One region model's waterfall in one run, against that run's patch model."""

    base: str
    reference: CaseResult | None  # the patch model at fp32, eager (ViLT-B/32)
    cumulative: tuple[Step, ...]  # faithful first, then one step per change
    alone: tuple[Step, ...]  # one per change, each applied to the faithful configuration
    run_id: int | None = None
    paper_ratio: float = paper.PAPER_RATIO_END_TO_END["region"]
    #: the patch model's end-to-end ms at other (precision, mode) settings, where measured
    reference_at: dict[tuple[str, str], float] = field(default_factory=dict)

    @property
    def reference_ms(self) -> float | None:
        e2e = self.reference.end_to_end if self.reference else None
        return e2e.median_ms if e2e else None

    @property
    def faithful(self) -> Step:
        return self.cumulative[0]

    def ratio(self, step: Step) -> float | None:
        """End to end over the patch model's, at fp32 eager: the paper's ratio."""
        ref = self.reference_ms
        return step.ms / ref if step.ms is not None and ref else None

    def like_for_like(self, step: Step) -> float | None:
        """Over the patch model at the step's own precision and mode, where the run has it and
        it differs from fp32 eager (a GPU run of the suite measures it)."""
        ref = self.reference_at.get((step.config.precision, step.config.mode))
        differs = (step.config.precision, step.config.mode) != ("fp32", "eager")
        return step.ms / ref if differs and step.ms is not None and ref else None


Finder = Callable[[Config], CaseResult | None]


def _cumulative(base: str, find: Finder) -> tuple[Step, ...]:
    """Faithful, then each change on top of those before it; after a step that was not
    measured the chain goes on from the last measured configuration, and says so."""
    faithful = Config()
    steps = [Step("faithful", FAITHFUL, faithful, base, find(faithful))]
    nominal = effective = faithful
    missed: list[str] = []
    for change in CHANGES:
        nominal, attempt = nominal.plus(change), effective.plus(change)
        step = Step(f"+ {change.short}", change.label, nominal, nominal.model(base),
                    find(nominal))
        if step.status != "ok" and attempt != nominal and find(attempt) is not None:
            fallback = Step(step.label, change.label, attempt, attempt.model(base),
                            find(attempt), note=f"without {', '.join(missed)} (not measured)")
            step = fallback if fallback.status == "ok" else step
        if step.status == "ok":
            effective = step.config
        else:
            missed.append(change.short)
        steps.append(step)
    return tuple(steps)


def _alone(base: str, find: Finder) -> tuple[Step, ...]:
    steps = []
    for change in CHANGES:
        config = Config().plus(change)
        steps.append(Step(change.short, change.label, config, config.model(base),
                          find(config)))
    return tuple(steps)


def _step_names(base: str) -> set[str]:
    """Every model name a waterfall of ``base`` looks for, the base's own left out."""
    configs = [*(c.config for c in _cumulative(base, lambda _: None)),
               *(c.config for c in _alone(base, lambda _: None))]
    return {c.model(base) for c in configs} - {base}


def find_waterfalls(results: Sequence[CaseResult],
                    run_id: int | None = None) -> list[Waterfall]:
    """The waterfalls in one run's results: one per region model measured faithfully (fp32,
    eager, no variant) beside at least one of its steps, per batch size and device."""
    index = {(r.spec.model, r.spec.precision, r.spec.mode, r.spec.batch_size, r.spec.device): r
             for r in results}
    names = {r.spec.model for r in results}
    out = []
    for r in results:
        s = r.spec
        if (r.status != "ok" or r.embedder != "region" or "[" in s.model or s.task
                or (s.precision, s.mode) != ("fp32", "eager")
                or not names & _step_names(s.model)):
            continue

        def find(config: Config, base: str = s.model, batch: int = s.batch_size,
                 device: str = s.device) -> CaseResult | None:
            return index.get((config.model(base), config.precision, config.mode, batch, device))

        patches = [p for p in results if p.status == "ok" and p.embedder == "patch"
                   and p.fusion == "single-stream" and not p.spec.task
                   and (p.spec.batch_size, p.spec.device) == (s.batch_size, s.device)]
        patches.sort(key=lambda p: (not p.spec.model.startswith("vilt"), p.spec.model))
        eager = [p for p in patches if (p.spec.precision, p.spec.mode) == ("fp32", "eager")]
        reference = eager[0] if eager else None
        at = {(p.spec.precision, p.spec.mode): p.end_to_end.median_ms for p in patches
              if reference and p.spec.model == reference.spec.model and p.end_to_end}
        out.append(Waterfall(s.model, reference, _cumulative(s.model, find),
                             _alone(s.model, find), run_id=run_id, reference_at=at))
    return out


def ratio_text(ratio: float) -> str:
    """44.8x, 3.1x, 0.45x: two significant figures where the ratio is small."""
    return f"{ratio:.1f}x" if ratio >= 10 else f"{ratio:.2f}x"


@dataclass(frozen=True)
class Row:
    """One line of a waterfall's table, as text (the CLI summary and the markdown share it)."""

    label: str
    what: str
    model: str
    how: str
    ms: str
    ratio: str
    change: str  # against the previous measured step (cumulative) or the faithful (alone)
    note: str  # a skipped or failed step's reason; what a step was measured without


def table_rows(wf: Waterfall, steps: Sequence[Step], *, cumulative: bool) -> list[Row]:
    rows = []
    before = wf.faithful.ms
    for step in steps:
        ratio = wf.ratio(step)
        same = wf.like_for_like(step)
        change = ""
        if step.ms is not None and before and step is not wf.faithful:
            change = f"{100.0 * (step.ms - before) / before:+.0f}%"
        note = {"ok": step.note, "skipped": step.reason}.get(step.status,
                                                            f"{step.status}: {step.reason}")
        if same is not None:
            note = f"{ratio_text(same)} the patch model at {step.config.how}" + (
                f"; {note}" if note else "")
        rows.append(Row(step.label, step.what, step.model, step.config.how,
                        f"{step.ms:,.1f}" if step.ms is not None else "-",
                        ratio_text(ratio) if ratio is not None else "-", change, note))
        if cumulative and step.ms is not None:
            before = step.ms
    return rows


def headline(wf: Waterfall) -> str:
    """One sentence: the model, the yardstick, the paper's gap, and what remains."""
    ref = wf.reference
    yardstick = (f"{ref.spec.model} at fp32 eager, {wf.reference_ms:,.1f} ms" if ref else
                 "no patch model at fp32 eager in this run: no ratios")
    measured = [s for s in wf.cumulative if s.ms is not None]
    gap = ""
    if len(measured) > 1 and wf.ratio(measured[0]) is not None:
        first, last = wf.ratio(measured[0]), wf.ratio(measured[-1])
        gap = (f"; here {ratio_text(first)} faithful, {ratio_text(last)} after the last "
               "measured step")
    return (f"{wf.base} against {yardstick}; the paper's gap: ~{wf.paper_ratio:.0f}x "
            f"({paper.PAPER_DEVICE}){gap}")


def waterfall_summary(results: Sequence[CaseResult]) -> str:
    """The text ``vlbench run`` prints after a run with a waterfall; "" without one."""
    blocks = []
    for wf in find_waterfalls(results):
        b = wf.faithful.result.spec.batch_size if wf.faithful.result else 1
        lines = [f"Region pipeline, one change at a time (batch {b}): {headline(wf)}"]
        for title, steps, cumulative in (("cumulative", wf.cumulative, True),
                                         ("each change alone, from faithful", wf.alone, False)):
            lines.append(f"  {title:<34} {'how':<20} {'e2e ms':>10} {'ratio':>7} {'change':>7}")
            for row in table_rows(wf, steps, cumulative=cumulative):
                note = f"  {row.note}" if row.note else ""
                lines.append(f"  {row.label:<34} {row.how:<20} {row.ms:>10} {row.ratio:>7} "
                             f"{row.change:>7}{note}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
