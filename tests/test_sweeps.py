"""The throughput and scaling suites: batch sizes doubling to a cap, input sweeps expanded into
entries, the stop after an out-of-memory batch size, and the token-scaling fit a run prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlbench.cli import main
from vlbench.fit import fit_token_scaling, scaling_table
from vlbench.launchers import OomCutoff, inline, run_cases
from vlbench.options import RunOptions
from vlbench.results import CaseResult, CaseSpec, StageResult
from vlbench.stats import summarize
from vlbench.store import Store
from vlbench.suites import ModelEntry, SuiteError, load_suite, parse_suite

# -- YAML forms ---------------------------------------------------------------------------------


def test_throughput_suite_doubles_batch_sizes_to_its_cap() -> None:
    suite = load_suite("throughput")
    assert suite.batch_sizes == (1, 2, 4, 8, 16, 32, 64)
    assert [e.model for e in suite.models] == ["vilt-b32", "clip-vit-b32", "pixelbert-r50"]


@pytest.mark.parametrize(("form", "expected"), [
    ("{double_from: 1, max: 64}", (1, 2, 4, 8, 16, 32, 64)),
    ("{double_from: 3, max: 20}", (3, 6, 12)),
    ("{double_from: 4, max: 4}", (4,)),
    ("[1, 8, 32]", (1, 8, 32)),
])
def test_batch_size_forms(form: str, expected: tuple[int, ...]) -> None:
    suite = parse_suite(f"models: [vilt-b32-tiny]\nbatch_sizes: {form}\n")
    assert suite.batch_sizes == expected


def test_scaling_suite_expands_one_entry_per_swept_value() -> None:
    suite = load_suite("scaling")
    images = [e.image_size for e in suite.models if e.model == "vilt-b32"]
    assert images == [(384, 640), (768, 1280), (1152, 1920), (1536, 2560)]
    texts = [e.text_len for e in suite.models if e.model == "patch+single-stream"]
    assert texts == [64, 128, 256, 512]
    assert len(suite.cases("cpu")) == 8


def test_a_sweep_keeps_the_entry_other_input() -> None:
    suite = parse_suite("models:\n  - {model: vilt-b32-tiny, text_len: 5, "
                        "sweep: {image_size: [64x96, 128x192]}}\n")
    assert suite.models == (ModelEntry("vilt-b32-tiny", (64, 96), 5),
                            ModelEntry("vilt-b32-tiny", (128, 192), 5))


@pytest.mark.parametrize(("text", "expected"), [
    ("batch_sizes: {double_from: 1}", "double_from: N, max: M"),
    ("batch_sizes: {double_from: 8, max: 4}", "max >= double_from"),
    ("batch_sizes: {double_from: 0, max: 4}", "positive integers"),
    ("batch_sizes: {double_from: true, max: 4}", "positive integers"),
    ("batch_sizes: 8", "must be a list"),
    ("models: [{model: vilt-b32-tiny, sweep: {image_size: [64x96]}}]", "at least two"),
    ("models: [{model: vilt-b32-tiny, sweep: [64x96, 128x192]}]", "one key"),
    ("models: [{model: vilt-b32-tiny, sweep: {batch: [1, 2]}}]", "one key"),
    ("models: [{model: vilt-b32-tiny, sweep: {image_size: [64x96, 128x192], text_len: [4, 8]}}]",
     "one key"),
    ("models: [{model: vilt-b32-tiny, text_len: 4, sweep: {text_len: [4, 8]}}]",
     "both set and sweep"),
    ("models: [{model: vilt-b32-tiny, sweep: {image_size: [64x96, big]}}]", "HEIGHTxWIDTH"),
    ("models: [{model: vilt-b32-tiny, sweep: {text_len: [4, -1]}}]", "text_len"),
])
def test_bad_forms_are_one_line_suite_errors(text: str, expected: str) -> None:
    if not text.startswith("models"):
        text = "models: [vilt-b32-tiny]\n" + text
    with pytest.raises(SuiteError) as info:
        parse_suite(text, "mine.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("suite mine.yaml: ")
    assert expected in message


# -- the stop after an out-of-memory batch size ------------------------------------------------


def spec(model: str, batch: int, image_size: tuple[int, int] = (64, 96)) -> CaseSpec:
    return CaseSpec(model=model, batch_size=batch, image_size=image_size, text_len=8,
                    precision="fp32", device="cpu")


def outcome(case: CaseSpec, oom_at: int) -> CaseResult:
    return CaseResult(spec=case, status="oom" if case.batch_size >= oom_at else "ok")


def test_cutoff_drops_larger_batches_of_the_model_after_an_oom() -> None:
    cases = [spec(m, b) for m in ("a", "b") for b in (1, 2, 4, 8)]
    cases.append(spec("a", 8, image_size=(32, 32)))  # another input of 'a': its own limit
    cutoff = OomCutoff()
    ran = []
    for case in cutoff.cases(cases):
        ran.append((case.model, case.batch_size, case.image_size))
        cutoff.note(outcome(case, oom_at=2 if case.model == "a" else 99))
    assert ran == [("a", 1, (64, 96)), ("a", 2, (64, 96)),
                   *[("b", b, (64, 96)) for b in (1, 2, 4, 8)], ("a", 8, (32, 32))]
    assert [(c.model, c.batch_size) for c in cutoff.skipped] == [("a", 4), ("a", 8)]


def test_run_cases_applies_the_cutoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inline, "run_case", lambda case, options: outcome(case, oom_at=4))
    recorded: list[CaseResult] = []
    cases = [spec(m, b) for m in ("a", "b") for b in (1, 2, 4, 8, 16)]
    results = run_cases(cases, RunOptions(), recorded.append)
    assert results == recorded
    assert [(r.spec.model, r.spec.batch_size, r.status) for r in results] == [
        ("a", 1, "ok"), ("a", 2, "ok"), ("a", 4, "oom"),
        ("b", 1, "ok"), ("b", 2, "ok"), ("b", 4, "oom"),
    ]


# -- the token-scaling fit ---------------------------------------------------------------------


def timed(case: CaseSpec, image_tokens: int, ms: float) -> CaseResult:
    stage = StageResult(name="fusion", kind="interaction", parent=None,
                        timing=summarize([ms, ms, ms]), calls=1, flops=0, params=0)
    return CaseResult(spec=case, status="ok", tokens={"image": image_tokens, "text": 40},
                      stages=(stage,))


def test_fit_token_scaling_recovers_the_terms_of_a_sweep() -> None:
    cases = [timed(spec("m", 1, (h, h)), tokens, 2.0 + 0.01 * (tokens + 40)
                   + 1e-5 * (tokens + 40) ** 2)
             for h, tokens in ((32, 200), (64, 960), (96, 2160), (128, 3840))]
    cases.append(timed(spec("other", 1), 10, 1.0))  # one size only: not fitted
    (fit,) = fit_token_scaling(cases)
    assert (fit.model, fit.n) == ("m", (240, 1000, 2200, 3880))
    q = fit.stages["fusion"]
    assert q.a == pytest.approx(2.0, rel=1e-6)
    assert q.b == pytest.approx(0.01, rel=1e-6)
    assert q.c == pytest.approx(1e-5, rel=1e-6)
    table = scaling_table([fit])
    assert "scaling fit: m b1 fp32" in table
    assert "fusion" in table.splitlines()[-1]


def test_a_run_without_a_sweep_has_no_fit() -> None:
    assert fit_token_scaling([timed(spec("m", b), 200, 3.0) for b in (1, 2, 4)]) == []


def test_a_tiny_scaling_run_prints_the_fit(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    suite = tmp_path / "scale.yaml"
    suite.write_text(
        "models:\n"
        "  - {model: vilt-b32, sweep: {image_size: [256x384, 512x768, 768x1152]}}\n"
        "timing: {warmup: 1, min_repeats: 3, min_time_s: 0}\n"
    )
    db = tmp_path / "r.sqlite"
    code = main(["run", "--suite", str(suite), "--size", "tiny", "--device", "cpu",
                 "--no-progress", "--db", str(db)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "scaling fit: vilt-b32-tiny b1 fp32" in out
    assert "fusion.encoder" in out.split("scaling fit:")[1]
    with Store.open(db) as store:
        (fit,) = fit_token_scaling(store.cases(1))
    assert fit.n == (97 + 8, 385 + 8, 865 + 8)
    encoder = fit.stages["fusion.encoder"]
    assert encoder.b + encoder.c > 0  # the encoder's time grows with its tokens
    assert encoder.predict(fit.n[-1]) > encoder.predict(fit.n[0])
