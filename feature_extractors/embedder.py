"""What an embedder is to the rest of vlbench: its registry entry (``EmbedderSpec``) and the
optional methods a visual embedder may offer, read here and nowhere else.

A visual embedder is an ``nn.Module`` with ``out_dim`` and ``forward(images) -> Tokens``. It may
also say how its inputs are made (``example_input``: an embedder of something other than images,
such as precomputed region features), how they are padded (``size_divisibility``: a detector's
stride) and how many tokens an image gives (``num_tokens``). Its config may say which inputs it
cannot embed at all (``check_input``: a detector's smallest anchor), so a run refuses them
before it builds anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from .stages import StageKind
from .tokens import ImageBatch

#: (fusion width, tiny) -> (config, canonical image size; None for a text embedder)
Canonical = Callable[[int, bool], tuple[Any, tuple[int, int] | None]]


@dataclass(frozen=True)
class EmbedderSpec:
    name: str
    modality: str  # "visual" or "text"
    kind: StageKind | str  # the stage kind of the embedder as a whole
    config: type
    module: type[nn.Module]
    description: str
    #: how an ``EMBEDDER+FUSION`` pair builds this embedder at the fusion's width; None: it
    #: cannot be composed (named in the error)
    canonical: Canonical | None = None


@runtime_checkable
class MakesExampleInput(Protocol):
    def example_input(self, batch_size: int, image_size: tuple[int, int],
                      generator: torch.Generator) -> Any: ...


@runtime_checkable
class PadsImages(Protocol):
    size_divisibility: int


@runtime_checkable
class CountsTokens(Protocol):
    def num_tokens(self, image_size: tuple[int, int]) -> int: ...


def example_visual_input(visual: nn.Module, batch_size: int, image_size: tuple[int, int],
                         generator: torch.Generator) -> Any:
    """Random input of the form ``visual`` takes: its own ``example_input``, else images padded
    to its ``size_divisibility`` with their real sizes kept (like torchvision's ``ImageList``)."""
    if isinstance(visual, MakesExampleInput):
        return visual.example_input(batch_size, image_size, generator)
    pixels = torch.randn(batch_size, 3, *image_size, generator=generator)
    step = visual.size_divisibility if isinstance(visual, PadsImages) else 1
    return ImageBatch.from_images(list(pixels), size_divisibility=step)


@runtime_checkable
class ChecksInput(Protocol):
    def check_input(self, image_size: tuple[int, int]) -> None: ...


def check_visual_input(config: object, image_size: tuple[int, int]) -> None:
    """Raise ValueError when the embedder ``config`` describes cannot embed images of
    ``image_size`` (its config's ``check_input``); embedders without one take any size."""
    if isinstance(config, ChecksInput):
        config.check_input(image_size)


def image_tokens(visual: nn.Module, image_size: tuple[int, int]) -> int:
    """Tokens one image gives the fusion; -1 when the embedder does not say."""
    return visual.num_tokens(image_size) if isinstance(visual, CountsTokens) else -1
