"""Parity with the reference implementations (Hugging Face ``transformers``) at full size.

Our models are written from the papers, so their parameter counts, FLOPs and speed are only
credible next to an independent implementation of the same architecture. This package is the one
place where a preset is translated into the reference's config (one module per family:
``vilt_clip``, ``lxmert_visualbert``, ``blip``; ``families`` picks one) and where our submodules
are paired with theirs (``submodule_pairs``); ``tests/test_parity*.py`` import both, and this
script prints the comparison at full size, timing both sides per stage through vlbench's own
measurement (``vlbench.measure.run_case``: ours as the preset, theirs wrapped in its stage map,
``architectures.hf``), the same path as ``vlbench run --models vilt-b32,hf-vilt``:

    python -m benchmarks.parity [--device auto|cpu|cuda] [--models vilt-b32,clip-vit-b32]
                                [--repeats N] [--warmup N]

``--models blip-base`` compares our BLIP's forward (the ITM path) with
``BlipForImageTextRetrieval(use_itm_head=True)``.

LXMERT and VisualBERT take region features, not images, so ``--models lxmert,visualbert``
compares their ``-precomputed`` presets (the reference has no detector to compare with). These
transformers implementations are eager-only (hand-written softmax(QK^T)V; asking for SDPA raises),
so they run with ``attn_implementation="eager"``; ours run SDPA, and the CPU SDPA FLOP formula is
registered so both sides count the same attention matmuls.

Weights are random (timing and counts do not depend on them); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from architectures import Preset, VLModel, build_model
from architectures.hf import STAGE_MAPS, HFModel
from feature_extractors import PrecomputedRegionsConfig
from vlbench.context import ModelIdentity, Subject
from vlbench.measure import run_case
from vlbench.options import MeasureOptions, TimingOptions
from vlbench.results import CaseResult, CaseSpec

from .common import (
    as_preset,
    count_flops,
    count_params,
    disable_tf32,
    pair_counts,
    unmapped_by_side,
)
from .families import (
    parity_preset,
    reference_config,
    reference_inputs,
    reference_model,
    submodule_pairs,
)

DEFAULT_MODELS = ("vilt-b32", "clip-vit-b32")


def build_pair(
    preset: str | Preset, device: torch.device, seed: int = 0
) -> tuple[VLModel, nn.Module]:
    """Ours and the reference, random init, eval mode, on ``device``."""
    torch.manual_seed(seed)
    ours = build_model(preset).to(device).eval()
    theirs = reference_model(preset).to(device).eval()
    return ours, theirs


def _describe_input(p: Preset, ours: VLModel) -> str:
    if isinstance(p.visual, PrecomputedRegionsConfig):
        n = ours.num_tokens(p.image_size, p.text_len)["image"]
        return f"{n} precomputed regions"
    h, w = p.image_size
    return f"{h}x{w} image"


def time_pair(p: Preset, ours: VLModel, theirs: nn.Module, device: torch.device,
              timing: TimingOptions) -> tuple[CaseResult, CaseResult]:
    """Both sides measured per stage as a run measures a case, on the same input tensors
    (``run_case`` rebuilds ours from the preset with the same seed and inputs)."""
    spec = CaseSpec(model=p.name, batch_size=1, image_size=tuple(p.image_size),
                    text_len=p.text_len, precision="fp32", device=str(device))
    options = MeasureOptions(timing=timing)
    mine = run_case(spec, options)
    wrapped = HFModel(theirs, STAGE_MAPS.get(type(theirs).__name__), name=f"reference:{p.name}")
    visual, ids, mask = ours.example_inputs(1, p.image_size, p.text_len, device=device)
    identity = ModelIdentity(embedder=wrapped.embedder_name, fusion=wrapped.fusion_name,
                             tokens=ours.num_tokens(p.image_size, p.text_len))
    subject = Subject(wrapped, reference_inputs(p, visual, ids, mask), tuple(wrapped.stages()),
                      identity)
    ref = run_case(dataclasses.replace(spec, model=f"reference:{p.name}"), options,
                   subject=subject)
    for side, result in (("ours", mine), ("theirs", ref)):
        if result.status != "ok":
            raise RuntimeError(f"{p.name} ({side}): {result.status}: {result.message}")
    return mine, ref


def _stage_lines(mine: CaseResult, ref: CaseResult) -> list[str]:
    """Per stage, both sides' medians (a stage only one side maps shows '-')."""
    a = {s.name: s.timing.median_ms for s in mine.stages if s.timing}
    b = {s.name: s.timing.median_ms for s in ref.stages if s.timing}
    names = [*a, *(n for n in b if n not in a)]
    lines = []
    for n in names:
        ratio = f"{a[n] / b[n]:13.3f}" if n in a and n in b and b[n] > 0 else ""
        ms = [f"{side[n]:.2f}" if n in side else "-" for side in (a, b)]
        lines.append(f"   {n:22}{ms[0]:>10}{ms[1]:>14}{ratio}")
    return lines


def compare(name: str, device: torch.device, repeats: int, warmup: int) -> dict[str, float]:
    """Print parameters, FLOPs and latency (end to end and per stage) both sides for one
    preset; return the ratios."""
    p = as_preset(name)
    ours, theirs = build_pair(p, device)
    pairs = submodule_pairs(p)
    bad = [(lbl, a, b) for lbl, a, b in pair_counts(ours, theirs, pairs) if a != b]
    rest_ours, rest_theirs = unmapped_by_side(ours, theirs, pairs)
    po, pt = count_params(ours), count_params(theirs)
    visual, ids, mask = ours.example_inputs(1, p.image_size, p.text_len, device=device)
    kwargs = reference_inputs(p, visual, ids, mask)
    with torch.inference_mode():
        fo, _ = count_flops(lambda: ours(visual, ids, mask))
        ft, _ = count_flops(lambda: theirs(**kwargs))
    timing = TimingOptions(warmup=warmup, min_repeats=repeats, max_repeats=max(repeats, 500),
                           min_time_s=0.0)
    mine, ref = time_pair(p, ours, theirs, device, timing)
    mo, mt = mine.end_to_end.median_ms, ref.end_to_end.median_ms
    attn = ref.settings.get("attn_implementation")
    print(f"== {name}  ({_describe_input(p, ours)}, {p.text_len} text tokens, batch 1, fp32, "
          f"{device})")
    print(f"   reference: transformers {type(theirs).__name__}"
          + (f" (attention: {attn}; ours: SDPA)" if attn else ""))
    print(f"   {'':14}{'ours':>14}{'theirs':>14}{'ours/theirs':>13}")
    print(f"   {'params (M)':14}{po / 1e6:14.3f}{pt / 1e6:14.3f}{po / pt:13.4f}")
    print(f"   {'GFLOPs':14}{fo / 1e9:14.3f}{ft / 1e9:14.3f}{fo / ft:13.4f}")
    print(f"   {'median ms':14}{mo:14.2f}{mt:14.2f}{mo / mt:13.3f}"
          f"   (IQR {mine.end_to_end.iqr_ms:.2f} / {ref.end_to_end.iqr_ms:.2f} ms, "
          f"n={mine.end_to_end.n} / {ref.end_to_end.n})")
    print(f"   {'stage (ms)':22}{'ours':>10}{'theirs':>14}{'ours/theirs':>13}")
    print("\n".join(_stage_lines(mine, ref)))
    if bad:
        for lbl, a, b in bad:
            print(f"   MISMATCH {lbl}: ours {a} vs theirs {b}")
    else:
        print(f"   submodule pairs: all {len(pairs)} equal in parameters")
    for side, rest in (("ours", rest_ours), ("theirs", rest_theirs)):
        if rest:
            print(f"   unpaired {side}: {sum(rest.values()):,} ("
                  + ", ".join(f"{n} {k:,}" for n, k in rest.items()) + ")")
    return {"params": po / pt, "flops": fo / ft, "latency": mo / mt}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.parity",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help="comma-separated presets (ViLT, CLIP, LXMERT, VisualBERT or BLIP "
                         "family; a region preset means its -precomputed twin)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        ap.error("--repeats must be >= 1 and --warmup >= 0")
    dev = args.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(dev)
    disable_tf32()
    targets: list[tuple[str, str]] = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        try:  # refuse every unusable name before spending minutes on the others
            targets.append((name, parity_preset(name)))
            reference_config(targets[-1][1])
        except KeyError as err:  # unknown name: the registry's one-line message
            ap.error(str(err).strip("'\""))
        except ValueError as err:  # a preset the references cannot express
            ap.error(f"{targets[-1][1]}: {err}")
    for name, target in targets:
        if target != name:
            print(f"({name}: comparing {target}; the reference takes region features)")
        compare(target, device, args.repeats, args.warmup)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
