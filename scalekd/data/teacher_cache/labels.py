"""Cached top-k teacher outputs made into the teacher's soft labels for a batch.

Definition (the FKD scheme, "marginal smoothing"): for a crop the cache holds the teacher's k
largest log-probabilities log p_i, from the softmax of its logits over all C classes (at T=1).
The dense distribution is
    p_j = p_i                          for the k stored classes,
    p_j = (1 - sum_i p_i) / (C - k)    for each of the other C - k classes,
so the mass the teacher put outside its top-k is spread uniformly over the classes it was on.
The distillers receive log p as the teacher's logits, and soften it with their own temperature
as they soften a teacher's logits: softmax(log p / T) is proportional to p^(1/T), the same as
softmax(z / T) of the teacher's logits z whenever p is exact. With k = C the reconstruction is
exact and every logit method (kd, bkd, bkl, dkd, dist) gives its online loss on that crop;
with a small tail (sum_i p_i near 1) it is close.

Mixup/CutMix: the teacher never sees the mixed image, so its soft label is the mix of the two
images' distributions, p = lam p_a + (1 - lam) p_b, with the lambda (per batch, or per image in
timm's elem mode) and the pairing (image i with image B-1-i) that mixed the pixels; the
temperature then applies to the mixed distribution. That is not the teacher's output on the
mixed image (its function is not linear), which function matching needs: a recipe with
teacher.function_matching=true refuses the cache (replay_problems).

Memory: the dense (batch, C) float32 labels are built on the device per micro-batch: 1 MB for
batch 256 at C = 1000, 22 MB at C = 21,841 (ImageNet-21k teachers), the size of the student's
own logits; the loader moves only the top-k.
"""

from __future__ import annotations

from typing import Optional

import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target



def dense_probs(log_probs: torch.Tensor, classes: torch.Tensor,
                num_classes: int) -> torch.Tensor:
    """(B, C) teacher distributions from (B, k) stored log-probabilities and their classes."""
    top = log_probs.float().exp()
    k = top.shape[-1]
    rest = (1 - top.sum(-1, keepdim=True)).clamp_min(0) / max(num_classes - k, 1)
    return rest.expand(len(top), num_classes).clone().scatter_(1, classes.long(), top)


class SoftLabelMixup(Mixup):
    """timm's Mixup/CutMix, which also mixes the teacher's soft labels (B, C) of the batch with
    the lambda and the pairing of the images."""

    def __call__(self, x: torch.Tensor, target: torch.Tensor,
                 soft: Optional[torch.Tensor] = None):
        if soft is None:
            return super().__call__(x, target)
        # timm's __call__, keeping lam: a float (batch mode) or (B, 1) (elem and pair modes)
        assert len(x) % 2 == 0, "Mixup/CutMix pair the images of an even batch"
        mix = {"elem": self._mix_elem, "pair": self._mix_pair}.get(self.mode, self._mix_batch)
        lam = mix(x)
        target = mixup_target(target, self.num_classes, lam, self.label_smoothing,
                              self.multi_label)
        return x, target, soft * lam + soft.flip(0) * (1 - lam)
