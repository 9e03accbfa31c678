"""Published sizes of the full-size presets, built on the meta device (no memory, no init).

Sources: ../shared/REFERENCE.md (which figures are firm) and the ViLT paper's Table 6 (Kim, Son &
Kim, ICML 2021, arXiv 2102.03334), whose parameter counts leave out the shared text embedding
(its footnote 9). Table 6 is imported from ``vlbench.paper`` (one copy, shared with the reports).
Only firm figures are asserted: UNITER = BERT without its word table, and ViLT-B/32 = transformers'
ViltModel less its text embeddings. CLIP ViT-B/32 151.28 M and ViT-B/16 149.62 M (open_clip's
profile) are asserted in tests/test_architectures.py::test_clip_parameter_counts, and parameter
for parameter against transformers in tests/test_parity.py; not repeated here. Table 6's region
and grid rows are printed beside ours with the gap explained, never asserted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import torch
from torch import nn

from architectures import PRESETS, VLModel, build_model
from architectures.presets import BERT_BASE
from vlbench.paper import CITATION_SHORT, TABLE6

FULL_SIZE = [name for name in PRESETS.names() if not name.endswith("-tiny")]
PAPER_M = {row.preset: row.params_m for row in TABLE6 if row.preset is not None}
BERT_LARGE = (1024, 24, 16, 4096)
CASED_VOCAB = 28_996  # UNITER's (BERT-cased) vocabulary


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta_model(preset: object) -> VLModel:
    with torch.device("meta"):
        return build_model(preset)  # type: ignore[arg-type]


@dataclass(frozen=True)
class BertCounts:
    """BERT's parameters by part, from its layer shapes (Devlin et al. 2019)."""

    word: int
    other_embeddings: int  # positions, token types, LayerNorm
    encoder: int
    pooler: int

    @property
    def without_word(self) -> int:
        return self.other_embeddings + self.encoder + self.pooler


def bert_counts(*, vocab: int, width: int, depth: int, mlp: int, positions: int = 512,
                types: int = 2) -> BertCounts:
    def lin(a: int, b: int) -> int:
        return a * b + b

    layer = 4 * lin(width, width) + lin(width, mlp) + lin(mlp, width) + 2 * 2 * width
    return BertCounts(word=vocab * width, other_embeddings=(positions + types) * width + 2 * width,
                      encoder=depth * layer, pooler=lin(width, width))


@pytest.mark.parametrize(("name", "bert", "published_m"), [
    ("uniter-base", BERT_BASE, 86.04),
    ("uniter-large", BERT_LARGE, 303.89),
])
def test_uniter_is_bert_without_its_word_table(
    name: str, bert: tuple[int, int, int, int], published_m: float
) -> None:
    """REFERENCE.md: UNITER's published 86 M / 303 M are BERT-base / -large without the cased
    28,996-row word table, 86.04 M / 303.89 M. Ours (fusion + text embedder - word table) is that
    plus exactly 4 x width: our modality table and our final LayerNorm."""
    width, depth, _, mlp = bert
    ref = bert_counts(vocab=CASED_VOCAB, width=width, depth=depth, mlp=mlp)
    # the published figure is given to 0.01 M, so it is met within half of that
    assert abs(ref.without_word / 1e6 - published_m) < 0.005, ref.without_word
    # BERT's pooler is in the published figure (and in our fusion): 590,592 / 1,049,600
    assert ref.pooler == {768: 590_592, 1024: 1_049_600}[width]

    model = meta_model(name)
    fusion, text = model.fusion, model.text
    word = text.word.weight.numel()
    assert word == ref.word
    ours = n_params(fusion) + n_params(text) - word
    # part by part: positions + token types + LayerNorm in our text embedder as in BERT's; the
    # same 12 / 24 layers (pre-LN here, post-LN in BERT: two LayerNorms per layer either way);
    # the same pooler; no width adapters (the regions arrive at the fusion's width)
    assert n_params(text) - word == ref.other_embeddings
    assert n_params(fusion.encoder) == ref.encoder
    assert n_params(fusion.pooler) == ref.pooler
    assert n_params(fusion.text_in) == n_params(fusion.vision_in) == 0
    # The residual, exactly: a 2-row modality table (ViLT-style, in addition to the text
    # embedder's own 2-row token-type table; UNITER reuses its token-type table for images) and
    # the final LayerNorm a pre-LN stack needs (BERT's post-LN layers end normalised): 2 x width
    # each, 3,072 (base) / 4,096 (large).
    residual = ours - ref.without_word
    assert residual == n_params(fusion.modality) + n_params(fusion.norm) == 4 * width


def test_bert_closed_form_is_transformers_bert() -> None:
    """The closed form above is BertModel's own count (with pooler), base and large."""
    transformers = pytest.importorskip("transformers")
    for width, depth, heads, mlp in (BERT_BASE, BERT_LARGE):
        config = transformers.BertConfig(vocab_size=CASED_VOCAB, hidden_size=width,
                                         num_hidden_layers=depth, num_attention_heads=heads,
                                         intermediate_size=mlp)
        with torch.device("meta"):
            bert = transformers.BertModel(config)
        ref = bert_counts(vocab=CASED_VOCAB, width=width, depth=depth, mlp=mlp)
        assert n_params(bert) == ref.word + ref.without_word


def test_vilt_b32_without_text_is_transformers_figure() -> None:
    model = meta_model("vilt-b32")
    ours_m = (n_params(model) - n_params(model.text)) / 1e6
    # Firm (REFERENCE.md): transformers' ViltModel less its text embeddings is 88.1 M; ours is
    # that, parameter for parameter (tests/test_parity.py). The figure is given to 0.1 M, so
    # within 0.05 M.
    assert abs(ours_m - 88.1) < 0.05, ours_m
    paper = PAPER_M["vilt-b32"]  # 87.4
    # The paper's Table 6 says 87.4 M: we are 0.8% above it, stated, not hidden (88.12 M).
    assert round((ours_m / paper - 1) * 100, 1) == 0.8
    # Our reading of its footnote 9 (REFERENCE.md): the 12 transformer blocks (85.05 M) plus
    # the patch projection (2.36 M) give 87.41 M, so the paper leaves out the pooler (0.59 M),
    # the image position table (0.11 M), the [CLS] token, modality table and final LayerNorm.
    assert round((n_params(model.fusion.encoder) + n_params(model.visual.proj)) / 1e6, 1) == paper


# Why each of Table 6's figures differs from ours without the text embedding. None is asserted:
# REFERENCE.md marks them unreconciled or dependent on a choice the paper does not state.
GAPS = {
    "vilbert-base": "+0.4%: R101-C4 detector 63.65 M + region embedding 2.11 M + fusion "
                    "209.76 M; ViLBERT's checkpoint also has 11.02 M of q_dense layers no forward "
                    "runs (left out of ours), which would widen the gap; unreconciled",
    "visualbert": "ours uses the X152-32x8d FPN detector (backbone 120.32 M); with 32x4d "
                  "(57.90 M, the width Table 6's 'X152 = 60 M' fits) it is 195.35 M, still "
                  "25 M above; unreconciled",
    "lxmert": "REFERENCE.md: does not reconcile with transformers' LxmertModel (207.9 M, equal "
              "to ours parameter for parameter, tests/test_parity_regions.py) plus a ~65 M "
              "detector; reported, not asserted",
    "uniter-base": "-2.5%: detector 63.66 M + region embedding 1.58 M + fusion 85.65 M "
                   "(UNITER's 86.04 M + 3,072, asserted above); the paper implies a 68.7 M "
                   "visual side; unreconciled",
    "pixelbert-x152": "ours uses ResNeXt-152 32x8d (120.32 M); with 32x4d (57.90 M) it is "
                      "145.12 M, 0.6% above the paper: Table 6 fits 32x4d (REFERENCE.md)",
    "pixelbert-r50": "R50 trunk 23.51 M + 2048->768 adapter 1.57 M + BERT-base stack 85.65 M; "
                     "the paper's 94.9 M leaves 71.4 M beside a 23.5 M R50, less than one "
                     "12-layer encoder (85.05 M); unreconciled",
    "vilt-b32": "+0.8%: pooler and image position table (asserted above)",
}


def test_full_size_presets_beside_table6() -> None:
    """Print every full-size preset's parameters (M) by part, beside Table 6's figure, which
    leaves out the text embedding (footnote 9): compare it with 'w/o text'."""
    assert set(GAPS) == set(PAPER_M), "every Table 6 row we model has its gap explained"
    rows = [f"\n{'preset':28}{'total':>9}{'visual':>9}{'text':>8}{'fusion':>9}{'w/o text':>10}"
            f"{'Table 6':>9}   ({CITATION_SHORT})"]
    for name in FULL_SIZE:
        model = meta_model(name)
        total, visual = n_params(model), n_params(model.visual)
        text, fusion = n_params(model.text), n_params(model.fusion)
        assert total == visual + text + fusion  # built without a task head
        paper = PAPER_M.get(name)
        rows.append(f"{name:28}{total / 1e6:9.2f}{visual / 1e6:9.2f}{text / 1e6:8.2f}"
                    f"{fusion / 1e6:9.2f}{(total - text) / 1e6:10.2f}"
                    + (f"{paper:9.1f}   {GAPS[name]}" if paper is not None else f"{'-':>9}"))
    for name in ("visualbert", "pixelbert-x152"):  # the width Table 6's X152 figures fit
        p = PRESETS.get(name)
        model = meta_model(replace(p, name=f"{name} (x152-32x4d)",
                                   visual=replace(p.visual, backbone="x152-32x4d")))
        rows.append(f"{name + ' (x152-32x4d)':28}{n_params(model) / 1e6:9.2f}"
                    f"{n_params(model.visual) / 1e6:9.2f}{n_params(model.text) / 1e6:8.2f}"
                    f"{n_params(model.fusion) / 1e6:9.2f}"
                    f"{(n_params(model) - n_params(model.text)) / 1e6:10.2f}"
                    f"{PAPER_M[name]:9.1f}")
    print("\n".join(rows))
