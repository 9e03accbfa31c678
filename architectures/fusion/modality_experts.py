"""Mixture of modality experts (VLMo, Bao et al., NeurIPS 2022; microsoft/unilm ``vlmo/``).

One pre-LN transformer whose self-attention is shared by every modality and whose feed-forward
layer is chosen per token *by its modality* (fixed routing, not a learned sparse router): a vision
expert (V-FFN) for image tokens, a language expert (L-FFN) for text tokens and, in the top
layers, a vision-language expert (VL-FFN) over the joined sequence. Each expert has its own
LayerNorm; attention and FFN outputs are scaled by layer scale (``gamma_1``, ``gamma_2``; the
FFN scale is shared by a layer's experts); q and v are biased, k is not.

**Two ways to run the same weights** (``way``), because VLMo itself runs them two ways and the
costs differ in kind, not just in size:

- ``"fusion"`` (VQA, NLVR2: ``VLMo.infer``): [text; image] through every layer, V-FFN / L-FFN
  below ``vl_start``, VL-FFN from there (the *fusion layers*); pooled: tanh(Linear) on the text
  [CLS]. Stages: ``position_bias``, ``attention`` (the shared attention of the expert layers,
  over both modalities: interaction), ``v_ffn`` and ``l_ffn`` (one call per expert layer),
  ``fusion_layers`` (interaction, one call) with its own ``attention`` and ``vl_ffn``.
- ``"dual"`` (retrieval: ``infer_image_ft`` / ``infer_text_ft``): image and text each through
  the whole stack alone, V-FFN / L-FFN in every layer (VL-FFN never runs), ITC projections of
  each [CLS], a dot product. Stages: ``position_bias`` (two calls), ``attention`` (single
  modality: 2 x depth calls, image then text -- one set of modules serves both passes, so their
  calls are one stage), ``v_ffn`` and ``l_ffn`` (depth calls each), ``interaction``.

The way is a config field, not two methods, because the harness times ``forward`` and reads
``substages``: a preset (``vlmo-base``, ``vlmo-base-dual``) says which way is timed, and each way
declares the stages it really runs. Both ways build the same parameters (the pooler the fusion
way reads and the ITC projections the dual way reads are always there), so a checkpoint loads
into either; ``encode_image`` and ``encode_text`` give the dual way's embeddings whatever
``way`` the forward runs, and ``index_image`` / ``index_text`` / ``fuse`` let a retrieval
re-rank the dual way's top k with the fusion way (a what-if: VLMo publishes dual-way retrieval
only; ``architectures.rerank``). ``fusion_layers``' parameters include its layers' V-FFN and L-FFN,
which only the dual way runs.

Left out against the official module: pretraining-only heads (the VL-FFN ITC projections and
their logit scale, the ITM and MLM heads), dropout and drop path. The image patch embedding and
the text embeddings belong to the embedders (``absolute_positions=False``,
``add_positions=False`` for VLMo's presets, whose positions come from ``position_bias``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from feature_extractors import StageKind, Substage, Tokens

from ..layers import MLP, Attention, adapter, key_padding_mask
from .base import FusionOutput
from .dual_encoder import Contrastive
from .relative_position import RelativePositionBias

WAYS = ("fusion", "dual")


@dataclass(frozen=True)
class ModalityExpertsConfig:
    """Defaults: VLMo-Base's stack (``vlmo_base_patch16``) run as a fusion encoder, with no
    relative position bias (``image_grid=None``) so that any embedder composes with it; the
    embedders then carry absolute positions, the configuration VLMo's own Base-plus uses."""

    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    vl_start: int = 10  # vlffn_start_layer_index: VL-FFN in layers vl_start..depth-1
    way: str = "fusion"  # "fusion" or "dual"
    image_grid: tuple[int, int] | None = None  # patch grid of the relative position bias
    text_positions: int = 196  # max_text_len_of_initckpt: the bias table's text positions
    layer_scale: float | None = 0.1  # layer_scale_init_values; None: no layer scale
    eps: float = 1e-6

    def __post_init__(self) -> None:
        check_way(self.way, self.vl_start, self.depth)

    @property
    def text_width(self) -> int:
        return self.width

    @property
    def vision_width(self) -> int:
        return self.width


def check_way(way: str, vl_start: int, depth: int) -> None:
    if way not in WAYS:
        raise ValueError(f"unknown way {way!r}; valid: {', '.join(WAYS)}")
    if not 0 <= vl_start <= depth:
        raise ValueError(f"vl_start {vl_start} is outside the {depth} layers")


#: a composed pair's stack at test widths: two expert layers, one fusion layer
TINY_MODALITY_EXPERTS = ModalityExpertsConfig(width=64, depth=3, heads=2, mlp_dim=128,
                                              vl_start=2, text_positions=16)


def layer_scale(width: int, init: float | None) -> nn.Parameter | None:
    return None if init is None else nn.Parameter(torch.full((width,), init))


class SharedAttention(nn.Module):
    """x + gamma_1 * attention(LN(x)): the self-attention every modality shares."""

    def __init__(self, width: int, heads: int, *, eps: float, scale: float | None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads, key_bias=False)
        self.gamma = layer_scale(width, scale)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        y = self.attn(self.norm(x), attn_mask=attn_mask)
        return x + (y if self.gamma is None else self.gamma * y)


class Expert(nn.Module):
    """FFN(LN(x)): one modality's feed-forward with its own LayerNorm. The layer adds it back
    scaled by its FFN layer scale, which its experts share (a parameter is never a forward
    argument: module trackers would treat it as an activation)."""

    def __init__(self, width: int, mlp_dim: int, *, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp_dim, "gelu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(x))


class MultiwayLayer(nn.Module):
    """VLMo's ``Block``: shared attention, V-FFN, L-FFN and (fusion layers only) VL-FFN."""

    def __init__(self, width: int, heads: int, mlp_dim: int, *, eps: float,
                 scale: float | None, vl_expert: bool) -> None:
        super().__init__()
        self.attention = SharedAttention(width, heads, eps=eps, scale=scale)
        self.v_ffn = Expert(width, mlp_dim, eps=eps)
        self.l_ffn = Expert(width, mlp_dim, eps=eps)
        self.vl_ffn = Expert(width, mlp_dim, eps=eps) if vl_expert else None
        self.gamma = layer_scale(width, scale)

    def ffn(self, expert: str, x: torch.Tensor) -> torch.Tensor:
        """x + gamma_2 * expert(x), ``expert`` one of "v_ffn", "l_ffn", "vl_ffn"."""
        y = self.get_submodule(expert)(x)
        return x + (y if self.gamma is None else self.gamma * y)

    def modality(self, x: torch.Tensor, attn_mask: torch.Tensor | None,
                 expert: str) -> torch.Tensor:
        """One modality alone through the layer with its expert (``"v_ffn"``/``"l_ffn"``)."""
        return self.ffn(expert, self.attention(x, attn_mask))


class FusionLayers(nn.Module):
    """The top layers run as a fusion encoder: shared attention, then VL-FFN on every token.
    One call runs them all (the stage), their parts are named sets inside it."""

    def __init__(self, layers: list[MultiwayLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        n = len(layers)
        self.substages = {
            "attention": Substage(StageKind.INTERACTION, _every(n, "layers", "attention")),
            "vl_ffn": Substage(StageKind.INTERACTION, _every(n, "layers", "vl_ffn")),
        }

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None, pad: torch.Tensor
                ) -> torch.Tensor:
        """``bias``: these layers' relative bias (n, h, N, N) or None; ``pad``: ``_padding``."""
        for i, layer in enumerate(self.layers):
            x = layer.ffn("vl_ffn", layer.attention(x, _layer_mask(bias, pad, i)))
        return x


def _every(n: int, prefix: str, part: str) -> tuple[str, ...]:
    return tuple(f"{prefix}.{i}.{part}" for i in range(n))


def _padding(mask: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The padding mask SDPA reads: (B, 1, 1, N) bool, or 0 / -inf in the bias's dtype when a
    relative bias is added to it."""
    if bias is None:
        return key_padding_mask(mask)
    pad = torch.zeros(mask.shape[0], 1, 1, mask.shape[1], dtype=bias.dtype, device=bias.device)
    return pad.masked_fill(~mask[:, None, None, :], float("-inf"))


def _layer_mask(bias: torch.Tensor | None, pad: torch.Tensor, i: int) -> torch.Tensor:
    """Layer ``i``'s attention mask: the padding, plus its relative bias (h, N, N) if any."""
    return pad if bias is None else bias[i] + pad  # (B, h, N, N)


class ModalityExperts(nn.Module):
    """VLMo's multiway transformer over the text and image tokens, run ``way`` (module
    docstring); ``substages`` follow the way."""

    def __init__(self, *, text_dim: int, vision_dim: int, width: int, depth: int, heads: int,
                 mlp_dim: int, vl_start: int, way: str, image_grid: tuple[int, int] | None,
                 text_positions: int, layer_scale: float | None, eps: float) -> None:
        super().__init__()
        check_way(way, vl_start, depth)
        self.way, self.vl_start, self.depth = way, vl_start, depth
        self.out_dim = width
        self.text_in = adapter(text_dim, width)
        self.vision_in = adapter(vision_dim, width)
        self.modality = nn.Embedding(2, width)  # VLMo's token_type_embeddings: text 0, image 1
        self.position_bias = None if image_grid is None else RelativePositionBias(
            grid=tuple(image_grid), text_positions=text_positions, heads=heads, layers=depth)

        def layer(i: int) -> MultiwayLayer:
            return MultiwayLayer(width, heads, mlp_dim, eps=eps, scale=layer_scale,
                                 vl_expert=i >= vl_start)

        self.expert_layers = nn.ModuleList(layer(i) for i in range(vl_start))
        self.fusion_layers = FusionLayers([layer(i) for i in range(vl_start, depth)])
        self.norm = nn.LayerNorm(width, eps=eps)  # shared by both ways, as the original's
        self.pooler = nn.Linear(width, width)  # fusion way: tanh(Linear) on the text [CLS]
        self.interaction = Contrastive(vision_width=width, text_width=width, embed_dim=width)
        self.substages = self._stages()

    def _paths(self, part: str) -> tuple[str, ...]:
        """``part`` of every layer, bottom to top (``expert_layers`` then ``fusion_layers``)."""
        top = self.depth - self.vl_start
        return (_every(self.vl_start, "expert_layers", part)
                + _every(top, "fusion_layers.layers", part))

    def _stages(self) -> dict[str, StageKind | Substage]:
        stages: dict[str, StageKind | Substage] = {}
        single, joint = StageKind.SINGLE_MODALITY, StageKind.INTERACTION
        if self.way == "dual":
            if self.position_bias is not None:
                stages["position_bias"] = single
            stages["attention"] = Substage(single, self._paths("attention"))
            stages["v_ffn"] = Substage(single, self._paths("v_ffn"))
            stages["l_ffn"] = Substage(single, self._paths("l_ffn"))
            stages["interaction"] = joint
            return stages
        if self.position_bias is not None:
            stages["position_bias"] = joint
        if self.vl_start:
            experts = len(self.expert_layers)
            stages["attention"] = Substage(joint, _every(experts, "expert_layers", "attention"))
            stages["v_ffn"] = Substage(single, _every(experts, "expert_layers", "v_ffn"))
            stages["l_ffn"] = Substage(single, _every(experts, "expert_layers", "l_ffn"))
        if self.vl_start < self.depth:
            stages["fusion_layers"] = joint
        return stages

    def stack(self) -> list[MultiwayLayer]:
        """Every layer, bottom to top."""
        return [*self.expert_layers, *self.fusion_layers.layers]  # type: ignore[list-item]

    def _bias(self, text_len: int, image_len: int, grid: tuple[int, int] | None
              ) -> torch.Tensor | None:
        if self.position_bias is None:
            return None
        return self.position_bias(text_len, image_len, grid)

    def _alone(self, x: torch.Tensor, mask: torch.Tensor, expert: str,
               grid: tuple[int, int] | None = None) -> torch.Tensor:
        """One modality through every layer with its expert, final LayerNorm, [CLS]: (B, D);
        ``grid``: the image's patch grid (an image pass), None for text."""
        n = x.shape[1]
        bias = self._bias(n, 0, None) if expert == "l_ffn" else self._bias(0, n, grid)
        pad = _padding(mask, bias)
        for i, layer in enumerate(self.stack()):
            x = layer.modality(x, _layer_mask(bias, pad, i), expert)
        return self.norm(x)[:, 0]

    def image_features(self, vision: Tokens) -> torch.Tensor:
        """The dual way's image [CLS] after the stack with V-FFN: (B, D)."""
        v = self.vision_in(vision.embeds) + self.modality.weight[1]  # (B, Nv, D)
        return self._alone(v, vision.mask, "v_ffn", vision.grid)

    def text_features(self, text: Tokens) -> torch.Tensor:
        """The dual way's text [CLS] after the stack with L-FFN: (B, D)."""
        t = self.text_in(text.embeds) + self.modality.weight[0]  # (B, Nt, D)
        return self._alone(t, text.mask, "l_ffn")

    def encode_image(self, vision: Tokens) -> torch.Tensor:
        return F.normalize(self.interaction.vision_proj(self.image_features(vision)), dim=-1)

    def encode_text(self, text: Tokens) -> torch.Tensor:
        return F.normalize(self.interaction.text_proj(self.text_features(text)), dim=-1)

    #: why re-ranking (``architectures.rerank``) is not this model's published retrieval
    rerank_what_if = ("VLMo's published retrieval runs the dual way only (infer_image_ft / "
                      "infer_text_ft); re-ranking its top k with the fusion way is a what-if")

    @property
    def fuses(self) -> bool:
        """Whether ``forward`` is a joint forward of the pair (the fusion way), not a dual
        encoder's product: what a retrieval may run per pair."""
        return self.way == "fusion"

    def index_image(self, vision: Tokens) -> tuple[torch.Tensor, Tokens]:
        """An image's dual-way embedding and what the fusion way reads of it: its embedder
        tokens (every fusion-way layer attends over both modalities, so nothing else is the
        image's alone)."""
        return self.encode_image(vision), vision

    def index_text(self, text: Tokens) -> tuple[torch.Tensor, Tokens]:
        """A text's dual-way embedding and its embedder tokens (see ``index_image``)."""
        return self.encode_text(text), text

    def fuse(self, text: Tokens, vision: Tokens) -> FusionOutput:
        """The fusion way over a pair whatever ``way`` the forward runs (a re-ranking's
        what-if)."""
        return self._fuse(text, vision)

    def forward(self, text: Tokens, vision: Tokens) -> FusionOutput:
        if self.way == "dual":
            pooled, logits = self.interaction(self.image_features(vision),
                                              self.text_features(text))
            return FusionOutput(pooled=pooled, logits=logits)
        return self._fuse(text, vision)

    def _fuse(self, text: Tokens, vision: Tokens) -> FusionOutput:
        t = self.text_in(text.embeds) + self.modality.weight[0]  # (B, Nt, D)
        v = self.vision_in(vision.embeds) + self.modality.weight[1]  # (B, Nv, D)
        nt, nv = t.shape[1], v.shape[1]
        x = torch.cat([t, v], dim=1)  # (B, Nt + Nv, D)
        bias = self._bias(nt, nv, vision.grid)  # (depth, h, N, N) or None
        pad = _padding(torch.cat([text.mask, vision.mask], dim=1), bias)
        for i, layer in enumerate(self.expert_layers):
            x = layer.attention(x, _layer_mask(bias, pad, i))
            x = torch.cat([layer.ffn("l_ffn", x[:, :nt]), layer.ffn("v_ffn", x[:, nt:])], dim=1)
        if self.vl_start < self.depth:
            top = None if bias is None else bias[self.vl_start:]
            x = self.fusion_layers(x, top, pad)
        x = self.norm(x)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        return FusionOutput(pooled=pooled, text=x[:, :nt], vision=x[:, nt:])
