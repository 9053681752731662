"""ImageNet-1k, ScaleKD (Fan et al. 2024): the paper's main teacher/student pairs.

    accelerate launch --config_file launchers/multi_gpu.yaml recipes/scalekd_in1k.py \\
        --pair swinl_r50 data.path=/data/imagenet

`--pair NAME` picks a pair, default swinl_r50; every other argument is a
`section.field=value` override. Pairs, with the paper's top-1 (ImageNet-1k, 300 epochs unless
noted):

  swinl_r50              Swin-L -> ResNet-50-D, advanced strategy      82.03 (82.55 at 600 ep)
  swinl_r50_traditional  Swin-L -> ResNet-50, traditional strategy (SGD 0.1, 100 epochs,
                         steps at 30/60/90, batch 256)
  swinl_convnext_t       Swin-L -> ConvNeXt-T                          84.16
  swinl_swin_t           Swin-L -> Swin-T                              83.80
  swinl_vit_s            Swin-L -> ViT-S (DeiT-S)                      83.93
  swinl_mixer_s          Swin-L -> Mixer-S/16                          78.63
  beitl_vit_b            "BEiT-L" (EVA-L/14) -> ViT-B/14               86.43
  beitl_r50              "BEiT-L" (EVA-L/14) -> ResNet-50-D            82.34
  beitl_mixer_b          "BEiT-L" (EVA-L/14) -> Mixer-B/14             82.89
  dinov2g_r50            DINOv2 ViT-g/14 -> ResNet-50-D

Every value comes from the authors' configs (deep-optimization/ScaleKD; the per-pair distiller
configs were removed after 5ba1f04 and are read there), each cited in recipes/cards.toml, which
tests/test_recipe_cards.py holds these recipes to. In short: the CNN students' advanced strategy
is the authors' ResNet-50-D config (BCE label loss summed over classes, LAMB 5e-3 for a global
batch of 2048, weight decay 0.02, 5 warm-up epochs from 0.25x then cosine to 0, RandAugment,
random erasing 0.25, no Mixup/CutMix, clipping 5); transformer students use Swin's AdamW
schedule (1e-3 for 1024, weight decay 0.05, 20 warm-up epochs, EMA 0.9999, label smoothing
0.1), Mixer students the MLP-Mixer one (AdamW 7e-4 for 1536, weight decay 0.067, clipping 1).
Losses: 0.5 label + 0.5 KD(T=1) + spatial + frequency views with 0.08 / 0.06 (EVA-L: 0.016 /
0.008); the CAP softmax scale, heads and norm are per pair; the proxy path is the teacher's
last 2 blocks. Ablations: distill.tpp=false (CAP + DFM), distill.dfm_beta=1 distill.tpp=false
(CAP only).

The "BEiT-L" teacher of the paper's rows is, in the authors' configs, EVA-L/14 (MIM on
ImageNet-21k, fine-tuned on 21k then 1k at 196 px: mmcls's eva-l-p14_mim-in21k-pre_3rdparty_
in1k-196px, converted from BAAI's eva_l_psz14_196px_21k_to_1k_ft_88p6.pt) run at 224 px (a 16x16
grid) in mmcls's BEiT backbone. timm's eva_large_patch14_196.in22k_ft_in22k_in1k holds the same
BAAI weights; here it runs as timm's ViT at img_size=224 (the position embedding resampled to
16x16 on loading, as mmcls does), with its CLIP mean/std (the authors' EVA configs normalise
with the same CLIP values) and its pre-logits LayerNorm on the averaged tokens. Differences:
timm's pooled head path, not mmcls's BEiT class; the proxy replays timm's blocks. The other EVA
large /14 weights in timm are further away: eva_large_patch14_196.in22k_ft_in1k is BAAI's
ImageNet-1k-only fine-tune (eva_l_psz14_196px_1k_ft_88p0.pt), the *_336 tags run at 336 px, and
eva02_large_patch14_* are EVA-02 (rotary position embedding, SwiGLU MLPs, another MIM target).

Teachers: Swin-L and EVA-L come from the Hugging Face hub by their timm names (1000-class
heads). DINOv2's weights have no ImageNet head: the pair dinov2g_r50 is a probed teacher
(`teacher.probe`, scalekd/tools/probe_teacher.py): a linear head trained on the frozen
encoder's features first, into teacher.probe=runs/dinov2g_probe, then encoder + head teach (KD
from the head's logits, CAP/DFM/TPP on the encoder's final patch tokens and last blocks). Run
on one process, the recipe probes when that folder holds no probe yet, then distils; before a
multi-process launch, probe on one process with `--probe-only`:

    python recipes/scalekd_in1k.py --probe-only --pair dinov2g_r50 data.path=/data/imagenet
    accelerate launch --config_file launchers/multi_gpu.yaml recipes/scalekd_in1k.py \\
        --pair dinov2g_r50 data.path=/data/imagenet

The probe caches its features: 1,281,167 images x 7,680 fp32 (4 class tokens + patch mean of
width 1,536) = 39 GB in run.dir/features, and in memory while the head trains;
`probe.blocks=1` (3,072 wide) takes 16 GB.
"""

import argparse
import sys

from scalekd.cli import recipe_parser, run_probe_first, run_recipe
from scalekd.recipe import (AugCfg, DataCfg, DistillCfg, EmaCfg, OptimCfg, Recipe, RunCfg,
                            StudentCfg, TeacherCfg, apply_overrides)

SWIN_L = "swin_large_patch4_window7_224.ms_in22k_ft_in1k"  # Microsoft's 22k->1k weights
EVA_L = "eva_large_patch14_196.in22k_ft_in22k_in1k"  # the "BEiT-L" rows: see above
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
# Swin's AdamW schedule (configs/_base_/schedules/imagenet_bs1024_adamw_swin.py) and its
# augmentation (datasets/imagenet_bs64_swin_224.py: RandAugment 9 of 10, std 0.5; erasing 0.25),
# label smoothing 0.1, EMA (mmcls momentum 1e-4), for the transformer and ConvNeXt students
ADAMW_SWIN = ["optim.name=adamw", "optim.lr=1e-3", "optim.weight_decay=0.05",
              "optim.warmup_epochs=20", "optim.warmup_lr=1e-6", "optim.min_lr=1e-5",
              "data.batch_size=1024", "distill.hard_loss=ce", "aug.smoothing=0.1",
              "aug.auto_augment=rand-m9-mstd0.5-inc1", "ema.decay=0.9999"]
# the MLP-Mixer students' (schedules/imagenet_bs1024_AdamW_mlp.py, datasets/
# imagenet_bs128_mlp_224.py: RandAugment 12 of 15 = timm's m8, std 0.5 / 15 = 0.33), batch 1536
ADAMW_MLP = ["optim.name=adamw", "optim.lr=7e-4", "optim.weight_decay=0.067",
             "optim.warmup_epochs=20", "optim.warmup_lr=7e-10", "optim.min_lr=0",
             "data.batch_size=1536", "distill.hard_loss=ce", "optim.clip_grad=1.0",
             "aug.auto_augment=rand-m8-mstd0.33-inc1", "ema.decay=0.9999"]
# mmcls's DeiT students drop the class token and average the normed patch tokens
DEIT_GAP = "{'class_token':False,'global_pool':'avg','fc_norm':False}"
# the authors' EVA-L teacher (above) at 224 px, with its DFM weights 0.016 / 0.008, 8 CAP heads
EVA_TEACHER = [f"teacher.name={EVA_L}", "teacher.kwargs={'img_size':224}",
               "distill.dfm_weight=0.024", "distill.dfm_beta=0.6666666666666666",
               "distill.cap_heads=(8,8)"]
# The authors ran no DINOv2 teacher. Their closest configuration is the "BEiT-L" (EVA-L/14, an
# isotropic /14 ViT on a 16x16 grid) -> ResNet-50 pair (../shared/scalekd-method.md), whose
# values we take: softmax scale 0.2, DFM 0.016 / 0.008 (w = 0.024, beta = 2/3), 8 CAP heads, and
# a proxy of the teacher's last 2 blocks (the authors' depth for both of their teachers; a
# quarter of ViT-g would be 10 of its 40 blocks).
DINOV2_SCALEKD = ["distill.cap_softmax_scale=0.2", "distill.dfm_weight=0.024",
                  "distill.dfm_beta=0.6666666666666666", "distill.cap_heads=(8,8)",
                  "distill.tpp_blocks=2"]
PAIRS: dict[str, list[str]] = {
    "swinl_r50": [],
    "swinl_r50_traditional": [
        "student.name=resnet50", "optim.name=sgd", "optim.lr=0.1", "optim.weight_decay=1e-4",
        "optim.momentum=0.9", "optim.sched=step", "optim.decay_epochs=30",
        "optim.decay_rate=0.1", "optim.warmup_epochs=0", "optim.clip_grad=0",
        "run.epochs=100", "data.batch_size=256", "distill.hard_loss=ce",
        "aug.auto_augment=", "aug.re_prob=0", "aug.interpolation=bilinear"],
    "swinl_convnext_t": ["student.name=convnext_tiny", *ADAMW_SWIN, "optim.clip_grad=0",
                         "student.drop_path=0.1", "distill.cap_softmax_scale=1.0",
                         "distill.cap_heads=(8,16)"],
    "swinl_swin_t": ["student.name=swin_tiny_patch4_window7_224", *ADAMW_SWIN,
                     "student.drop_path=0.05", "distill.cap_softmax_scale=1.0",
                     "distill.cap_heads=(24,48)"],
    "swinl_vit_s": ["student.name=deit_small_patch16_224", f"student.kwargs={DEIT_GAP}",
                    *ADAMW_SWIN, "distill.cap_heads=(8,8)"],
    "swinl_mixer_s": ["student.name=mixer_s16_224", *ADAMW_MLP, "aug.smoothing=0",
                      "distill.cap_heads=(8,8)"],
    "beitl_vit_b": [*EVA_TEACHER, "student.name=deit_base_patch16_224",
                    "student.kwargs={'patch_size':14,'class_token':False,'global_pool':'avg'}",
                    *ADAMW_SWIN, "ema.decay=0", "aug.mixup=0.8", "aug.cutmix=1.0",
                    "distill.cap_softmax_scale=1.0"],
    "beitl_r50": [*EVA_TEACHER, "distill.cap_softmax_scale=0.2"],
    # the authors' Mixer-B is /14; timm's mixer_b16_224 fixes patch 16 (a 14x14 student grid
    # under the teacher's 16x16 queries)
    "beitl_mixer_b": [*EVA_TEACHER, "student.name=mixer_b16_224", *ADAMW_MLP,
                      "aug.smoothing=0.1",
                      "aug.mixup=0.5", "student.drop_path=0.1",
                      "distill.cap_softmax_scale=1.0"],
    "dinov2g_r50": [f"teacher.name={DINOV2_G}", "teacher.kwargs={'img_size':224}",
                    "teacher.probe=runs/dinov2g_probe", *DINOV2_PROBE, *DINOV2_SCALEKD],
}


def recipe(pair: str = "swinl_r50") -> Recipe:
    if pair not in PAIRS:
        raise SystemExit(f"scalekd: unknown --pair {pair!r}; choose one of {', '.join(PAIRS)}")
    # Swin-L -> ResNet-50-D, advanced strategy: the base every pair overrides
    base = Recipe(
        run=RunCfg(name=f"scalekd_{pair}", epochs=300, precision="bf16"),
        data=DataCfg(source="imagefolder", path="", batch_size=2048, workers=10,
                     input_size=224),
        # mmcls RandAugment (timm_increasing, magnitude 7 of total_level 8, std 0.5): 8.75 and
        # 0.625 on timm's scale of 10, whose string takes an integer magnitude: 9
        aug=AugCfg(auto_augment="rand-m9-mstd0.625-inc1", re_prob=0.25, hflip=0.5,
                   crop_pct=0.875),
        student=StudentCfg(name="resnet50d"),
        teacher=TeacherCfg(name=SWIN_L, pretrained=True, dtype="bf16"),
        distill=DistillCfg(method="scalekd", temperature=1.0, hard_loss="bce",
                           bce_reduction="sum_classes", cap_softmax_scale=5.0,
                           cap_heads=(16, 24), cap_norm="auto", tpp_blocks=2),
        optim=OptimCfg(name="lamb", lr=5e-3, weight_decay=0.02, clip_grad=5.0,
                       sched="cosine", warmup_epochs=5, warmup_lr=1.25e-3, min_lr=0.0),
        ema=EmaCfg(),
    )
    return apply_overrides(base, [*PAIRS[pair], f"run.name=scalekd_{pair}"])


def command_line(argv: list[str]) -> argparse.Namespace:
    """--pair, --probe-only and the overrides; --help prints this file's docstring and them."""
    parser = recipe_parser(__doc__)
    parser.add_argument("--pair", choices=list(PAIRS), default="swinl_r50",
                        help="the teacher -> student pair (the table above)")
    parser.add_argument("--probe-only", action="store_true",
                        help="only probe the teacher of a probed pair (dinov2g_r50), on one "
                             "process, before a multi-process launch")
    args = parser.parse_intermixed_args(argv)
    if any(o.startswith("pair=") for o in args.overrides):
        parser.error("pair=NAME is not a recipe field: pick the pair with --pair NAME")
    return args


def main(argv: list[str]):
    """Returns the training's result (None with --probe-only)."""
    args = command_line(argv)
    distilled = apply_overrides(recipe(args.pair), args.overrides)
    if distilled.teacher.probe:
        run_probe_first(distilled, f"python recipes/scalekd_in1k.py --probe-only --pair "
                                   f"{args.pair} ARGS")
    return None if args.probe_only else run_recipe(distilled, [])


if __name__ == "__main__":
    main(sys.argv[1:])
