"""DIST (Huang et al., NeurIPS 2022): match the teacher's relations rather than its exact
probabilities, with Pearson correlation, which ignores shifts and scales of the predictions.

- "inter" (inter-class relation): per image, the correlation between the student's and the
  teacher's softmax(./tau) over classes; the loss is 1 - its batch mean.
- "intra" (intra-class relation): the same per class, over the images of the batch (the columns).

Both are tau^2-scaled (tau = `distill.temperature`, 1 on ImageNet as in the original), weights
beta=1 gamma=1 and the label loss at 1 (the `loss_terms` defaults, VanillaKD appendix C).
"intra" is a batch statistic: it is computed over each process's micro-batch, as the original
computes it per GPU, so it depends on the per-process batch size. As in the original, an eps of
1e-8 in the denominator makes a column with no spread (a class no image in the batch scores)
count as uncorrelated rather than divide by zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scalekd.distill.base import Distiller, register_distiller


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """The Pearson correlation of each row of `a` with the same row of `b`."""
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + eps)


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
              tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(inter, intra): tau^2 * (1 - mean correlation) over rows, then over columns."""
    y_s = F.softmax(student_logits.float() / tau, dim=-1)
    y_t = F.softmax(teacher_logits.float() / tau, dim=-1)
    inter = 1 - pearson_rows(y_s, y_t).mean()
    intra = 1 - pearson_rows(y_s.T, y_t.T).mean()
    return inter * tau**2, intra * tau**2


@register_distiller("dist")
class DIST(Distiller):
    listed_at = 4
    loss_terms = {"hard": 1.0, "inter": 1.0, "intra": 1.0}

    def forward(self, student_logits, teacher, targets):
        inter, intra = dist_loss(student_logits, teacher.logits, self.temperature)
        return {"inter": inter, "intra": intra, **self.hard_term(student_logits, targets)}
