"""Seconds per epoch and peak memory against the number of ratings: gradient mf and ALS mf at k=64.

    python benchmarks/scaling.py                          # 1M, 5M, 25M, 50M, 100M synthetic ratings
    python benchmarks/scaling.py --sizes 1e6 2e6 --epochs 2

Ratings come from ``recsys.data.synthetic.generate_ratings`` (MovieLens-like skew; users and items sized
like ML-25M's ratios: ~150 ratings per user, ~400 per item). Each (size, solver) runs in a fresh process
that loads the ratings and trains, so its peak resident memory (``ru_maxrss``) is that solver's at that
size. Gradient mf: the gradient solver's step (closed-form gradients and the optimizer) over a shuffled epoch at a
batch of 16384 (ml-1m's), its batches drawn as training draws them (the epoch's permutation and gathers
included); ALS mf: one epoch of user and item half-sweeps (``model.als_solve=cg``) after the row systems are
built (build time printed apart). Times are the fastest of ``--epochs`` epochs. Writes
``benchmarks/results/scaling.md`` and ``scaling.png`` (log-log) with the fitted exponent b of
seconds ∝ ratings^b: linear cost is b ≈ 1.

Two gradient series: ``gradient`` is mf's default, row-sparse lazy Adam (recsys.solvers.sparse.RowAdam), whose
step touches only its batch's rows, so an epoch costs ∝ ratings; ``gradient-dense`` is the peer in the same run,
torch's fused Adam over every row of both tables each step (the default before row-sparse gradients), whose epoch
costs ∝ ratings × (users + items) / batch, i.e. ∝ ratings² when the tables grow with the data (run up to 25M).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SOLVERS = ("gradient", "gradient-dense", "als")
DENSE_ADAM = {"_target_": "torch.optim.Adam", "lr": 0.005, "fused": True}  # the peer: the default before RowAdam
DENSE_UP_TO = 25_000_000  # dense Adam's epochs grow as ratings²: beyond this the peer series would take hours


BATCH = 16384  # ml-1m's batch, for both gradient series


def child(path: str, solver: str, epochs: int, dim: int) -> dict:
    """Runs in its own process: load the ratings, train ``epochs`` epochs, report times and peak memory."""
    import torch

    from recsys.data.facts import DataFacts
    from recsys.models.mf import BiasedMF
    from recsys.solvers.als import Sweeper

    arrays = np.load(path)
    users, items = torch.from_numpy(arrays["user"]).long(), torch.from_numpy(arrays["item"]).long()
    ratings = torch.from_numpy(arrays["rating"]).float()
    facts = DataFacts(num_users=int(users.max()) + 1, num_items=int(items.max()) + 1, num_train=len(ratings),
                      global_mean=float(ratings.mean()))
    torch.manual_seed(0)
    peer = {"optimizer": DENSE_ADAM} if solver == "gradient-dense" else {}
    model = BiasedMF(data=facts, dim=dim, reg=0.05, solver="als" if solver == "als" else "gradient", **peer)
    times, build = [], 0.0
    if solver == "als":
        start = time.perf_counter()
        sweeper = Sweeper(model.least_squares(), users, items, ratings)
        build = time.perf_counter() - start
        for _ in range(epochs):
            start = time.perf_counter()
            sweeper.epoch(model.least_squares())
            times.append(time.perf_counter() - start)
    else:
        from recsys.data.datamodule import RatingBatches

        times = gradient_epochs(model, RatingBatches((users, items, ratings), BATCH, shuffle=True), epochs)
    return {"seconds": min(times), "build": build, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def gradient_epochs(model, batches, epochs: int, sync=lambda: None) -> list[float]:
    """Seconds of each epoch of the gradient solver's step (``Gradient.step``) on ``model``'s default optimizer over
    ``batches`` (iterated once an epoch: :class:`recsys.data.datamodule.RatingBatches` draws them as training does,
    the epoch's permutation and gathers included); ``sync`` waits for the device (``torch.cuda.synchronize``)."""
    from recsys.solvers.gradient import Gradient

    solver, opt, seconds = Gradient(), Gradient().configure_optimizers(model), []
    for _ in range(epochs):
        sync()
        start = time.perf_counter()
        for step in batches:
            solver.step(model, opt, step)
        sync()
        seconds.append(time.perf_counter() - start)
    return seconds


def fit_exponent(sizes: list[int], seconds: list[float]) -> float:
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 5e6, 25e6, 50e6, 100e6])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--child", nargs=2, metavar=("RATINGS", "SOLVER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.epochs, args.dim)))
        return

    from recsys.data.synthetic import generate_ratings

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in map(int, args.sizes):
            frame = generate_ratings(size, seed=0)
            path = os.path.join(tmp, f"{size}.npz")
            np.savez(path, user=frame["user"].to_numpy(np.int32), item=frame["item"].to_numpy(np.int32),
                     rating=frame["rating"].to_numpy(np.float32))
            users, items = int(frame["user"].max()) + 1, int(frame["item"].max()) + 1
            del frame
            for solver in SOLVERS:
                if solver == "gradient-dense" and size > DENSE_UP_TO:
                    continue
                out = subprocess.run([sys.executable, __file__, "--child", path, solver, "--epochs", str(args.epochs),
                                      "--dim", str(args.dim)], capture_output=True, text=True)
                if out.returncode != 0:
                    print(f"{size} {solver}: failed ({out.stderr.strip().splitlines()[-1:]})", flush=True)
                    continue
                res = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append({"ratings": size, "users": users, "items": items, "solver": solver, **res})
                print(f"{size:>10,} ratings {solver:>13}: {res['seconds']:.2f} s/epoch "
                      f"(build {res['build']:.2f} s), peak {res['peak_mb']:.0f} MB", flush=True)
    write(rows, args)


def write(rows: list[dict], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = [f"# Scaling: seconds per epoch against ratings (mf, k={args.dim}, {os.cpu_count()} CPU cores)", "",
             f"`python benchmarks/scaling.py` ({time.strftime('%Y-%m-%d')}): synthetic MovieLens-like ratings.", "",
             "| ratings | users | items | solver | batch | s/epoch | ALS build s | ratings/s | peak MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for solver in SOLVERS:
        mine = [r for r in rows if r["solver"] == solver]
        for r in mine:
            batch = f"{BATCH:,}" if solver != "als" else "all"
            lines.append(f"| {r['ratings']:,} | {r['users']:,} | {r['items']:,} | {solver} | {batch} | "
                         f"{r['seconds']:.2f} | {r['build']:.2f} | {r['ratings'] / r['seconds'] / 1e6:.2f}M | "
                         f"{r['peak_mb']:.0f} |")
        if len(mine) >= 2:
            sizes, secs = [r["ratings"] for r in mine], [r["seconds"] for r in mine]
            b = fit_exponent(sizes, secs)
            lines.append(f"| | | | **{solver}: seconds ∝ ratings^{b:.2f}** | | | | | |")
            ax.loglog(sizes, secs, "o-", label=f"{solver} mf (exponent {b:.2f})")
    if rows:  # linear cost through the first gradient point, for the eye
        first = min((r for r in rows if r["solver"] == "gradient"), key=lambda r: r["ratings"], default=rows[0])
        span = np.array(sorted({r["ratings"] for r in rows}), dtype=float)
        ax.loglog(span, first["seconds"] * span / first["ratings"], "k:", label="linear (exponent 1)")
    ax.set_xlabel("ratings")
    ax.set_ylabel("seconds per epoch")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "scaling.png", dpi=110)
    (RESULTS / "scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
