"""The frequency spectrum of feature maps, as ScaleKD's Figures 2 and 5 show for large ViTs:
the orthonormal 2D DCT-II of every channel, magnitudes averaged over channels and images. In
pretrained ViTs the direct component (the per-channel spatial mean) dominates, which is why
ScaleKD's frequency view removes it."""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.ticker import MaxNLocator

from scalekd.diagnostics.figures import new_figure, save
from scalekd.kernels.dct import DCT2d


def dct_spectrum(maps: torch.Tensor) -> torch.Tensor:
    """Mean |DCT coefficient| (H, W) of NCHW maps, over images and channels."""
    _, _, h, w = maps.shape
    return DCT2d(h, w)(maps.float()).abs().mean(dim=(0, 1))


def direct_share(spectrum: torch.Tensor) -> float:
    """The direct component's share of the spectrum's energy (squared magnitudes)."""
    energy = spectrum.double() ** 2
    return (energy[0, 0] / energy.sum()).item()


def plot_spectra(spectra: dict[str, torch.Tensor], path: Path) -> Path:
    """One heatmap of log10 magnitude per named spectrum, low frequencies at the origin, each
    titled with its direct component's share of the energy."""
    fig, axes = new_figure(1, len(spectra), width=4.5, height=4.0)
    for ax, (name, spectrum) in zip(axes, spectra.items()):
        image = ax.imshow(spectrum.clamp_min(1e-12).log10().numpy(), origin="lower",
                          cmap="viridis")
        ax.set_title(f"{name}\ndirect component: {100 * direct_share(spectrum):.1f}% of energy",
                     fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("horizontal frequency")
        ax.set_ylabel("vertical frequency")
        fig.colorbar(image, ax=ax, label="log10 mean |DCT coefficient|", shrink=0.8)
    return save(fig, path, "Feature spectra (2D DCT-II, averaged over channels and images)")
