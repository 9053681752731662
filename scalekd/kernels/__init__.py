"""Fused kernels (Triton), each beside the torch reference it is tested against. Mapped as
`scalekd.kernels`, so the PyPI package named `kernels` is never shadowed."""
