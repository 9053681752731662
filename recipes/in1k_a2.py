"""ImageNet-1k, VanillaKD strategy A2 (Hao et al. 2023, Table 2): BEiTv2-L -> ResNet-50.

    accelerate launch --config_file launchers/multi_gpu.yaml recipes/in1k_a2.py \\
        data.path=/data/imagenet distill.method=dkd

Table 2 gives A1 and A2 common settings and their own: A2 is A1 (in1k_a1.py: LAMB 5e-3 for a
global batch of 2048, cosine with 5 warm-up epochs, BCE hard-label loss, drop path 0.05,
repeated augmentation x3, RandAugment m7 mstd0.5, CutMix 1.0, BEiTv2-L teacher, KD at T=1)
with weight decay 0.03, no label smoothing and Mixup 0.1. 300 epochs by default: the length of
VanillaKD's A2 comparisons (Tables 3-6, appendix C), where vanilla KD is set against dkd, dist
and bkd/bkl (`distill.method=...`).
"""

import runpy
from pathlib import Path

from scalekd.cli import run_recipe
from scalekd.recipe import Recipe

A1 = runpy.run_path(str(Path(__file__).with_name("in1k_a1.py")))["recipe"]


def recipe() -> Recipe:
    r = A1()
    r.run.name, r.run.epochs = "in1k_a2", 300
    r.optim.weight_decay = 0.03
    r.aug.smoothing, r.aug.mixup = 0.0, 0.1
    return r


if __name__ == "__main__":
    run_recipe(recipe())
