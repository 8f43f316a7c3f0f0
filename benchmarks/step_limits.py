"""What bounds the gradient step on this machine: three measured floors under issue 24's CPU goals.

    python benchmarks/step_limits.py                       # 1M, 5M, 25M ratings (ML-25M's ratios), batch 16384
    python benchmarks/step_limits.py --sizes 1e6 5e6 --batch 4096

1. **Rows per rating.** A row-sparse optimizer (lazy Adam, row-wise Adagrad, SGD with momentum: any whose step
   updates each distinct row of its batch once) does work ∝ the distinct rows of each batch. At a fixed batch the
   distinct rows per rating grow with the tables, as users and items repeat less within a batch. With a constant cost
   per row the row work alone grows as ratings^b with b = 1 + log(rows-per-rating ratio) / log(ratings ratio).
2. **A row in and out of the cache.** ``RowAdam``'s native update (``recsys.solvers.native.adam_rows``) and a read
   of random rows (``index_select``, as a step's scores read them), in ns per row, on tables from cache-resident to
   far larger than the last-level cache: the same work costs more once the table no longer fits.
3. **Lightning's cost per step.** A manual-optimization module whose step only calls its optimizer, 239 batches an
   epoch (the long-tail shape's at batch 4096), under a Trainer without logger or checkpoints: the part of each
   ``train.py`` step that no solver change removes.

Writes ``benchmarks/results/step_limits.md``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def rows_per_rating(size: int, batch: int, steps: int = 20) -> tuple[int, int, float]:
    """(users, items, distinct user + item rows per rating) over ``steps`` shuffled batches of ``size`` synthetic
    ratings."""
    from recsys.data.synthetic import generate_ratings

    frame = generate_ratings(size, seed=0)
    users = torch.from_numpy(frame["user"].to_numpy(np.int64))
    items = torch.from_numpy(frame["item"].to_numpy(np.int64))
    del frame
    perm = torch.randperm(size, generator=torch.Generator().manual_seed(0))
    steps = max(1, min(steps, size // batch))
    rows = sum(len(torch.unique(users[p])) + len(torch.unique(items[p]))
               for p in perm[:steps * batch].view(steps, batch))
    return int(users.max()) + 1, int(items.max()) + 1, rows / (steps * batch)


def adam_ns_per_row(rows: int, dim: int = 64, updates: int = 4096, batches: int = 100) -> float:
    """``RowAdam``'s native update of ``updates`` distinct random rows of a ``rows`` × ``dim`` table (weights and
    moments in huge pages, as training holds them): ns per row, the fastest of four passes."""
    from recsys.solvers import native

    gen = torch.Generator().manual_seed(0)
    weight = native.huge_page_zeros((rows, dim))
    weight.normal_(generator=gen)
    moments, steps = native.huge_page_zeros((rows, 2, dim)), torch.zeros(rows)
    picks = [torch.randperm(rows, generator=gen)[:min(updates, rows // 2)].sort().values for _ in range(batches)]
    grad = torch.randn(updates, dim, generator=gen)
    best = math.inf
    for _ in range(4):
        start = time.perf_counter()
        for pick in picks:
            native.adam_rows(weight, moments, steps, pick, grad[:len(pick)], 0.005, (0.9, 0.999), 1e-8, 0.0)
        best = min(best, (time.perf_counter() - start) / sum(map(len, picks)))
    return best * 1e9


def gather_ns_per_row(rows: int, dim: int = 64, reads: int = 4096, batches: int = 100) -> float:
    """``index_select`` of ``reads`` random rows of a ``rows`` × ``dim`` table (what a step's scores read per rating):
    ns per row, the fastest of four passes."""
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(rows, dim, generator=gen)
    picks = [torch.randint(rows, (reads,), generator=gen) for _ in range(batches)]
    best = math.inf
    for _ in range(4):
        start = time.perf_counter()
        for pick in picks:
            table.index_select(0, pick)
        best = min(best, (time.perf_counter() - start) / (reads * batches))
    return best * 1e9


def lightning_ms_per_step(batches: int = 239, epochs: int = 5) -> float:
    """Seconds of Lightning's own loop per training step (manual optimization, a step that only calls the
    optimizer), in ms."""
    import logging
    import warnings

    import lightning as L

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")

    class Idle(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            self.optimizers().step()

        def configure_optimizers(self):
            return torch.optim.SGD([self.weight], lr=0.0)

    data = [(torch.zeros(4096, dtype=torch.long), torch.zeros(4096, dtype=torch.long), torch.zeros(4096))] * batches
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    start = time.perf_counter()
    trainer.fit(Idle(), torch.utils.data.DataLoader(data, batch_size=None))
    return (time.perf_counter() - start) / (batches * epochs) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 5e6, 25e6])
    parser.add_argument("--batch", type=int, default=16384)
    parser.add_argument("--table-rows", type=int, nargs="+", default=[10_000, 30_000, 100_000, 340_000])
    args = parser.parse_args()

    lines = ["# What bounds the gradient step (2 CPU cores)", "",
             "`python benchmarks/step_limits.py`: the floors under the CPU goals of issue 24.", "",
             f"**Rows per rating** (batch {args.batch:,}; synthetic ratings at ML-25M's ratios): the work of any "
             "row-sparse optimizer's step.", "",
             "| ratings | users | items | distinct rows per rating | row-work exponent from the first size |",
             "|---|---|---|---|---|"]
    first = None
    for size in map(int, args.sizes):
        users, items, per = rows_per_rating(size, args.batch)
        first = first or (size, per)
        exponent = "" if size == first[0] else f"{1 + math.log(per / first[1]) / math.log(size / first[0]):.2f}"
        lines.append(f"| {size:,} | {users:,} | {items:,} | {per:.3f} | {exponent} |")
        print(lines[-1], flush=True)
    lines += ["", "**One row in and out of the cache** (k=64, 2 threads): RowAdam's update of 4,096 distinct random "
              "rows a call (weights, both moments, step count), and reading 4,096 random rows (`index_select`).", "",
              "| table rows | table + moments MB | RowAdam ns per row | read ns per row |", "|---|---|---|---|"]
    for rows in args.table_rows:
        lines.append(f"| {rows:,} | {rows * 64 * 12 / 1e6:.1f} | {adam_ns_per_row(rows):.1f} | "
                     f"{gather_ns_per_row(rows):.1f} |")
        print(lines[-1], flush=True)
    floor = lightning_ms_per_step()
    lines += ["", f"**Lightning's loop per step** (manual optimization, a step that only calls its optimizer): "
              f"{floor:.3f} ms.", ""]
    print(lines[-2])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "step_limits.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
