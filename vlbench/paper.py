"""The ViLT paper's published figures, kept as data so reports can show them beside ours.

Source: Wonjae Kim, Bokyung Son, Ildoo Kim, "ViLT: Vision-and-Language Transformer Without
Convolution or Region Supervision", ICML 2021, arXiv 2102.03334 -- Figure 1 (inference time split
by component) and Table 6 (tokens, parameters, FLOPs, time). Times were measured on an NVIDIA P40
GPU (Xeon E5-2650 CPU), batch 1, fp32, averaged over many runs; they are approximate ("~") and
exclude the text embedder, which the paper treats as shared. The paper does not state its FLOP
convention (ours: ``vlbench.results.FLOP_CONVENTION``). Figures are quoted, never asserted: a
report puts them beside our measurements, it does not test them. A case record stores the row and
bar of its model when it is measured (``CaseResult.paper_row`` / ``paper_bar``), so reports show
what was cited then.
"""

from __future__ import annotations

from dataclasses import dataclass

CITATION = (
    "Kim, Son & Kim, ViLT: Vision-and-Language Transformer Without Convolution or Region "
    "Supervision, ICML 2021, arXiv 2102.03334 (Figure 1, Table 6; NVIDIA P40, batch 1, fp32)"
)
CITATION_SHORT = "ViLT paper (Kim, Son & Kim, ICML 2021, arXiv 2102.03334)"
PAPER_DEVICE = "NVIDIA P40"
#: said wherever our FLOPs stand beside the paper's
CONVENTION_UNSTATED = "the paper does not state its convention"

# Report categories: the groups of Figure 1 (a stage's category is stored with it, see
# ``StageResult.category``; ``vlbench.upgrade`` maps the kinds of records stored before).
BACKBONE = "backbone"
REGION_OPS = "region operations"
VISUAL_EMBEDDING = "patch or grid embedding"
TEXT_EMBEDDING = "text embedding"
SINGLE_MODALITY = "single-modality encoders"
INTERACTION = "modality interaction"
HEAD = "head"
CATEGORIES = (
    BACKBONE, REGION_OPS, VISUAL_EMBEDDING, TEXT_EMBEDDING, SINGLE_MODALITY, INTERACTION, HEAD,
)


@dataclass(frozen=True)
class Table6Row:
    """One row of the paper's Table 6; ``preset`` is our preset name (None: not modelled)."""

    model: str
    preset: str | None
    embed: str  # region, grid or linear (the paper's column)
    tokens: str  # image + text, as printed ("36+60"; "?" where the paper leaves it open)
    params_m: float
    gflops: float
    time_ms: float  # approximate ("~") in the paper


TABLE6: tuple[Table6Row, ...] = (
    Table6Row("ViLBERT", "vilbert-base", "region", "36+36", 274.3, 958.1, 900.0),
    Table6Row("VisualBERT", "visualbert", "region", "36+128", 170.3, 425.0, 925.0),
    Table6Row("LXMERT", "lxmert", "region", "36+20", 239.8, 952.0, 900.0),
    Table6Row("UNITER-Base", "uniter-base", "region", "36+60", 154.7, 949.9, 900.0),
    Table6Row("OSCAR-Base", None, "region", "50+35", 154.7, 956.4, 900.0),
    Table6Row("VinVL-Base", None, "region", "50+35", 157.3, 1023.3, 650.0),
    Table6Row("Pixel-BERT-X152", "pixelbert-x152", "grid", "146+?", 144.3, 185.8, 160.0),
    Table6Row("Pixel-BERT-R50", "pixelbert-r50", "grid", "260+?", 94.9, 136.8, 60.0),
    Table6Row("ViLT-B/32", "vilt-b32", "linear", "200+40", 87.4, 55.9, 15.0),
)


@dataclass(frozen=True)
class Figure1Bar:
    """One bar of the paper's Figure 1: milliseconds per report category, and the total."""

    model: str
    preset: str
    parts_ms: dict[str, float]
    total_ms: float


FIGURE1: tuple[Figure1Bar, ...] = (
    Figure1Bar("UNITER-Base", "uniter-base",
               {BACKBONE: 75.0, REGION_OPS: 810.0, INTERACTION: 15.0}, 900.0),
    Figure1Bar("Pixel-BERT-R50", "pixelbert-r50", {BACKBONE: 45.0, INTERACTION: 15.0}, 60.0),
    Figure1Bar("ViLT-B/32", "vilt-b32", {VISUAL_EMBEDDING: 0.4, INTERACTION: 15.0}, 15.0),
)

#: End-to-end ratios the paper states (Section 4.6 and Figure 1): region / patch ~60x,
#: grid / patch ~4x (900 / 15 and 60 / 15).
PAPER_RATIO_END_TO_END = {"region": 60.0, "grid": 4.0}
#: The same ratios for the visual embedders alone, by our arithmetic on Figure 1's parts:
#: (75 + 810) / 0.4 and 45 / 0.4.
PAPER_RATIO_VISUAL = {"region": (75.0 + 810.0) / 0.4, "grid": 45.0 / 0.4}


def table6_row(preset: str) -> Table6Row | None:
    """The paper's Table 6 row for one of our presets (exact name; tiny twins have none)."""
    return next((row for row in TABLE6 if row.preset == preset), None)


def figure1_bar(preset: str) -> Figure1Bar | None:
    """The paper's Figure 1 bar for one of our presets (exact name), or None."""
    return next((bar for bar in FIGURE1 if bar.preset == preset), None)
