"""A case end to end on a tiny preset (``vlbench.measure.run_case``): the record the store and
reports rely on, with what readers need stored in it."""

from __future__ import annotations

import pytest
import torch

from vlbench import paper
from vlbench.context import CaseContext, DeviceError, resolve_device
from vlbench.failures import is_out_of_memory
from vlbench.measure import run_case
from vlbench.options import MeasureOptions, TimingOptions
from vlbench.results import CaseSpec

FAST = MeasureOptions(TimingOptions(warmup=1, min_repeats=3, min_time_s=0.0, max_repeats=3))


def test_tiny_case_record():
    spec = CaseSpec("clip-vit-b32-tiny", 2, (64, 64), 16, "fp32", "cpu")
    r = run_case(spec, FAST)
    assert r.status == "ok", r.message
    assert (r.embedder, r.fusion) == ("patch", "dual-encoder")
    assert r.tokens == {"text": 16, "image": 1 + 4 * 4}
    assert r.end_to_end.n == 3 and len(r.end_to_end_samples_ms) == 3
    names = [s.name for s in r.stages]
    assert names[:3] == ["visual", "text", "fusion"]
    assert {"fusion.vision_tower", "fusion.text_tower", "fusion.interaction"} <= set(names)
    kinds = {s.name: s.kind for s in r.stages}
    assert kinds["fusion.vision_tower"] == kinds["fusion.text_tower"] == "single_modality"
    assert kinds["fusion.interaction"] == "interaction"
    assert all(s.calls == 1 and s.timing.n == 3 for s in r.stages)
    top = [s for s in r.stages if s.parent is None]
    assert r.stage_sum_ms == pytest.approx(sum(s.timing.median_ms for s in top))
    assert r.flops_total == sum(s.flops for s in top) > 0
    assert r.params_total == sum(s.params for s in top)
    assert r.peak_mem_bytes > 0
    assert r.settings["precision"] == "fp32"
    assert r.settings["cudnn_conv_fp32_precision"] == "ieee"  # explicit, not torch's default
    assert r.settings["cuda_matmul_fp32_precision"] == "ieee"


def test_head_adds_a_stage():
    spec = CaseSpec("vilt-b32-tiny", 1, (64, 96), 8, "fp32", "cpu")
    r = run_case(spec, MeasureOptions(FAST.timing, head=True))
    assert r.status == "ok", r.message
    head = next(s for s in r.stages if s.name == "head")
    assert head.kind == "head" and head.params > 0


def test_precision_modes_are_recorded():
    spec = CaseSpec("vilt-b32-tiny", 1, (64, 96), 8, "bf16", "cpu")
    r = run_case(spec, FAST)
    assert r.status == "ok", r.message
    assert r.settings["autocast_dtype"] == "torch.bfloat16"
    tf32 = run_case(CaseSpec("vilt-b32-tiny", 1, (64, 96), 8, "tf32", "cpu"), FAST)
    assert tf32.settings["cudnn_conv_fp32_precision"] == "tf32"


def test_failures_are_recorded_not_raised():
    bad = run_case(CaseSpec("no-such-model", 1, (64, 96), 8, "fp32", "cpu"), FAST)
    assert bad.status == "error" and "no-such-model" in bad.message
    too_long = run_case(CaseSpec("vilt-b32-tiny", 1, (64, 96), 9999, "fp32", "cpu"), FAST)
    assert too_long.status == "error" and "exceeds" in too_long.message


def test_out_of_memory_is_classified():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: ..."))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(ValueError("shape mismatch"))


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="valid"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_record_carries_what_readers_need():
    """Readers need no model code: the stage categories, the canonical input and the paper's
    figures are stored with the case when it is measured."""
    r = run_case(CaseSpec("vilt-b32-tiny", 1, (64, 96), 8, "fp32", "cpu"), FAST)
    assert r.status == "ok", r.message
    categories = {s.name: s.category for s in r.stages}
    assert categories["visual"] == "patch or grid embedding"
    assert categories["text"] == "text embedding"
    assert categories["fusion"] == "modality interaction"
    assert (r.canonical_image_size, r.canonical_text_len) == ((64, 96), 8)
    assert r.paper_row is None and r.paper_bar is None  # tiny twins have no paper figures
    assert r.settings["flop_convention"] == "one multiply-add = 2 FLOPs"


def test_paper_figures_are_stored_for_published_presets():
    """A published preset's case context carries its Table 6 row and Figure 1 bar (built on the
    meta device: nothing is measured)."""
    ctx = CaseContext.for_preset(CaseSpec("vilt-b32", 1, (384, 640), 40, "fp32", "meta"),
                                 FAST, head=False)
    assert ctx.identity.paper_row == paper.table6_row("vilt-b32")
    assert ctx.identity.paper_bar == paper.figure1_bar("vilt-b32")
    assert ctx.identity.canonical_image_size == (384, 640)
    assert (ctx.identity.embedder, ctx.identity.fusion) == ("patch", "single-stream")


def test_energy_is_not_available_on_a_cpu_and_says_why() -> None:
    """Energy per forward comes from a GPU's NVML counter; a CPU case records why there is none,
    never a zero (the GPU pass's export carries the field)."""
    r = run_case(CaseSpec("vilt-b32-tiny", 1, (64, 96), 8, "fp32", "cpu"), FAST)
    assert r.status == "ok", r.message
    assert r.settings["energy"] == {"status": "not available: not a GPU run"}
    assert "kernels_per_forward" not in r.settings  # counted on a GPU only
    assert r.settings["hooked_end_to_end_ms"] > 0
