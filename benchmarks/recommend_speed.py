"""Top-10 recommendations for every ml-1m user, seen items excluded: the time recsys.Recommender takes.

    python benchmarks/recommend_speed.py [--dim 64] [--repeats 5]

Speed does not depend on training, so the model is mf with its initial factors at k = --dim; users are
scored against all items in chunks (one matrix product each), masked and cut with torch.topk. Prints the
median over --repeats runs after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from recsys.data import RatingsDataModule
from recsys.models.mf import BiasedMF
from recsys.recommender import Recommender


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    dm = RatingsDataModule(name="ml-1m")
    dm.prepare_data()
    dm.setup()
    torch.manual_seed(0)
    rec = Recommender(BiasedMF(data=dm.facts(), dim=args.dim).eval(), dm.user_map, dm.item_map, dm.seen())
    users = dm.user_map.ids
    rec.recommend(users[:100], n=10)  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        top = rec.recommend(users, n=10)
        times.append(time.perf_counter() - start)
    print(f"ml-1m: top-10 of all {len(users)} users against {len(dm.item_map)} items (k={args.dim}, "
          f"{torch.get_num_threads()} threads): median {statistics.median(times):.3f} s, "
          f"min {min(times):.3f} s, max {max(times):.3f} s; {len(top)} rows")


if __name__ == "__main__":
    main()
