"""Any visual embedder with any fusion scheme, at tiny size: the 3x3 matrix (plus precomputed)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from architectures import FUSIONS, PRESETS, build_model, compose, pair_matrix, resolve_preset
from feature_extractors import EMBEDDERS, UnknownNameError
from vlbench.cli import main

VISUALS = [n for n in EMBEDDERS if EMBEDDERS.get(n).modality == "visual"]
PAIRS = [f"{v}+{f}" for v in VISUALS for f in FUSIONS]


def test_the_matrix_covers_patch_grid_region_by_three_fusions():
    assert {"patch", "grid", "region"} <= set(VISUALS)
    assert {"single-stream", "two-stream", "dual-encoder"} <= set(FUSIONS)
    matrix = pair_matrix()
    assert set(matrix) == {(v, f) for v in VISUALS for f in FUSIONS}
    assert matrix[("patch", "single-stream")] == ["vilt-b32"]
    assert set(matrix[("region", "two-stream")]) == {"vilbert-base", "lxmert"}


@pytest.mark.parametrize("pair", PAIRS)
def test_every_pair_builds_runs_and_fires_its_stages(pair):
    preset = resolve_preset(pair, "tiny")
    assert preset.name == f"{pair}-tiny"
    torch.manual_seed(0)
    model = build_model(preset).eval()
    calls: Counter[str] = Counter()
    for stage in model.stages():
        for path in stage.modules:  # a named set of modules: each reports to its stage
            model.get_submodule(path).register_forward_hook(
                lambda *_, n=stage.name: calls.update([n]))
    inputs = model.example_inputs(2, preset.image_size, preset.text_len)
    with torch.inference_mode():
        out = model(*inputs)
    assert out.pooled.shape == (2, model.fusion.out_dim)
    assert torch.isfinite(out.pooled).all()
    assert set(calls) == {s.name for s in model.stages()}
    # the embedder's tokens come out at the fusion's visual width, or the fusion adapts them
    assert model.visual.out_dim in (getattr(preset.fusion, "width", None),
                                    getattr(preset.fusion, "vision_width", None), 2048)


def test_pair_defaults_are_published_sizes():
    vilbert_like = compose("region", "two-stream")
    assert vilbert_like.fusion == PRESETS.get("vilbert-base").fusion  # ViLBERT-base layout
    assert vilbert_like.visual.width == 1024  # tokens at the visual stream's width
    assert vilbert_like.image_size == (800, 1333) and vilbert_like.text_len == 40
    clip_like = compose("patch", "dual-encoder")
    assert clip_like.fusion == PRESETS.get("clip-vit-b32").fusion
    assert clip_like.visual.width == 768 and clip_like.image_size == (384, 640)
    with torch.device("meta"):
        patch_two = build_model("patch+two-stream")
    assert patch_two.visual.out_dim == 1024


def test_size_tiny_maps_presets_to_their_twins():
    assert resolve_preset("vilt-b32", "tiny").name == "vilt-b32-tiny"
    assert resolve_preset("vilt-b32-tiny", "tiny").name == "vilt-b32-tiny"
    assert resolve_preset("patch+two-stream-tiny").name == "patch+two-stream-tiny"


@pytest.mark.parametrize(("name", "match"), [
    ("patch+nope", "unknown fusion 'nope'; valid: align-fuse, dual-encoder, modality-experts, "
                   "single-stream, two-stream"),
    ("nope+two-stream", "unknown embedder 'nope'"),
    ("bert-text+two-stream", "unknown visual embedder 'bert-text'; valid:"),
    ("no-such-model", "EMBEDDER+FUSION"),
])
def test_unknown_pairs_are_one_line_errors(name, match):
    with pytest.raises(UnknownNameError) as err:
        resolve_preset(name)
    assert match in str(err.value) and "\n" not in str(err.value)


def test_cli_list_pairs_run_compose_and_profile(tmp_path, capsys):
    assert main(["list", "pairs"]) == 0
    out = capsys.readouterr().out
    assert "vilbert-base" in out and "two-stream" in out and "region" in out
    db = tmp_path / "r.sqlite"
    assert main(["run", "--compose", "patch+two-stream,grid+dual-encoder", "--size", "tiny",
                 "--repeats", "2", "--min-time", "0", "--warmup", "1", "--no-progress",
                 "--db", str(db)]) == 0
    table = capsys.readouterr().out
    assert "patch+two-stream-tiny" in table and "grid+dual-encoder-tiny" in table
    assert main(["profile", "region+single-stream", "--size", "tiny", "--format", "json"]) == 0
    assert '"model": "region+single-stream-tiny"' in capsys.readouterr().out
    assert main(["run", "--compose", "patch+nope", "--db", str(db)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown fusion 'nope'" in err[0]
