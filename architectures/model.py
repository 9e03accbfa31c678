"""``VLModel``: a visual embedder, a text embedder, a fusion scheme and an optional head.

Its submodule names are the stage vocabulary the harness times, counts and reports:
``visual``, ``text``, ``fusion`` (and the fusion's own sub-stages such as
``fusion.vision_tower``), ``head``. The model knows nothing of timing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from feature_extractors import ImageBatch, Tokens

from .fusion import FusionOutput


@dataclass(frozen=True)
class Stage:
    """A named submodule the harness may time. ``kind`` is the report category (backbone,
    region_ops, patch, grid, text, single_modality, interaction, head); ``parent`` is the
    enclosing stage (None for a top-level stage, whose times add up to the forward)."""

    name: str
    kind: str
    parent: str | None = None
    host_sync: bool = False  # data-dependent host synchronisation by design (NMS, selection)


def _substages(module: nn.Module, prefix: str) -> list[Stage]:
    """A module declares its own stages in a ``substages`` dict: {child name: kind}."""
    out: list[Stage] = []
    for child, kind in getattr(module, "substages", {}).items():
        name = f"{prefix}.{child}"
        sync = bool(getattr(module.get_submodule(child), "host_sync", False))
        out.append(Stage(name, kind, prefix, sync))
        out.extend(_substages(module.get_submodule(child), name))
    return out


class VLModel(nn.Module):
    def __init__(
        self,
        visual: nn.Module,
        text: nn.Module,
        fusion: nn.Module,
        head: nn.Module | None = None,
        *,
        visual_kind: str,
        fusion_kind: str = "interaction",
    ) -> None:
        super().__init__()
        self.visual = visual
        self.text = text
        self.fusion = fusion
        self.head = head
        self.visual_kind = visual_kind
        self.fusion_kind = fusion_kind

    def stages(self) -> list[Stage]:
        """Every declared stage, top-level first within each branch."""
        top = [("visual", self.visual_kind), ("text", "text"), ("fusion", self.fusion_kind)]
        if self.head is not None:
            top.append(("head", "head"))
        out: list[Stage] = []
        for name, kind in top:
            subs = _substages(self.get_submodule(name), name)
            out.append(Stage(name, kind, host_sync=any(s.host_sync for s in subs)))
            out.extend(subs)
        return out

    def forward(
        self, images: ImageBatch | Any, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> FusionOutput | torch.Tensor:
        """``images``: an ``ImageBatch``, or what the visual embedder takes instead (a
        ``RegionBatch`` of precomputed features)."""
        vision: Tokens = self.visual(images)
        text: Tokens = self.text(input_ids, attention_mask)
        out: FusionOutput = self.fusion(text, vision)
        return out if self.head is None else self.head(out.pooled)

    @torch.no_grad()
    def example_inputs(
        self,
        batch_size: int,
        image_size: tuple[int, int],
        text_len: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """Random images and token ids of the right form: every token real, the last token the
        highest id (CLIP's end-of-text token), so every model does its full-length work."""
        gen = torch.Generator().manual_seed(seed)
        make = getattr(self.visual, "example_input", None)
        if make is not None:  # an embedder of something other than images (precomputed regions)
            visual = make(batch_size, image_size, gen)
        else:  # padded to the embedder's size divisibility, real sizes kept (ImageList)
            pixels = torch.randn(batch_size, 3, *image_size, generator=gen)
            step = getattr(self.visual, "size_divisibility", 1)
            visual = ImageBatch.from_images(list(pixels), size_divisibility=step)
        vocab = self.text.vocab_size
        ids = torch.randint(1, vocab - 1, (batch_size, text_len), generator=gen)
        ids[:, -1] = vocab - 1
        mask = torch.ones(batch_size, text_len, dtype=torch.long)
        return visual.to(device, dtype), ids.to(device), mask.to(device)

    @torch.no_grad()
    def example_images(self, batch_size: int, image_size: tuple[int, int], *,
                       device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                       seed: int = 0) -> Any:
        """``example_inputs``' visual side alone (a retrieval gallery of images needs no texts)."""
        gen = torch.Generator().manual_seed(seed)
        make = getattr(self.visual, "example_input", None)
        if make is not None:
            return make(batch_size, image_size, gen).to(device, dtype)
        pixels = torch.randn(batch_size, 3, *image_size, generator=gen)
        step = getattr(self.visual, "size_divisibility", 1)
        return ImageBatch.from_images(list(pixels), size_divisibility=step).to(device, dtype)

    @torch.no_grad()
    def example_texts(self, batch_size: int, text_len: int, *, device: torch.device | str = "cpu",
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``example_inputs``' text side alone: token ids (B, L), every token real, the last the
        highest id (CLIP's end of text), and the attention mask (B, L)."""
        gen = torch.Generator().manual_seed(seed)
        vocab = self.text.vocab_size
        ids = torch.randint(1, vocab - 1, (batch_size, text_len), generator=gen)
        ids[:, -1] = vocab - 1
        mask = torch.ones(batch_size, text_len, dtype=torch.long)
        return ids.to(device), mask.to(device)

    def num_tokens(self, image_size: tuple[int, int], text_len: int) -> dict[str, int]:
        """Token counts the fusion sees for one image-text pair."""
        counter = getattr(self.visual, "num_tokens", None)
        image = counter(image_size) if counter is not None else -1
        return {"text": text_len, "image": image}
