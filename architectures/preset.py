"""What a published model is to vlbench: a ``Preset`` (frozen configs of its embedders, fusion and
head, and its canonical input) in one registry by name. The presets themselves are registered by
``presets`` (the 2019-2021 models) and ``presets_itc`` (VLMo, ALBEF, BLIP), each with a ``-tiny``
twin for tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from feature_extractors import Registry


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    visual: Any  # an embedder config dataclass
    text: Any  # a text embedder config dataclass
    fusion: Any  # a fusion config dataclass
    image_size: tuple[int, int]  # canonical input (height, width)
    text_len: int
    head: Any | None = None  # task head added by ``--head``
    paper_tokens: str | None = None  # the ViLT paper's Table 6 token count, where it differs
    source: str = ""


PRESETS: Registry[Preset] = Registry("model")


def register_pair(published: Preset, tiny: Preset) -> None:
    """A published preset and its tiny twin."""
    PRESETS.register(published.name, published)
    PRESETS.register(tiny.name, tiny)
