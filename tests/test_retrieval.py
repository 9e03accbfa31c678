"""The retrieval suite: each architecture's ranking path against the plain one-pair-at-a-time
forward, the batch finder's back-off, the cost model on synthetic timings, and a real tiny
``vlbench run --suite retrieval`` through the CLI into the store and the report."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from architectures import build_model, resolve_preset
from architectures.retrieval import PairScorer, Retriever, pair_scores
from vlbench.cli import main
from vlbench.measure import run_case
from vlbench.options import MeasureOptions
from vlbench.report import write_report
from vlbench.results import CaseResult, CaseSpec, StageResult
from vlbench.retrieval_cost import (
    CostCurve,
    CostPoint,
    cost_curves,
    crossover_n,
    crossover_q,
    crossovers,
    describe_n,
    fit_linear_cost,
    retrieval_summary,
)
from vlbench.scenarios import retrieval
from vlbench.scenarios.batching import find_batch_size
from vlbench.scenarios.retrieval import gallery_batches
from vlbench.stats import summarize
from vlbench.store import Store
from vlbench.suites import SuiteError, load_suite, parse_suite
from vlbench.timing import TimingOptions

#: batched and one-pair products differ in the last bits; random weights give near-ties
TOLERANCE = 1e-4
GALLERY = 7  # items: with batches of 3, two full batches and a short one
BATCH = 3


def _rank(model_name: str, direction: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(batched scores, batched order, one-pair-at-a-time reference scores) for a gallery of
    GALLERY items ranked against one query, in batches of BATCH."""
    torch.manual_seed(0)
    model = build_model(model_name).eval()
    retriever = Retriever(model, direction).eval()
    preset = resolve_preset(model_name)
    images = model.example_images(GALLERY, preset.image_size, seed=1)
    ids, mask = model.example_texts(GALLERY, preset.text_len, seed=2)
    query_image = model.example_images(1, preset.image_size, seed=3)
    query_ids, query_mask = model.example_texts(1, preset.text_len, seed=4)
    if direction == "t2i":
        gallery, _ = gallery_batches(lambda n: (retrieval._slice(images, 0, n),), GALLERY, BATCH)
        query = (query_ids, query_mask)
    else:
        gallery, _ = gallery_batches(lambda n: (ids[:n], mask[:n]), GALLERY, BATCH)
        query = (query_image,)
    match = None if retriever.dual else retriever.query.pairs.match
    with torch.inference_mode():
        cache = retriever("gallery", gallery)
        ranked = retriever("query", query, cache, BATCH)
        reference = []
        for i in range(GALLERY):  # the plain forward, one pair at a time, nothing cached
            if direction == "t2i":
                pair = (retrieval._slice(images, i, i + 1), query_ids, query_mask)
            else:
                pair = (query_image, ids[i : i + 1], mask[i : i + 1])
            reference.append(pair_scores(model, *pair, match=match))
    return ranked.scores, ranked.order, torch.cat(reference)


def _assert_same_ranking(reference: torch.Tensor, order: torch.Tensor) -> None:
    """Wherever neighbouring reference scores differ by more than the tolerance, the items
    above that gap are the same set in both rankings (ties within it may swap)."""
    ref_sorted, ref_order = torch.sort(reference, descending=True, stable=True)
    gaps = [k for k in range(len(reference) - 1)
            if ref_sorted[k] - ref_sorted[k + 1] > TOLERANCE]
    assert gaps, "every score tied: the ranking check would be vacuous"
    for k in gaps:
        assert set(ref_order[: k + 1].tolist()) == set(order[: k + 1].tolist())


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("model_name", ["vilt-b32-tiny", "uniter-base-tiny",
                                        "vilbert-base-precomputed-tiny"])
def test_fusion_batched_pairs_match_one_pair_at_a_time(model_name: str, direction: str) -> None:
    scores, order, reference = _rank(model_name, direction)
    assert scores.shape == (GALLERY,)
    torch.testing.assert_close(scores, reference, atol=TOLERANCE, rtol=TOLERANCE)
    _assert_same_ranking(reference, order)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("model_name", ["clip-vit-b32-tiny", "vlmo-base-dual-tiny"])
def test_dual_encoder_cached_gallery_matches_uncached_pairs(model_name: str,
                                                            direction: str) -> None:
    """CLIP, and VLMo's dual way (its published retrieval) through its encode_image/_text."""
    scores, order, reference = _rank(model_name, direction)
    torch.testing.assert_close(scores, reference, atol=TOLERANCE, rtol=TOLERANCE)
    _assert_same_ranking(reference, order)


def test_retriever_steps_are_the_natural_strategy() -> None:
    dual = Retriever(build_model("clip-vit-b32-tiny"), "t2i")
    fusion = Retriever(build_model("uniter-base-tiny"), "t2i")
    assert [s.name for s in dual.stages() if s.parent is None] == ["gallery", "query"]
    dual_names = {s.name for s in dual.stages()}
    assert {"gallery.visual", "gallery.tower", "query.text", "query.tower", "query.score",
            "query.rank"} <= dual_names
    fusion_names = {s.name for s in fusion.stages()}
    # the detector runs offline on the gallery; per query only the text and the pairs
    assert {"gallery.visual.box_head", "query.text", "query.pairs",
            "query.pairs.fusion.encoder", "query.pairs.match"} <= fusion_names
    assert not any(n.startswith("query.visual") for n in fusion_names)
    i2t = {s.name for s in Retriever(build_model("uniter-base-tiny"), "i2t").stages()}
    assert "query.visual.box_head" in i2t and "gallery.text" in i2t


# -- the batch finder ---------------------------------------------------------------------------


def _fits_up_to(limit: int, message: str = "DefaultCPUAllocator: can't allocate memory"):
    calls: list[int] = []

    def step(batch: int) -> None:
        calls.append(batch)
        if batch > limit:
            raise RuntimeError(f"{message}: you tried to allocate {batch} GB")

    return step, calls


def test_batch_finder_doubles_then_bisects_back_after_out_of_memory() -> None:
    step, calls = _fits_up_to(5)
    probe = find_batch_size(step, 64)
    assert probe.size == 5
    assert probe.oom_at == 6
    assert calls == [1, 2, 4, 8, 6, 5] == list(probe.tried)


def test_batch_finder_stops_at_the_gallery_size() -> None:
    step, calls = _fits_up_to(1000)
    probe = find_batch_size(step, 10)
    assert (probe.size, probe.oom_at, calls) == (10, None, [1, 2, 4, 8, 10])


def test_batch_finder_propagates_other_errors_and_oom_at_one() -> None:
    step, _ = _fits_up_to(0)
    with pytest.raises(RuntimeError, match="can't allocate memory"):
        find_batch_size(step, 8)  # nothing fits: the case becomes an oom record
    step, _ = _fits_up_to(2, message="shape mismatch")
    with pytest.raises(RuntimeError, match="shape mismatch"):
        find_batch_size(step, 8)


def test_a_case_runs_its_pairs_in_the_batch_that_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    real = PairScorer.forward

    def limited(self, query, candidates):  # noqa: ANN001, ANN202 - an allocator at its limit
        if candidates.embeds.shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, query, candidates)

    monkeypatch.setattr(PairScorer, "forward", limited)
    spec = CaseSpec("vilt-b32-tiny", 8, (64, 96), 8, "fp32", "cpu", task="retrieval-t2i")
    result = run_case(spec, MeasureOptions(timing=TimingOptions(warmup=0, min_repeats=2,
                                                             min_time_s=0.0)))
    assert result.status == "ok", result.message
    info = result.settings["retrieval"]
    assert (info["pair_batch"], info["pair_batches"]) == (3, 3)
    assert info["pair_probe"]["oom_at"] == 4
    assert result.settings["energy"] == {"status": "not available: not a GPU run"}  # never a 0
    pairs = next(s for s in result.stages if s.name == "query.pairs")
    assert pairs.calls == 3 and pairs.workload == {"pairs": 8, "batch": 3, "batches": 3}


# -- the cost model on synthetic timings ----------------------------------------------------------

SIZES = (1, 10, 100, 1000)


def _curve(label: str, strategy: str, encode: tuple[float, float],
           query: tuple[float, float]) -> CostCurve:
    points = tuple(CostPoint(n, encode[0] + encode[1] * n, query[0] + query[1] * n)
                   for n in SIZES)
    return CostCurve(label, label, "retrieval-t2i", "cpu", "fp32", strategy, points,
                     fit_linear_cost(SIZES, [p.encode_ms for p in points]),
                     fit_linear_cost(SIZES, [p.query_ms for p in points]))


def test_cost_fit_recovers_known_terms_from_noisy_timings() -> None:
    gen = torch.Generator().manual_seed(0)
    ns = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    noise = 1 + 0.02 * (torch.rand(len(ns), generator=gen) - 0.5)  # +-1%
    times = [(3.0 + 0.5 * n) * float(e) for n, e in zip(ns, noise, strict=True)]
    fit = fit_linear_cost(ns, times)
    assert fit.a == pytest.approx(3.0, rel=0.05)
    assert fit.b == pytest.approx(0.5, rel=0.02)
    assert (fit.n_min, fit.n_max) == (1, 1000)
    assert fit.max_rel_error < 0.02


def test_cost_fit_keeps_terms_non_negative_and_needs_two_sizes() -> None:
    flat = fit_linear_cost([1, 10, 100], [5.0, 5.0, 5.0])
    assert flat.a == pytest.approx(5.0) and flat.b == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="two distinct"):
        fit_linear_cost([10, 10], [1.0, 2.0])


def test_crossovers_on_synthetic_curves() -> None:
    # dual: gallery 10 ms an image, a query 100 ms whatever N; fusion: 1 ms an image offline,
    # 10 ms a pair per query. Q = 1: 10N + 100 = 11N at N = 100; Q = 10: 10N + 1000 = 101N at
    # N = 1000/91; gallery free: 100 = 10N at N = 10; N = 50: 500 + 100Q = 50 + 500Q at Q = 9/8.
    dual = _curve("dual", "cached", (0.0, 10.0), (100.0, 0.0))
    fusion = _curve("fusion", "joint", (0.0, 1.0), (0.0, 10.0))
    assert crossover_n(dual, fusion, 1) == pytest.approx(100.0)
    assert crossover_n(dual, fusion, 10) == pytest.approx(1000 / 91)
    assert crossover_n(dual, fusion, 1, gallery_free=True) == pytest.approx(10.0)
    assert crossover_q(dual, fusion, 50) == pytest.approx(9 / 8)
    assert crossover_q(dual, fusion, 10) is None  # equal per query: no crossing
    assert crossover_q(dual, fusion, 1000) is None  # root below one query: dual wins outright
    (found,) = crossovers([fusion, dual])
    assert (found.first.label, found.second.label) == ("dual", "fusion")  # dual encoder first
    assert describe_n(found, 1, crossover_n(dual, fusion, 1)).startswith(
        "N* = 100: fusion cheaper below, dual above")
    # per query alone a dual encoder is cheaper at every N when its query is cheap enough
    cheap = _curve("clip", "cached", (0.0, 10.0), (5.0, 0.0))
    (free,) = crossovers([cheap, fusion])
    assert free.n_gallery_free is None
    assert describe_n(free, 1, None, gallery_free=True) == "none: clip cheaper at every N"


def _synthetic_case(model: str, n: int, encode_ms: float, query_ms: float) -> CaseResult:
    spec = CaseSpec(model, n, (64, 64), 8, "fp32", "cpu", task="retrieval-i2t")
    stage = StageResult("gallery", "offline", None, summarize([encode_ms]), 1, 0, 0)
    return CaseResult(spec, "ok", end_to_end=summarize([query_ms]), stages=(stage,),
                      settings={"retrieval": {"strategy": "cached"}})


def test_cost_curves_from_cases_and_the_printed_summary() -> None:
    cases = [_synthetic_case("m", n, 2.0 * n, 7.0 + 0.01 * n) for n in SIZES]
    (curve,) = cost_curves(cases)
    assert curve.encode is not None and curve.query is not None
    assert curve.encode.b == pytest.approx(2.0) and curve.query.a == pytest.approx(7.0)
    assert curve.total(3, 100) == pytest.approx(200 + 3 * 8.0)
    text = retrieval_summary(cases)
    assert "encode(N) + Q * query(N)" in text and "1,10,100,1000" in text


# -- the suite and a real run -------------------------------------------------------------------


def test_retrieval_suite_expands_tasks_and_gallery_sizes() -> None:
    suite = load_suite("retrieval")
    cases = suite.cases("cpu")
    assert {c.task for c in cases} == {"retrieval-t2i", "retrieval-i2t"}
    assert sorted({c.batch_size for c in cases}) == [1, 10, 100, 1000]
    assert max(c.batch_size for c in suite.cases("cuda")) > 1000  # larger on a GPU
    text = "models: [vilt-b32-tiny]\ntasks: [retrieval-t2i]\ngallery_sizes: [2, 4]\n"
    assert [(c.task, c.batch_size) for c in parse_suite(text).cases("cpu")] == [
        ("retrieval-t2i", 2), ("retrieval-t2i", 4)]


@pytest.mark.parametrize(("text", "expected"), [
    ("models: [vilt-b32]\ntasks: [retrieval-x]\n", "unknown task 'retrieval-x'"),
    ("models: [vilt-b32]\ngallery_sizes: [1, 2]\n", "need 'tasks'"),
    ("models: [vilt-b32]\ntasks: [retrieval-t2i]\ngallery_sizes: [1]\nbatch_sizes: [1]\n",
     "not both"),
])
def test_bad_retrieval_suites_are_one_line_errors(text: str, expected: str) -> None:
    with pytest.raises(SuiteError, match=expected):
        parse_suite(text)


def test_a_tiny_retrieval_run_stores_reports_and_prints_the_cost_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "runs.sqlite"
    assert main(["run", "--suite", "retrieval", "--models", "clip-vit-b32,vilt-b32",
                 "--compose", "patch+two-stream", "--size", "tiny", "--batch-sizes", "1,3",
                 "--warmup", "0", "--repeats", "2", "--min-time", "0", "--no-progress",
                 "--db", str(db)]) == 0
    out = capsys.readouterr().out
    with Store.open(db) as store:
        results = store.cases(1)
        html = write_report(store, [1], out=tmp_path / "r.html").read_text()
        markdown = write_report(store, [1], out=tmp_path / "r.md", fmt="markdown").read_text()
    assert len(results) == 3 * 2 * 2 and all(r.status == "ok" for r in results)
    by_model = {(r.spec.model, r.spec.task, r.spec.batch_size): r for r in results}
    clip = by_model[("clip-vit-b32-tiny", "retrieval-t2i", 3)]
    assert {"gallery", "gallery.visual", "gallery.tower", "query", "query.text",
            "query.score", "query.rank"} <= {s.name for s in clip.stages}
    vilt = by_model[("vilt-b32-tiny", "retrieval-i2t", 3)]
    assert {"gallery", "gallery.text", "query", "query.visual", "query.pairs",
            "query.pairs.fusion.encoder", "query.rank"} <= {s.name for s in vilt.stages}
    assert vilt.settings["retrieval"]["pair_batch"] == 3  # nothing runs out of memory here
    two_stream = by_model[("patch+two-stream-tiny", "retrieval-t2i", 3)]
    assert two_stream.settings["retrieval"]["strategy"] == "joint"
    assert "query.pairs.fusion.co_attention" in {s.name for s in two_stream.stages}
    for r in results:
        query = next(s for s in r.stages if s.name == "query")
        assert r.end_to_end is not None and query.timing is not None
        assert r.stage_sum_ms == query.timing.median_ms
    # the run prints the retrieval table and the cost model; the report has its section
    assert "gallery ms" in out and "pair batch" in out
    assert "encode(N) + Q * query(N)" in out and "gallery encoding counted free" in out
    assert 'id="retrieval"' in html and html.count("<svg") >= 4
    assert "Cost against query count Q" in html and "Where the curves cross" in html
    assert "### Retrieval cost" in markdown


def test_report_section_with_models_measured_at_different_n() -> None:
    """One model at N = 1, 10, 100, another at 1, 2, 4 (a slow detector): the section still
    draws cost against Q at an N every model measured, and its crossovers."""
    from vlbench.report.retrieval import retrieval_section

    cases = ([_synthetic_case("fast", n, 1.0 * n, 2.0 + 0.01 * n) for n in (1, 10, 100)]
             + [_synthetic_case("slow", n, 100.0 * n, 1.0 + 5.0 * n) for n in (1, 2, 4)])
    from vlbench.report.html import Case

    section = retrieval_section([Case(1, c, c.spec.model) for c in cases])
    assert section is not None
    (direction,) = section.directions
    assert direction.n_ref == 1 and direction.n_ref_measured
    assert any(chart.svg for chart in direction.charts) and len(direction.charts) == 2
