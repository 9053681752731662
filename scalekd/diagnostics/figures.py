"""Matplotlib without a display, and one way to write a figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on clusters and CI; must precede pyplot's import
import matplotlib.pyplot as plt  # noqa: E402


def new_figure(rows: int = 1, cols: int = 1, width: float = 5.0, height: float = 4.0):
    """A figure of rows x cols panels of width x height inches each; returns (fig, axes[])."""
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    return fig, list(axes.flat)


def save(fig, path: Path, title: str = "") -> Path:
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
