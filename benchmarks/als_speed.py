"""ALS epoch time against LensKit's ALS BiasedMF, and how many epochs each needs, in the same run.

    python benchmarks/als_speed.py                          # ml-100k and ml-1m, k = 32, 64, 128
    python benchmarks/als_speed.py --data ml-1m --dims 64 --epochs 10 --threads 2

Epoch time, as LensKit's is defined here: a system's fit time over its epochs, setup included (for recsys:
building both sides' row systems once, then the epochs' user and item half-sweeps, as ``model.solver=als``
runs them; for LensKit, ``BiasedMFScorer.train``). Both fit the same training ratings of
``data.split_seed=0`` with the same number of factors and epochs; the ratio is recsys / LensKit.

Convergence: the test RMSE of recsys mf ALS with its defaults (k=64, ``model.als_solve=cg``) after each
epoch, against LensKit's defaults (k=50, 10 epochs) on the same split; and pmf ALS's on ml-100k.
Then the bytes each rank receives per epoch under DDP at ML-25M's shapes (162,541 users, 59,047 items).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from recsys.data import RatingsDataModule
from recsys.models.mf import BiasedMF
from recsys.models.pmf import PMF
from recsys.solvers.als import Sweeper, communicated_bytes


def rmse(model, dm) -> float:
    users, items, ratings = dm.test_set
    with torch.no_grad():
        return (model.predict(users, items) - ratings).square().mean().sqrt().item()


def ours(dm: RatingsDataModule, model, epochs: int) -> tuple[float, list[float]]:
    """(fit seconds, test RMSE after each epoch): row systems built once, then the epochs."""
    start = time.perf_counter()
    sweeper = Sweeper(model.least_squares(), *dm.train_set)
    fit, curve = time.perf_counter() - start, []
    for _ in range(epochs):
        start = time.perf_counter()
        sweeper.epoch(model.least_squares())
        fit += time.perf_counter() - start
        curve.append(rmse(model, dm))  # not timed
    return fit, curve


def lenskit(dm: RatingsDataModule, dim: int, epochs: int) -> tuple[float, float] | str:
    """(fit seconds, test RMSE) of LensKit's ALS BiasedMF on the training split."""
    try:
        from peers import lenskit_biased_mf
        fit, seconds = lenskit_biased_mf(dim, epochs)(*(t.numpy() for t in dm.train_set))
    except ImportError as err:
        return f"lenskit not importable ({err}); pip install -e '.[bench]'"
    tu, ti, tr = (t.numpy() for t in dm.test_set)
    pred = np.clip(fit(tu, ti), dm.hparams.rating_min, dm.hparams.rating_max)
    return seconds, float(np.sqrt(np.mean((pred - tr) ** 2)))


def speed(dm, name: str, dims: list[int], epochs: int) -> None:
    print(f"\n## {name}: epoch time at k (fit seconds / {epochs} epochs)\n")
    print("| k | recsys ms/epoch | recsys RMSE | LensKit ms/epoch | LensKit RMSE | ratio recsys/LensKit |")
    print("|---|---|---|---|---|---|")
    for dim in dims:
        torch.manual_seed(0)
        fit, curve = ours(dm, BiasedMF(data=dm.facts(), dim=dim, solver="als"), epochs)
        peer = lenskit(dm, dim, epochs)
        if isinstance(peer, str):
            print(f"| {dim} | {1000 * fit / epochs:.1f} | {curve[-1]:.4f} | {peer} | | |")
            continue
        print(f"| {dim} | {1000 * fit / epochs:.1f} | {curve[-1]:.4f} | {1000 * peer[0] / epochs:.1f} | "
              f"{peer[1]:.4f} | {fit / peer[0]:.2f}× |")


def convergence(dm, name: str) -> None:
    print(f"\n## {name}: epochs to LensKit's accuracy (its defaults: k=50, 10 epochs)\n")
    peer = lenskit(dm, 50, 10)
    torch.manual_seed(0)
    fit, curve = ours(dm, BiasedMF(data=dm.facts(), solver="als"), 15)
    print("recsys mf ALS (defaults, k=64) test RMSE by epoch: " + ", ".join(f"{r:.4f}" for r in curve))
    if isinstance(peer, str):
        print(peer)
        return
    reached = next((e + 1 for e, r in enumerate(curve) if r <= peer[1]), None)
    print(f"LensKit: {peer[1]:.4f} in {peer[0]:.2f} s; recsys reaches it at epoch {reached} "
          f"({fit * (reached or 15) / 15:.2f} s)")
    if name == "ml-100k":
        torch.manual_seed(0)
        _, curve = ours(dm, PMF(data=dm.facts(), solver="als"), 15)
        print("recsys pmf ALS (defaults) test RMSE by epoch: " + ", ".join(f"{r:.4f}" for r in curve))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["ml-100k", "ml-1m"])
    parser.add_argument("--dims", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.threads} threads")
    for name in args.data:
        dm = RatingsDataModule(name=name, split_seed=0)
        dm.prepare_data()
        dm.setup()
        speed(dm, name, args.dims, args.epochs)
        convergence(dm, name)
    sizes = communicated_bytes(162_541, 59_047, 65, world=2)
    print(f"\n## DDP at ML-25M shapes, k=64 (+ bias), 2 ranks: bytes each rank receives per epoch\n\n"
          f"all-gather of factors (recsys): {sizes['all_gather_factors'] / 1e6:.1f} MB; all-reduce of every row's "
          f"statistics (ratings-sharded ALS): {sizes['all_reduce_statistics'] / 1e9:.2f} GB "
          f"({sizes['all_reduce_statistics'] / sizes['all_gather_factors']:.0f}× more)")


if __name__ == "__main__":
    main()
