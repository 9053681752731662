"""ScaleKD's cross-attention projector (CAP): a student feature map -> tokens in the teacher's
feature space, on the teacher's grid.

Built as the authors built it (deep-optimization/ScaleKD, `AttentionProjector` in
mmcls/models/dis_losses/fmd.py): the student map goes through a 3x3 conv that keeps the student's
width Cs + norm + ReLU, plus a learned position embedding over the student grid; keys and values
are Linear(Cs -> Ct), so the change of width happens in the attention. Queries on the teacher's
grid (a learned table, N(0, 1) as nn.Embedding starts, or the tokens of the teacher's proxy path
under TPP) pass a 1x1 projection + ReLU and attend over the student tokens in one global
cross-attention layer whose logits carry an extra softmax scale (per pair in the authors'
configs: 5, 1 or 0.2). No residual around the attention (queries and output live in different
spaces); then LayerNorm and a ReLU FFN (mmcv's FFN: 4x width, identity shortcut). Attention runs
through torch SDPA (fused kernels where the device has them) or `teacher.attention`.

The norm after the conv is the authors' choice per student: BatchNorm for ResNet, MobileNet,
ConvNeXt, DeiT/ViT and Mixer students, LayerNorm2d for Swin students (`cap_norm` below).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d, Mlp, trunc_normal_

from scalekd.models.attention import attend
from scalekd.models.taps import map_to_tokens

CAP_NORMS = ("batchnorm", "layernorm")


def cap_norm(student_class: str) -> str:
    """The authors' norm for a timm student class: LayerNorm2d for Swin students only."""
    return "layernorm" if student_class.startswith("SwinTransformer") else "batchnorm"


def fitted_heads(width: int, wanted: int) -> int:
    """The largest head count <= wanted that divides the width (tiny test models)."""
    return next(h for h in range(min(wanted, width), 0, -1) if width % h == 0)


class CrossAttentionProjector(nn.Module):
    def __init__(self, in_chs: int, student_grid: tuple[int, int], out_chs: int,
                 query_grid: tuple[int, int], heads: int, softmax_scale: float = 5.0,
                 norm: str = "batchnorm", learned_queries: bool = True,
                 attention: str = "sdpa"):
        super().__init__()
        self.attention = attention  # backend name: scalekd/models/attention.py
        if out_chs % heads:
            raise ValueError(f"CAP width {out_chs} is not divisible by {heads} heads")
        if norm not in CAP_NORMS:
            raise ValueError(f"CAP norm {norm!r} is not one of {CAP_NORMS}")
        self.heads, self.query_grid = heads, query_grid
        self.scale = (out_chs // heads) ** -0.5 * softmax_scale
        batch_norm = norm == "batchnorm"
        self.embed = nn.Sequential(
            # a bias before BatchNorm would be cancelled by it: left out
            nn.Conv2d(in_chs, in_chs, 3, padding=1, bias=not batch_norm),
            nn.BatchNorm2d(in_chs) if batch_norm else LayerNorm2d(in_chs),
            nn.ReLU(inplace=True),
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, in_chs, *student_grid))
        trunc_normal_(self.pos_embed, std=0.02)
        self.queries = None
        if learned_queries:  # N(0, 1), nn.Embedding's initialisation, as the authors' table
            self.queries = nn.Parameter(torch.randn(1, query_grid[0] * query_grid[1], out_chs))
        self.query_proj = nn.Sequential(nn.Linear(out_chs, out_chs), nn.ReLU(inplace=True))
        self.q = nn.Linear(out_chs, out_chs)
        self.kv = nn.Linear(in_chs, 2 * out_chs)
        self.out = nn.Linear(out_chs, out_chs)
        self.norm = nn.LayerNorm(out_chs)
        self.ffn = Mlp(out_chs, 4 * out_chs, act_layer=nn.ReLU)

    def forward(self, student_map: torch.Tensor,
                queries: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, Cs, Hs, Ws) [+ (B, Hq*Wq, Ct) queries] -> (B, Hq*Wq, Ct) tokens."""
        tokens = map_to_tokens(self.embed(student_map) + self.pos_embed)
        if queries is None:
            queries = self.queries.expand(tokens.shape[0], -1, -1)
        queries = self.query_proj(queries.to(tokens.dtype))
        b, n, c = queries.shape
        q = self.q(queries).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv(tokens).view(b, tokens.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = attend(q, k, v, scale=self.scale, backend=self.attention)
        x = self.norm(self.out(attended.transpose(1, 2).reshape(b, n, c)))
        return x + self.ffn(x)
