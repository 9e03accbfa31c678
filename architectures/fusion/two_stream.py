"""Two-stream fusion: a text stream and a visual stream of their own, joined by co-attention
blocks (ViLBERT, LXMERT). The layout of the two streams is configuration.

Layout. ``text_layers_before_cross[i]`` is how many text layers have run when co-attention block
``i`` runs, and ``vision_layers_before_cross[i]`` how many visual layers (ViLBERT's
``t_biattention_id`` and ``v_biattention_id``, read as in its ``BertEncoder.forward``: block ``i``
comes right *before* text layer ``t_biattention_id[i]``). The layers left over run after the last
block. ViLBERT-base: ``(6, 7, 8, 9, 10, 11)`` and ``(0, 1, 2, 3, 4, 5)`` -- text layers 0-5, block
0, text layer 6 and visual layer 0, block 1, ..., block 5, then text layer 11 and visual layer 5.
LXMERT: ``(9,) * 5`` and ``(5,) * 5`` -- all 9 language and all 5 object-relationship layers,
then the 5 cross-modality layers.

Every layer is post-LN as in BERT: ``x = LN(x + sublayer(x))``.

Stages (``substages``, built from the layout): ``text_stream`` and ``vision_stream`` hold every
single-modality layer of their stream and are called once per run of consecutive layers between
co-attention blocks (ViLBERT: 7 text calls, 6 visual calls); ``co_attention`` holds every
co-attention block and is called once per block; ``pooler`` makes the pooled output. A stream
with no layers declares no stage.

Deliberate omissions against the references (nothing that runs at inference is left out):
ViLBERT's ``BertBiOutput.q_dense1`` / ``q_dense2`` (Linear(bi_hidden, v_hidden) and
Linear(bi_hidden, hidden): in the checkpoint, never called in the forward), its
``bi_intermediate_size`` (in the config, used by no layer) and its ``dynamic_attention`` gates (off
in the published configs); dropout everywhere. The region feature encoders (ViLBERT's
image/location embedding, LXMERT's ``visn_fc`` / ``box_fc``) belong to the region embedder, the
word embeddings to the text embedder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from feature_extractors import StageKind, Tokens

from ..layers import AttentionSublayer, FeedForward, PostLNBlock, adapter, key_padding_mask
from .base import FusionOutput

POOLING = ("product", "text")


@dataclass(frozen=True)
class TwoStreamConfig:
    """Defaults: ViLBERT-base (``bert_base_6layer_6conect.json``)."""

    text_width: int = 768
    text_depth: int = 12
    text_heads: int = 12
    text_mlp_dim: int = 3072
    vision_width: int = 1024
    vision_depth: int = 6
    vision_heads: int = 8
    vision_mlp_dim: int = 1024
    # co-attention works at ``cross_width`` with ``cross_heads`` (ViLBERT's bi_hidden_size 1024,
    # bi_num_attention_heads 8); the feed-forward after it is each stream's own (text_mlp_dim at
    # text_width, vision_mlp_dim at vision_width), as in both references
    cross_width: int = 1024
    cross_heads: int = 8
    text_layers_before_cross: tuple[int, ...] = (6, 7, 8, 9, 10, 11)
    vision_layers_before_cross: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    shared_cross_weights: bool = False  # LXMERT: one cross-attention layer serves both directions
    cross_self_attention: bool = False  # LXMERT: per-stream self-attention after cross-attention
    pooled: str = "product"  # ViLBERT "product"; LXMERT "text"
    eps: float = 1e-12

    def __post_init__(self) -> None:  # a bad layout fails where the preset is written
        check_layout(
            text_depth=self.text_depth, vision_depth=self.vision_depth,
            text_layers_before_cross=self.text_layers_before_cross,
            vision_layers_before_cross=self.vision_layers_before_cross,
        )


def check_layout(
    *,
    text_depth: int,
    vision_depth: int,
    text_layers_before_cross: tuple[int, ...],
    vision_layers_before_cross: tuple[int, ...],
) -> None:
    """One-line ValueError naming the first problem of a layout."""
    if len(text_layers_before_cross) != len(vision_layers_before_cross):
        raise ValueError(
            f"the text stream places {len(text_layers_before_cross)} co-attention blocks and the "
            f"vision stream {len(vision_layers_before_cross)}; they must agree"
        )
    for stream, depth, positions in (
        ("text", text_depth, text_layers_before_cross),
        ("vision", vision_depth, vision_layers_before_cross),
    ):
        previous = 0
        for i, position in enumerate(positions):
            if position < 0:
                raise ValueError(
                    f"co-attention block {i} comes after {position} {stream} layers: negative"
                )
            if position > depth:
                raise ValueError(
                    f"co-attention block {i} comes after {position} {stream} layers but the "
                    f"{stream} stream has {depth}"
                )
            if position < previous:
                raise ValueError(
                    f"co-attention block {i} comes after {position} {stream} layers, before block "
                    f"{i - 1} (after {previous}): positions must not decrease"
                )
            previous = position


#: ViLBERT-base (the defaults) at test widths, for tiny twins and composed pairs
TINY_VILBERT = TwoStreamConfig(
    text_width=64, text_depth=4, text_heads=2, text_mlp_dim=128, vision_width=96,
    vision_depth=2, vision_heads=2, vision_mlp_dim=96, cross_width=96, cross_heads=2,
    text_layers_before_cross=(2, 3), vision_layers_before_cross=(0, 1))


class StreamLayers(nn.Module):
    """Every single-modality layer of one stream; ``forward`` runs ``layers[start:stop]``, so
    the stage is timed once per run of consecutive layers between co-attention blocks."""

    def __init__(self, *, width: int, depth: int, heads: int, mlp_dim: int, eps: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            PostLNBlock(width, heads, mlp_dim, eps=eps) for _ in range(depth)
        )

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None, start: int, stop: int
    ) -> torch.Tensor:
        for layer in self.layers[start:stop]:
            x = layer(x, attn_mask)
        return x


class CoAttention(nn.Module):
    """Each stream attends to the other; both directions read the block's inputs.

    Unshared (ViLBERT's ``BertBiAttention`` + ``BertBiOutput``): one attention sublayer per
    direction, heads at ``cross_width``. ``text``: text queries (``query2``) over visual keys and
    values (``key1``, ``value1``), output ``dense2`` + ``LayerNorm2``; ``vision``: visual queries
    (``query1``) over text keys and values (``key2``, ``value2``), output ``dense1`` +
    ``LayerNorm1``.

    Shared (LXMERT's ``visual_attention``): ONE cross-attention sublayer ``shared`` (attention,
    output dense and LayerNorm) called twice per forward -- text over vision, then vision over
    text -- so a hook on it fires twice per block. It needs one width for both streams."""

    def __init__(
        self,
        *,
        text_width: int,
        vision_width: int,
        cross_width: int,
        cross_heads: int,
        shared: bool,
        eps: float,
    ) -> None:
        super().__init__()
        self.shared: AttentionSublayer | None = None
        self.text: AttentionSublayer | None = None
        self.vision: AttentionSublayer | None = None
        if shared:
            if not text_width == vision_width == cross_width:
                raise ValueError(
                    "shared cross-attention weights need text_width == vision_width == "
                    f"cross_width, got {text_width}, {vision_width}, {cross_width}"
                )
            self.shared = AttentionSublayer(text_width, cross_heads, eps=eps)
        else:
            self.text = AttentionSublayer(
                text_width, cross_heads, context_width=vision_width, inner=cross_width, eps=eps
            )
            self.vision = AttentionSublayer(
                vision_width, cross_heads, context_width=text_width, inner=cross_width, eps=eps
            )

    def forward(
        self,
        text: torch.Tensor,
        vision: torch.Tensor,
        text_mask: torch.Tensor | None,
        vision_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        to_text = self.shared or self.text
        to_vision = self.shared or self.vision
        assert to_text is not None and to_vision is not None
        t = to_text(text, vision, attn_mask=vision_mask)  # (B, Nt, Dt): text over vision
        v = to_vision(vision, text, attn_mask=text_mask)  # (B, Nv, Dv): vision over text
        return t, v


class CrossBlock(nn.Module):
    """One co-attention block: co-attention, optionally post-LN self-attention per stream
    (LXMERT's ``lang_self_att`` / ``visn_self_att``), then each stream's own post-LN FFN
    (ViLBERT's ``t_intermediate``/``t_output`` and ``v_intermediate``/``v_output``; LXMERT's
    ``lang_inter``/``lang_output`` and ``visn_inter``/``visn_output``)."""

    def __init__(
        self,
        *,
        text_width: int,
        text_heads: int,
        text_mlp_dim: int,
        vision_width: int,
        vision_heads: int,
        vision_mlp_dim: int,
        cross_width: int,
        cross_heads: int,
        shared: bool,
        self_attention: bool,
        eps: float,
    ) -> None:
        super().__init__()
        self.cross = CoAttention(
            text_width=text_width, vision_width=vision_width, cross_width=cross_width,
            cross_heads=cross_heads, shared=shared, eps=eps,
        )
        self.text_self: nn.Module | None = None
        self.vision_self: nn.Module | None = None
        if self_attention:
            self.text_self = AttentionSublayer(text_width, text_heads, eps=eps)
            self.vision_self = AttentionSublayer(vision_width, vision_heads, eps=eps)
        self.text_ffn = FeedForward(text_width, text_mlp_dim, eps=eps)
        self.vision_ffn = FeedForward(vision_width, vision_mlp_dim, eps=eps)

    def forward(
        self,
        text: torch.Tensor,
        vision: torch.Tensor,
        text_mask: torch.Tensor | None,
        vision_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t, v = self.cross(text, vision, text_mask, vision_mask)
        if self.text_self is not None and self.vision_self is not None:
            t = self.text_self(t, attn_mask=text_mask)
            v = self.vision_self(v, attn_mask=vision_mask)
        return self.text_ffn(t), self.vision_ffn(v)


class CrossBlocks(nn.Module):
    """Every co-attention block; ``forward`` runs block ``index`` (called once per block)."""

    def __init__(self, blocks: list[CrossBlock]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(
        self,
        text: torch.Tensor,
        vision: torch.Tensor,
        text_mask: torch.Tensor | None,
        vision_mask: torch.Tensor | None,
        index: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.blocks[index](text, vision, text_mask, vision_mask)


class TwoStreamPooler(nn.Module):
    """``"product"`` (ViLBERT): ReLU(Linear(text [CLS] -> cross_width)) times ReLU(Linear(first
    visual token -> cross_width)), elementwise (``BertTextPooler``, ``BertImagePooler``,
    fusion_method "mul"). ``"text"`` (LXMERT's ``LxmertPooler``): tanh(Linear(text [CLS]))."""

    def __init__(self, *, mode: str, text_width: int, vision_width: int, cross_width: int) -> None:
        super().__init__()
        if mode not in POOLING:
            raise ValueError(f"unknown pooling {mode!r}; expected one of {', '.join(POOLING)}")
        self.mode = mode
        self.vision: nn.Linear | None = None
        if mode == "product":
            self.text = nn.Linear(text_width, cross_width)
            self.vision = nn.Linear(vision_width, cross_width)
            self.out_dim = cross_width
        else:
            self.text = nn.Linear(text_width, text_width)
            self.out_dim = text_width

    def forward(self, text: torch.Tensor, vision: torch.Tensor) -> torch.Tensor:
        if self.vision is None:
            return torch.tanh(self.text(text[:, 0]))
        return F.relu(self.text(text[:, 0])) * F.relu(self.vision(vision[:, 0]))  # (B, cross)


class TwoStream(nn.Module):
    """Text layers and visual layers in two streams, joined by co-attention blocks placed by the
    layout; ``pooled`` as ``TwoStreamPooler`` says. ``substages`` is built from the layout."""

    def __init__(
        self,
        *,
        text_dim: int,
        vision_dim: int,
        text_width: int,
        text_depth: int,
        text_heads: int,
        text_mlp_dim: int,
        vision_width: int,
        vision_depth: int,
        vision_heads: int,
        vision_mlp_dim: int,
        cross_width: int,
        cross_heads: int,
        text_layers_before_cross: tuple[int, ...],
        vision_layers_before_cross: tuple[int, ...],
        shared_cross_weights: bool,
        cross_self_attention: bool,
        pooled: str,
        eps: float,
    ) -> None:
        super().__init__()
        check_layout(
            text_depth=text_depth, vision_depth=vision_depth,
            text_layers_before_cross=tuple(text_layers_before_cross),
            vision_layers_before_cross=tuple(vision_layers_before_cross),
        )
        self.text_layers_before_cross = tuple(text_layers_before_cross)
        self.vision_layers_before_cross = tuple(vision_layers_before_cross)
        self.text_in = adapter(text_dim, text_width)
        self.vision_in = adapter(vision_dim, vision_width)
        self.text_stream = StreamLayers(
            width=text_width, depth=text_depth, heads=text_heads, mlp_dim=text_mlp_dim, eps=eps
        )
        self.vision_stream = StreamLayers(
            width=vision_width, depth=vision_depth, heads=vision_heads, mlp_dim=vision_mlp_dim,
            eps=eps,
        )
        self.co_attention = CrossBlocks([
            CrossBlock(
                text_width=text_width, text_heads=text_heads, text_mlp_dim=text_mlp_dim,
                vision_width=vision_width, vision_heads=vision_heads,
                vision_mlp_dim=vision_mlp_dim, cross_width=cross_width, cross_heads=cross_heads,
                shared=shared_cross_weights, self_attention=cross_self_attention, eps=eps,
            )
            for _ in self.text_layers_before_cross
        ])
        self.pooler = TwoStreamPooler(
            mode=pooled, text_width=text_width, vision_width=vision_width,
            cross_width=cross_width,
        )
        self.out_dim = self.pooler.out_dim
        self.substages: dict[str, StageKind] = {}
        if text_depth:
            self.substages["text_stream"] = StageKind.SINGLE_MODALITY
        if vision_depth:
            self.substages["vision_stream"] = StageKind.SINGLE_MODALITY
        if self.text_layers_before_cross:
            self.substages["co_attention"] = StageKind.INTERACTION
        self.substages["pooler"] = StageKind.INTERACTION
        self.schedule = self._schedule(text_depth, vision_depth)

    def _schedule(self, text_depth: int, vision_depth: int) -> tuple[tuple[str, int, int], ...]:
        """The forward's plan, one row per stage call: (stage, start, stop) runs a stream's
        layers ``start:stop`` (non-empty runs only); ("co_attention", i, i + 1) runs block i."""
        plan: list[tuple[str, int, int]] = []
        t0 = v0 = 0
        for i, (t1, v1) in enumerate(
            zip(self.text_layers_before_cross, self.vision_layers_before_cross, strict=True)
        ):
            if t1 > t0:
                plan.append(("text_stream", t0, t1))
            if v1 > v0:
                plan.append(("vision_stream", v0, v1))
            plan.append(("co_attention", i, i + 1))
            t0, v0 = t1, v1
        if text_depth > t0:
            plan.append(("text_stream", t0, text_depth))
        if vision_depth > v0:
            plan.append(("vision_stream", v0, vision_depth))
        return tuple(plan)

    def forward(self, text: Tokens, vision: Tokens) -> FusionOutput:
        t = self.text_in(text.embeds)  # (B, Nt, Dt)
        v = self.vision_in(vision.embeds)  # (B, Nv, Dv)
        t_mask = key_padding_mask(text.mask)  # (B, 1, 1, Nt)
        v_mask = key_padding_mask(vision.mask)  # (B, 1, 1, Nv)
        for stage, start, stop in self.schedule:
            if stage == "text_stream":
                t = self.text_stream(t, t_mask, start, stop)
            elif stage == "vision_stream":
                v = self.vision_stream(v, v_mask, start, stop)
            else:
                t, v = self.co_attention(t, v, t_mask, v_mask, start)
        return FusionOutput(pooled=self.pooler(t, v), text=t, vision=v)
