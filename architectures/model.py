"""``VLModel``: a visual embedder, a text embedder, a fusion scheme and an optional head.

Its submodule names are the stage vocabulary the harness times, counts and reports:
``visual``, ``text``, ``fusion`` (and the fusion's own sub-stages such as
``fusion.vision_tower``), ``head``, declared through ``feature_extractors.stages``. The model
knows nothing of timing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from feature_extractors import (
    ImageBatch,
    Stage,
    StageKind,
    Tokens,
    declared_stages,
    example_visual_input,
    image_tokens,
    stage_kind,
)

from .fusion import FusionOutput


class VLModel(nn.Module):
    """``visual``, ``text``, ``fusion`` and an optional ``head``; ``embedder_name`` and
    ``fusion_name`` are the registry names it was built from (empty for hand-made models)."""

    def __init__(
        self,
        visual: nn.Module,
        text: nn.Module,
        fusion: nn.Module,
        head: nn.Module | None = None,
        *,
        visual_kind: StageKind | str,
        fusion_kind: StageKind | str = StageKind.INTERACTION,
        embedder_name: str = "",
        fusion_name: str = "",
    ) -> None:
        super().__init__()
        self.visual = visual
        self.text = text
        self.fusion = fusion
        self.head = head
        self.visual_kind = stage_kind(visual_kind, "visual")
        self.fusion_kind = stage_kind(fusion_kind, "fusion")
        self.embedder_name = embedder_name
        self.fusion_name = fusion_name

    @property
    def substages(self) -> dict[str, StageKind]:
        """The top-level stages: their times add up to the forward."""
        top = {"visual": self.visual_kind, "text": StageKind.TEXT, "fusion": self.fusion_kind}
        if self.head is not None:
            top["head"] = StageKind.HEAD
        return top

    def stages(self) -> list[Stage]:
        """Every declared stage, top-level first within each branch."""
        return declared_stages(self)

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
        visual = example_visual_input(self.visual, batch_size, image_size, gen)
        ids, mask = self._texts(batch_size, text_len, gen)
        return visual.to(device, dtype), ids.to(device), mask.to(device)

    @torch.no_grad()
    def example_images(self, batch_size: int, image_size: tuple[int, int], *,
                       device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                       seed: int = 0) -> Any:
        """``example_inputs``' visual side alone (a retrieval gallery of images needs no texts)."""
        gen = torch.Generator().manual_seed(seed)
        return example_visual_input(self.visual, batch_size, image_size, gen).to(device, dtype)

    @torch.no_grad()
    def example_texts(self, batch_size: int, text_len: int, *, device: torch.device | str = "cpu",
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``example_inputs``' text side alone: token ids (B, L), every token real, the last the
        highest id (CLIP's end of text), and the attention mask (B, L)."""
        ids, mask = self._texts(batch_size, text_len, torch.Generator().manual_seed(seed))
        return ids.to(device), mask.to(device)

    def _texts(self, batch_size: int, text_len: int,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        vocab = self.text.vocab_size
        ids = torch.randint(1, vocab - 1, (batch_size, text_len), generator=gen)
        ids[:, -1] = vocab - 1
        return ids, torch.ones(batch_size, text_len, dtype=torch.long)

    def num_tokens(self, image_size: tuple[int, int], text_len: int) -> dict[str, int]:
        """Token counts the fusion sees for one image-text pair."""
        return {"text": text_len, "image": image_tokens(self.visual, image_size)}
