"""Load + split time of a large synthetic data set (default 25M ratings, ml-25m's size), and of the same
ratings as an ml-25m-layout ``ratings.csv``: cold (generate or parse, id-map, write the cache) and warm
(the parsed cache), each step in a fresh process so its peak memory is its own.

    python benchmarks/data_load.py                      # 25M ratings, cache in a temp folder
    python benchmarks/data_load.py --num-ratings 1000000 --keep /tmp/bench-data
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # kB on Linux


def step(kind: str, root: str, n: int) -> dict:
    """One measured step, run in this (fresh) process."""
    from recsys.data.datasets import prepare
    from recsys.data.splits import split_indices

    csv = Path(root) / "ratings.csv"
    t0 = time.perf_counter()
    if kind in ("synthetic", "synthetic-cached"):
        data = prepare("synthetic", root, num_ratings=n)
    elif kind == "write-csv":  # not timed as loading: makes the CSV the next steps read
        import pyarrow as pa
        import pyarrow.csv as pacsv

        df = prepare("synthetic", root, num_ratings=n).frame()
        df.columns = ["userId", "movieId", "rating", "timestamp"]
        pacsv.write_csv(pa.Table.from_pandas(df, preserve_index=False), csv)
        return {"step": kind, "bytes": csv.stat().st_size}
    else:  # csv, csv-cached
        data = prepare("ratings_file", root, path=csv, scale=(0.5, 5.0))
    t1 = time.perf_counter()
    split_indices(data.frame(original_ids=False), "random", 0.1, 0.05, 0)
    t2 = time.perf_counter()
    return {"step": kind, "ratings": len(data), "load_s": t1 - t0, "split_s": t2 - t1, "peak_gb": _peak_gb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-ratings", type=int, default=25_000_000)
    ap.add_argument("--keep", help="cache folder to keep (default: a temp folder, removed)")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        print(json.dumps(step(args.step, args.root, args.num_ratings)))
        return
    root = args.keep or tempfile.mkdtemp(prefix="recsys-bench-")
    try:
        rows = []
        for kind in ("synthetic", "synthetic-cached", "write-csv", "csv", "csv-cached"):
            out = subprocess.run([sys.executable, __file__, "--step", kind, "--root", root,
                                  "--num-ratings", str(args.num_ratings)],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{args.num_ratings:,} ratings ({rows[2]['bytes'] / 1e6:.0f} MB as ratings.csv)")
        print("| step | what | load s | split s | load+split s | peak RSS GB |")
        print("|---|---|---|---|---|---|")
        what = {"synthetic": "generate, id-map, write cache", "synthetic-cached": "parsed cache",
                "csv": "parse CSV (pyarrow), id-map, write cache", "csv-cached": "parsed cache"}
        for r in rows:
            if "load_s" in r:
                print(f"| {r['step']} | {what[r['step']]} | {r['load_s']:.2f} | {r['split_s']:.2f} | "
                      f"{r['load_s'] + r['split_s']:.2f} | {r['peak_gb']:.2f} |")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
