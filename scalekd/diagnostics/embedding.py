"""Teacher and student embeddings side by side, each projected on its own first two principal
components and coloured by class (the task-specific distillation paper's Figure 1)."""

from __future__ import annotations

from pathlib import Path

import torch

from scalekd.diagnostics.figures import new_figure, save


def pca_2d(x: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """The (n, 2) projection of x (n, d) on its first two principal components, and the share
    of variance each explains."""
    x = x.double() - x.double().mean(0)
    _, s, v = torch.linalg.svd(x, full_matrices=False)
    variance = s ** 2 / (s ** 2).sum()
    return (x @ v[:2].T).float(), variance[:2].tolist()


def plot_embeddings(embeddings: dict[str, torch.Tensor], labels: torch.Tensor,
                    classes: list[str], path: Path) -> Path:
    fig, axes = new_figure(1, len(embeddings), width=5.0, height=4.5)
    colours = [f"C{i % 10}" for i in range(len(classes))]
    for ax, (name, x) in zip(axes, embeddings.items()):
        points, variance = pca_2d(x)
        for c, cls in enumerate(classes):
            mine = labels == c
            if mine.any():
                ax.scatter(points[mine, 0], points[mine, 1], s=6, alpha=0.6,
                           color=colours[c], label=cls)
        ax.set_title(f"{name} ({x.shape[1]}-d)")
        ax.set_xlabel(f"PC 1 ({100 * variance[0]:.0f}% of variance)")
        ax.set_ylabel(f"PC 2 ({100 * variance[1]:.0f}% of variance)")
    if len(classes) <= 20:
        axes[-1].legend(markerscale=3, fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    return save(fig, path, "Embeddings, first two principal components, coloured by class")
