"""Linear CKA (Kornblith et al., 2019) between layers of two networks, as VanillaKD's Figure 2
compares teacher and student layers. Each layer is summarised per image by its spatially
averaged channels, so layers of any resolution and width compare."""

from __future__ import annotations

from pathlib import Path

import torch

from scalekd.diagnostics.figures import new_figure, save


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """CKA of two representations of the same n examples, x (n, d1) and y (n, d2): 1 for
    representations equal up to an orthogonal transform and isotropic scaling."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    cross = (y.T @ x).norm() ** 2
    return (cross / ((x.T @ x).norm() * (y.T @ y).norm())).item()


def cka_matrix(rows: list[torch.Tensor], cols: list[torch.Tensor]) -> torch.Tensor:
    return torch.tensor([[linear_cka(r, c) for c in cols] for r in rows])


def plot_cka(matrix: torch.Tensor, row_names: list[str], col_names: list[str], path: Path,
             row_label: str = "student layer", col_label: str = "teacher layer") -> Path:
    fig, (ax,) = new_figure(width=max(5.0, 0.5 * len(col_names) + 2),
                            height=max(4.0, 0.4 * len(row_names) + 1.5))
    image = ax.imshow(matrix.numpy(), vmin=0, vmax=1, cmap="magma", origin="lower",
                      aspect="auto")
    ax.set_xticks(range(len(col_names)), col_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(row_names)), row_names, fontsize=8)
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            value = matrix[i, j].item()
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if value > 0.6 else "white")
    fig.colorbar(image, ax=ax, label="linear CKA")
    return save(fig, path, "Layer similarity, linear CKA")
