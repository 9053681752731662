from helpers.figures import assert_sane_png
from scalekd.cli import main


def test_diagnose_writes_spectrum_cka_and_pca(trained_tiny_run, tmp_path, capsys):
    main(["diagnose", str(trained_tiny_run), "--images", "48", "--out", str(tmp_path)])
    written = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[-1] for p in written] == ["spectrum.png", "cka.png", "pca.png"]
    for path in written:
        assert_sane_png(path)
