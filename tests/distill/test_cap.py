"""CAP against the authors' projector graph (deep-optimization/ScaleKD at 478a7db,
mmcls/models/dis_losses/fmd.py `AttentionProjector` + attention.py `WindowMultiheadPosAttention`
with one window + mmcv's FFN), written out below in plain torch from those facts: with the same
weights copied across, our CAP gives the same output and gradients; a GELU FFN, a widening conv
or a missing softmax scale would not."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d

from scalekd.distill.cap import CrossAttentionProjector, cap_norm


class AuthorsProjector(nn.Module):
    """The authors' graph: conv3x3(Cs->Cs, bias) + norm + ReLU + pos; queries from an
    nn.Embedding through conv1x1 + ReLU; q Linear(Ct->Ct), k/v Linear(Cs->Ct); logits x
    head_dim^-0.5 x softmax_scale; proj; then ffn(norm(x)) with FFN = x + fc2(relu(fc1(x)))."""

    def __init__(self, cs, ct, grid, q_grid, heads, softmax_scale, layernorm=False):
        super().__init__()
        self.heads, self.q_grid, self.ct = heads, q_grid, ct
        self.proj_student = nn.Sequential(nn.Conv2d(cs, cs, 3, padding=1),
                                          LayerNorm2d(cs) if layernorm else nn.BatchNorm2d(cs),
                                          nn.ReLU())
        self.pos_embed = nn.Parameter(torch.randn(1, cs, *grid) * 0.02)
        self.query = nn.Embedding(q_grid[0] * q_grid[1], ct)
        self.proj_pos = nn.Sequential(nn.Conv2d(ct, ct, 1), nn.ReLU())
        self.q, self.k, self.v = nn.Linear(ct, ct), nn.Linear(cs, ct), nn.Linear(cs, ct)
        self.proj = nn.Linear(ct, ct)
        self.norm = nn.LayerNorm(ct)
        self.fc1, self.fc2 = nn.Linear(ct, 4 * ct), nn.Linear(4 * ct, ct)
        self.scale = (ct // heads) ** -0.5 * softmax_scale

    def forward(self, x, query=None):
        b = x.shape[0]
        h, w = self.q_grid
        if query is None:
            query = self.query.weight.view(1, h, w, self.ct).permute(0, 3, 1, 2).repeat(b, 1, 1, 1)
        else:
            query = query.permute(0, 2, 1).reshape(b, -1, h, w)
        s = self.proj_student(x) + self.pos_embed
        query = self.proj_pos(query).flatten(2).transpose(1, 2)
        tokens = s.flatten(2).transpose(1, 2)

        def split(t):
            return t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2)

        q, k, v = split(self.q(query)), split(self.k(tokens)), split(self.v(tokens))
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(-1)
        out = self.proj((attn @ v).transpose(1, 2).reshape(b, -1, self.ct))
        out = self.norm(out)
        return out + self.fc2(F.relu(self.fc1(out)))


def copy_authors_weights(cap: CrossAttentionProjector, ref: AuthorsProjector) -> None:
    """The authors' parameters into ours (their conv bias before BatchNorm has no counterpart:
    train-mode BatchNorm cancels it)."""
    with torch.no_grad():
        cap.embed[0].weight.copy_(ref.proj_student[0].weight)
        if cap.embed[0].bias is not None:
            cap.embed[0].bias.copy_(ref.proj_student[0].bias)
        cap.embed[1].load_state_dict(ref.proj_student[1].state_dict())
        cap.pos_embed.copy_(ref.pos_embed)
        if cap.queries is not None:
            cap.queries.copy_(ref.query.weight[None])
        cap.query_proj[0].weight.copy_(ref.proj_pos[0].weight[:, :, 0, 0])
        cap.query_proj[0].bias.copy_(ref.proj_pos[0].bias)
        cap.q.load_state_dict(ref.q.state_dict())
        cap.kv.weight.copy_(torch.cat([ref.k.weight, ref.v.weight]))
        cap.kv.bias.copy_(torch.cat([ref.k.bias, ref.v.bias]))
        cap.out.load_state_dict(ref.proj.state_dict())
        cap.norm.load_state_dict(ref.norm.state_dict())
        cap.ffn.fc1.load_state_dict(ref.fc1.state_dict())
        cap.ffn.fc2.load_state_dict(ref.fc2.state_dict())


# (Cs, student grid, Ct, query grid, heads, softmax scale, norm): ResNet stage 3 under Swin-L
# (widths / 32), a DeiT stage 4 onto a 7x7 grid, a Swin student, EVA-L -> ResNet's 0.2
CASES = [(32, (6, 6), 24, (6, 6), 4, 5.0, "batchnorm"),
         (12, (6, 6), 48, (3, 3), 8, 5.0, "batchnorm"),
         (12, (4, 4), 24, (4, 4), 6, 1.0, "layernorm"),
         (32, (6, 6), 32, (8, 8), 8, 0.2, "batchnorm")]


def pair(cs, grid, ct, q_grid, heads, scale, norm, learned=True):
    torch.manual_seed(0)
    ref = AuthorsProjector(cs, ct, grid, q_grid, heads, scale, layernorm=norm == "layernorm")
    for p in ref.parameters():  # away from the initial values, so every weight counts
        p.data.add_(torch.randn_like(p) * 0.1)
    cap = CrossAttentionProjector(cs, grid, ct, q_grid, heads, scale, norm, learned,
                                  attention="eager")
    copy_authors_weights(cap, ref)
    return cap, ref


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("learned", [True, False])
def test_cap_is_the_authors_projector(case, learned):
    cap, ref = pair(*case, learned=learned)
    cs, grid, ct, q_grid = case[:4]
    x = torch.randn(3, cs, *grid, requires_grad=True)
    queries = None if learned else torch.randn(3, q_grid[0] * q_grid[1], ct)
    ours, theirs = cap(x, queries), ref(x, queries)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    (g_ours,) = torch.autograd.grad(ours.square().sum(), x)
    (g_theirs,) = torch.autograd.grad(theirs.square().sum(), x)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-4, atol=1e-5)


def test_widths_and_initialisation_are_the_authors():
    cap = CrossAttentionProjector(64, (7, 7), 96, (7, 7), 8)
    assert cap.embed[0].weight.shape == (64, 64, 3, 3)  # keeps the student's width
    assert isinstance(cap.embed[1], nn.BatchNorm2d) and cap.embed[0].bias is None
    assert cap.kv.weight.shape == (2 * 96, 64) and cap.pos_embed.shape == (1, 64, 7, 7)
    assert isinstance(cap.ffn.act, nn.ReLU)
    big = CrossAttentionProjector(8, (4, 4), 256, (16, 16), 8)
    assert big.queries.std().item() == pytest.approx(1.0, abs=0.02)  # N(0, 1), nn.Embedding's


def test_a_gelu_ffn_is_not_the_authors():
    """The comparison above can fail: the same weights with the FFN's ReLU swapped for a GELU
    move the output."""
    cap, ref = pair(*CASES[0])
    cap.ffn.act = nn.GELU()
    x = torch.randn(3, 32, 6, 6)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(cap(x), ref(x), rtol=1e-3, atol=1e-3)


def test_authors_norm_per_student():
    assert [cap_norm(c) for c in ("ResNet", "ConvNeXt", "VisionTransformer", "MlpMixer",
                                  "EfficientNet", "SwinTransformer", "SwinTransformerV2")] == [
        "batchnorm"] * 5 + ["layernorm"] * 2
