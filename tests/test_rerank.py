"""Re-ranking (``architectures.rerank``): the ITC ranking of a cached gallery, the top k and the
fusion over those k. The reranked order against the exhaustive fusion order restricted to the
ITC top k, k clamped to N, the strategy read from what a fusion offers, k reaching a case from a
suite, the cache's bytes recorded and an out-of-memory cache as an ``oom`` record, the cost
model's rerank terms and crossovers in N, Q and k, and the report's section."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from architectures import build_model, resolve_preset
from architectures.rerank import RerankGallery
from architectures.retrieval import Retriever, pair_scores, preset_strategies, strategies
from vlbench.case_keys import case_key
from vlbench.cli import main
from vlbench.measure import run_case
from vlbench.options import MeasureOptions
from vlbench.report import write_report
from vlbench.results import CaseResult, CaseSpec, StageResult
from vlbench.retrieval_cost import (
    CostCurve,
    CostPoint,
    RerankTerms,
    cost_curves,
    crossover_k,
    crossover_n,
    crossover_q,
    crossovers_n,
    describe_k,
    fit_linear_cost,
    k_crossovers,
    retrieval_summary,
)
from vlbench.scenarios import retrieval
from vlbench.stats import summarize
from vlbench.store import Store
from vlbench.suites import SuiteError, parse_suite
from vlbench.table import retrieval_table
from vlbench.timing import TimingOptions

TOLERANCE = 1e-4
GALLERY, K = 7, 3
RERANKING = ("albef-base-tiny", "blip-base-tiny", "vlmo-base-tiny")
QUICK = MeasureOptions(timing=TimingOptions(warmup=0, min_repeats=2, min_time_s=0.0))


@pytest.mark.parametrize(("name", "expected", "what_if"), [
    ("clip-vit-b32-tiny", ("cached",), False),
    ("vlmo-base-dual-tiny", ("cached",), False),
    ("vilt-b32-tiny", ("joint",), False),
    ("uniter-base-tiny", ("joint",), False),
    ("albef-base-tiny", ("rerank", "joint"), False),
    ("blip-base-tiny", ("rerank", "joint"), False),
    ("vlmo-base-tiny", ("rerank", "joint"), True),
])
def test_strategies_are_read_from_what_the_fusion_offers(name: str, expected: tuple,
                                                         what_if: bool) -> None:
    model = build_model(name)
    assert strategies(model.fusion) == expected
    assert preset_strategies(resolve_preset(name)) == expected  # built on meta, same answer
    k = 4 if expected[0] == "rerank" else None
    retriever = Retriever(model, "t2i", k=k)
    assert retriever.strategy == expected[0]
    assert (retriever.what_if is not None) == what_if
    with pytest.raises(ValueError, match="for 'rerank' only"):
        Retriever(model, "t2i", k=None if k else 4)


def test_published_presets_retrieve_their_published_way() -> None:
    """ALBEF and BLIP re-rank; VLMo's dual way is its default, its fusion way a what-if."""
    for name, natural in (("albef-base", "rerank"), ("blip-base", "rerank"),
                          ("vlmo-base-dual", "cached"), ("vlmo-base", "rerank"),
                          ("clip-vit-b32", "cached"), ("vilt-b32", "joint")):
        assert preset_strategies(resolve_preset(name))[0] == natural


@pytest.mark.parametrize("name", RERANKING)
def test_fuse_from_index_states_is_the_forward(name: str) -> None:
    """What a re-ranking caches and fuses gives the fusion's own forward and ITC embeddings."""
    torch.manual_seed(0)
    model = build_model(name).eval()
    p = resolve_preset(name)
    images, ids, mask = model.example_inputs(3, p.image_size, p.text_len, seed=1)
    fusion = model.fusion
    with torch.inference_mode():
        text, vision = model.text(ids, mask), model.visual(images)
        e_img, image_states = fusion.index_image(vision)
        e_txt, text_states = fusion.index_text(text)
        torch.testing.assert_close(e_img, fusion.encode_image(vision))
        torch.testing.assert_close(e_txt, fusion.encode_text(text))
        fused = fusion.fuse(text_states, image_states)
        whole = fusion(text, vision)  # the tiny VLMo runs its fusion way
    torch.testing.assert_close(fused.pooled, whole.pooled, atol=1e-5, rtol=1e-5)
    if whole.match is not None:
        torch.testing.assert_close(fused.match, whole.match, atol=1e-5, rtol=1e-5)


def _rerank(name: str, direction: str, k: int, n: int = GALLERY
            ) -> tuple[Retriever, object, torch.Tensor, torch.Tensor]:
    """(retriever, ranked, exhaustive ITC similarities (N,), exhaustive ITM scores (N,)), the
    reference one pair at a time through the whole model, nothing cached."""
    torch.manual_seed(0)
    model = build_model(name).eval()
    retriever = Retriever(model, direction, k=k).eval()
    p = resolve_preset(name)
    images = model.example_images(n, p.image_size, seed=1)
    ids, mask = model.example_texts(n, p.text_len, seed=2)
    q_image = model.example_images(1, p.image_size, seed=3)
    q_ids, q_mask = model.example_texts(1, p.text_len, seed=4)
    match = retriever.query.pairs.match if name.startswith("vlmo") else None
    with torch.inference_mode():
        if direction == "t2i":
            gallery, query = [(images,)], (q_ids, q_mask)
            itc = model.fusion.encode_image(model.visual(images)) @ model.fusion.encode_text(
                model.text(q_ids, q_mask))[0]
        else:
            gallery, query = [(ids, mask)], (q_image,)
            itc = model.fusion.encode_text(model.text(ids, mask)) @ model.fusion.encode_image(
                model.visual(q_image))[0]
        ranked = retriever("query", query, retriever("gallery", gallery), 2)
        itm = []
        for i in range(n):
            pair = ((retrieval._slice(images, i, i + 1), q_ids, q_mask) if direction == "t2i"
                    else (q_image, ids[i : i + 1], mask[i : i + 1]))
            itm.append(pair_scores(model, *pair, match=match))
    return retriever, ranked, itc, torch.cat(itm)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("name", RERANKING)
def test_reranked_order_is_the_exhaustive_fusion_order_within_the_itc_top_k(
    name: str, direction: str
) -> None:
    _, ranked, itc, itm = _rerank(name, direction, K)
    top = torch.topk(itc, K).indices
    assert set(ranked.candidates.tolist()) == set(top.tolist())  # the ITC top k, no other
    torch.testing.assert_close(ranked.scores, itm[ranked.candidates], atol=TOLERANCE,
                               rtol=TOLERANCE)  # each candidate's fusion score, batched
    expected = top[torch.argsort(itm[top], descending=True, stable=True)]
    ordered = itm[expected]
    for i in range(K - 1):  # the exhaustive order restricted to the top k, up to near-ties
        if ordered[i] - ordered[i + 1] > TOLERANCE:
            assert set(ranked.order[: i + 1].tolist()) == set(expected[: i + 1].tolist())
    # with k = N the re-ranking is the exhaustive fusion ranking
    _, whole, _, itm = _rerank(name, direction, GALLERY)
    torch.testing.assert_close(whole.scores, itm[whole.candidates], atol=TOLERANCE,
                               rtol=TOLERANCE)


def test_k_is_clamped_to_the_gallery() -> None:
    retriever, ranked, _, _ = _rerank("blip-base-tiny", "t2i", k=256, n=5)
    assert retriever.k_for(5) == 5 and retriever.k_for(1000) == 256
    assert ranked.order.shape == (5,) and sorted(ranked.order.tolist()) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="k must be at least 1"):
        Retriever(build_model("blip-base-tiny"), "t2i", k=0)


# -- cases: k from a suite, the record, an out-of-memory cache ---------------------------------


def test_rerank_k_reaches_only_reranking_models_and_joins_the_case_key() -> None:
    text = ("models: [clip-vit-b32-tiny, blip-base-tiny]\ntasks: [retrieval-t2i]\n"
            "gallery_sizes: [2, 4]\nrerank_k: [3, 8]\n")
    cases = parse_suite(text).cases("cpu")
    assert [(c.model, c.batch_size, c.rerank_k) for c in cases] == [
        ("clip-vit-b32-tiny", 2, None), ("clip-vit-b32-tiny", 4, None),
        ("blip-base-tiny", 2, 3), ("blip-base-tiny", 4, 3),
        ("blip-base-tiny", 2, 8), ("blip-base-tiny", 4, 8)]
    assert len({case_key(c) for c in cases}) == len(cases)
    assert case_key(cases[0]) == "clip-vit-b32-tiny|2|64x64|16|fp32|cpu|retrieval-t2i"  # as before
    assert case_key(cases[2]).endswith("|retrieval-t2i|k3")
    default = parse_suite(text.replace("rerank_k: [3, 8]\n", "")).cases("cpu")
    assert {c.rerank_k for c in default} == {None, 16, 128, 256}  # the default k


@pytest.mark.parametrize(("text", "expected"), [
    ("models: [blip-base]\nrerank_k: [16]\n", "'rerank_k' needs retrieval 'tasks'"),
    ("models: [blip-base]\ntasks: [retrieval-t2i]\nrerank_k: 16\n", "list of positive"),
    ("models: [blip-base]\ntasks: [retrieval-t2i]\nrerank_k: [0]\n", "list of positive"),
    ("models: [blip-base]\ntasks: [retrieval-t2i]\nrerank_k: [8, 8]\n", "lists a k twice"),
])
def test_bad_rerank_k_is_a_one_line_error(text: str, expected: str) -> None:
    with pytest.raises(SuiteError, match=expected):
        parse_suite(text)


def test_a_rerank_case_records_k_the_cache_and_its_stages() -> None:
    spec = CaseSpec("blip-base-tiny", 6, (64, 64), 8, "fp32", "cpu", task="retrieval-t2i",
                    rerank_k=16)
    result = run_case(spec, QUICK)
    assert result.status == "ok", result.message
    info = result.settings["retrieval"]
    assert (info["strategy"], info["k"], info["k_requested"]) == ("rerank", 6, 16)  # clamped
    n, tokens, width = info["cached_shape"]
    embed = info["cached_embedding_shape"][1]
    assert n == 6 and tokens == 17  # 16 patches + [CLS]: the tower's output, not a pooled vector
    assert info["cached_states_bytes"] == n * tokens * width * 4 + n * tokens  # fp32 + mask
    assert info["cached_bytes"] == info["cached_states_bytes"] + n * embed * 4
    assert info["cost_terms"] == {"rank": ["text", "tower", "score", "topk"],
                                  "fuse": ["pairs", "rank"]}
    stages = {s.name: s for s in result.stages}
    assert {"gallery.visual", "gallery.tower", "query.text", "query.tower", "query.score",
            "query.topk", "query.pairs", "query.rank"} <= set(stages)
    assert stages["query.topk"].workload == {"k": 6, "items": 6}
    assert stages["query.pairs"].workload["pairs"] == 6
    assert "6/16" in "\n".join(retrieval_table([result]))


def test_a_case_with_rerank_k_on_a_model_that_does_not_rerank_is_an_error() -> None:
    spec = CaseSpec("clip-vit-b32-tiny", 2, (64, 64), 16, "fp32", "cpu", task="retrieval-t2i",
                    rerank_k=4)
    result = run_case(spec, QUICK)
    assert result.status == "error" and "rerank_k goes with re-ranking models" in result.message


def test_an_out_of_memory_cache_is_an_oom_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of up to 4 images fit, the whole cache of 8 does not: the batch finder settles
    on 4, the gallery step runs out of memory joining them, the case is an ``oom`` record."""
    real = RerankGallery.forward

    def limited(self, batches):  # noqa: ANN001, ANN202 - an allocator at its limit
        if sum(b[0].tensor.shape[0] for b in batches) > 4:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                               "allocate 1811939328 bytes")
        return real(self, batches)

    monkeypatch.setattr(RerankGallery, "forward", limited)
    spec = CaseSpec("blip-base-tiny", 8, (64, 64), 8, "fp32", "cpu", task="retrieval-t2i",
                    rerank_k=4)
    result = run_case(spec, QUICK)
    assert result.status == "oom"
    assert "the gallery cache of 8 items" in result.message
    assert "token sequences" in result.message


# -- the cost model ---------------------------------------------------------------------------

SIZES = (1, 10, 100)


def _case(model: str, n: int, k: int | None, encode: float, query: dict[str, float],
          what_if: str | None = None) -> CaseResult:
    """A synthetic retrieval case: its gallery median, its query's stage medians (the
    end-to-end is their sum)."""
    spec = CaseSpec(model, n, (64, 64), 8, "fp32", "cpu", task="retrieval-t2i", rerank_k=k)
    stages = [StageResult("gallery", "offline", None, summarize([encode]), 1, 0, 0)]
    stages += [StageResult(f"query.{name}", "other", "query", summarize([ms]), 1, 0, 0)
               for name, ms in query.items()]
    info: dict = {"strategy": "rerank" if k else "cached"}
    if k is not None:
        info |= {"k": min(k, n), "what_if": what_if,
                 "cost_terms": {"rank": ["text", "tower", "score", "topk"],
                                "fuse": ["pairs", "rank"]}}
    return CaseResult(spec, "ok", end_to_end=summarize([sum(query.values())]),
                      stages=tuple(stages), settings={"retrieval": info})


def _rerank_cases(model: str = "blip", ks: tuple[int, ...] = (4, 64), what_if: str | None = None
                  ) -> list[CaseResult]:
    """encode 20 ms an item; rank = 3 + 0.05 N (text 1, tower 2, score 0.05 N); fuse = 2 +
    7 k (pairs 7 k, sort 2)."""
    return [_case(model, n, k, 20.0 * n,
                  {"text": 1.0, "tower": 2.0, "score": 0.05 * n, "topk": 1e-9,
                   "pairs": 7.0 * min(k, n), "rank": 2.0}, what_if)
            for k in ks for n in SIZES]


def test_rerank_fit_recovers_known_terms_and_clamps_k() -> None:
    curves = cost_curves(_rerank_cases())
    assert [(c.label, c.strategy, c.k) for c in curves] == [
        ("blip k=4", "rerank", 4), ("blip k=64", "rerank", 64)]
    terms = curves[0].rerank
    assert terms is not None and terms == curves[1].rerank  # one model's terms, every k
    assert terms.rank.a == pytest.approx(3.0, rel=1e-3)
    assert terms.rank.b == pytest.approx(0.05, rel=1e-3)
    assert terms.fuse.a == pytest.approx(2.0, rel=1e-3)
    assert terms.fuse.b == pytest.approx(7.0, rel=1e-3)
    assert curves[0].encode.b == pytest.approx(20.0, rel=1e-3)
    k4, k64 = curves
    assert k4.query_at(2) == pytest.approx(3.1 + 2 + 14, rel=1e-3)  # N < k: fuse N
    assert k4.query_at(1000) == pytest.approx(53 + 2 + 28, rel=1e-3)  # N > k: fuse k
    assert k64.query_at(1000) == pytest.approx(53 + 2 + 7 * 64, rel=1e-3)
    assert [p.k for p in k64.points] == [1, 10, 64]  # the k each case fused


def _linear(label: str, strategy: str, encode: tuple[float, float],
            query: tuple[float, float]) -> CostCurve:
    points = tuple(CostPoint(n, encode[0] + encode[1] * n, query[0] + query[1] * n)
                   for n in SIZES)
    return CostCurve(label, label, "retrieval-t2i", "cpu", "fp32", strategy, points,
                     fit_linear_cost(SIZES, [p.encode_ms for p in points]),
                     fit_linear_cost(SIZES, [p.query_ms for p in points]), base=label)


def _reranking(k: int) -> CostCurve:
    """encode 20 N; rank 1 + 0.01 N; fuse 5 k."""
    terms = RerankTerms(fit_linear_cost([1, 1000], [1.01, 11.0]),
                        fit_linear_cost([1, 256], [5.0, 1280.0]))
    points = tuple(CostPoint(n, 20.0 * n, 1 + 0.01 * n + 5 * min(k, n), min(k, n))
                   for n in SIZES)
    return CostCurve(f"rr k={k}", "rr", "retrieval-t2i", "cpu", "fp32", "rerank", points,
                     fit_linear_cost(SIZES, [p.encode_ms for p in points]), None, k=k,
                     rerank=terms, base="rr")


def test_rerank_crossovers_in_n_q_and_k() -> None:
    """Against a dual encoder (encode 10 N, a query 100 ms): one query costs the same where
    10 N + 1 + 0.01 N + 5 min(16, N) = 100, N = 99 / 15.01 (below k = 16); with the gallery
    free where 1 + 0.01 N + 80 = 100, N = 1,900 (above k: the break is honoured); at N = 100
    the encodings differ by 1,000 ms and the queries by 18 ms, Q = 1,000 / 18; at N = 1,000
    per query the re-ranking is cheaper below k = (100 - 11) / 5 = 17.8."""
    rr, dual = _reranking(16), _linear("dual", "cached", (0.0, 10.0), (100.0, 0.0))
    assert crossover_n(rr, dual, 1) == pytest.approx(99 / 15.01, rel=1e-6)
    assert crossover_n(rr, dual, 1, gallery_free=True) == pytest.approx(1900, rel=1e-6)
    assert crossovers_n(rr, dual, 1, gallery_free=True) == [pytest.approx(1900, rel=1e-6)]
    assert crossover_q(rr, dual, 100) == pytest.approx(1000 / 18, rel=1e-6)
    assert crossover_k(rr, dual, 1, 1000, gallery_free=True) == pytest.approx(17.8, rel=1e-6)
    assert crossover_k(rr, dual, 1, 1000) is None  # one query: the gallery's cost decides
    (found,) = k_crossovers([rr, _reranking(64), dual])  # one per re-ranking model, not per k
    assert found.rerank.base == "rr" and found.other.label == "dual"
    assert describe_k(found, 1000, dict(found.k_free)[1000], gallery_free=True).startswith(
        "k* = 17.8 (extrapolated): rr cheaper for smaller k")
    assert describe_k(found, 1000, None) == "none (extrapolated): dual cheaper at every k"


def test_the_summary_and_the_report_show_rerank_curves_and_fitted_points(
    tmp_path: Path
) -> None:
    from vlbench.report.html import Case
    from vlbench.report.retrieval import retrieval_markdown, retrieval_section

    dual = [_case("clip", n, None, 6.0 * n, {"text": 50.0, "tower": 3.0, "score": 0.01 * n,
                                             "rank": 0.01}) for n in SIZES]
    vlmo = _rerank_cases("vlmo", ks=(4, 16), what_if="VLMo publishes dual-way retrieval only")
    results = [*dual, *_rerank_cases(), *vlmo]
    text = retrieval_summary(results)
    assert "rank(N) + fuse(min(k, N))" in text and "k*, blip re-ranking against clip" in text
    assert "what-if: vlmo k=4: VLMo publishes" in text and "~" in text  # fitted sizes marked
    section = retrieval_section([Case(1, r, r.spec.model) for r in results])
    assert section is not None
    (d,) = section.directions
    assert d.measured_sizes == [1, 10, 100] and d.sizes == [1, 10, 100, 1000, 10_000]
    line = next(x for x in d.lines if x.curve.label == "blip k=4")
    assert line.at[100][2] and not line.at[1000][2]  # measured, then fitted
    assert [c.anchor for c in d.charts] == ["retrieval-t2i-n", "retrieval-t2i-q",
                                            "retrieval-t2i-k"]
    assert {(k.rerank.base, k.other.label) for k in d.k_crossovers} == {("blip", "clip"),
                                                                       ("vlmo", "clip")}
    markdown = "\n".join(retrieval_markdown(section))
    assert "rerank (what-if)" in markdown and "k* (a re-ranking" in markdown
    assert "| blip k=4 |" in markdown and "~" in markdown


def test_a_tiny_rerank_run_through_the_cli(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "rerank.yaml"
    suite.write_text("name: rerank-tiny\nmodels: [clip-vit-b32-tiny, blip-base-tiny]\n"
                     "tasks: [retrieval-t2i]\ngallery_sizes: [2, 4]\nrerank_k: [2, 8]\n")
    db = tmp_path / "runs.sqlite"
    assert main(["run", "--suite", str(suite), "--warmup", "0", "--repeats", "2",
                 "--min-time", "0", "--no-progress", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    with Store.open(db) as store:
        results = store.cases(1)
        html = write_report(store, [1], out=tmp_path / "r.html").read_text()
    assert len(results) == 2 + 4 and all(r.status == "ok" for r in results)
    assert {(r.spec.batch_size, r.spec.rerank_k, r.settings["retrieval"].get("k"))
            for r in results if r.spec.rerank_k} == {(2, 2, 2), (4, 2, 2), (2, 8, 2), (4, 8, 4)}
    assert "4/8" in out and "k*, blip-base-tiny re-ranking" in out
    assert 'id="retrieval-t2i-k"' in html and "fitted" in html
