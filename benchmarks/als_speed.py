"""ALS epoch time and accuracy on ml-100k, side by side with LensKit's ALS BiasedMF in the same run.

    python benchmarks/als_speed.py                  # k = 32, 64, 128; 15 epochs each
    python benchmarks/als_speed.py --dims 64 --epochs 10 --threads 2

One epoch is a user half-sweep plus an item half-sweep over the whole training split (90/10 random
split, 5% of all ratings carved from train, data.split_seed=0: the split train.py uses by default).
LensKit (``pip install lenskit``; its 2025 releases need pandas 2) is fit on the very same training
ratings with the same number of factors and epochs; if it is not importable its columns say so.
Figures are medians over epochs after the first (warm-up) one.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from recsys.data import RatingsDataModule
from recsys.models.mf import BiasedMF
from recsys.solvers.als import half_sweep


def ours(dm: RatingsDataModule, dim: int, epochs: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = BiasedMF(data=dm.facts(), dim=dim, solver="als")
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for side in ("user", "item"):  # what one ALS epoch of train.py does
            half_sweep(model.least_squares(), side, *dm.train_set)
        times.append(time.perf_counter() - start)
    users, items, ratings = dm.test_set
    with torch.no_grad():
        rmse = (model.predict(users, items) - ratings).square().mean().sqrt().item()
    return 1000 * statistics.median(times[1:] or times), rmse


def lenskit(dm: RatingsDataModule, dim: int, epochs: int) -> tuple[float, float] | str:
    try:
        from lenskit.als import BiasedMFScorer
        from lenskit.data import from_interactions_df
    except ImportError as err:
        return f"lenskit not importable ({err})"
    import pandas as pd

    u, i, r = (t.numpy() for t in dm.train_set)
    train = pd.DataFrame({"user": u, "item": i, "rating": r})
    ds = from_interactions_df(train, user_col="user", item_col="item", rating_col="rating")
    scorer = BiasedMFScorer(features=dim, epochs=epochs)
    start = time.perf_counter()
    scorer.train(ds)
    fit = time.perf_counter() - start
    # score the test pairs from the learned parameters: bias model + embeddings
    tu, ti, tr = (t.numpy() for t in dm.test_set)
    unum = scorer.users.numbers(tu, missing="negative")
    inum = scorer.items.numbers(ti, missing="negative")
    bias = scorer.bias
    pred = np.full(len(tr), bias.global_bias, dtype=np.float64)
    known_u, known_i = unum >= 0, inum >= 0
    if bias.user_biases is not None:
        pred[known_u] += bias.user_biases[unum[known_u]]
    if bias.item_biases is not None:
        pred[known_i] += bias.item_biases[inum[known_i]]
    both = known_u & known_i
    pred[both] += (scorer.user_embeddings[unum[both]] * scorer.item_embeddings[inum[both]]).sum(1)
    pred = np.clip(pred, dm.hparams.rating_min, dm.hparams.rating_max)
    return 1000 * fit / epochs, float(np.sqrt(np.mean((pred - tr) ** 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    dm = RatingsDataModule(name="ml-100k", split_seed=0)
    dm.prepare_data()
    dm.setup()
    print(f"ml-100k: {len(dm.train_set[0])} train / {len(dm.test_set[0])} test ratings, "
          f"{args.epochs} epochs, {args.threads} threads")
    print(f"{'k':>4} | {'recsys ms/epoch':>15} | {'recsys RMSE':>11} | {'lenskit ms/epoch':>16} | "
          f"{'lenskit RMSE':>12} | {'time ratio':>10}")
    for dim in args.dims:
        ms, rmse = ours(dm, dim, args.epochs)
        peer = lenskit(dm, dim, args.epochs)
        if isinstance(peer, str):
            print(f"{dim:>4} | {ms:>15.1f} | {rmse:>11.4f} | {peer}")
            continue
        lk_ms, lk_rmse = peer
        print(f"{dim:>4} | {ms:>15.1f} | {rmse:>11.4f} | {lk_ms:>16.1f} | {lk_rmse:>12.4f} | "
              f"{ms / lk_ms:>9.2f}x")


if __name__ == "__main__":
    main()
