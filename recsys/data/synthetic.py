"""MovieLens-like synthetic ratings at any size, for tests and scaling benchmarks.

Users and items are drawn with power-law (Zipf-like) popularity, so degrees are as skewed as in
MovieLens; a rating is a low-rank signal plus biases and Gaussian noise,

    r = clip(round(μ + b_u + b_i + U_uᵀV_i + ε), 1, 5),   ε ~ N(0, noise²),

with no (user, item) pair twice. Generation is vectorized in chunks: memory stays O(num_ratings)
for the result plus O(chunk · rank) for the work.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    w = (np.arange(1, n + 1, dtype=np.float64)) ** -exponent
    return rng.permutation(w / w.sum())  # popular ids scattered, not 0, 1, 2, ...


def generate_ratings(num_ratings: int, num_users: int | None = None, num_items: int | None = None,
                     rank: int = 10, noise: float = 0.7, exponent: float = 0.8, seed: int = 0,
                     chunk: int = 2_000_000) -> pd.DataFrame:
    """``num_ratings`` distinct (user, item) ratings as a DataFrame ``[user, item, rating, timestamp]``.

    By default users and items are sized like ml-25m's ratios (~150 ratings per user, ~400 per item),
    and at least 2·√num_ratings each. 25M ratings take ~40 s and ~1.3 GB peak RSS on 2 cores.
    """
    if num_ratings < 1:
        raise ValueError(f"data.num_ratings={num_ratings} must be positive")
    side = int(2 * np.sqrt(num_ratings))  # keeps small sets at most ~25% dense
    num_users = num_users or max(20, side, num_ratings // 150)
    num_items = num_items or max(20, side, num_ratings // 400)
    if num_ratings > 0.5 * num_users * num_items:
        raise ValueError(f"data.num_ratings={num_ratings} is too dense for {num_users} users x "
                         f"{num_items} items (at most half the pairs)")
    rng = np.random.default_rng(seed)
    pu, pi = _zipf_weights(num_users, exponent, rng), _zipf_weights(num_items, exponent, rng)
    scale = 1 / np.sqrt(rank)
    U = rng.normal(0, scale, (num_users, rank)).astype(np.float32)
    V = rng.normal(0, scale, (num_items, rank)).astype(np.float32)
    bu = rng.normal(0, 0.4, num_users).astype(np.float32)
    bi = rng.normal(0, 0.5, num_items).astype(np.float32)

    keys, keep = np.empty(0, dtype=np.int64), 1.0
    while len(keys) < num_ratings:  # oversample by the observed repeat rate, drop repeats, top up
        want = int((num_ratings - len(keys)) / keep * 1.02) + 16
        before = len(keys)
        keys = np.concatenate([keys, np.empty(want, dtype=np.int64)])
        for lo in range(before, before + want, chunk):  # chunked: the sampler's temporaries stay small
            m = min(chunk, before + want - lo)
            keys[lo:lo + m] = rng.choice(num_users, m, p=pu) * num_items + rng.choice(num_items, m, p=pi)
        keys.sort()  # in place; repeats become neighbours (a mask of 1 byte per pair, no argsort)
        new = np.empty(len(keys), dtype=bool)
        new[0], new[1:] = True, keys[1:] != keys[:-1]
        keys = keys[new]
        del new
        keep = max((len(keys) - before) / want, 0.05)  # fraction of new draws that were new pairs
    rng.shuffle(keys)  # in place: arrival order independent of the ids
    keys = keys[:num_ratings]
    users, items = (keys // num_items).astype(np.int32), (keys % num_items).astype(np.int32)
    del keys

    ratings = np.empty(num_ratings, dtype=np.float32)
    for lo in range(0, num_ratings, chunk):
        u, i = users[lo:lo + chunk], items[lo:lo + chunk]
        signal = 3.5 + bu[u] + bi[i] + np.einsum("nk,nk->n", U[u], V[i])
        ratings[lo:lo + chunk] = signal + rng.normal(0, noise, len(u)).astype(np.float32)
    np.clip(np.rint(ratings, out=ratings), 1, 5, out=ratings)
    timestamps = rng.integers(0, 20 * 365 * 86_400, num_ratings)
    timestamps.sort()  # in place: ratings arrive over 20 years from 2000 on
    timestamps += 946_684_800
    return pd.DataFrame({"user": users, "item": items, "rating": ratings, "timestamp": timestamps}, copy=False)
