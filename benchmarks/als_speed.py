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
import sys
import time
from pathlib import Path

import numpy as np
import torch

from recsys.data import RatingsDataModule
from recsys.models.mf import BiasedMF
from recsys.solvers.als import Sweeper, communicated_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import lenskit_threads  # noqa: E402

LINES: list[str] = []
RESULTS = Path(__file__).resolve().parent / "results"


def emit(line: str = "") -> None:
    """Print a line of the report, kept for benchmarks/results/als_speed.md."""
    print(line, flush=True)
    LINES.append(line)


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


def train_py_model(name: str, dm, *overrides: str):
    """The model ``python train.py data=<name> model.solver=als ...`` builds (its data-set-aware defaults too)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "configs"), version_base=None):
        cfg = compose("train", overrides=[f"data={name.replace('-', '')}", "model.solver=als", *overrides])
    return instantiate(cfg.model, data=dm.facts())


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
    emit(f"\n## {name}: epoch time at k (fit seconds / {epochs} epochs)\n")
    emit("| k | recsys ms/epoch | recsys RMSE | LensKit ms/epoch | LensKit RMSE | ratio recsys/LensKit |")
    emit("|---|---|---|---|---|---|")
    for dim in dims:
        torch.manual_seed(0)
        fit, curve = ours(dm, BiasedMF(data=dm.facts(), dim=dim, solver="als"), epochs)
        peer = lenskit(dm, dim, epochs)
        if isinstance(peer, str):
            emit(f"| {dim} | {1000 * fit / epochs:.1f} | {curve[-1]:.4f} | {peer} | | |")
            continue
        emit(f"| {dim} | {1000 * fit / epochs:.1f} | {curve[-1]:.4f} | {1000 * peer[0] / epochs:.1f} | "
              f"{peer[1]:.4f} | {fit / peer[0]:.2f}× |")


def convergence(dm, name: str) -> None:
    emit(f"\n## {name}: epochs to LensKit's accuracy (its defaults: k=50, 10 epochs)\n")
    peer = lenskit(dm, 50, 10)
    torch.manual_seed(0)
    fit, curve = ours(dm, train_py_model(name, dm, "model=mf"), 15)
    emit("recsys mf ALS (train.py's defaults for this data set, k=64) test RMSE by epoch: "
          + ", ".join(f"{r:.4f}" for r in curve))
    if isinstance(peer, str):
        emit(peer)
        return
    reached = next((e + 1 for e, r in enumerate(curve) if r <= peer[1]), None)
    emit(f"LensKit: {peer[1]:.4f} in {peer[0]:.2f} s; recsys reaches it at epoch {reached} "
          f"({fit * (reached or 15) / 15:.2f} s)")
    if name == "ml-100k":
        torch.manual_seed(0)
        _, curve = ours(dm, train_py_model(name, dm, "model=pmf"), 15)
        emit("recsys pmf ALS (defaults) test RMSE by epoch: " + ", ".join(f"{r:.4f}" for r in curve))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["ml-100k", "ml-1m"])
    parser.add_argument("--dims", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lenskit_threads(args.threads)  # else LensKit's first fit leaves torch and BLAS one thread
    emit(f"# ALS speed: recsys against LensKit ({args.threads} threads, {time.strftime('%Y-%m-%d')})")
    emit()
    emit("`" + " ".join(["python benchmarks/als_speed.py", *sys.argv[1:]]) + "`")
    for name in args.data:
        dm = RatingsDataModule(name=name, split_seed=0)
        dm.prepare_data()
        dm.setup()
        speed(dm, name, args.dims, args.epochs)
        convergence(dm, name)
    sizes = communicated_bytes(162_541, 59_047, 65, world=2)
    emit(f"\n## DDP at ML-25M shapes, k=64 (+ bias), 2 ranks: bytes each rank receives per epoch\n\n"
          f"all-gather of factors (recsys): {sizes['all_gather_factors'] / 1e6:.1f} MB; all-reduce of every row's "
          f"statistics (ratings-sharded ALS): {sizes['all_reduce_statistics'] / 1e9:.2f} GB "
          f"({sizes['all_reduce_statistics'] / sizes['all_gather_factors']:.0f}× more)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "als_speed.md").write_text("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
