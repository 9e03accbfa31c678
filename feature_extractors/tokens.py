"""The two data types every embedder speaks: an image batch in, ``Tokens`` out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tokens:
    """A batch of token sequences of one modality.

    ``embeds`` (B, N, D); ``mask`` (B, N) bool, True where a token is real (not padding);
    ``boxes`` (B, N, 4) in pixels (x1, y1, x2, y2) for region tokens, else None; ``grid``
    (rows, cols) of patch tokens laid out row by row after a [CLS] token, on the host (a
    relative position bias needs it, and reading it from a tensor would synchronise), else None.
    """

    embeds: torch.Tensor
    mask: torch.Tensor
    boxes: torch.Tensor | None = None
    grid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        b, n = self.embeds.shape[:2]
        if self.mask.shape != (b, n):
            raise ValueError(
                f"mask {tuple(self.mask.shape)} does not match embeds (B, N) = {(b, n)}"
            )

    @property
    def width(self) -> int:
        return self.embeds.shape[-1]


@dataclass(frozen=True)
class ImageBatch:
    """Padded images plus each image's size on the host, like torchvision's ``ImageList``.

    ``tensor`` (B, 3, H, W) holds the images top-left aligned and zero padded to a common size;
    ``image_sizes`` holds each image's real (height, width) as Python ints, so grid sizes,
    position-embedding interpolation, anchors and padding masks never ask the device for a shape
    (which would be a device-to-host synchronisation inside a timed stage).
    """

    tensor: torch.Tensor
    image_sizes: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        if len(self.image_sizes) != self.tensor.shape[0]:
            raise ValueError("one image size per image is required")
        h, w = self.tensor.shape[-2:]
        for ih, iw in self.image_sizes:
            if ih > h or iw > w:
                raise ValueError(f"image size {(ih, iw)} exceeds the padded tensor {(h, w)}")

    @staticmethod
    def from_images(images: Sequence[torch.Tensor], size_divisibility: int = 1) -> ImageBatch:
        """Images of different sizes, zero padded top-left to a common size rounded up to a
        multiple of ``size_divisibility`` (torchvision's ``ImageList``; detectors use 32 so
        anchors line up with the feature stride)."""
        if not images:
            raise ValueError("an image batch needs at least one image")
        sizes = tuple((int(im.shape[-2]), int(im.shape[-1])) for im in images)
        step = max(1, size_divisibility)
        h = -(-max(s[0] for s in sizes) // step) * step
        w = -(-max(s[1] for s in sizes) // step) * step
        batch = images[0].new_zeros(len(images), images[0].shape[0], h, w)
        for i, im in enumerate(images):
            batch[i, :, : im.shape[-2], : im.shape[-1]] = im
        return ImageBatch(batch, sizes)

    @staticmethod
    def from_tensor(tensor: torch.Tensor) -> ImageBatch:
        """All images the full size of ``tensor``."""
        h, w = tensor.shape[-2:]
        return ImageBatch(tensor, tuple((int(h), int(w)) for _ in range(tensor.shape[0])))

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> ImageBatch:
        return ImageBatch(self.tensor.to(device=device, dtype=dtype), self.image_sizes)

    def __len__(self) -> int:
        return len(self.image_sizes)
