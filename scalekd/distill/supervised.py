"""No teacher: the student trained on labels alone (the baseline every KD run is judged by)."""

from __future__ import annotations

from scalekd.distill.base import Distiller, register_distiller


@register_distiller("supervised")
class Supervised(Distiller):
    needs_teacher = False
    loss_terms = {"hard": 1.0}

    def forward(self, student_logits, teacher, targets):
        return {"hard": self.hard_label(student_logits, targets)}
