"""Vanilla KD (Hinton et al. 2015): KL between temperature-softened teacher and student
distributions, scaled by T^2 so its gradient keeps its size as T changes, plus the hard-label
loss. VanillaKD (Hao et al. 2023) runs it with T=1 and equal weights beside a BCE label loss."""

from __future__ import annotations

from scalekd.distill.base import Distiller, register_distiller
from scalekd.kernels.kd_loss import kd_loss  # fused on GPU: T^2 KL(t/T || s/T), batch mean


@register_distiller("kd")
class VanillaKD(Distiller):
    listed_at = 1
    loss_terms = {"hard": 0.5, "kd": 0.5}

    def forward(self, student_logits, teacher, targets):
        return {"kd": kd_loss(student_logits, teacher.logits, self.temperature),
                **self.hard_term(student_logits, targets)}
