"""Distillation methods, one per file, registered by name.

A method is a `Distiller` subclass: it receives the student's logits (and, for feature methods,
its stage-3/4 maps), the teacher's output and the targets, and returns a dict of named,
unweighted loss terms. The trainer multiplies each by its weight (`distill.weights`, else the
method's defaults) and sums.
"""

from scalekd.distill.base import (DISTILLERS, Distiller, FeatureShapes, create_distiller,
                                  register_distiller)
from scalekd.distill import bkd, dist, dkd, kd, scalekd, supervised  # noqa: F401  (registers)

__all__ = ["DISTILLERS", "Distiller", "FeatureShapes", "create_distiller", "register_distiller"]
