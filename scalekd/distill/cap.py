"""ScaleKD's cross-attention projector (CAP): a student feature map -> tokens in the teacher's
feature space, on the teacher's grid.

The student map goes through a 3x3 conv + norm + ReLU to the teacher's width, plus a learned
position embedding over the student grid. Queries on the teacher's grid (a learned table, or the
tokens of the teacher's proxy path under TPP) pass a 1x1 projection + ReLU and attend over the
student tokens in one global cross-attention layer whose logits carry an extra softmax scale
(5 in the authors' configs: sharper attention than head_dim^-0.5 alone). No residual around the
attention (queries and output live in different spaces); then LayerNorm and an FFN with its
shortcut. Attention runs through torch SDPA (fused kernels where the device has them).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d, Mlp, trunc_normal_

from scalekd.models.attention import attend
from scalekd.models.taps import map_to_tokens


class CrossAttentionProjector(nn.Module):
    def __init__(self, in_chs: int, student_grid: tuple[int, int], out_chs: int,
                 query_grid: tuple[int, int], heads: int, softmax_scale: float = 5.0,
                 batch_norm: bool = True, learned_queries: bool = True,
                 attention: str = "sdpa"):
        super().__init__()
        self.attention = attention  # backend name: scalekd/models/attention.py
        if out_chs % heads:
            raise ValueError(f"CAP width {out_chs} is not divisible by {heads} heads")
        self.heads, self.query_grid = heads, query_grid
        self.scale = (out_chs // heads) ** -0.5 * softmax_scale
        self.embed = nn.Sequential(
            nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=not batch_norm),
            nn.BatchNorm2d(out_chs) if batch_norm else LayerNorm2d(out_chs),
            nn.ReLU(inplace=True),
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, out_chs, *student_grid))
        trunc_normal_(self.pos_embed, std=0.02)
        self.queries = None
        if learned_queries:
            self.queries = nn.Parameter(torch.zeros(1, query_grid[0] * query_grid[1], out_chs))
            trunc_normal_(self.queries, std=0.02)
        self.query_proj = nn.Sequential(nn.Linear(out_chs, out_chs), nn.ReLU(inplace=True))
        self.q = nn.Linear(out_chs, out_chs)
        self.kv = nn.Linear(out_chs, 2 * out_chs)
        self.out = nn.Linear(out_chs, out_chs)
        self.norm = nn.LayerNorm(out_chs)
        self.ffn = Mlp(out_chs, 4 * out_chs)

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
