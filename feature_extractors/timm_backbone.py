"""Any timm model as the visual embedder: ``timm:<name>``, random weights, nothing downloaded.

People who build vision-language models swap visual backbones (a ConvNeXt, an EVA, a Swin, a
bigger ResNet) and want to know what the swap costs inside the whole model. ``TimmBackbone``
wraps one of timm's models: its last feature map becomes grid tokens (CNNs, Swin, MambaOut; with
Pixel-BERT's max pool as an option), its token sequence becomes patch tokens (ViT, EVA, DeiT;
prefix tokens as the model declares them), then a linear projection to the fusion's width where
the widths differ. The layout is read from what the model declares (``output_fmt``,
``num_prefix_tokens``), never guessed from the tensor's rank: Swin's map is NHWC, a ResNet's
NCHW, and a ViT may have 0, 1 or 5 prefix tokens.

timm is imported when a timm model is first named, so the rest of vlbench starts without it.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
from dataclasses import dataclass

import torch
from torch import nn

from .embedder import EmbedderSpec
from .registry import UnknownNameError
from .stages import StageKind
from .tokens import ImageBatch, Tokens

PREFIX = "timm"
#: the input every composed timm model is built for, rounded down to the model's stride: ViLT's
#: 384x640 (aspect 5:3, like detectron's 800x1333 bound). One input for every family means a
#: swap changes only the backbone; a stride-32 CNN then gives 12x20 = 240 tokens, ViLT's patch
#: count, so the fusion's work stays comparable too. Pixel-BERT's setting is a case away:
#: ``--image-size 800x1333`` with ``pool=2``.
CANONICAL_INPUT = (384, 640)
_LAYOUTS = ("NCHW", "NHWC", "NLC")


@dataclass(frozen=True)
class TimmBackboneConfig:
    """A timm model by name. ``image_size``: the input it is built for (``img_size`` where the
    family takes one); ``width``: the token width after the projection (None keeps the model's);
    ``pool``: a k x k max pool on a feature map (Pixel-BERT: 2); ``dynamic_size``: also accept
    other inputs where the family can (timm's ``dynamic_img_size`` and ``dynamic_img_pad``)."""

    name: str
    image_size: tuple[int, int] = CANONICAL_INPUT
    width: int | None = None
    pool: int = 1
    dynamic_size: bool = True

    @property
    def registry_name(self) -> str:
        """The name ``EMBEDDERS.get`` knows this config's embedder by (a family of names)."""
        return f"{PREFIX}:{self.name}"


@dataclass(frozen=True)
class Layout:
    """How a model's ``forward_features`` output is laid out, as the model declares it."""

    fmt: str  # "NCHW" or "NHWC" (a feature map) or "NLC" (a token sequence)
    prefix: int  # class, register or distillation tokens before the patches (NLC only)
    stride: int  # input pixels per output cell or patch (its last feature_info reduction)
    features: int  # channels of the map, width of the tokens

    @property
    def is_map(self) -> bool:
        return self.fmt != "NLC"


def read_layout(model: nn.Module) -> Layout:
    """``output_fmt`` where the model declares one (Swin, MambaOut: NHWC), else a token
    sequence where it declares ``num_prefix_tokens`` (ViT, EVA), else timm's NCHW map."""
    fmt = getattr(model, "output_fmt", None)
    prefix = getattr(model, "num_prefix_tokens", None)
    if fmt is None:
        fmt = "NCHW" if prefix is None else "NLC"
    fmt = str(getattr(fmt, "value", fmt))  # timm's Format enum or a plain string
    info = getattr(model, "feature_info", None) or [{}]
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", 1)
    stride = info[-1].get("reduction") or max(patch if isinstance(patch, tuple) else (patch,))
    return Layout(fmt, int(prefix or 0) if fmt == "NLC" else 0, int(stride),
                  int(model.num_features))


def create_timm_model(name: str, image_size: tuple[int, int], dynamic_size: bool
                      ) -> tuple[nn.Module, frozenset[str]]:
    """The model with random weights and no classifier, built for ``image_size`` where its family
    takes an ``img_size`` (and a dynamic size and padding where asked and offered). Returns the
    model and the size arguments it took.

    ``global_pool=""`` keeps a ViT's final norm inside ``forward_features`` (with average
    pooling it moves to the head); a model that refuses it (a distilled DeiT) keeps its own.
    """
    kwargs: dict[str, object] = {"img_size": tuple(image_size)}
    if dynamic_size:
        kwargs |= {"dynamic_img_size": True, "dynamic_img_pad": True}
    try:
        model, taken = _create(name, {"global_pool": "", **kwargs})
    except (AssertionError, ValueError):
        model, taken = _create(name, kwargs)
    return model, taken - {"global_pool"}


def _create(name: str, kwargs: dict[str, object]) -> tuple[nn.Module, frozenset[str]]:
    """``timm.create_model`` dropping, one by one, the keyword arguments the family rejects."""
    import timm

    kwargs = dict(kwargs)
    while True:
        try:
            model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
            return model, frozenset(kwargs)
        except TypeError as exc:
            rejected = [k for k in kwargs if f"'{k}'" in str(exc)]
            if not rejected:
                raise
            del kwargs[rejected[0]]


class TimmTrunk(nn.Module):
    """A timm model called through ``forward_features``: its ``forward`` would add the head,
    and a hook (the harness's timer) fires only on a module's own call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


class TimmBackbone(nn.Module):
    """Images -> a timm model's last features as tokens, projected to ``width``.

    Stages: ``backbone`` (the timm model), ``pool`` (only with ``pool`` > 1), ``proj`` (only
    where ``width`` differs from the model's). Token counts and grids come from a shape-only
    forward (the meta device, or torch's fake tensors for real weights), exact for any family's
    arithmetic, cached per input size; the forward itself reads no device value.
    """

    def __init__(self, *, name: str, image_size: tuple[int, int], width: int | None = None,
                 pool: int = 1, dynamic_size: bool = True) -> None:
        super().__init__()
        model, taken = create_timm_model(name, image_size, dynamic_size)
        self.name = name
        self.layout = read_layout(model)
        if self.layout.fmt not in _LAYOUTS:
            raise ValueError(f"timm:{name} declares output_fmt {self.layout.fmt!r}; "
                             f"supported: {', '.join(_LAYOUTS)}")
        if pool < 1 or (pool > 1 and not self.layout.is_map):
            raise ValueError(f"pool {pool}: a k x k max pool (k >= 1) applies to a feature map, "
                             f"and timm:{name} gives {self.layout.fmt} tokens")
        #: the size a family that takes ``img_size`` but no dynamic size is built for; whether
        #: it runs at others is the family's to say (a ByobNet does, a BEiT asserts)
        self.static_size = (tuple(image_size) if "img_size" in taken
                            and "dynamic_img_size" not in taken else None)
        self.backbone = TimmTrunk(model)
        self.substages: dict[str, StageKind] = {"backbone": StageKind.BACKBONE}
        self.pool = nn.MaxPool2d(pool) if pool > 1 else None
        if self.pool is not None:
            self.substages["pool"] = StageKind.GRID
        self.out_dim = width or self.layout.features
        self.proj = (nn.Linear(self.layout.features, self.out_dim)
                     if self.out_dim != self.layout.features else None)
        if self.proj is not None:
            self.substages["proj"] = StageKind.VISUAL_EMBEDDING
        self._shapes: dict[tuple[int, int], tuple[int, ...]] = {}

    @property
    def kind(self) -> StageKind:
        """Grid tokens from a feature map, patch tokens from a token sequence."""
        return StageKind.GRID if self.layout.is_map else StageKind.PATCH

    def features_shape(self, image_size: tuple[int, int]) -> tuple[int, ...]:
        """``forward_features``' output shape (for a batch of two), without computing it."""
        key = (int(image_size[0]), int(image_size[1]))
        if key not in self._shapes:
            try:
                self._shapes[key] = _shape_only(self.backbone.model, key)
            except Exception as exc:
                if self.static_size in (None, key):
                    raise
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                (h, w), (ih, iw) = self.static_size, key
                raise ValueError(f"timm:{self.name} is built for {h}x{w} (its family has no "
                                 f"dynamic_img_size) and does not run at {ih}x{iw}: "
                                 f"{first}") from None
            rank = 3 if self.layout.fmt == "NLC" else 4
            if len(self._shapes[key]) != rank:
                raise ValueError(f"timm:{self.name}'s declared layout (output_fmt, "
                                 f"num_prefix_tokens; neither: NCHW) is {self.layout.fmt}, but "
                                 f"forward_features gives shape {self._shapes.pop(key)}")
        return self._shapes[key]

    def grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Token rows and columns for an image: the map's cells after the pool, or the patch
        grid of a token sequence (partial patches padded where the model pads, else dropped)."""
        shape = self.features_shape(image_size)
        if self.layout.is_map:
            rows, cols = shape[1:3] if self.layout.fmt == "NHWC" else shape[2:4]
            k = self.pool.kernel_size if self.pool is not None else 1
            return rows // k, cols // k
        patches, s = shape[1] - self.layout.prefix, self.layout.stride
        (h, w) = image_size
        for rows, cols in ((-(-h // s), -(-w // s)), (h // s, w // s)):
            if rows * cols == patches:
                return rows, cols
        raise ValueError(f"timm:{self.name}: {patches} tokens at {h}x{w} are no patch grid of "
                         f"stride {s}, so a batch of mixed image sizes cannot be masked")

    def num_tokens(self, image_size: tuple[int, int]) -> int:
        if self.layout.is_map:
            rows, cols = self.grid(image_size)
            return rows * cols
        return self.features_shape(image_size)[1]

    def forward(self, images: ImageBatch) -> Tokens:
        x = self.backbone(images.tensor)  # (B, C, rows, cols), (B, rows, cols, C) or (B, N, C)
        if self.layout.fmt == "NHWC" and self.pool is None:
            x = x.flatten(1, 2)  # (B, rows*cols, C)
        elif self.layout.is_map:
            if self.layout.fmt == "NHWC":
                x = x.permute(0, 3, 1, 2)  # (B, C, rows, cols)
            if self.pool is not None:
                x = self.pool(x)
            x = x.flatten(2).transpose(1, 2)  # (B, rows*cols, C)
        if self.proj is not None:
            x = self.proj(x)  # (B, N, width)
        return Tokens(x, self._mask(images, x.shape[0], x.shape[1], x.device))

    def _mask(self, images: ImageBatch, b: int, n: int, device: torch.device) -> torch.Tensor:
        """All real for a batch of one size; else each image's own grid (top left), prefix
        tokens always real. Sizes come from the host: no synchronisation."""
        full = (int(images.tensor.shape[-2]), int(images.tensor.shape[-1]))
        if all(tuple(s) == full for s in images.image_sizes):
            return torch.ones(b, n, dtype=torch.bool, device=device)
        rows, cols = self.grid(full)
        mask = torch.zeros(b, rows, cols, dtype=torch.bool, device=device)
        s = self.layout.stride
        for i, (h, w) in enumerate(images.image_sizes):
            # a map's own cells for that size; a sequence's patches holding any of its pixels
            r, c = self.grid((h, w)) if self.layout.is_map else (-(-h // s), -(-w // s))
            mask[i, :r, :c] = True
        prefix = torch.ones(b, n - rows * cols, dtype=torch.bool, device=device)
        return torch.cat([prefix, mask.flatten(1)], dim=1)  # (B, N)


def _shape_only(model: nn.Module, image_size: tuple[int, int]) -> tuple[int, ...]:
    """Shape of ``model.forward_features`` on a batch of two: a forward on the meta device for a
    meta model, under torch's fake tensors otherwise (no memory, no compute, any arithmetic).
    Two images, not one: a just-built model is in training mode, where BatchNorm refuses a
    single value per channel (the squeeze-excite blocks of ResNeSt, ReXNet, SK-ResNet)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        if device.type != "meta":
            stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        out = model.forward_features(torch.empty(2, 3, *image_size, device=device))
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"forward_features gives a {type(out).__name__}, not one tensor")
    return tuple(int(d) for d in out.shape)


def round_to_stride(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """``size`` rounded down to a multiple of ``stride`` (at least one stride)."""
    return tuple(max(stride, n // stride * stride) for n in size)  # type: ignore[return-value]


@functools.cache
def _timm_names() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models())


def check_timm_name(name: str) -> None:
    """A one-line ``UnknownNameError`` suggesting close matches for a name timm does not know."""
    import timm

    if name and timm.is_model(name):
        return
    close = difflib.get_close_matches(name, _timm_names(), n=5, cutoff=0.6)
    hint = f"close matches: {', '.join(close)}" if close else "see timm.list_models()"
    raise UnknownNameError(f"unknown timm model {name!r}; {hint}")


@functools.cache
def timm_spec(name: str) -> EmbedderSpec:
    """The registry entry of ``timm:<name>``, built on demand: a meta-device build reads the
    model's layout (its stage kind, its stride) and a shape-only forward checks it."""
    check_timm_name(name)
    try:  # a zoo of ~1,400 models: whatever fails to build or to give features says so in a line
        with torch.device("meta"):
            probe = TimmBackbone(name=name, image_size=CANONICAL_INPUT)
            size = round_to_stride(CANONICAL_INPUT, probe.layout.stride)
            if size != CANONICAL_INPUT and probe.static_size is not None:
                probe = TimmBackbone(name=name, image_size=size)
        tokens = probe.num_tokens(size)
    except Exception as exc:  # reported in one line, not swallowed
        first = (str(exc).strip().splitlines() or [""])[0]
        h, w = CANONICAL_INPUT
        raise UnknownNameError(f"timm model {name!r} cannot be an embedder (probed at {h}x{w}): "
                               f"{type(exc).__name__}: {first}") from None
    layout = probe.layout
    what = (f"{layout.fmt} feature map, stride {layout.stride} -> grid tokens" if layout.is_map
            else f"patch {layout.stride} tokens, {layout.prefix} prefix")
    rounded = (f", {CANONICAL_INPUT[0]}x{CANONICAL_INPUT[1]} rounded down to its stride"
               if size != CANONICAL_INPUT else "")
    description = (f"timm {name} ({type(probe.backbone.model).__name__}, random weights): "
                   f"{what}; {tokens} tokens at {size[0]}x{size[1]}{rounded}; "
                   "kept as named at --size tiny (only the fusion shrinks)")

    def canonical(width: int, tiny: bool) -> tuple[TimmBackboneConfig, tuple[int, int]]:
        """The model as named at every size (``tiny`` shrinks only the fusion), built for the
        canonical input rounded to its stride, tokens projected to the fusion's width."""
        return TimmBackboneConfig(name=name, image_size=size, width=width), size

    return EmbedderSpec(f"{PREFIX}:{name}", "visual", probe.kind, TimmBackboneConfig,
                        TimmBackbone, description, canonical)
