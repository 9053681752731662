"""Label-free feature distillation: DINOv2 ViT-g/14 with registers -> ResNet-50 on images
without labels, evaluated by a linear probe of the export (docs/label-free.md).

    accelerate launch --config_file launchers/multi_gpu.yaml recipes/label_free.py \\
        data.path=/data/unlabelled run.dir=runs/lf_r50

`--objective NAME` picks the loss, default features; every other argument is a
`section.field=value` override. data.labels=false: every image under data.path/train is read,
with or without class folders (`data.train_split=.` reads data.path itself); the student is
built without a classifier and nothing evaluates top-1: `scalekd probe` the export.

  features  distill.method=features: the student's pooled map regresses the teacher's class
            token, its final map (1x1 conv, resized to the teacher's grid) the teacher's patch
            tokens; cosine + smooth L1 (AM-RADIO's mix, the method's default weights)
  scalekd   ScaleKD's feature terms alone (CAP, DFM, on the teacher's proxy path of its last 2
            blocks): distill.method=scalekd with distill.weights.kd=0 and
            distill.hard_loss=none, which is what lets it train without labels; CAP/DFM values
            as scalekd_in1k.py's dinov2g_r50 (the authors' EVA-L/14 -> ResNet-50 pair)

The teacher is timm's vit_giant_patch14_reg4_dinov2.lvd142m, pretrained, run as Proteus runs
its DINOv2 teacher: on the student's 224 px crop (teacher.kwargs={'img_size':224}, a 16x16 patch
grid; timm resizes the position embedding), not at the weights' 518 px, which would cost about 5x
the teacher's compute for an upsampled crop (teacher.kwargs={} gives it).

The schedule and augmentation are Proteus's (Zhang et al. 2024, "Accessing Vision Foundation
Models at ImageNet-level Costs"), its released pretrain/main.py and run_pretrain.sh
(BeSpontaneous/Proteus-pytorch), each value cited in recipes/cards.toml: 300 epochs at a global
batch of 512, AdamW 5e-4 (its linear scaling at 512 leaves it), weight decay 0.05, 5 warm-up
epochs from 1e-6, cosine to 1e-5, no clipping, RandAugment m9/mstd0.5, random erasing 0.25,
repeated augmentation x3, drop path 0.1, EMA 0.99996, no Mixup/CutMix. Ours: the loss terms
(Proteus: MSE on class token, patch tokens and masked patches of a ViT student), a ResNet-50
student (Proteus's are ViTs), bf16.
"""

import sys

from scalekd.cli import recipe_parser, run_recipe
from scalekd.recipe import (AugCfg, DataCfg, DistillCfg, EmaCfg, OptimCfg, Recipe, RunCfg,
                            StudentCfg, TeacherCfg, apply_overrides)

DINOV2_G = "vit_giant_patch14_reg4_dinov2.lvd142m"
OBJECTIVES: dict[str, list[str]] = {
    "features": [],
    # without KD and label terms ScaleKD reads no labels (ScaleKD.needs_classes); CAP/DFM/TPP
    # as scalekd_in1k.py's DINOv2 pair (see its DINOV2_SCALEKD)
    "scalekd": ["distill.method=scalekd", "distill.weights={'kd':0.0}",
                "distill.hard_loss=none", "distill.cap_softmax_scale=0.2",
                "distill.dfm_weight=0.024", "distill.dfm_beta=0.6666666666666666",
                "distill.cap_heads=(8,8)", "distill.tpp_blocks=2"],
}


def recipe(objective: str = "features") -> Recipe:
    if objective not in OBJECTIVES:
        raise SystemExit(f"label_free: unknown --objective {objective!r}; choose one of "
                         f"{', '.join(OBJECTIVES)}")
    base = Recipe(
        run=RunCfg(name=f"label_free_{objective}", epochs=300, precision="bf16"),
        data=DataCfg(source="imagefolder", path="", labels=False, batch_size=512, workers=10,
                     input_size=224),
        aug=AugCfg(auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25, repeated_aug=3,
                   hflip=0.5, interpolation="bicubic"),
        student=StudentCfg(name="resnet50", drop_path=0.1),
        teacher=TeacherCfg(name=DINOV2_G, pretrained=True, kwargs={"img_size": 224},
                           dtype="bf16"),
        distill=DistillCfg(method="features", hard_loss="none"),
        optim=OptimCfg(name="adamw", lr=5e-4, weight_decay=0.05, clip_grad=0.0,
                       sched="cosine", warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5),
        ema=EmaCfg(decay=0.99996),
    )
    return apply_overrides(base, [*OBJECTIVES[objective], f"run.name=label_free_{objective}"])


def main(argv: list[str]):
    parser = recipe_parser(__doc__)
    parser.add_argument("--objective", choices=list(OBJECTIVES), default="features",
                        help="the loss: the features method, or ScaleKD's feature terms alone "
                             "(the list above)")
    args = parser.parse_intermixed_args(argv)
    return run_recipe(apply_overrides(recipe(args.objective), args.overrides), [])


if __name__ == "__main__":
    main(sys.argv[1:])
