"""``vlbench list`` and ``vlbench profile``: what exists, and what a model costs without timing."""

from __future__ import annotations

import argparse
import json
from typing import Any

from architectures import (
    FUSIONS,
    HF_PRESETS,
    PRESETS,
    pair_matrix,
    region_backend,
    resolve_preset,
)
from architectures.hf import STAGE_MAPS
from feature_extractors import EMBEDDERS

from ..profile import profile_model
from ..store_schema import finite
from ..suites import builtin_suites, load_suite


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "models":
        for name in PRESETS:
            p = PRESETS.get(name)
            h, w = p.image_size
            # --region-backend detectron2 needs detectron2 installed (a one-line error says how)
            backends = "  [region backends: vlbench, detectron2]" if region_backend(p) else ""
            print(f"{name:<30} {h}x{w} + {p.text_len} text  {p.description}{backends}")
    elif args.what == "embedders":
        for name in EMBEDDERS:
            e = EMBEDDERS.get(name)
            print(f"{name:<12} {e.modality:<7} {e.description}")
        for prefix, about in EMBEDDERS.families().items():
            print(f"{prefix + ':<name>':<12} {'visual':<7} {about}, e.g. "
                  f"'vlbench run --compose {prefix}:convnext_base+single-stream'")
    elif args.what == "fusions":
        for name in FUSIONS:
            print(f"{name:<18} {FUSIONS.get(name).description}")
    elif args.what == "pairs":
        _print_pairs()
    elif args.what == "hf":
        _print_hf()
    else:
        for name in builtin_suites():
            print(f"{name:<10} {load_suite(name).description}")
    return 0


def _print_pairs() -> None:
    """The embedder x fusion matrix: every cell is a model ('vlbench run --compose V+F');
    published presets are listed in their cell."""
    matrix = pair_matrix()
    fusions = FUSIONS.names()
    visuals = sorted({v for v, _ in matrix})
    cells = {k: ", ".join(v) or "-" for k, v in matrix.items()}
    widths = [max(len(f), *(len(cells[(v, f)]) for v in visuals)) for f in fusions]
    print(f"{'':<12} " + " | ".join(f"{f:<{w}}" for f, w in zip(fusions, widths, strict=True)))
    for v in visuals:
        row = " | ".join(f"{cells[(v, f)]:<{w}}" for f, w in zip(fusions, widths, strict=True))
        print(f"{v:<12} {row}")
    print("\nany cell runs as EMBEDDER+FUSION, e.g. 'vlbench run --compose patch+two-stream'; "
          "'--size tiny' for test widths")
    for prefix, about in EMBEDDERS.families().items():
        print(f"{prefix}:<name> is an embedder too ({about}): "
              f"'vlbench run --compose {prefix}:eva02_base_patch14_224+dual-encoder'")


def _print_hf() -> None:
    """The hf- presets (transformers' own classes) and the classes that have a stage map."""
    for name in HF_PRESETS:
        p = HF_PRESETS.get(name)
        h, w = p.image_size
        twin = f" (input of {p.twin})" if p.twin else ""
        print(f"{name:<24} {h}x{w} + {p.text_len} text{twin}  {p.description}")
    print(f"\nstage maps (transformers classes): {', '.join(STAGE_MAPS.names())}")
    print("--hf-dir PATH builds an hf- model from a save_pretrained directory; a plugin adds a "
          "class with architectures.hf.register_stage_map")


def cmd_profile(args: argparse.Namespace) -> int:
    name = resolve_preset(args.model, args.size).name
    profile = profile_model(name, image_size=args.image_size, text_len=args.text_len,
                            batch_size=args.batch_size, head=args.head,
                            region_backend=args.region_backend, d2_config=args.d2_config,
                            d2_weights=args.d2_weights)
    if args.format == "json":
        print(json.dumps(finite(profile), indent=2, allow_nan=False))
    else:
        print("\n".join(_profile_lines(profile)))
    return 0


def _profile_lines(profile: dict[str, Any]) -> list[str]:
    h, w = profile["image_size"]
    tokens = profile["tokens"]
    lines = [f"{profile['model']}: batch {profile['batch_size']}, {h}x{w} "
             f"({tokens['image']} image tokens) + {profile['text_len']} text tokens; "
             f"FLOPs: {profile['flop_convention']}",
             f"{'stage':<24} {'kind':<16} {'params (M)':>11} {'GFLOPs':>10}  workload"]
    for name, s in profile["stages"].items():
        label = ("  " if s["parent"] else "") + name
        work = ", ".join(f"{k} {v}" for k, v in s["workload"].items()) if s["parent"] else ""
        lines.append(f"{label:<24} {s['kind']:<16} {s['params'] / 1e6:>11.2f} "
                     f"{s['flops'] / 1e9:>10.2f}  {work}")
    lines.append(f"{'total':<24} {'':<16} {profile['params_total'] / 1e6:>11.2f} "
                 f"{profile['flops_total'] / 1e9:>10.2f}")
    if profile["profiled_on"] != "meta":
        lines.append("profiled by one forward on the CPU (data-dependent stages (host_sync), or "
                     "a transformers model)")
    return lines
