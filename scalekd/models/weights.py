"""A weights file loaded into a timm model, with an error that says what does not fit.

timm's pretrained path loads the file (weights_only, its key filters for upstream formats); when
that fails, torch's and safetensors' raw errors name neither the setting nor the fix, so the
file's tensor shapes (read from the safetensors header, no data) are compared with the model's
(built on the meta device, no memory) to say which tensors and what class count differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn

from scalekd.recipe import RecipeError, TeacherCfg

_SHOWN = 4  # tensors named per kind of mismatch


def load_timm_model(cfg: TeacherCfg, num_classes: int) -> nn.Module:
    """`cfg.name` with weights from teacher.checkpoint or the hub; num_classes=0 drops its
    classifier (a classifier in the file is then ignored)."""
    if cfg.checkpoint:
        return create_with_weights("teacher.checkpoint", cfg.checkpoint, cfg.name, num_classes,
                                   cfg.kwargs)
    # a registry name's classes, known before the download (an hf-hub: or local-dir: model's
    # are in its config.json, which timm reads when it creates the model)
    known = timm.models.get_pretrained_cfg(cfg.name)
    hub_classes = known.num_classes if known is not None else num_classes
    if num_classes and hub_classes != num_classes:
        raise ValueError(
            f"teacher {cfg.name!r} from the hub predicts {hub_classes} classes, the data has "
            f"{num_classes}: its head would be re-initialised at random. Train or probe a "
            "head for this data and pass it as teacher.checkpoint=FILE"
        )
    try:
        return timm.create_model(cfg.name, pretrained=True, num_classes=num_classes,
                                 **cfg.kwargs)
    except Exception as err:  # no network, unknown tag, gated repo, ...
        raise RuntimeError(
            f"could not fetch the weights of teacher {cfg.name!r} from the Hugging Face hub "
            f"({type(err).__name__}: {err}). Download them where there is internet and pass "
            "teacher.checkpoint=/path/to/weights.safetensors"
        ) from err


def weights_file_problems(files: dict[str, str]) -> list[str]:
    """Recipe field -> weights path, for the paths that are set: each must be a file."""
    return [f"{label}={path!r} does not exist; give the path of a weights file"
            for label, path in files.items() if path and not Path(path).is_file()]


def create_with_weights(label: str, path: str, name: str, num_classes: int,
                        kwargs: dict[str, Any]) -> nn.Module:
    """timm model `name` with the weights in `path` (the recipe field `label`); a file that
    cannot be read, or does not fit, is a RecipeError naming the field and what differs."""
    overlay = dict(file=path, **({"num_classes": num_classes} if num_classes else {}))
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes,
                                 pretrained_cfg_overlay=overlay, **kwargs)
    except TypeError:  # a keyword the model does not take: not the file's fault
        raise
    except Exception as err:  # torch, safetensors and pickle each raise their own kinds
        raise RecipeError([weights_problem(label, path, name, num_classes, kwargs, err)]) from err


def weights_problem(label: str, path: str, name: str, num_classes: int,
                    kwargs: dict[str, Any], err: Exception) -> str:
    where = f"{label}={path!r}"
    shapes = _safetensors_shapes(path)
    if shapes is None:
        head = Path(path).read_bytes()[:2] if Path(path).is_file() else b""
        kind = ("a torch checkpoint" if head[:2] == b"PK" or head[:1] == b"\x80"
                else "neither a safetensors file nor a torch checkpoint (damaged?)")
        return (f"{where} cannot be loaded into {name}: it is {kind}; "
                f"{type(err).__name__}: {str(err).strip()[:600]}")
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=num_classes, **kwargs)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    classifier = model.pretrained_cfg.get("classifier") or ""
    head = f"{classifier}.weight"
    parts = []
    if num_classes and head in shapes and head in expected and shapes[head] != expected[head]:
        parts.append(f"its classifier {head} {shapes[head]} predicts {shapes[head][0]} classes, "
                     f"the data has {num_classes}")
    differ = [f"{k} {shapes[k]} (the model's {expected[k]})" for k in expected
              if k in shapes and shapes[k] != expected[k] and not k.startswith(classifier + ".")]
    missing = [k for k in expected if k not in shapes]
    extra = [k for k in shapes if k not in expected]
    for what, keys in (("tensors of another shape", differ), ("tensors missing", missing),
                       ("tensors the model does not have", extra)):
        if keys:
            more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
            parts.append(f"{len(keys)} {what}: {', '.join(keys[:_SHOWN])}{more}")
    if not parts:
        parts.append(f"{type(err).__name__}: {str(err).strip()[:600]}")
    return (f"{where} does not fit {name}" + (f" with kwargs {kwargs}" if kwargs else "")
            + f" and {num_classes or 'no'} classes: " + "; ".join(parts)
            + ". Give the weights of this model (the same kwargs as when they were trained)")


def _safetensors_shapes(path: str):
    """Tensor name -> shape from a safetensors file's header; None if it is not one."""
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception:  # SafetensorError, OSError: not (or not a readable) safetensors file
        return None
