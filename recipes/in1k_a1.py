"""ImageNet-1k, VanillaKD strategy A1 (Hao et al. 2023, Table 2): BEiTv2-L -> ResNet-50.

    accelerate launch --config_file launchers/multi_gpu.yaml recipes/in1k_a1.py \\
        data.path=/data/imagenet run.epochs=1200

LAMB 5e-3 for a global batch of 2048, cosine with 5 warm-up epochs, weight decay 0.01,
BCE hard-label loss with label smoothing 0.1, drop path 0.05, repeated augmentation x3,
RandAugment m7 mstd0.5, Mixup 0.2, CutMix 1.0, vanilla KD at T=1 weighted equally with the
label loss. The teacher's weights come from the Hugging Face hub by its timm name, or from a
file with teacher.checkpoint=/path/to/weights.safetensors.

The paper's other pairs and lengths are overrides (timm names):
  teachers  teacher.name=beitv2_base_patch16_224.in1k_ft_in22k_in1k | convnext_xlarge.fb_in22k_ft_in1k
            | resnet152.a1h_in1k
  students  student.name=deit_small_patch16_224 | vit_tiny_patch16_224 | convnextv2_tiny
  epochs    run.epochs=300 | 600 | 1200 | 4800
  methods   distill.method=dkd | dist | bkd, or all at once beside KD, sharing the teacher:
            students.dkd.distill.method=dkd students.dist.distill.method=dist
data.batch_size is the global batch (the learning rate is for it); each process gets
batch_size / (processes x data.grad_accum). data.device_batch=N (the most images a device holds)
derives data.grad_accum from the process count instead, so one command keeps the global batch
on 8 or 64 GPUs.
"""

from scalekd.cli import run_recipe
from scalekd.recipe import (AugCfg, DataCfg, DistillCfg, OptimCfg, Recipe, RunCfg, StudentCfg,
                            TeacherCfg)


def recipe() -> Recipe:
    return Recipe(
        run=RunCfg(name="in1k_a1", epochs=1200, precision="bf16"),
        data=DataCfg(source="imagefolder", path="", batch_size=2048, workers=10,
                     input_size=224),
        aug=AugCfg(auto_augment="rand-m7-mstd0.5", repeated_aug=3, mixup=0.2, cutmix=1.0,
                   smoothing=0.1, hflip=0.5, crop_pct=0.95),
        student=StudentCfg(name="resnet50", drop_path=0.05),
        teacher=TeacherCfg(name="beitv2_large_patch16_224.in1k_ft_in22k_in1k", pretrained=True,
                           dtype="bf16"),
        distill=DistillCfg(method="kd", temperature=1.0, hard_loss="bce"),
        optim=OptimCfg(name="lamb", lr=5e-3, weight_decay=0.01, sched="cosine",
                       warmup_epochs=5),
    )


if __name__ == "__main__":
    run_recipe(recipe())
