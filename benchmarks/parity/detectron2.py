"""Parity of our region detector (torchvision parts) with the same detector on detectron2.

Bottom-up attention's Visual Genome detector (R101-C4, Caffe stem, RPN 1024->512, anchors
64-512, RoIPool 14x14, res5 head at stride 1 / dilation 2, 1601 classes, attribute head, 300
proposals, per-class NMS over 1600 classes, 36 boxes) built twice, random weights, and compared
part by part: parameters, FLOPs per stage, workload, and per-stage latency with the two
detectors' forwards interleaved in one run (drift hits both alike):

    python -m benchmarks.parity.detectron2 [--device auto|cpu|cuda] [--size tiny|full]
                                           [--repeats N] [--warmup N] [--head c4|fpn]

Counting rule, both sides: a parameter is a learned tensor of the network (conv, linear and
embedding weights and biases, and every norm layer's scale and shift: torch's BatchNorm affine,
Caffe's Scale layers; detectron2's ``FrozenBatchNorm2d`` keeps them as buffers and the backend
turns them into frozen parameters); running statistics are not. Differences by design:
``bbox_pred`` regresses 4 x 1601 boxes on our side (the Caffe prototxt's 6404, background
included) and 4 x 1600 on detectron2's (8,196 parameters, 16,384 FLOPs per proposal);
``boxes_kept_nms`` is an outcome of random scores, not work (every box enters NMS on both sides).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from feature_extractors import (
    TINY_REGIONS,
    Detectron2RegionsConfig,
    ImageBatch,
    RegionFeaturesConfig,
    build_embedder,
    declared_stages,
)
from vlbench.timing import StageHooks, time_end_to_end

#: (label, our module paths, detectron2's module paths), per head
PARTS = {
    "c4": (("backbone (to res4)", ("backbone",), ("backbone",)),
           ("rpn", ("rpn",), ("rpn",)),
           ("box head: res5", ("box_head.res5",), ("box_head.head",)),
           ("box head: cls_score", ("box_head.predictor.cls_score",),
            ("box_head.predictor.cls_score",)),
           ("box head: bbox_pred", ("box_head.predictor.bbox_pred",),
            ("box_head.predictor.bbox_pred",)),
           ("box head: attributes", ("box_head.attributes",), ("box_head.attributes",)),
           ("embed", ("embed",), ("embed",))),
    "fpn": (("backbone (to res5)", ("backbone",), ("backbone",)),
            ("fpn", ("fpn",), ("fpn",)),
            ("rpn", ("rpn",), ("rpn",)),
            ("box head: fc6, fc7", ("box_head.fc6", "box_head.fc7"), ("box_head.head",)),
            ("box head: cls_score", ("box_head.predictor.cls_score",),
             ("box_head.predictor.cls_score",)),
            ("box head: bbox_pred", ("box_head.predictor.bbox_pred",),
             ("box_head.predictor.bbox_pred",)),
            ("box head: attributes", ("box_head.attributes",), ("box_head.attributes",)),
            ("embed", ("embed",), ("embed",))),
}
#: workload keys that are outcomes of random scores rather than work done
OUTCOMES = ("boxes_kept_nms",)


def parity_config(size: str, head: str = "c4") -> tuple[RegionFeaturesConfig, tuple[int, int]]:
    """The detector compared (with its attribute head, as the VG detector has) and its input."""
    if size == "tiny":
        return replace(TINY_REGIONS, head=head, attributes=True), (128, 160)
    return RegionFeaturesConfig(head=head, attributes=True), (800, 1333)


def build_pair(config: RegionFeaturesConfig, device: torch.device | str = "cpu", seed: int = 0
               ) -> tuple[nn.Module, nn.Module]:
    """Ours (torchvision parts) and detectron2's, random init, eval mode, on ``device``."""
    torch.manual_seed(seed)
    ours = build_embedder(config).to(device).eval()
    torch.manual_seed(seed)
    theirs = build_embedder(Detectron2RegionsConfig.from_regions(config)).to(device).eval()
    return ours, theirs


def example_images(module: nn.Module, image_size: tuple[int, int], device: torch.device | str,
                   seed: int = 1) -> ImageBatch:
    pixels = torch.randn(1, 3, *image_size, generator=torch.Generator().manual_seed(seed))
    batch = ImageBatch.from_images(list(pixels), size_divisibility=module.size_divisibility)
    return batch.to(device)


def count_params(module: nn.Module, paths: Sequence[str]) -> int:
    """Parameters of the named submodules (absent ones count 0), shared ones once."""
    unique = {}
    for path in paths:
        try:
            sub = module.get_submodule(path)
        except AttributeError:
            continue
        unique.update({id(p): p.numel() for p in sub.parameters()})
    return sum(unique.values())


def param_rows(ours: nn.Module, theirs: nn.Module, head: str) -> list[tuple[str, int, int]]:
    rows = [(label, count_params(ours, a), count_params(theirs, b))
            for label, a, b in PARTS[head]]
    total = ("total", count_params(ours, [""]), count_params(theirs, [""]))
    return [r for r in rows if r[1] or r[2]] + [total]


def stage_flops(module: nn.Module, run: Callable[[], object]) -> dict[str, int]:
    """FLOPs per declared stage (and in total) of one forward."""
    with FlopCounterMode(display=False) as counter:
        run()
    counts, root = counter.get_flop_counts(), type(module).__name__
    out = {s.name: int(sum(counts.get(f"{root}.{s.name}", {}).values()))
           for s in declared_stages(module)}
    return {**out, "total": int(counter.get_total_flops())}


def _median(samples: Sequence[float]) -> float:
    ordered = sorted(samples)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def interleaved_stage_ms(ours: nn.Module, theirs: nn.Module, images: ImageBatch,
                         device: torch.device, *, repeats: int, warmup: int
                         ) -> tuple[dict[str, float], dict[str, float]]:
    """Median ms per stage (and the whole hooked forward, "forward"), the two forwards
    alternating and taking turns to go first."""
    sides = [(ours, StageHooks(ours, declared_stages(ours), device), {}),
             (theirs, StageHooks(theirs, declared_stages(theirs), device), {})]
    for _ in range(warmup):
        for module, _, _ in sides:
            module(images)
    for i in range(repeats):
        for module, hooks, samples in (sides if i % 2 == 0 else sides[::-1]):
            with hooks:
                forward_ms = time_end_to_end(lambda m=module: m(images), device)
                timed = hooks.collect()
            timed["forward"] = (forward_ms, 1)
            for name, (ms, _) in timed.items():
                samples.setdefault(name, []).append(ms)
    return ({n: _median(v) for n, v in sides[0][2].items()},
            {n: _median(v) for n, v in sides[1][2].items()})


def d2_trunk_name(ours: str) -> str | None:
    """A torchvision ResNet parameter or buffer name -> detectron2's (None: no counterpart).

    ``layer3.0.bn2.weight`` -> ``res4.0.conv2.norm.weight``; ``conv1`` / ``bn1`` -> the stem;
    without the ``layerK.`` prefix (a res5 head) the block index is kept as is."""
    if ours.endswith("num_batches_tracked"):
        return None
    name = re.sub(r"^layer(\d)\.", lambda m: f"res{int(m.group(1)) + 1}.", ours)
    name = re.sub(r"^conv1\.", "stem.conv1.", name)
    name = re.sub(r"^bn1\.", "stem.conv1.norm.", name)
    name = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", name)
    name = name.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
    return name


def copy_trunk(ours: nn.Module, theirs: nn.Module) -> None:
    """Copy a torchvision trunk's weights and statistics into detectron2's twin."""
    target = {**dict(theirs.named_parameters()), **dict(theirs.named_buffers())}
    with torch.no_grad():
        for name, tensor in (*ours.named_parameters(), *ours.named_buffers()):
            mapped = d2_trunk_name(name)
            if mapped is not None:
                target[mapped].copy_(tensor)


def _print_rows(title: str, rows: Sequence[tuple[str, float, float]], fmt: str) -> None:
    print(f"\n{title}")
    print(f"   {'':26}{'ours':>16}{'detectron2':>16}{'ours/theirs':>13}")
    for label, a, b in rows:
        ratio = f"{a / b:13.4f}" if b else f"{'-':>13}"
        print(f"   {label:26}{a:16{fmt}}{b:16{fmt}}{ratio}")


def compare(size: str, head: str, device: torch.device, repeats: int, warmup: int) -> None:
    config, image_size = parity_config(size, head)
    ours, theirs = build_pair(config, device)
    images = example_images(ours, image_size, device)
    print(f"== bottom-up attention {config.backbone.upper()}-{head.upper()}, input "
          f"{image_size[0]}x{image_size[1]} (tensor {tuple(images.tensor.shape[-2:])}), batch 1, "
          f"fp32, {device}; {config.num_classes - 1} classes, {config.post_nms_top_n} proposals")
    _print_rows("parameters", param_rows(ours, theirs, head), ",.0f")
    with torch.inference_mode():
        fo = stage_flops(ours, lambda: ours(images))
        ft = stage_flops(theirs, lambda: theirs(images))
        wo, wt = dict(ours.last_workload), dict(theirs.last_workload)
        to, tt = interleaved_stage_ms(ours, theirs, images, device, repeats=repeats,
                                      warmup=warmup)
    _print_rows("GFLOPs per stage", [(n, fo[n] / 1e9, ft.get(n, 0) / 1e9) for n in fo], ".3f")
    _print_rows("workload", [(k, wo[k], wt.get(k, 0)) for k in wo], ",.0f")
    print(f"   ({', '.join(OUTCOMES)}: an outcome of random scores, not work)")
    _print_rows(f"median ms per stage, interleaved (n={repeats})",
                [(n, to[n], tt.get(n, float("nan"))) for n in to], ".2f")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--size", default="full", choices=("tiny", "full"))
    ap.add_argument("--head", default="c4", choices=("c4", "fpn"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        ap.error("--repeats must be >= 1 and --warmup >= 0")
    from feature_extractors import require_detectron2

    try:
        require_detectron2()
    except ImportError as err:
        ap.error(str(err))
    dev = args.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 stays fp32, on both sides
        torch.backends.cudnn.allow_tf32 = False
    compare(args.size, args.head, torch.device(dev), args.repeats, args.warmup)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
