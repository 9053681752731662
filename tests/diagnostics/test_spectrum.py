import torch

from helpers.figures import assert_sane_png
from scalekd.diagnostics.spectrum import dct_spectrum, direct_share, plot_spectra


def test_a_constant_map_is_all_direct_component():
    spectrum = dct_spectrum(torch.full((2, 3, 7, 5), -1.5))
    assert spectrum[0, 0] > 0
    rest = spectrum.clone()
    rest[0, 0] = 0
    assert rest.abs().max() < 1e-5
    assert abs(direct_share(spectrum) - 1) < 1e-9


def test_a_mean_free_map_has_no_direct_component():
    maps = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    maps = maps - maps.mean(dim=(2, 3), keepdim=True)
    assert direct_share(dct_spectrum(maps)) < 1e-10


def test_spectrum_figure(tmp_path):
    maps = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)) + 2
    assert_sane_png(plot_spectra({"a": dct_spectrum(maps), "b": dct_spectrum(maps + 5)},
                                 tmp_path / "s.png"))
