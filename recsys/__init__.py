"""recsys: explicit-rating recommendation with matrix factorization on PyTorch Lightning."""

__version__ = "0.1.0"
