"""What a timm model expects of its input (resolution, interpolation, mean/std, crop), as timm
resolves it: `timm.data.resolve_model_data_config` of the model as `timm.create_model` builds
it from the name and kwargs a recipe gives (on the meta device: no memory, no weights). A
registry name, an `hf-hub:` repo (its config.json, from the Hugging Face cache offline) and a
`local-dir:` folder (a timm folder, e.g. an export's student_timm/) all get their own
pretrained_cfg's values, never ImageNet's by default.

No import of the package: the models and the data layers (independent of each other) both read
it (the teacher's and the student's normalisation, evaluation's interpolation)."""

from __future__ import annotations

from typing import Any, Optional

import timm
import torch

_RESOLVED: dict[tuple[str, str], dict] = {}


def data_config(name: str, kwargs: Optional[dict[str, Any]] = None) -> dict:
    """timm's data config of model `name` built with `kwargs` (timm.create_model's): keys
    input_size (C, H, W), interpolation, mean, std, crop_pct, crop_mode, and fixed_input_size
    (the model takes only that resolution: ViT, Swin, Mixer without dynamic_img_size). An
    `img_size` in kwargs (an int, or (H, W)) is the model's resolution (timm leaves the
    pretrained_cfg's as it was). Raises what timm raises for a name it cannot resolve (unknown, a hub repo neither
    reachable nor cached)."""
    kwargs = dict(kwargs or {})
    key = (name, repr(sorted(kwargs.items())))
    if key not in _RESOLVED:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, **kwargs)
        resolved = timm.data.resolve_model_data_config(model, args=_size_args(kwargs))
        resolved["mean"], resolved["std"] = tuple(resolved["mean"]), tuple(resolved["std"])
        resolved["input_size"] = tuple(resolved["input_size"])
        resolved["fixed_input_size"] = bool(model.pretrained_cfg.get("fixed_input_size")
                                            and not kwargs.get("dynamic_img_size"))
        _RESOLVED[key] = resolved
    return dict(_RESOLVED[key])


def _size_args(kwargs: dict[str, Any]) -> Optional[dict]:
    """timm's data-config args for the resolution the kwargs build the model for."""
    size = kwargs.get("img_size")
    if isinstance(size, int):
        return {"img_size": size}
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return {"input_size": (kwargs.get("in_chans", 3), *size)}
    return None


def config_problem(key: str, name: str, kwargs: Optional[dict[str, Any]] = None) -> list[str]:
    """The problem of a recipe field `key` (e.g. student.name) naming a model timm cannot
    resolve a config for, before anything is built: an `hf-hub:` repo neither reachable nor
    in the cache, a `local-dir:` folder without config.json, kwargs the model does not take."""
    try:
        data_config(name, kwargs)
    except Exception as err:  # huggingface_hub's, OSError, TypeError for a kwarg, ...
        where = key.rsplit(".", 1)[0]
        hint = ("; without network, an hf-hub: model must be in the Hugging Face cache "
                "(HF_HOME), or give its folder as local-dir:/path (holding config.json)"
                if name.startswith(("hf-hub:", "local-dir:")) else
                f"; check {where}.kwargs={kwargs or {}}")
        return [f"{key}={name!r}: timm cannot build this model's config ({type(err).__name__}: "
                f"{str(err).strip()[:300]}){hint}"]
    return []
