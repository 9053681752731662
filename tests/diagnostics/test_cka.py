import torch

from helpers.figures import assert_sane_png
from scalekd.diagnostics.cka import cka_matrix, linear_cka, plot_cka


def test_cka_of_a_representation_with_itself_is_one():
    x = torch.randn(200, 32, generator=torch.Generator().manual_seed(0))
    assert abs(linear_cka(x, x) - 1) < 1e-9


def test_cka_is_invariant_to_orthogonal_transforms_and_scale():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 32, generator=g)
    q, _ = torch.linalg.qr(torch.randn(32, 32, generator=g, dtype=torch.float64))
    assert abs(linear_cka(x, 3.0 * (x.double() @ q)) - 1) < 1e-9


def test_cka_of_unrelated_representations_is_small_and_symmetric():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(500, 16, generator=g), torch.randn(500, 8, generator=g)
    assert linear_cka(x, y) < 0.1
    assert abs(linear_cka(x, y) - linear_cka(y, x)) < 1e-12


def test_cka_heatmap(tmp_path):
    g = torch.Generator().manual_seed(3)
    layers = [torch.randn(64, 8, generator=g) for _ in range(3)]
    matrix = cka_matrix(layers, layers[:2])
    assert matrix.shape == (3, 2)
    assert torch.allclose(matrix.diagonal(), torch.ones(2), atol=1e-6)
    assert_sane_png(plot_cka(matrix, ["a", "b", "c"], ["x", "y"], tmp_path / "cka.png"))
