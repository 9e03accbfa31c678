"""Transformer building blocks on ``torch.nn.functional.scaled_dot_product_attention``.

Pre-LN blocks (ViT, ViLT, CLIP). Leaf modules take explicit sizes, never a config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class QuickGELU(nn.Module):
    """CLIP's activation: x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "quick_gelu": QuickGELU}


def key_padding_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, N) bool, True = attend -> the (B, 1, 1, N) boolean mask SDPA broadcasts."""
    return None if mask is None else mask[:, None, None, :]


class Attention(nn.Module):
    """Multi-head attention; queries from ``x``, keys and values from ``context`` (self-attention
    when ``context`` is None), so the same module serves co-attention. The heads work at
    ``inner`` width (default ``width``), which may differ from the query stream's: ViLBERT's
    bi-attention has 768-wide text queries, 1024-wide heads, output projected back to 768.
    ``key_bias=False`` leaves out the key projection's bias (BEiT and VLMo bias q and v only;
    a key bias shifts every score of a query equally, which softmax ignores)."""

    def __init__(self, width: int, heads: int, *, context_width: int | None = None,
                 inner: int | None = None, key_bias: bool = True) -> None:
        super().__init__()
        inner = inner or width
        if inner % heads:
            raise ValueError(f"width {inner} is not divisible by {heads} heads")
        context_width = context_width or width
        self.heads = heads
        self.query = nn.Linear(width, inner)
        self.key = nn.Linear(context_width, inner, bias=key_bias)
        self.value = nn.Linear(context_width, inner)
        self.out = nn.Linear(inner, width)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        context = x if context is None else context
        b, n, _ = x.shape
        m = context.shape[1]
        q = self.query(x).view(b, n, self.heads, -1).transpose(1, 2)  # (B, h, N, inner/h)
        k = self.key(context).view(b, m, self.heads, -1).transpose(1, 2)  # (B, h, M, inner/h)
        v = self.value(context).view(b, m, self.heads, -1).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        return self.out(y.transpose(1, 2).reshape(b, n, -1))  # (B, N, width)


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, activation: str = "gelu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = ACTIVATIONS[activation]()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)); x + mlp(ln(x))."""

    def __init__(
        self, width: int, heads: int, mlp_dim: int, *, activation: str = "gelu", eps: float = 1e-6
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp_dim, activation)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)
        return x + self.mlp(self.norm2(x))


class Encoder(nn.Module):
    """A stack of pre-LN blocks over (B, N, D)."""

    def __init__(
        self,
        *,
        width: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        activation: str = "gelu",
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.width = width
        self.blocks = nn.ModuleList(
            Block(width, heads, mlp_dim, activation=activation, eps=eps) for _ in range(depth)
        )

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        attn_mask = key_padding_mask(mask)
        for block in self.blocks:
            x = block(x, attn_mask=attn_mask, is_causal=is_causal)
        return x


# --- post-LN (BERT-style) blocks: ViLBERT and LXMERT -----------------------------------


class AttentionSublayer(nn.Module):
    """Post-LN attention sublayer: LN(x + attention(x, context)) -- BERT's ``BertAttention``
    (self-attention, ``context`` None) or LXMERT's ``LxmertCrossAttentionLayer``."""

    def __init__(
        self,
        width: int,
        heads: int,
        *,
        context_width: int | None = None,
        inner: int | None = None,
        eps: float,
    ) -> None:
        super().__init__()
        self.attention = Attention(width, heads, context_width=context_width, inner=inner)
        self.norm = nn.LayerNorm(width, eps=eps)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.norm(x + self.attention(x, context, attn_mask=attn_mask))


class FeedForward(nn.Module):
    """Post-LN feed-forward sublayer: LN(x + fc2(gelu(fc1(x)))) -- BERT's intermediate and
    output."""

    def __init__(self, width: int, mlp_dim: int, *, eps: float) -> None:
        super().__init__()
        self.mlp = MLP(width, mlp_dim, "gelu")
        self.norm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.mlp(x))


class PostLNBlock(nn.Module):
    """A BERT layer (``BertLayer`` / ``LxmertLayer``): post-LN self-attention, post-LN FFN."""

    def __init__(self, width: int, heads: int, mlp_dim: int, *, eps: float) -> None:
        super().__init__()
        self.attn = AttentionSublayer(width, heads, eps=eps)
        self.ffn = FeedForward(width, mlp_dim, eps=eps)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.ffn(self.attn(x, attn_mask=attn_mask))


def adapter(in_dim: int, out_dim: int) -> nn.Module:
    """Identity when widths agree, else a linear map: how any embedder fits any fusion."""
    return nn.Identity() if in_dim == out_dim else nn.Linear(in_dim, out_dim)
