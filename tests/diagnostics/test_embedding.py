import torch

from helpers.figures import assert_sane_png
from scalekd.diagnostics.embedding import pca_2d, plot_embeddings


def test_pca_finds_the_direction_of_largest_variance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g) * torch.tensor([10.0, 1, 1, 1, 1])
    points, variance = pca_2d(x)
    assert points.shape == (300, 2)
    assert variance[0] > 0.9 and variance[0] >= variance[1]
    # the first component is the first axis, up to sign
    assert abs(torch.corrcoef(torch.stack([points[:, 0], x[:, 0]]))[0, 1]) > 0.99


def test_embedding_figure(tmp_path):
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(60) % 3
    emb = torch.randn(60, 6, generator=g) + labels[:, None].float() * 4
    assert_sane_png(plot_embeddings({"teacher": emb, "student": emb[:, :4]}, labels,
                                    ["a", "b", "c"], tmp_path / "pca.png"))
