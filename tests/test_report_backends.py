"""The report's region-backend parity section, from hand-made records (no detectron2 needed):
pairs of one case measured with both detectors, compared stage by stage."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from vlbench.report import collect, render_markdown, write_report
from vlbench.report.backends import backends_section
from vlbench.report.data import Case
from vlbench.results import CaseResult, CaseSpec, StageResult
from vlbench.stats import summarize
from vlbench.store import Store

EVIL = "<b>x</b>"


def _stage(name: str, parent: str | None, ms: float, flops: int, params: int,
           **workload: int) -> StageResult:
    return StageResult(name=name, kind="region_ops", parent=parent, timing=summarize([ms]),
                       calls=1, flops=flops, params=params, workload=workload)


def _case(backend: str | None, *, box_ms: float, predictor_params: int, kept: int,
          model: str = "uniter-base") -> CaseResult:
    total = 1000 + predictor_params
    stages = (_stage("visual", None, 10.0 + box_ms, 10**9 + total, total, boxes_kept_nms=kept),
              _stage("visual.backbone", "visual", 10.0, 10**9, 1000),
              _stage("visual.box_head", "visual", box_ms, predictor_params, predictor_params),
              _stage("visual.box_head.predictor", "visual.box_head", 1.0, predictor_params,
                     predictor_params))
    return CaseResult(
        spec=CaseSpec(model, 1, (800, 1333), 60, "fp32", "cpu", region_backend=backend),
        status="ok", end_to_end=summarize([10.0 + box_ms]), stages=stages,
        flops_total=10**9 + total, params_total=total)


def test_pairs_compare_stage_by_stage() -> None:
    ours = _case(None, box_ms=30.0, predictor_params=6404, kept=36)
    theirs = _case("detectron2", box_ms=20.0, predictor_params=6000, kept=36)
    other = _case("detectron2", box_ms=5.0, predictor_params=1, kept=1, model="lxmert")
    section = backends_section([Case(1, ours, "uniter-base"), Case(2, theirs, "uniter-base"),
                                Case(2, other, "lxmert")])  # lxmert: no vlbench side, no pair
    assert section is not None and len(section.pairs) == 1
    pair = section.pairs[0]
    assert pair.run_ids == (1, 2)
    by_name = {s.stage: s for s in pair.stages}
    assert [s.stage for s in pair.stages][-1] == "forward"
    assert by_name["visual.box_head"].ratio == 1.5 and by_name["visual.backbone"].ratio == 1.0
    assert [by_name[n].depth for n in ("visual", "visual.box_head",
                                       "visual.box_head.predictor")] == [0, 1, 2]
    assert pair.params_differ == ["visual", "visual.box_head", "visual.box_head.predictor",
                                  "forward"]
    # 6404 against 6000 FLOPs: beyond 1% in the small stages only
    assert pair.flops_differ == ["visual.box_head", "visual.box_head.predictor"]
    assert pair.workload_differs == []
    assert "forward ours / theirs 1.33" in pair.summary and "busy" not in pair.summary


def test_workload_differences_and_missing_stages_are_shown() -> None:
    ours = _case(None, box_ms=30.0, predictor_params=10, kept=36)
    theirs = dataclasses.replace(_case("detectron2", box_ms=30.0, predictor_params=10, kept=12),
                                 stages=_case("detectron2", box_ms=30.0, predictor_params=10,
                                              kept=12).stages[:3])
    pair = backends_section([Case(1, ours, "u"), Case(1, theirs, "u")]).pairs[0]
    by_name = {s.stage: s for s in pair.stages}
    assert by_name["visual"].workload_diff == ["boxes_kept_nms 36/12"]
    missing = by_name["visual.box_head.predictor"]
    assert missing.theirs.ms is None and missing.ratio is None and missing.flops_gap is None
    assert "workload differs in visual" in pair.summary


def test_no_pair_no_section_and_failures_are_left_out() -> None:
    ours = _case(None, box_ms=1.0, predictor_params=1, kept=1)
    failed = CaseResult(spec=dataclasses.replace(ours.spec, region_backend="detectron2"),
                        status="error", message="boom")
    assert backends_section([Case(1, ours, "u")]) is None
    assert backends_section([Case(1, ours, "u"), Case(1, failed, "u")]) is None


def test_report_page_and_markdown_show_the_section(tmp_path: Path) -> None:
    ours = _case(None, box_ms=30.0, predictor_params=6404, kept=36, model="uniter" + EVIL)
    theirs = _case("detectron2", box_ms=20.0, predictor_params=6000, kept=36,
                   model="uniter" + EVIL)
    with Store.open(tmp_path / "b.sqlite") as store:
        run = store.start_run(label=None, suite=None, command="x", env={}, settings={})
        for case in (ours, theirs):
            store.add_case(run, case)
        data = collect(store, [run])
        html = write_report(store, [run], out=tmp_path / "b.html").read_text()
        markdown = render_markdown(store, [run])
    assert "backends" in [s.section.name for s in data.sections]
    assert 'id="backends"' in html and EVIL not in html and 'href="#backends"' in html
    rows = re.findall(r'<tr class="backends-stage">(.*?)</tr>', html, re.S)
    assert len(rows) == 5 and "6,404" in rows[2] and "6,000" in rows[2] and "1.50" in rows[2]
    assert "### Region backends: vlbench's detector against detectron2's" in markdown
    assert "| visual.backbone | 1,000 | 1,000 | 1.000 | 1.000 | 10.0 | 10.0 | 1.00 | - |" in (
        markdown.replace("  visual.backbone", "visual.backbone"))
