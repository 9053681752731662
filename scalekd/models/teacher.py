"""The frozen teacher: never trained, in eval mode whatever the caller does, no autograd.

It is kept outside the student's DDP / DeepSpeed engine (a second model in one DeepSpeed engine
is silently dropped) and gets its own input: the student's augmented pixels, re-normalised with
the teacher's mean/std and resized to the teacher's resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import resolve_model_data_config

from scalekd.model_config import data_config
from scalekd.models.attention import set_fused_attention, timm_attention
from scalekd.models.probed_teacher import create_probed_model
from scalekd.models.student import model_problems
from scalekd.models.taps import EmbeddingTap
from scalekd.models.teacher_stages import TeacherStages
from scalekd.models.weights import load_timm_model
from scalekd.recipe import Recipe, TeacherCfg


@dataclass
class TeacherOutput:
    logits: torch.Tensor  # float32
    # with features enabled: "final" (the last stage after its norm) and "split" (where the
    # proxy path starts), float32 NCHW maps; with the summary need also "summary", (B, C): the
    # final class token (teacher_stages.summary_of)
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    proxy: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # TPP: split map -> final
    # with the embedding enabled: the (B, D) pre-logits features (the classifier's input), fp32
    embedding: Optional[torch.Tensor] = None


@dataclass(frozen=True)
class TeacherNeeds:
    """What a distiller reads from the teacher beside its logits (`Distiller.teacher_needs`)."""

    features: bool = False  # TeacherOutput.features: the "final" and "split" maps
    proxy: bool = False  # TeacherOutput.proxy: the teacher's own stages from split to final
    proxy_blocks: int = 0  # where the split is: the last N blocks (0: last stage or quarter)
    # TeacherOutput.features["summary"]: the final class token after the norm (a model without
    # one: its final map's mean), beside the patch map "final"; implies features
    summary: bool = False
    embedding: bool = False  # TeacherOutput.embedding: the pre-logits features


def combined_needs(needs: Iterable[Optional[TeacherNeeds]]) -> Optional[TeacherNeeds]:
    """One teacher pass for several students' needs (None: a student without a teacher); None
    when no student needs the teacher. Students that read features share one split point
    (their proxy_blocks agree: the validation's check of recipe.students)."""
    wanted = [n for n in needs if n is not None]
    if not wanted:
        return None
    embedding = any(n.embedding for n in wanted)
    tapped = [n for n in wanted if n.features]
    if not tapped:
        return TeacherNeeds(embedding=embedding)
    return TeacherNeeds(True, any(n.proxy for n in tapped), tapped[0].proxy_blocks,
                        any(n.summary for n in tapped), embedding)


# the smallest normal float32: a class with no mass gets a finite log-probability, so that KL
# terms read 0 * finite, not 0 * -inf
_FLOOR = torch.finfo(torch.float32).tiny


def soft_label_output(probs: torch.Tensor) -> TeacherOutput:
    """A teacher known by its (B, C) class distributions (a teacher cache's soft labels) as the
    distillers read a teacher: log p as its logits."""
    return TeacherOutput(logits=probs.clamp_min(_FLOOR).log())


class FrozenTeacher(nn.Module):
    def __init__(self, model: nn.Module, student_mean, student_std, teacher_mean, teacher_std,
                 input_size: Optional[int], dtype: torch.dtype = torch.float32,
                 attention: str = "sdpa", channels_last: bool = False, compile: bool = False):
        super().__init__()
        self.model = model.eval().requires_grad_(False).to(dtype)
        self.dtype, self.input_size = dtype, input_size
        self.attention = attention
        set_fused_attention(self.model, attention)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        # compiled lazily on the first forward, once the module sits on its device; the
        # uncompiled module stays `self.model` (checkpoint keys, feature taps, sharding)
        self.compile = compile
        self._compiled: Optional[Callable] = None
        s_mean, s_std = _channels(student_mean), _channels(student_std)
        t_mean, t_std = _channels(teacher_mean), _channels(teacher_std)
        # x_t = (x_s * s_std + s_mean - t_mean) / t_std, folded into one scale and shift
        self.register_buffer("scale", s_std / t_std, persistent=False)
        self.register_buffer("shift", (s_mean - t_mean) / t_std, persistent=False)
        # the same normalisation (most timm pairs): the student's pixels as they are
        self.renormalise = not (torch.equal(s_mean, t_mean) and torch.equal(s_std, t_std))
        self.engine = None  # a DeepSpeed inference engine when the teacher is sharded
        self.stages: Optional[TeacherStages] = None  # set by enable_features
        self.embedding_tap: Optional[EmbeddingTap] = None  # set by enable_embedding
        self.with_proxy = self.with_summary = False

    def train(self, mode: bool = True) -> "FrozenTeacher":
        return super().train(False)  # stays in eval mode: BN statistics and dropout frozen

    def prepare_input(self, images: torch.Tensor) -> torch.Tensor:
        x = images * self.scale + self.shift if self.renormalise else images
        if self.input_size and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bicubic",
                              align_corners=False)
        return x.to(self.dtype).contiguous(memory_format=self.memory_format)

    def runner(self) -> Callable:
        if self.engine is not None:
            return self.engine
        if self.compile and self._compiled is None:
            # the bound forward, not the module: an nn.Module attribute would join state_dict
            self._compiled = torch.compile(self.model.forward)
        return self._compiled or self.model

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> TeacherOutput:
        x = self.prepare_input(images)
        with timm_attention(self.model, self.attention, x.device):
            if self.embedding_tap is not None:
                logits, embedding = self.embedding_tap.forward(self.model, x, self.runner())
                return TeacherOutput(logits.float(), embedding=embedding.float())
            if self.stages is None:
                return TeacherOutput(logits=self.runner()(x).float())
            logits, features, proxy = self.stages.forward(self.model, self.runner(), x,
                                                          self.with_proxy, self.with_summary)
        if proxy is not None:  # called later, by the distiller: on the same attention backend
            path = proxy

            def proxy(fmap: torch.Tensor) -> torch.Tensor:
                with timm_attention(self.model, self.attention, fmap.device):
                    return path(fmap)
        return TeacherOutput(logits.float(), features, proxy)

    def enable_features(self, with_proxy: bool, device: torch.device,
                        proxy_blocks: int = 0, summary: bool = False) -> dict[str, tuple]:
        """Return final (and split) feature maps from now on, with `summary` the final class
        token, and with `with_proxy` the proxy path over the teacher's last `proxy_blocks`
        blocks (0: its last stage or quarter); checks the proxy on a noise image first.
        Returns the features' shapes without the batch: (C, H, W) of maps, (C,) of the summary."""
        self.stages, self.with_proxy = TeacherStages(self.model, proxy_blocks), with_proxy
        self.with_summary = summary
        noise = self._noise_image(device)
        if with_proxy:
            self.stages.check(self.model, self.model, self.prepare_input(noise))
        features = self(noise).features
        return {name: tuple(f.shape[1:]) for name, f in features.items()}

    def enable_embedding(self, device: torch.device) -> int:
        """Return the pre-logits features (TeacherOutput.embedding) from now on; returns their
        width, measured on a noise image."""
        self.embedding_tap = EmbeddingTap(self.model)
        return self(self._noise_image(device)).embedding.shape[1]

    def _noise_image(self, device: torch.device) -> torch.Tensor:
        """One image of noise at the teacher's input size: noise, not a blank image (whose
        patches would all look alike), from its own generator, so that the global RNG the run
        is seeded with is not drawn from."""
        size = self.input_size or 224
        noise = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        return noise.to(device)


def _channels(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


def freeze_teacher(model: nn.Module, cfg: TeacherCfg, student_mean, student_std,
                   student_size: int, compile: bool = False) -> FrozenTeacher:
    """`model` as a FrozenTeacher with `cfg`'s speed options, its own normalisation (timm's
    data config of the model) and resolution (teacher_input_size)."""
    own = resolve_model_data_config(model)
    dtype = torch.bfloat16 if cfg.dtype == "bf16" else torch.float32
    return FrozenTeacher(model, student_mean, student_std, own["mean"], own["std"],
                         teacher_input_size(cfg, student_size), dtype, cfg.attention,
                         cfg.channels_last, compile)


def teacher_input_size(cfg: TeacherCfg, student_size: int) -> int:
    """The resolution the teacher sees: teacher.input_size if set; else its own, for a model
    that takes one resolution only (timm's data config of teacher.name with teacher.kwargs:
    fixed_input_size, at its img_size kwarg if any); else the student's (a CNN runs on the
    student's crops as they are)."""
    if cfg.input_size or not cfg.name:
        return cfg.input_size or student_size
    own = data_config(cfg.name, cfg.kwargs)
    return own["input_size"][-1] if own["fixed_input_size"] else student_size


def create_teacher(cfg: TeacherCfg, num_classes: int, student_mean, student_std,
                   student_size: int) -> FrozenTeacher:
    if cfg.probe:  # encoder + the head `scalekd probe` trained on its features
        model = create_probed_model(cfg, num_classes)
    else:
        model = load_timm_model(cfg, num_classes)
    return freeze_teacher(model, cfg, student_mean, student_std, student_size, cfg.compile)


def recipe_teacher(recipe: Recipe, num_classes: int,
                   cfg: Optional[TeacherCfg] = None) -> FrozenTeacher:
    """The recipe's teacher (or `cfg`, one of recipe.teachers), fed what distillation feeds it:
    the student's pixels (normalised for the student, at data.input_size), re-normalised and
    resized for the teacher."""
    norm = data_config(recipe.student.name, recipe.student.kwargs)
    return create_teacher(cfg or recipe.teacher, num_classes, norm["mean"], norm["std"],
                          recipe.data.input_size)


# ---------------------------------------------------------------------------------------------
# the teacher provider's checks of teacher.*, composed by scalekd.engine.validation


def online_teacher_problems(cfg: TeacherCfg, method: str) -> list[str]:
    """The teacher distill.method=`method` needs, run online: a timm name and its weights."""
    if not cfg.name:
        return [f"distill.method={method!r} needs a teacher: set teacher.name=<timm model>"]
    if problems := model_problems("teacher.name", cfg.name, cfg.kwargs):
        return problems
    if not cfg.checkpoint and not cfg.pretrained:
        return [f"teacher {cfg.name!r} has no weights: pass teacher.checkpoint=/path/to/weights"
                " (.safetensors or .pth), or teacher.pretrained=true to download timm's weights"
                " for that name from the Hugging Face hub"]
    return []


def compile_problems(cfg: TeacherCfg, method: str, taps_features: bool) -> list[str]:
    """teacher.compile with a method that taps the teacher's features."""
    if cfg.compile and taps_features:
        return [f"teacher.compile=true: distill.method={method!r} taps the teacher's features "
                "with hooks, which torch.compile would re-trace every step; compile serves "
                "logit methods: set teacher.compile=false"]
    return []


def teacher_setting_problems(cfg: TeacherCfg) -> list[str]:
    checks = [
        (cfg.dtype in ("bf16", "fp32"), "teacher.dtype must be bf16 or fp32"),
        (cfg.placement in ("replicated", "zero3"),
         "teacher.placement must be replicated or zero3"),
        (cfg.attention in ("sdpa", "eager", "xformers"),
         f"teacher.attention={cfg.attention!r} must be sdpa, eager or xformers"),
        (not (cfg.compile and cfg.placement == "zero3"),
         "teacher.compile=true needs teacher.placement=replicated (DeepSpeed runs a sharded "
         "teacher's forward itself)"),
    ]
    return [msg for ok, msg in checks if not ok]


def teacher_size_problems(cfg: TeacherCfg) -> list[str]:
    return [] if cfg.input_size == 0 or cfg.input_size >= 8 else [
        f"teacher.input_size={cfg.input_size} must be 0 (the student's) or >= 8"]


def teachers_problems(cfgs: dict[str, TeacherCfg], method: str, embedding: bool) -> list[str]:
    """The checks of one teacher applied to each of recipe.teachers, each message naming the
    teacher's own fields (teachers.<name>.*). Every one runs online: a probed or cached
    teacher serves the single-teacher methods."""
    problems = []
    for name, cfg in cfgs.items():
        if not name.replace("_", "").replace("-", "").isalnum():
            problems.append(f"teachers.{name}: a teacher name tags its loss terms and metrics; "
                            "use letters, digits, _ -")
            continue
        own = (online_teacher_problems(cfg, method) + teacher_setting_problems(cfg)
               + teacher_size_problems(cfg) + compile_problems(cfg, method, embedding))
        if cfg.mode != "online":
            own.append(f"teacher.mode={cfg.mode!r}: every teacher of teachers.* runs online (a "
                       "teacher cache holds one teacher's top-k); drop teacher.mode")
        if cfg.probe:
            own.append("teacher.probe is for single-teacher methods (set teacher.probe with "
                       "distill.method=kd); drop it here")
        problems += [p.replace("teacher.", f"teachers.{name}.") for p in own]
    return problems
