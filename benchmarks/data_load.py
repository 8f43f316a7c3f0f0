"""Load + split time and memory of a large synthetic data set (default 25M ratings, ml-25m's size), and of the
same ratings as an ml-25m-layout ``ratings.csv``, as ``RatingsDataModule.setup`` gets them
(:func:`recsys.data.datasets.prepare_split`): cold (generate or parse, id-map, parse cache, split, split cache) and
warm (the split cache, memory-mapped; every page read), each step in a fresh process so its peak memory is its
own, beside the size of the split arrays it ends with.

    python benchmarks/data_load.py                      # 25M ratings, cache in a temp folder
    python benchmarks/data_load.py --num-ratings 1000000 --keep /tmp/bench-data
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_gb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024**3


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # kB on Linux


def step(kind: str, root: str, n: int) -> dict:
    """One measured step, run in this (fresh) process: what ``RatingsDataModule.setup`` does to get its split."""
    from recsys.data.datasets import Source, prepare, prepare_split

    csv = Path(root) / "ratings.csv"
    if kind == "write-csv":  # not timed as loading: makes the CSV the next steps read
        import pyarrow as pa
        import pyarrow.csv as pacsv

        df = prepare("synthetic", root, num_ratings=n).frame()
        df.columns = ["userId", "movieId", "rating", "timestamp"]
        pacsv.write_csv(pa.Table.from_pandas(df, preserve_index=False), csv)
        return {"step": kind, "bytes": csv.stat().st_size}
    if kind.startswith("synthetic"):
        src = Source("synthetic", root, num_ratings=n)
    else:  # csv, csv-cached
        src = Source("ratings_file", root, path=str(csv), scale=(0.5, 5.0))
    base = _rss_gb()  # the interpreter, numpy, pandas, torch: before any data
    t0 = time.perf_counter()
    split = {"strategy": "random", "test_ratio": 0.1, "val_ratio": 0.05, "seed": 0}
    data = prepare_split(src, split, {"rating_step": 0.5, "rating_min": 0.5})
    arrays = [a for part in data.parts.values() for a in part]
    total = sum(float(a.sum()) for a in arrays)  # every page read, as an epoch would
    seconds = time.perf_counter() - t0
    return {"step": kind, "ratings": sum(len(part[0]) for part in data.parts.values()), "seconds": seconds,
            "peak_gb": _peak_gb(), "base_gb": base, "arrays_gb": sum(a.nbytes for a in arrays) / 1024**3,
            "check": total}


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
        print("| step | what | seconds | peak RSS GB | of it, data GB | split arrays GB | data / arrays |")
        print("|---|---|---|---|---|---|---|")
        what = {"synthetic": "generate, id-map, parse cache, split, split cache",
                "synthetic-cached": "split cache (memory-mapped)",
                "csv": "parse CSV (pyarrow), id-map, parse cache, split, split cache",
                "csv-cached": "split cache (memory-mapped)"}
        for r in rows:
            if "seconds" in r:
                data = r["peak_gb"] - r["base_gb"]  # above the interpreter and libraries
                print(f"| {r['step']} | {what[r['step']]} | {r['seconds']:.2f} | {r['peak_gb']:.2f} | {data:.2f} | "
                      f"{r['arrays_gb']:.2f} | {data / r['arrays_gb']:.1f} |")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
