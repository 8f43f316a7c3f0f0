"""Aggregate a multirun's jobs into a results table: ``python -m recsys.report multirun/2026-11-23/14-00-00``.

Each job directory holds ``metrics.json`` (or ``failed.json``) and Hydra's ``.hydra/overrides.yaml``.
Jobs whose overrides differ only in ``seed`` / ``data.split_seed`` form one configuration; the table has
the mean ± std of every metric over them, sorted by the optimized metric (``val/rmse`` unless
``--metric`` says otherwise), and is printed as markdown and written as ``report.md`` and
``report.csv`` into the multirun directory. Failed jobs are listed below the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import yaml

SEED_KEYS = ("seed", "data.split_seed")
SHOWN = ("test/rmse", "test/mae", "val/rmse", "epochs", "fit_seconds")


def _shown(columns) -> list[str]:
    """The metrics a table shows: SHOWN, then every ranking metric the jobs report (test/ndcg@10, ...)."""
    ranking = (c for c in columns if c.startswith("test/") and "@" in c and not c.endswith(" std"))
    return [c for c in SHOWN if c in columns] + sorted(ranking)


def _overrides(job: Path) -> dict:
    path = job / ".hydra" / "overrides.yaml"
    items = yaml.safe_load(path.read_text()) if path.exists() else []
    return dict(item.split("=", 1) for item in items if "=" in item)


def collect(root: Path) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """One row per finished job (overrides + metrics), and (job, error) for each failed job."""
    rows, failures, keys = [], [], {}
    for job in sorted(p for p in root.rglob("*") if (p / ".hydra").is_dir()):
        over = _overrides(job)
        keys.update(dict.fromkeys(over))
        if (job / "metrics.json").exists():
            rows.append({"job": str(job.relative_to(root)), **over,
                         **json.loads((job / "metrics.json").read_text())})
        else:
            failed = job / "failed.json"
            error = json.loads(failed.read_text())["error"] if failed.exists() else "no metrics.json (killed?)"
            failures.append((str(job.relative_to(root)), error))
    df = pd.DataFrame(rows)
    df.attrs["override_keys"] = [k for k in keys if k in df]
    return df, failures


def summarize(df: pd.DataFrame, metric: str = "val/rmse") -> pd.DataFrame:
    """Mean ± std per configuration (overrides other than the seeds), sorted by ``metric``."""
    metrics = _shown(df.columns)
    # the overrides that tell configurations apart: those that vary across jobs, seeds excepted
    config_cols = [c for c in df.attrs.get("override_keys", []) if c not in SEED_KEYS
                   and df[c].astype(str).nunique() > 1]
    key = (df[config_cols].astype(str).radd([f"{c}=" for c in config_cols]).agg(" ".join, axis=1)
           if config_cols else pd.Series("all", df.index))
    table = df.assign(config=key).groupby("config")[metrics].agg(["mean", "std", "count"])
    out = pd.DataFrame(index=table.index)
    for m in metrics:
        out[m] = table[(m, "mean")]
        out[f"{m} std"] = table[(m, "std")].fillna(0.0)
    out["runs"] = table[(metrics[0], "count")]
    return out.sort_values(metric if metric in out else metrics[0]).reset_index()


def to_markdown(table: pd.DataFrame) -> str:
    metrics = _shown(table.columns)
    head = ["configuration", *metrics, "runs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        cells = [f"{r[m]:.4f} ± {r[m + ' std']:.4f}" if m not in ("epochs", "fit_seconds")
                 else f"{r[m]:.1f}" for m in metrics]
        lines.append("| " + " | ".join([str(r["config"]), *cells, str(int(r["runs"]))]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("multirun_dir", type=Path)
    parser.add_argument("--metric", default="val/rmse", help="sort key (default: val/rmse)")
    args = parser.parse_args(argv)
    if not args.multirun_dir.is_dir():
        parser.error(f"{args.multirun_dir} is not a directory")
    df, failures = collect(args.multirun_dir)
    if df.empty and not failures:
        print(f"no Hydra jobs (directories with .hydra/) under {args.multirun_dir}", file=sys.stderr)
        return 1
    text = to_markdown(summarize(df, args.metric)) if not df.empty else "(no finished jobs)"
    if failures:
        text += "\n\nFailed jobs:\n" + "\n".join(f"- {job}: {err}" for job, err in failures)
    print(text)
    (args.multirun_dir / "report.md").write_text(text + "\n")
    if not df.empty:
        summarize(df, args.metric).to_csv(args.multirun_dir / "report.csv", index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
