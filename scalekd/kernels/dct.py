"""The orthonormal 2D DCT-II as two fixed basis matrices: ScaleKD's frequency view
(distill/dfm.py) and the spectra of `scalekd diagnose` (diagnostics/spectrum.py) share it."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


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
