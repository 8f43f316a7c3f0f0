"""Train/validation/test splits as pure functions of (ratings, settings, seed).

``split_indices`` returns row positions, ``split_ratings`` the rows themselves; train.py and the public
API share them, so the same settings give the very same split everywhere.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

STRATEGIES = ("random",)


def _check_ratios(test_ratio: float, val_ratio: float) -> None:
    if not 0 <= test_ratio < 1 or not 0 <= val_ratio < 1 or test_ratio + val_ratio >= 1:
        raise ValueError(
            f"test_ratio={test_ratio} and val_ratio={val_ratio} must each lie in [0, 1) and sum to "
            "less than 1 (both are fractions of all ratings; validation is carved from train)"
        )


def split_indices(n: int, strategy: str = "random", test_ratio: float = 0.1, val_ratio: float = 0.05,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row positions of (train, val, test) for ``n`` ratings.

    ``random``: one seeded permutation; the first ``round(test_ratio·n)`` rows are test, the next
    ``round(val_ratio·n)`` validation, the rest train — the D2L chapter's 90/10 split with validation
    carved from its train part. Each part is returned sorted.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown split strategy {strategy!r}; choose one of {STRATEGIES}")
    _check_ratios(test_ratio, val_ratio)
    perm = np.random.default_rng(seed).permutation(n)
    n_test, n_val = round(test_ratio * n), round(val_ratio * n)
    test, val, train = np.split(perm, [n_test, n_test + n_val])
    return np.sort(train), np.sort(val), np.sort(test)


def split_ratings(df: pd.DataFrame, strategy: str = "random", test_ratio: float = 0.1,
                  val_ratio: float = 0.05, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split a ratings DataFrame into (train, val, test); see :func:`split_indices`."""
    parts = split_indices(len(df), strategy, test_ratio, val_ratio, seed)
    return tuple(df.iloc[p].reset_index(drop=True) for p in parts)
