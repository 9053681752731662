"""DFM: the DCT is orthonormal and invertible, dropping its direct component is subtracting the
per-channel mean, and both views' losses match a hand computation."""

import math

import torch

from scalekd.distill.dfm import FrequencyMimicLoss, spatial_mimic_loss
from scalekd.kernels.dct import DCT2d, dct_basis


def test_dct_matches_its_definition():
    n = 5
    x = torch.randn(n, dtype=torch.float64)
    want = torch.tensor([sum(x[i] * math.cos(math.pi * (2 * i + 1) * k / (2 * n))
                             for i in range(n)) * math.sqrt((1 if k else 0.5) * 2 / n)
                         for k in range(n)], dtype=torch.float64)
    torch.testing.assert_close(dct_basis(n).double() @ x, want, rtol=1e-5, atol=1e-5)


def test_dct_then_inverse_is_identity():
    dct = DCT2d(7, 4)
    x = torch.randn(2, 3, 7, 4)
    torch.testing.assert_close(dct.inverse(dct(x)), x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dct.rows @ dct.rows.T, torch.eye(7), rtol=1e-5, atol=1e-5)


def test_removing_the_direct_component_subtracts_the_channel_mean():
    dct = DCT2d(6, 6)
    x = torch.randn(2, 3, 6, 6) + 5.0
    torch.testing.assert_close(dct.without_direct_component(x),
                               x - x.mean(dim=(2, 3), keepdim=True), rtol=1e-5, atol=1e-5)


def test_bases_are_buffers_built_once_and_not_saved():
    loss = FrequencyMimicLoss(7, 7)
    assert {n for n, _ in loss.named_buffers()} == {"dct.rows", "dct.cols"}
    assert loss.state_dict() == {}


def test_spatial_view_by_hand():
    s, t = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    total = 0.0
    for b in range(2):
        for i in range(3):
            for j in range(3):
                sv, tv = s[b, :, i, j], t[b, :, i, j]
                total += ((sv / sv.norm() - tv / tv.norm()) ** 2).sum()
    torch.testing.assert_close(spatial_mimic_loss(s, t), total / 2)


def test_frequency_view_is_the_spatial_view_of_mean_free_maps():
    s, t = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5) + 3.0
    centred = lambda x: x - x.mean(dim=(2, 3), keepdim=True)  # noqa: E731
    torch.testing.assert_close(FrequencyMimicLoss(5, 5)(s, t),
                               spatial_mimic_loss(centred(s), centred(t)), rtol=1e-4, atol=1e-5)
    assert FrequencyMimicLoss(5, 5)(t, t) == 0
