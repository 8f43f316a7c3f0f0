"""Train/validation/test splits as pure functions of (ratings, settings, seed).

``split_indices`` returns row positions, ``split_ratings`` the rows themselves; train.py and the public
API share them, so the same settings give the very same split everywhere. Every strategy carves the
validation set out of the training part the same way it carves the test set out of all ratings, so no
strategy leaks test information into validation.

- ``random``: one seeded permutation; ``round(test_ratio·n)`` test rows, ``round(val_ratio·n)`` val rows
  (the D2L chapter's 90/10 split, with validation carved from its train part).
- ``user``: per user, ``round(test_ratio·n_u)`` of the user's ratings (chosen at random) go to test, but
  a user with ≥ 2 ratings always keeps at least one in train.
- ``temporal``: a global time cut: every test rating is strictly later than every train rating (ties at
  the cut stay on the train side); validation is the latest part of what remains.
- ``leave_last``: per user, the latest ``leave_last_n`` ratings go to test (D2L's "seq-aware" mode), the
  next latest ``leave_last_n`` to validation if ``val_ratio > 0``; users keep at least one train rating.
- k-fold (``folds=k``, ``fold=f``): a seeded permutation cut into k folds; fold f is test, so each rating
  is in exactly one test fold; validation is carved at random from the other folds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

STRATEGIES = ("random", "user", "temporal", "leave_last")


def check_ratios(test_ratio: float, val_ratio: float) -> None:
    if not 0 <= test_ratio < 1 or not 0 <= val_ratio < 1 or test_ratio + val_ratio >= 1:
        raise ValueError(
            f"test_ratio={test_ratio} and val_ratio={val_ratio} must each lie in [0, 1) and sum to "
            "less than 1 (both are fractions of all ratings; validation is carved from train)"
        )


def _rank_within_user(users: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows taken in ``order``: each row's 0-based position within its user, and its user's count."""
    u = users[order]
    srt = np.argsort(u, kind="stable")
    u_sorted = u[srt]
    starts = np.flatnonzero(np.r_[True, u_sorted[1:] != u_sorted[:-1]])
    counts = np.diff(np.r_[starts, len(u_sorted)])
    pos_sorted = np.arange(len(u_sorted)) - np.repeat(starts, counts)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order[srt]] = pos_sorted
    n_u = np.empty(len(order), dtype=np.int64)
    n_u[order[srt]] = np.repeat(counts, counts)
    return rank, n_u


def _per_user(users: np.ndarray, order: np.ndarray, count_fn) -> np.ndarray:
    """Mask of rows whose position (in ``order``, per user) is below ``count_fn(n_u)``."""
    rank, n_u = _rank_within_user(users, order)
    take = np.minimum(count_fn(n_u), np.maximum(n_u - 1, 0))  # a user keeps at least one rating
    return rank < take


def _carve(idx: np.ndarray, strategy: str, ratio_or_n, users, times, rng) -> tuple[np.ndarray, np.ndarray]:
    """Split row positions ``idx`` into (rest, held out) by ``strategy``."""
    n = len(idx)
    if strategy == "random":
        perm = rng.permutation(idx)
        k = round(ratio_or_n * n)
        return np.sort(perm[k:]), np.sort(perm[:k])
    if strategy == "user":
        order = rng.permutation(n)
        held = _per_user(users[idx], order, lambda n_u: np.rint(ratio_or_n * n_u).astype(np.int64))
    elif strategy == "leave_last":
        t = times[idx]  # latest first; a random key breaks ties reproducibly
        order = np.lexsort((rng.random(n), -t))
        held = _per_user(users[idx], order, lambda n_u: np.full_like(n_u, int(ratio_or_n)))
    elif strategy == "temporal":
        t = times[idx]
        k = round(ratio_or_n * n)
        if k == 0:
            return np.sort(idx), idx[:0]
        cut = np.sort(t)[n - k]  # held out: strictly later than the cut, so ties stay in train
        held = t > cut
    else:
        raise ValueError(f"unknown split strategy {strategy!r}; choose one of {STRATEGIES}")
    return np.sort(idx[~held]), np.sort(idx[held])


def split_indices(data: int | pd.DataFrame, strategy: str = "random", test_ratio: float = 0.1,
                  val_ratio: float = 0.05, seed: int = 0, leave_last_n: int = 1, folds: int | None = None,
                  fold: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row positions of (train, val, test), each sorted; see the module docstring for the strategies.

    ``data`` is the ratings DataFrame (``user`` and, for time-based strategies, ``timestamp`` columns)
    or, for ``random`` and k-fold, just the number of ratings.
    """
    n = data if isinstance(data, int) else len(data)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown split strategy {strategy!r}; choose one of {STRATEGIES}")
    check_ratios(0.0 if folds else test_ratio, val_ratio)
    rng = np.random.default_rng(seed)
    users = times = None
    if strategy in ("user", "leave_last", "temporal"):
        if isinstance(data, int):
            raise ValueError(f"split strategy {strategy!r} needs the ratings DataFrame, not a count")
        users = pd.factorize(data["user"])[0]
        if strategy != "user":
            if "timestamp" not in data or data["timestamp"].isna().any():
                raise ValueError(f"split strategy {strategy!r} needs a timestamp for every rating")
            times = data["timestamp"].to_numpy()
    everything = np.arange(n)
    if folds:
        if not (isinstance(folds, int) and folds >= 2 and 0 <= fold < folds):
            raise ValueError(f"data.folds={folds}, data.fold={fold}: need folds >= 2 and 0 <= fold < folds")
        if strategy != "random":
            raise ValueError("k-fold splits are random: use data.split=random with data.folds")
        parts = np.array_split(rng.permutation(n), folds)
        test = np.sort(parts[fold])
        rest = np.sort(np.concatenate([p for f, p in enumerate(parts) if f != fold]))
        train, val = _carve(rest, "random", val_ratio * n / max(len(rest), 1), users, times, rng)
        return train, val, test
    if strategy == "random":  # one permutation: test, then validation, then train
        perm = rng.permutation(n)
        n_test, n_val = round(test_ratio * n), round(val_ratio * n)
        test, val, train = np.split(perm, [n_test, n_test + n_val])
        return np.sort(train), np.sort(val), np.sort(test)
    held_param = leave_last_n if strategy == "leave_last" else test_ratio
    rest, test = _carve(everything, strategy, held_param, users, times, rng)
    if strategy == "leave_last":
        val_param = leave_last_n if val_ratio > 0 else 0
    else:  # val_ratio is a fraction of all ratings; express it as a fraction of the rest
        val_param = val_ratio * n / max(len(rest), 1)
    train, val = _carve(rest, strategy, val_param, users, times, rng)
    return train, val, test


def split_ratings(df: pd.DataFrame, strategy: str = "random", test_ratio: float = 0.1,
                  val_ratio: float = 0.05, seed: int = 0, leave_last_n: int = 1, folds: int | None = None,
                  fold: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split a ratings DataFrame into (train, val, test); see :func:`split_indices`."""
    parts = split_indices(df, strategy, test_ratio, val_ratio, seed, leave_last_n, folds, fold)
    return tuple(df.iloc[p].reset_index(drop=True) for p in parts)
