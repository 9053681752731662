"""ScaleKD's dual-view feature mimicking (DFM).

Spatial view: both maps L2-normalised along channels, squared error summed over channels and
positions, averaged over the batch. Frequency view: the same loss after a 2D DCT-II, dropping
the direct component (coefficient [0, 0]: the per-channel spatial mean, which dominates the
features of large ViTs and would drown the rest) and transforming back. With an orthonormal DCT
that is exactly subtracting each channel's spatial mean; the DCT form is kept because it is the
method's definition and lets other bands be filtered the same way. The DCT is a pair of fixed
orthonormal basis matrices, built once per map shape as buffers (the authors rebuilt them at
every step).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def dct_basis(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix D (n x n): coefficients = D @ signal, signal = D.T @ coeffs."""
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    basis = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    basis[0] /= math.sqrt(2.0)
    return basis.float()


class DCT2d(nn.Module):
    def __init__(self, height: int, width: int):
        super().__init__()
        # not saved in checkpoints: a function of the shape only
        self.register_buffer("rows", dct_basis(height), persistent=False)
        self.register_buffer("cols", dct_basis(width), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rows.float() @ x @ self.cols.float().T

    def inverse(self, coeffs: torch.Tensor) -> torch.Tensor:
        return self.rows.float().T @ coeffs @ self.cols.float()

    def without_direct_component(self, x: torch.Tensor) -> torch.Tensor:
        coeffs = self(x)
        keep = torch.ones_like(coeffs[:1, :1])
        keep[..., 0, 0] = 0
        return self.inverse(coeffs * keep)


def spatial_mimic_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Sum of squared differences of channel-L2-normalised maps, / batch size."""
    s = F.normalize(student.float(), dim=1)
    t = F.normalize(teacher.float(), dim=1)
    return (s - t).pow(2).sum() / student.shape[0]


class FrequencyMimicLoss(nn.Module):
    def __init__(self, height: int, width: int):
        super().__init__()
        self.dct = DCT2d(height, width)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return spatial_mimic_loss(self.dct.without_direct_component(student.float()),
                                  self.dct.without_direct_component(teacher.float()))
