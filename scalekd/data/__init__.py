"""Data: sources behind one interface, seeded per-sample augmentation, sharded epoch order."""

from scalekd.data.fashion_mnist import FashionMNIST
from scalekd.data.ffcv_source import FFCVSource
from scalekd.data.imagefolder import ImageFolderSource
from scalekd.data.loader import TrainData, build_eval_loader, build_train_data
from scalekd.data.source import Source
from scalekd.data.synthetic import Synthetic

# A source is a class with `check(cfg) -> problems` and `load(cfg, split) -> LabelledImages`;
# adding one (FFCV, a mixing set, ...) is a new file and a line here.
SOURCES: dict[str, type[Source]] = {
    "fashion_mnist": FashionMNIST,
    "ffcv": FFCVSource,  # .beton files written by `scalekd make-beton`
    "imagefolder": ImageFolderSource,
    "synthetic": Synthetic,
}

__all__ = ["SOURCES", "Source", "TrainData", "build_train_data", "build_eval_loader"]
