"""Resident data of DDP ranks on one node: do N ranks hold one copy of the ratings or N?

    python benchmarks/shared_data.py                        # 25M synthetic ratings, 1 and 2 ranks
    python benchmarks/shared_data.py --num-ratings 5e6 --ranks 1 2 4
    python benchmarks/shared_data.py --train                # and whole train.py runs, 1 epoch

Each rank is a process that does what a DDP rank's data side does: ``RatingsDataModule.setup()`` (the split arrays,
memory-mapped from the split cache) and a shuffled training epoch of its own batches (``RatingBatches`` with its
rank and world size), stopping half-way through until every rank is there. Its resident data is its proportional
set size (PSS, ``/proc/<pid>/smaps_rollup``: a page shared by k processes counts 1/k in each) at that point minus
before ``setup``. The figure is the sum over ranks, against one rank alone; the split cache is built first, so
this is the steady state of every run after the first. Writes ``benchmarks/results/shared_data.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 16384


def pss_mb(pid: int | str = "self") -> tuple[float, float]:
    """(PSS, RSS) of a process in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = float(value.split()[0]) / 1024
    return fields["Pss"], fields["Rss"]


def child(num_ratings: int, rank: int, world: int) -> None:
    import torch

    from recsys.data import RatingsDataModule
    from recsys.data.datamodule import RatingBatches

    before = pss_mb()
    dm = RatingsDataModule(name="synthetic", num_ratings=num_ratings)
    dm.setup()
    batches = RatingBatches(dm.train_set, BATCH, True, 0, rank, world)
    total = torch.zeros(())
    for step, (_, _, ratings) in enumerate(batches):
        total += ratings.sum()
        if step == len(batches) // 2:  # mid-epoch: the rank holds its shuffled share; every rank waits here
            print(json.dumps({"before": before[0], "train": len(dm.train_set[0])}), flush=True)
            sys.stdin.readline()


def measure(num_ratings: int, world: int) -> dict:
    procs = [subprocess.Popen([sys.executable, __file__, "--child", str(num_ratings), str(r), str(world)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for r in range(world)]
    reports = [json.loads(p.stdout.readline()) for p in procs]
    now = [pss_mb(p.pid) for p in procs]
    for p in procs:
        p.stdin.write("\n")
        p.stdin.flush()
        p.wait()
    data = [pss - r["before"] for (pss, _), r in zip(now, reports)]
    return {"ranks": world, "data_mb": sum(data), "per_rank_mb": data, "rss_mb": [rss for _, rss in now],
            "train": reports[0]["train"]}


def descendants(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(c) for c in children.read_text().split()] if children.exists() else []
    return kids + [d for k in kids for d in descendants(k)]


def train_run(num_ratings: int, world: int, out: str) -> dict:
    """``train.py`` on the same data (one epoch, ``trainer=ddp_cpu`` for 2+ ranks): the peak over the run of the
    summed PSS of its processes (sampled every 0.2 s), and its training ratings per second."""
    trainer = ["trainer=ddp_cpu", f"trainer.devices={world}"] if world > 1 else ["trainer=cpu"]
    cmd = [sys.executable, str(Path(__file__).resolve().parent.parent / "train.py"), "data=synthetic",
           f"data.num_ratings={num_ratings}", "trainer.max_epochs=1", "logger=none", "progress=none",
           f"hydra.run.dir={out}/{world}", *trainer]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0.0
    while proc.poll() is None:
        total = 0.0
        for pid in [proc.pid, *descendants(proc.pid)]:
            try:
                total += pss_mb(pid)[0]
            except (OSError, KeyError, ValueError):
                pass  # exited between the listing and the read
        peak = max(peak, total)
        time.sleep(0.2)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode})")
    metrics = json.loads((Path(out) / str(world) / "metrics.json").read_text())
    return {"ranks": world, "peak_pss_mb": peak, "ratings_per_second": metrics["train_ratings_per_second"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-ratings", type=float, default=25e6)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--train", action="store_true", help="also time train.py runs (1 epoch) and their peak PSS")
    parser.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    n = int(args.num_ratings)
    start = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--num-ratings", str(n), "--ranks", "1", "--child", str(n), "0", "1"],
                   input="\n", text=True, check=True, stdout=subprocess.DEVNULL)  # builds the caches
    print(f"caches ready in {time.perf_counter() - start:.0f} s")
    rows = [measure(n, world) for world in args.ranks]
    one = rows[0]["data_mb"]
    lines = [f"`python benchmarks/shared_data.py --num-ratings {args.num_ratings:g}` ({n:,} synthetic ratings, "
             f"{rows[0]['train']:,} training ratings; PSS mid-epoch minus before setup)", "",
             "| ranks | resident data, all ranks (MB) | per rank (MB) | × one rank | RSS per rank (MB) |",
             "|---|---|---|---|---|"]
    for row in rows:
        per_rank = " / ".join(f"{d:,.0f}" for d in row["per_rank_mb"])
        lines.append(f"| {row['ranks']} | {row['data_mb']:,.0f} | {per_rank} "
                     f"| {row['data_mb'] / one:.2f} | {' / '.join(f'{r:,.0f}' for r in row['rss_mb'])} |")
    if args.train:
        import tempfile

        with tempfile.TemporaryDirectory() as out:
            runs = [train_run(n, world, out) for world in args.ranks]
        lines += ["", f"`python train.py data=synthetic data.num_ratings={n} trainer.max_epochs=1` (`trainer=ddp_cpu "
                      "trainer.devices=N` for N > 1): the whole run's peak PSS, every process (data, model and "
                      "optimizer state, the interpreter and torch), summed", "",
                  "| ranks | peak PSS, all processes (MB) | × one rank | training ratings/s |", "|---|---|---|---|"]
        lines += [f"| {r['ranks']} | {r['peak_pss_mb']:,.0f} | {r['peak_pss_mb'] / runs[0]['peak_pss_mb']:.2f} | "
                  f"{r['ratings_per_second']:,.0f} |" for r in runs]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "shared_data.md").write_text(text)


if __name__ == "__main__":
    main()
