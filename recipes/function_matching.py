"""Function matching (Beyer et al., "Knowledge distillation: A good teacher is patient and
consistent", CVPR 2022) on ImageNet-1k: BiT-M R152x2 -> BiT R50x1.

    accelerate launch --config_file launchers/multi_gpu.yaml recipes/function_matching.py \\
        data.path=/data/imagenet run.epochs=1200

The student learns the teacher's function, not the labels: teacher and student see the very
same image (consistent), an inception crop (5-100% of the area) with a random flip, Mixup'd
with another image of the batch at every step with lambda ~ Beta(1, 1) (aggressive); the loss
is the KL divergence between their predictions at T=1 alone (distill.hard_loss=none), over a
long schedule (patient): 1200 epochs, the authors' "good middle-ground" (run.epochs=300 is their
example log's length). AdamW, cosine, gradient clipping at 1.

The values are those of the authors' released configuration of the paper's ImageNet runs,
big_vision's configs/proj/distill/bit_i1k.py; recipes/cards.toml [function_matching] cites each
one. The teacher is the released one (timm's resnetv2_152x2_bit.goog_teacher_in21k_ft_in1k);
the student a BiT R50x1 from scratch. Both take pixels in [-1, 1] at 224, so the teacher's input is
the student's tensor itself (in teacher.dtype). Where we differ, on purpose:
  - weight decay 0.01: big_vision adds 0.0003 x the weights to the update after the learning
    rate (decoupled, not scaled by it); timm's AdamW multiplies its weight decay by the
    learning rate, and 0.01 x 0.03 = 0.0003;
  - 16 warm-up epochs: their 5000 steps of 4096 images over ImageNet's 1,281,167;
  - the crop's aspect ratio up to 4/3 (timm's) for their 1.33;
  - Mixup pairs image i with image B-1-i (timm) where big_vision pairs it with i-1 and takes
    max(lambda, 1 - lambda): without labels, both give the same distribution of mixed images.

The teacher runs online, on the batch's mixed pixels (scalekd/engine/teachers.py;
tests/recipes/test_function_matching.py checks that its input is the student's). A teacher
cache cannot do that: it mixes the stored outputs of the two unmixed images instead. This
recipe sets teacher.function_matching=true, so teacher.mode=cached is refused before any compute
(docs/teacher.md).
"""

from scalekd.cli import run_recipe
from scalekd.recipe import (AugCfg, DataCfg, DistillCfg, OptimCfg, Recipe, RunCfg, StudentCfg,
                            TeacherCfg)


def recipe() -> Recipe:
    return Recipe(
        run=RunCfg(name="function_matching", epochs=1200),
        data=DataCfg(source="imagefolder", path="", batch_size=4096, workers=10,
                     input_size=224),
        aug=AugCfg(scale=(0.05, 1.0), hflip=0.5, mixup=1.0, cutmix=0.0,
                   interpolation="bilinear", crop_pct=0.875),
        student=StudentCfg(name="resnetv2_50x1_bit"),
        teacher=TeacherCfg(name="resnetv2_152x2_bit.goog_teacher_in21k_ft_in1k",
                           pretrained=True, function_matching=True),
        distill=DistillCfg(method="kd", temperature=1.0, hard_loss="none",
                           weights={"kd": 1.0}),
        optim=OptimCfg(name="adamw", lr=0.03, weight_decay=0.01, clip_grad=1.0,
                       sched="cosine", warmup_epochs=16, warmup_lr=0.0, min_lr=0.0),
    )


if __name__ == "__main__":
    run_recipe(recipe())
