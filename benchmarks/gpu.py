"""GPU throughput at ML-25M's shape: gradient mf ratings/s, ALS seconds per epoch (k=64), Gibbs seconds per sample.

    python benchmarks/gpu.py                                   # cuda, 25M synthetic ratings, 162,541 × 59,047
    python benchmarks/gpu.py --device cpu --num-ratings 200000 # the same on the CPU (a check of the script)

The ratings come from ``recsys.data.synthetic.generate_ratings`` with ML-25M's user and item counts (ML-25M itself
needs GroupLens, which the GPU machines cannot reach). Each measurement moves the ratings to the device once, runs a
warm-up (kernels, allocator, the ALS row systems), then times with ``torch.cuda.synchronize`` around it:

- gradient mf (k=64, mf's default optimizer, row-sparse lazy Adam) over one shuffled epoch at ``--batch``
  (default 1,048,576: a GPU step costs little more at a larger batch); also torch's fused dense Adam, the peer;
- ALS mf (k=64, ``als_solve=cg``): one epoch of user and item half-sweeps after the systems are built;
- BPMF (k=10, the default rank): one Gibbs sample.

Goals (issue 24): ≥ 2·10⁸ ratings/s gradient mf on one H100/H200, ALS ≤ 0.5 s per epoch at k=64.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scaling import DENSE_ADAM, gradient_epochs  # noqa: E402 - a sibling script: one timed epoch for both

ML25M = (162_541, 59_047)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _data(n: int, users: int, items: int, device: str):
    from recsys.data.facts import DataFacts
    from recsys.data.synthetic import generate_ratings

    frame = generate_ratings(n, users, items, seed=0)
    u = torch.from_numpy(frame["user"].to_numpy(np.int64, copy=True)).to(device)
    i = torch.from_numpy(frame["item"].to_numpy(np.int64, copy=True)).to(device)
    r = torch.from_numpy(frame["rating"].to_numpy(np.float32, copy=True)).to(device)
    facts = DataFacts(num_users=users, num_items=items, num_train=n, global_mean=float(r.mean()))
    return u, i, r, facts


class DeviceShuffle:
    """Each iteration one epoch's batches, its permutation drawn on the ratings' device: the step's throughput.
    (Training's loader draws the permutation on the CPU and moves it: at ML-25M's size about 1.4 s an epoch on 2
    cores, which would bound the figure far below the step's.)"""

    def __init__(self, u, i, r, batch: int) -> None:
        self.tensors, self.batch = (u, i, r), batch

    def __iter__(self):
        perm = torch.randperm(len(self.tensors[2]), device=self.tensors[2].device)
        u, i, r = (t.index_select(0, perm) for t in self.tensors)
        for lo in range(0, len(r), self.batch):
            yield u[lo:lo + self.batch], i[lo:lo + self.batch], r[lo:lo + self.batch]


def gradient(u, i, r, facts, device: str, batch: int, optimizer: dict | None) -> float:
    """Ratings per second of one shuffled epoch of gradient mf (after a warm-up epoch)."""
    from recsys.models.mf import BiasedMF

    torch.manual_seed(0)
    model = BiasedMF(data=facts, dim=64, reg=0.05, **({"optimizer": optimizer} if optimizer else {})).to(device)
    return len(r) / gradient_epochs(model, DeviceShuffle(u, i, r, batch), 2, lambda: _sync(device))[-1]


def als(u, i, r, facts, device: str) -> dict:
    from recsys.models.mf import BiasedMF
    from recsys.solvers.als import Sweeper

    torch.manual_seed(0)
    model = BiasedMF(data=facts, dim=64, reg=0.05, solver="als").to(device)
    _sync(device)
    start = time.perf_counter()
    sweeper = Sweeper(model.least_squares(), u, i, r)
    _sync(device)
    build = time.perf_counter() - start
    sweeper.epoch(model.least_squares())  # warm-up
    _sync(device)
    start = time.perf_counter()
    sweeper.epoch(model.least_squares())
    _sync(device)
    return {"als_build_s": build, "als_s_per_epoch": time.perf_counter() - start}


def gibbs(u, i, r, facts, device: str) -> float:
    from recsys.models.bpmf import BPMF
    from recsys.solvers.als import Sweeper
    from recsys.solvers.gibbs import Gibbs

    torch.manual_seed(0)
    model = BPMF(data=facts, solver="gibbs").to(device)
    chain = model.chain()
    sweeper = Sweeper(chain.problem, u, i, r)
    Gibbs.sample(chain, sweeper, 0)  # warm-up
    _sync(device)
    start = time.perf_counter()
    Gibbs.sample(chain, sweeper, 1)
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--num-ratings", type=float, default=25e6)
    p.add_argument("--users", type=int, default=ML25M[0])
    p.add_argument("--items", type=int, default=ML25M[1])
    p.add_argument("--batch", type=int, default=1 << 20)
    a = p.parse_args()
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py: no CUDA device here (--device cpu runs the same measurements on the CPU)")
    u, i, r, facts = _data(int(a.num_ratings), a.users, a.items, a.device)
    name = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    out = {"device": name, "ratings": len(r), "users": a.users, "items": a.items, "batch": a.batch}
    out["gradient_ratings_per_s"] = gradient(u, i, r, facts, a.device, a.batch, None)
    out["gradient_dense_adam_ratings_per_s"] = gradient(u, i, r, facts, a.device, a.batch, DENSE_ADAM)
    out.update(als(u, i, r, facts, a.device))
    out["gibbs_s_per_sample"] = gibbs(u, i, r, facts, a.device)
    print(f"{name}: {len(r):,} ratings, {a.users:,} users × {a.items:,} items")
    print(f"  gradient mf (row-sparse Adam, batch {a.batch:,}): {out['gradient_ratings_per_s'] / 1e6:.1f}M ratings/s")
    print(f"  gradient mf (dense fused Adam):                 {out['gradient_dense_adam_ratings_per_s'] / 1e6:.1f}M "
          "ratings/s")
    print(f"  ALS mf k=64: {out['als_s_per_epoch']:.3f} s/epoch (build {out['als_build_s']:.2f} s)")
    print(f"  Gibbs (bpmf k=10): {out['gibbs_s_per_sample']:.3f} s/sample")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
