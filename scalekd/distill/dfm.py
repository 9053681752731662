"""ScaleKD's dual-view feature mimicking (DFM).

Spatial view: both maps L2-normalised along channels, squared error summed over channels and
positions, averaged over the batch. Frequency view: the same loss after a 2D DCT-II, dropping
the direct component (coefficient [0, 0]: the per-channel spatial mean, which dominates the
features of large ViTs and would drown the rest) and transforming back. With an orthonormal DCT
that is exactly subtracting each channel's spatial mean; the DCT form is kept because it is the
method's definition and lets other bands be filtered the same way. The DCT
(scalekd/kernels/dct.py) is a pair of fixed orthonormal basis matrices, built once per map shape
as buffers (the authors rebuilt them at every step).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from scalekd.kernels.dct import DCT2d


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
