"""Speed when the cores are shared: each solver alone and beside one busy single-threaded process.

    python benchmarks/contention.py                     # every row, ml-100k, split seed 7, 3 repeats
    python benchmarks/contention.py --rows mf svdpp --repeats 1 --policies recsys ACTIVE

A row runs ``python train.py <its overrides> data.split_seed=7`` as a user would and reads ``fit_seconds`` from
its metrics.json (the fit alone: imports, data and the test phase excluded), first on an idle machine, then with
a busy process beside it (``python -c "while True: pass"``, started before the run and stopped after). The
slowdown is the median beside the busy process over the median alone. ``--policies`` repeats the table under
OpenMP wait policies: ``recsys`` leaves ``OMP_WAIT_POLICY`` unset, so ``import recsys`` sets PASSIVE
(recsys.threads); ``ACTIVE`` (or any value) is put in the environment: ``ACTIVE`` is the runtime's spinning, the
behaviour before. Writes benchmarks/results/contention.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ROWS = {
    "mf (gradient)": ["model=mf", "trainer.max_epochs=20", "~callbacks.early_stopping"],
    "svdpp (gradient)": ["model=svdpp", "trainer.max_epochs=10", "~callbacks.early_stopping"],
    "mf ALS": ["model=mf", "model.solver=als", "trainer.max_epochs=10", "model.als_tol=0"],
    "ials (ALS)": ["model=ials", "trainer.max_epochs=10"],
    "ease (closed form)": ["model=ease"],
    "bpmf (Gibbs)": ["model=bpmf", "trainer.max_epochs=50"],
    "mf, trainer=ddp_cpu, 2 ranks": ["model=mf", "trainer=ddp_cpu", "trainer.max_epochs=20",
                                     "~callbacks.early_stopping"],
}


def fit_seconds(overrides: list[str], policy: str) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    if policy != "recsys":
        env["OMP_WAIT_POLICY"] = policy
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides, "data.split_seed=7", "logger=none",
                        "progress=none", f"hydra.run.dir={out}"], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return float(json.loads((Path(out) / "metrics.json").read_text())["fit_seconds"])


def beside_busy(overrides: list[str], policy: str) -> float:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        return fit_seconds(overrides, policy)
    finally:
        busy.kill()
        busy.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="*", help="substrings of the rows to run (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--policies", nargs="*", default=["recsys"], help="OpenMP wait policies to compare")
    args = parser.parse_args()
    rows = {k: v for k, v in ROWS.items() if not args.rows or any(r in k for r in args.rows)}
    lines = ["| solver | OpenMP wait | alone: fit s (median) | beside a busy process: fit s | slowdown |",
             "|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for name, overrides in rows.items():
        for policy in args.policies:
            alone = [fit_seconds(overrides, policy) for _ in range(args.repeats)]
            shared = [beside_busy(overrides, policy) for _ in range(args.repeats)]
            a, b = statistics.median(alone), statistics.median(shared)
            line = (f"| {name} | {policy} | {a:.2f} ({min(alone):.2f}-{max(alone):.2f}) | "
                    f"{b:.2f} ({min(shared):.2f}-{max(shared):.2f}) | {b / a:.2f}× |")
            lines.append(line)
            print(line, flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "contention.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
