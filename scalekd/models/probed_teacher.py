"""Probe heads on a frozen encoder, and the probed model (encoder + head) that serves as a teacher.

The features follow DINOv2's linear evaluation, as the task-specific distillation paper does: for
an encoder with a class token (ViT, DeiT, DINOv2, BEiT, EVA), the class tokens of its last
`blocks` blocks, each after the final norm, concatenated in block order, then optionally the mean
of the last block's patch tokens (after the norm; register tokens are left out). An encoder
without a class token (CNN, Swin, Mixer) gives its pooled pre-logits feature instead, whatever
`blocks` and `patch_mean` say: the probe records which recipe it used.

Heads (the paper's appendix A.4: input m, hidden h, output C): `linear`, or `mlp`, one hidden
layer of width h with a GELU. The paper's values of h were lost from our copy of its text; we set
h to the encoder's embedding width d by default (between m = d x (blocks + patch_mean) and C, the
"progressive decrease toward C" the paper asks of h), and `probe.hidden` overrides it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
from safetensors.torch import load_file

from scalekd.models.weights import load_timm_model
from scalekd.recipe import DataCfg, TeacherCfg

PROBE_FILE, HEAD_FILE = "probe.json", "head.safetensors"


def has_class_token(model: nn.Module) -> bool:
    return (getattr(model, "cls_token", None) is not None
            and hasattr(model, "forward_intermediates"))


def probe_features(model: nn.Module, x: torch.Tensor, blocks: int,
                   patch_mean: bool) -> torch.Tensor:
    """(B, width) features of the images `x` (the encoder's own normalisation and size)."""
    if not has_class_token(model):
        return model.forward_head(model.forward_features(x), pre_logits=True)
    layers = model.forward_intermediates(x, indices=blocks, return_prefix_tokens=True, norm=True,
                                         output_fmt="NLC", intermediates_only=True)
    parts = [prefix[:, 0] for _, prefix in layers]  # the class token leads the prefix tokens
    if patch_mean:
        parts.append(layers[-1][0].mean(dim=1))
    return torch.cat(parts, dim=-1)


def make_head(kind: str, width: int, num_classes: int, hidden: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(width, num_classes)
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, num_classes))


class ProbedModel(nn.Module):
    """Encoder + head: logits = head(probe_features(encoder, x)). With an identity head its
    output is the features themselves (what the probe caches). As a teacher of feature methods,
    its features are the encoder's (`tapped_module`): the final stage's map, and for TPP the
    encoder's last stages as the proxy path; the head gives the logits."""

    tapped_module = "encoder"  # scalekd.models.taps.tapped_model

    def __init__(self, encoder: nn.Module, head: nn.Module, blocks: int, patch_mean: bool):
        super().__init__()
        self.encoder, self.head = encoder, head
        self.blocks, self.patch_mean = blocks, patch_mean
        self.pretrained_cfg = encoder.pretrained_cfg  # the encoder's mean/std serve the teacher

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return probe_features(self.encoder, x, self.blocks, self.patch_mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def create_encoder(cfg: TeacherCfg) -> nn.Module:
    """The teacher's timm model without its classifier, weights from teacher.checkpoint or
    the hub."""
    return load_timm_model(cfg, num_classes=0)


def read_probe(folder: Path) -> dict[str, Any]:
    """A probe folder's probe.json (what `scalekd probe` wrote)."""
    return json.loads((Path(folder) / PROBE_FILE).read_text())


def create_probed_model(cfg: TeacherCfg, num_classes: int) -> ProbedModel:
    """The encoder of `cfg` with the head trained by the probe in `cfg.probe`."""
    spec = read_probe(Path(cfg.probe))
    if spec["num_classes"] != num_classes:
        raise ValueError(f"teacher.probe={cfg.probe!r} predicts {spec['num_classes']} classes, "
                         f"the data has {num_classes}: probe the teacher on this data")
    state = load_file(str(Path(cfg.probe) / HEAD_FILE))
    features = spec["features"]
    head = make_head(spec["head"]["kind"], features["width"], num_classes, spec["head"]["hidden"])
    head.load_state_dict(state)
    return ProbedModel(create_encoder(cfg), head, features["blocks"], features["patch_mean"])


def teacher_record(cfg: TeacherCfg, input_size: int) -> dict[str, Any]:
    """What a probe folder pins of the encoder, checked when it serves as a teacher."""
    path = Path(cfg.checkpoint)
    return {"name": cfg.name, "kwargs": cfg.kwargs, "checkpoint": cfg.checkpoint,
            "checkpoint_bytes": path.stat().st_size if cfg.checkpoint else None,
            "input_size": input_size}


def probe_problems(cfg: TeacherCfg, data: DataCfg, input_size: int,
                   class_names: Optional[list[str]]) -> list[str]:
    """Whether the probe folder `cfg.probe` fits this teacher and data (before any compute);
    `class_names` are the data's, where known without reading it."""
    folder = Path(cfg.probe)
    missing = [f for f in (PROBE_FILE, HEAD_FILE) if not (folder / f).is_file()]
    if missing:
        return [f"teacher.probe={cfg.probe!r} is not a probe folder (no {' or '.join(missing)}): "
                "give the run.dir of a finished `scalekd probe`"]
    spec = read_probe(folder)
    probed, problems = spec["teacher"], []
    label = f"teacher.probe={cfg.probe!r}"
    if probed["name"] != cfg.name:
        problems.append(f"{label} probed teacher {probed['name']!r}, not teacher.name="
                        f"{cfg.name!r}")
    elif probed["kwargs"] != cfg.kwargs:
        problems.append(f"{label} probed {cfg.name} with kwargs {probed['kwargs']}, not "
                        f"teacher.kwargs={cfg.kwargs}")
    if (cfg.checkpoint and probed["checkpoint_bytes"] is not None and Path(cfg.checkpoint).is_file()
            and Path(cfg.checkpoint).stat().st_size != probed["checkpoint_bytes"]):
        problems.append(f"{label} probed the weights {probed['checkpoint']!r}, and "
                        f"teacher.checkpoint={cfg.checkpoint!r} is another file (size differs)")
    if probed["input_size"] != input_size:
        problems.append(f"{label} computed the teacher's features at {probed['input_size']} px, "
                        f"this run feeds it {input_size} px: set teacher.input_size="
                        f"{probed['input_size']}")
    count = len(class_names) if class_names is not None else len(data.classes) or None
    if count is not None and count != spec["num_classes"]:
        problems.append(f"{label} predicts {spec['num_classes']} classes, the data has "
                        f"{count}: probe the teacher on this data")
    elif class_names is not None and class_names != spec["classes"]:
        problems.append(f"{label} was probed on classes {spec['classes']}, the data's are "
                        f"{class_names}")
    return problems
