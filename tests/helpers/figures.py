"""What every figure a command writes must be: a real PNG of a legible size, not blank."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def assert_sane_png(path: Path, min_px: tuple[int, int] = (400, 300)) -> None:
    path = Path(path)
    assert path.is_file(), f"{path} was not written"
    assert 10_000 < path.stat().st_size < 5_000_000, f"{path}: {path.stat().st_size} bytes"
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= min_px[0] and image.height >= min_px[1], image.size
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 20, f"{path} is nearly blank"
