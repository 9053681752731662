"""Distillation methods, one per file, registered by name.

A method is a `Distiller` subclass in a module of this folder, registered with
`@register_distiller("name")`: every module here is imported when the package is, so a new method
is one new file (docs/methods.md, "Adding a method"). It receives the student's logits (and, for feature
methods, its stage-3/4 maps), the teacher's output and the targets, and returns a dict of named,
unweighted loss terms. The trainer multiplies each by its weight (`distill.weights`, else the
method's defaults) and sums.
"""

from scalekd.distill.base import (DISTILLERS, Distiller, FeatureShapes, create_distiller,
                                  discover_methods, register_distiller)

discover_methods(__path__, __name__)

__all__ = ["DISTILLERS", "Distiller", "FeatureShapes", "create_distiller", "register_distiller"]
