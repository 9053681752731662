"""ImageNet-1k, ScaleKD (Fan et al. 2024): the paper's main teacher/student pairs.

    accelerate launch --config_file launchers/multi_gpu.yaml recipes/scalekd_in1k.py \\
        pair=swinl_r50 data.path=/data/imagenet

`pair=NAME` (first argument) picks a pair, default swinl_r50; every other argument is a
`section.field=value` override. Pairs, with the paper's top-1 (ImageNet-1k, 300 epochs unless
noted):

  swinl_r50              Swin-L -> ResNet-50-D, advanced strategy      82.03 (82.55 at 600 ep)
  swinl_r50_traditional  Swin-L -> ResNet-50, traditional strategy (SGD 0.1, 100 epochs,
                         steps at 30/60/90, batch 256)
  swinl_convnext_t       Swin-L -> ConvNeXt-T                          84.16
  swinl_swin_t           Swin-L -> Swin-T                              83.80
  swinl_vit_s            Swin-L -> ViT-S (DeiT-S)                      83.93
  swinl_mixer_s          Swin-L -> Mixer-S/16                          78.63
  beitl_vit_b            BEiT-L -> ViT-B                               86.43
  beitl_r50              BEiT-L -> ResNet-50-D                         82.34
  beitl_mixer_b          BEiT-L -> Mixer-B/16                          82.89
  dinov2g_r50            DINOv2 ViT-g/14 -> ResNet-50-D

The advanced strategy for CNN students (authors' configs): BCE label loss, LAMB 5e-3 for a global
batch of 2048, weight decay 0.02, 5 warm-up epochs then cosine, RandAugment m7 mstd0.5, random
erasing 0.25, no Mixup/CutMix, gradient clipping 5. Transformer and Mixer students use the DeiT
strategy the authors used for them: AdamW 1e-3 (for 1024), weight decay 0.05, 20 warm-up epochs,
label smoothing 0.1, EMA. Losses: 0.5 label + 0.5 KD(T=1) + 0.08 spatial + 0.06 frequency
(distill.dfm_weight=0.14, distill.dfm_beta=4/7); ablations: distill.tpp=false (CAP + DFM),
distill.dfm_beta=1 distill.tpp=false (CAP only).

Teachers: Swin-L and BEiT-L come from the Hugging Face hub by their timm names (1000-class
heads). DINOv2's weights have no ImageNet head: the pair dinov2g_r50 is a probed teacher
(`teacher.probe`, scalekd/probe.py): a linear head trained on the frozen encoder's features
first, into teacher.probe=runs/dinov2g_probe, then encoder + head teach (KD from the head's
logits, CAP/DFM/TPP on the encoder's final patch tokens and last blocks). Run on one process,
the recipe probes when that folder holds no probe yet, then distils; before a multi-process
launch, probe on one process with `probe` as the first argument:

    python recipes/scalekd_in1k.py probe pair=dinov2g_r50 data.path=/data/imagenet
    accelerate launch --config_file launchers/multi_gpu.yaml recipes/scalekd_in1k.py \\
        pair=dinov2g_r50 data.path=/data/imagenet

The probe caches its features: 1,281,167 images x 7,680 fp32 (4 class tokens + patch mean of
width 1,536) = 39 GB in run.dir/features, and in memory while the head trains;
`probe.blocks=1` (3,072 wide) takes 16 GB.
"""

import sys

from scalekd.cli import run_probe_first, run_recipe
from scalekd.recipe import (AugCfg, DataCfg, DistillCfg, EmaCfg, OptimCfg, Recipe, RunCfg,
                            StudentCfg, TeacherCfg, apply_overrides)

SWIN_L = "swin_large_patch4_window7_224.ms_in22k_ft_in1k"
BEIT_L = "beit_large_patch16_224.in22k_ft_in22k_in1k"
# DINOv2 with registers (Darcet et al., ICLR 2024): the same ViT-g/14 retrained with 4 register
# tokens, whose patch-token maps lack the original's high-norm artefact tokens; its patch tokens
# are the targets of ScaleKD's feature terms. vit_giant_patch14_dinov2.lvd142m also runs.
DINOV2_G = "vit_giant_patch14_reg4_dinov2.lvd142m"
# DINOv2's linear evaluation (facebookresearch/dinov2, dinov2/eval/linear.py, defaults of
# get_args_parser and create_linear_input): a linear head on the class tokens of the last 4
# blocks + the mean of the last block's patch tokens (one setting of its grid over 1 or 4
# blocks x with or without the mean), 10 epochs of 1,250 iterations at batch 128 per GPU, i.e.
# about 10 epochs of ImageNet at batch 1024. Ours: our AdamW lr grid (probe.lrs) for its SGD
# grid, features computed once without augmentation (its: random-resized crops), lr chosen on
# 10% of the training images held out (its: on the validation set).
DINOV2_PROBE = ["probe.head=linear", "probe.blocks=4", "probe.patch_mean=true",
                "probe.epochs=10", "probe.batch_size=1024"]
# The authors ran no DINOv2 teacher. Their closest configuration is the "BEiT-L" (EVA-L/14, an
# isotropic /14 ViT on a 16x16 grid) -> ResNet-50 pair (../shared/scalekd-method.md), whose
# values we take: softmax scale 0.2, DFM 0.016 / 0.008 (w = 0.024, beta = 2/3), 8 CAP heads, and
# a proxy of the teacher's last 2 blocks (the authors' depth for both of their teachers; a
# quarter of ViT-g would be 10 of its 40 blocks).
DINOV2_SCALEKD = ["distill.cap_softmax_scale=0.2", "distill.dfm_weight=0.024",
                  "distill.dfm_beta=0.6666666666666666", "distill.cap_heads=(8,8)",
                  "distill.tpp_blocks=2"]
# the DeiT-style strategy the authors trained transformer and MLP students with
TRANSFORMER_STUDENT = ["optim.name=adamw", "optim.lr=1e-3", "optim.weight_decay=0.05",
                       "optim.warmup_epochs=20", "optim.clip_grad=0", "data.batch_size=1024",
                       "aug.smoothing=0.1", "distill.hard_loss=ce", "ema.decay=0.99996",
                       "aug.mixup=0.8", "aug.cutmix=1.0", "student.drop_path=0.1"]
PAIRS: dict[str, list[str]] = {
    "swinl_r50": [],
    "swinl_r50_traditional": [
        "student.name=resnet50", "optim.name=sgd", "optim.lr=0.1", "optim.weight_decay=1e-4",
        "optim.momentum=0.9", "optim.sched=step", "optim.decay_epochs=30",
        "optim.decay_rate=0.1", "optim.warmup_epochs=0", "optim.clip_grad=0",
        "run.epochs=100", "data.batch_size=256", "distill.hard_loss=ce",
        "aug.auto_augment=", "aug.re_prob=0"],
    "swinl_convnext_t": ["student.name=convnext_tiny", *TRANSFORMER_STUDENT],
    "swinl_swin_t": ["student.name=swin_tiny_patch4_window7_224", *TRANSFORMER_STUDENT],
    "swinl_vit_s": ["student.name=deit_small_patch16_224", *TRANSFORMER_STUDENT],
    "swinl_mixer_s": ["student.name=mixer_s16_224", *TRANSFORMER_STUDENT],
    "beitl_vit_b": [f"teacher.name={BEIT_L}", "student.name=deit_base_patch16_224",
                    *TRANSFORMER_STUDENT],
    "beitl_r50": [f"teacher.name={BEIT_L}"],
    "beitl_mixer_b": [f"teacher.name={BEIT_L}", "student.name=mixer_b16_224",
                      *TRANSFORMER_STUDENT],
    "dinov2g_r50": [f"teacher.name={DINOV2_G}", "teacher.kwargs={'img_size':224}",
                    "teacher.probe=runs/dinov2g_probe", *DINOV2_PROBE, *DINOV2_SCALEKD],
}


def recipe(pair: str = "swinl_r50") -> Recipe:
    if pair not in PAIRS:
        raise SystemExit(f"scalekd: unknown pair={pair!r}; choose one of {', '.join(PAIRS)}")
    base = Recipe(
        run=RunCfg(name=f"scalekd_{pair}", epochs=300, precision="bf16"),
        data=DataCfg(source="imagefolder", path="", batch_size=2048, workers=10,
                     input_size=224),
        aug=AugCfg(auto_augment="rand-m7-mstd0.5", re_prob=0.25, hflip=0.5, crop_pct=0.95),
        student=StudentCfg(name="resnet50d"),
        teacher=TeacherCfg(name=SWIN_L, pretrained=True, dtype="bf16"),
        distill=DistillCfg(method="scalekd", temperature=1.0, hard_loss="bce"),
        optim=OptimCfg(name="lamb", lr=5e-3, weight_decay=0.02, clip_grad=5.0,
                       sched="cosine", warmup_epochs=5),
        ema=EmaCfg(),
    )
    return apply_overrides(base, [*PAIRS[pair], f"run.name=scalekd_{pair}"])


def split_pair(argv: list[str]) -> tuple[str, list[str]]:
    pairs = [a.split("=", 1)[1] for a in argv if a.startswith("pair=")]
    return (pairs[-1] if pairs else "swinl_r50"), [a for a in argv if not a.startswith("pair=")]


def main(argv: list[str]):
    """`probe` as the first argument: only the probe of a probed teacher (one process).
    Returns the training's result (None when only probing)."""
    probe_only = argv[:1] == ["probe"]
    pair, overrides = split_pair(argv[probe_only:])
    distilled = apply_overrides(recipe(pair), overrides)
    if distilled.teacher.probe:
        run_probe_first(distilled, f"python recipes/scalekd_in1k.py probe pair={pair} ARGS")
    return None if probe_only else run_recipe(distilled, [])


if __name__ == "__main__":
    main(sys.argv[1:])
