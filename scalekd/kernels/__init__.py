"""Numerical building blocks below the methods: fused kernels (Triton), each beside the torch
reference it is tested against, and fixed transforms (the DCT). Mapped as `scalekd.kernels`, so
the PyPI package named `kernels` is never shadowed."""
