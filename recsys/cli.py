"""``recsys`` (or ``python -m recsys``): ask a trained run questions from the shell.

    recsys predict RUN --user 196 --item 242 [--item 302 ...] [--strict]
    recsys recommend RUN --user 196 [-n 10] [--format table|csv|json] [--strict]
    recsys recommend RUN --users-file users.txt [-n 10] > top10.csv
    recsys evaluate RUN [data.path=other.csv ...] [--k 10 ...] [--relevance-threshold 4.0]
    recsys blend RUN1 RUN2 [RUN3 ...] [--out DIR] [--ridge 1.0]
    recsys data data=ratings_file data.path=ratings.csv [data.filter.min_user_ratings=10 ...] [--format json]

RUN is a run directory or a .ckpt file. Errors (a missing run, a file that is not a recsys checkpoint, an
unknown id with --strict, -n 0) print one line naming the problem and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from recsys.blend import blend_runs, load
from recsys.recommender import Recommender

USAGE_ERROR = 2


def _predict(rec: Recommender, args) -> None:
    ratings = rec.predict(args.user, args.item, strict=args.strict)
    for item, rating in zip(args.item, ratings):
        print(f"{args.user}\t{item}\t{rating:.4f}")


def _read_users(path: str) -> list:
    text = Path(path).read_text().split()
    if not text:
        raise ValueError(f"{path}: no user ids")
    return text[1:] if text[0].lower() in ("user", "user_id", "userid") else text


def _recommend(rec: Recommender, args) -> None:
    if args.n < 1:
        raise ValueError(f"-n {args.n}: must be a positive integer")
    if (args.user is None) == (args.users_file is None):
        raise ValueError("give --user U or --users-file F (one of them)")
    users = _read_users(args.users_file) if args.users_file else [args.user]
    top = rec.recommend(users, n=args.n, strict=args.strict)
    fmt = "csv" if args.users_file and args.format == "table" else args.format
    if fmt == "csv":
        top.to_csv(sys.stdout, index=False)
    elif fmt == "json":
        print(top.to_json(orient="records"))
    else:
        print(top.to_string(index=False))


def evaluate(rec: Recommender, overrides: list[str], ks: tuple[int, ...] = (10,),
             relevance_threshold: float = 4.0) -> dict[str, float]:
    """RMSE, MAE and ranking metrics of a loaded run: on its own test split, or on the ratings of another file.

    Without data overrides, the run's split is rebuilt from its run_info.json, so the figures are those of
    its metrics.json. With ``data.path=...`` (and other ``data.*`` keys), every rating of that file is a
    test rating, asked by original id (unknown ids get the cold-start fallback).
    """
    from omegaconf import OmegaConf

    from recsys import memory
    from recsys.data import RatingsDataModule
    from recsys.data.datasets import prepare
    from recsys.evaluation import ranking_metrics

    if rec.run_dir is None or not (rec.run_dir / "run_info.json").exists():
        raise ValueError("evaluate needs a run directory (its run_info.json holds the data and split settings)")
    if rec.seen is None or rec.popularity is None:
        raise ValueError(f"{rec.run_dir} has no seen.npz (runs trained before it existed cannot be ranked)")
    cfg = OmegaConf.create(json.loads((rec.run_dir / "run_info.json").read_text())["config"])
    bad = [o for o in overrides if "=" not in o or not o.startswith("data.")]
    if bad:
        raise ValueError(f"overrides {bad}: only data.<key>=<value> (e.g. data.path=ratings.csv)")
    cfg.merge_with(OmegaConf.from_dotlist(overrides))
    data = {k: v for k, v in OmegaConf.to_container(cfg.data).items() if not k.startswith("_")}
    dm = RatingsDataModule(**data)
    if overrides:  # another file: all its ratings (read with the run's data settings and these), by original id
        frame = prepare(dm.source).frame()
        users, items, ratings = frame["user"].to_numpy(), frame["item"].to_numpy(), frame["rating"].to_numpy()
    else:
        dm.setup()
        u, i, r = dm.test_set
        users, items, ratings = dm.user_map.to_ids(u.numpy()), dm.item_map.to_ids(i.numpy()), r.numpy()
    budget = float(OmegaConf.select(cfg, "eval.max_memory_mb", default=memory.MAX_MEMORY_MB))
    with warnings.catch_warnings(), memory.budget(budget):  # the run's scoring budget holds here too
        warnings.simplefilter("ignore")  # unknown ids are expected in another file: counted below
        pred = rec.predict(users, items)
    err = pred - ratings.astype(np.float64)
    out = {"test/rmse": float(np.sqrt(np.mean(err ** 2))), "test/mae": float(np.mean(np.abs(err))),
           "ratings": len(ratings)}
    u, uk, _ = rec.lookup(users, "user")
    i, ik, _ = rec.lookup(items, "item")
    known = (uk & ik).cpu()
    out["unknown_ratings"] = int((~known).sum())
    test = (u.cpu()[known], i.cpu()[known], torch.tensor(ratings, dtype=torch.float32)[known])
    with torch.no_grad():
        out.update(ranking_metrics(rec.model.score_all_items, test, rec.seen, torch.as_tensor(rec.popularity),
                                   len(rec.items), ks, relevance_threshold, rec.device, max_memory_mb=budget,
                                   ranking_factors=rec.model.ranking_factors))
    return out


def _evaluate(rec: Recommender, args) -> None:
    result = evaluate(rec, args.overrides, tuple(args.k or (10,)), args.relevance_threshold)
    for key, value in result.items():
        print(f"{key}\t{value:.4f}" if isinstance(value, float) else f"{key}\t{value}")


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def data_summary(overrides: list[str]) -> tuple[dict, dict]:
    """What ``python train.py <overrides>`` would train on, without training: the data module's
    ``describe()`` (as ``run_info.json`` records it) and its summary (:mod:`recsys.data.summary`)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from hydra.utils import instantiate
    from omegaconf.errors import OmegaConfBaseException

    if not CONFIG_DIR.is_dir():
        raise FileNotFoundError(f"recsys data composes train.py's configs and finds none at {CONFIG_DIR}")
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=list(overrides))
        datamodule = instantiate(cfg.data, _convert_="partial")
    except (HydraException, OmegaConfBaseException) as err:
        cause = err.__cause__ if isinstance(err.__cause__, (ValueError, TypeError)) else err
        raise ValueError(str(cause).strip().splitlines()[0]) from None
    datamodule.setup()
    return datamodule.describe(), datamodule.summary


def _data(args) -> None:
    from recsys.data.summary import render

    describe, summary = data_summary(args.overrides)
    print(json.dumps(describe, indent=1) if args.format == "json" else render(summary, describe))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recsys", description="Ask a trained recsys run questions.")
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("predict", help="predicted ratings of one user for items")
    pr.add_argument("run")
    pr.add_argument("--user", required=True)
    pr.add_argument("--item", required=True, action="append")
    pr.add_argument("--strict", action="store_true", help="unknown ids are errors, not cold-start fallbacks")
    rc = sub.add_parser("recommend", help="top-n items for users, seen items left out")
    rc.add_argument("run")
    rc.add_argument("--user")
    rc.add_argument("--users-file", help="a file of user ids (one per line; a 'user' header is skipped); CSV out")
    rc.add_argument("-n", type=int, default=10)
    rc.add_argument("--format", choices=("table", "csv", "json"), default="table")
    rc.add_argument("--strict", action="store_true")
    ev = sub.add_parser("evaluate", help="RMSE, MAE and ranking metrics on the run's split or another file")
    ev.add_argument("run")
    ev.add_argument("overrides", nargs="*", help="data.<key>=<value>, e.g. data.path=ratings.csv")
    ev.add_argument("--k", type=int, action="append", help="ranking cut-off (repeatable; default 10)")
    ev.add_argument("--relevance-threshold", type=float, default=4.0)
    bl = sub.add_parser("blend", help="blend of runs fitted on their common validation split (ridge on ratings; "
                        "for ranking runs, weights on standardized scores by the validation ranking metric)")
    bl.add_argument("runs", nargs="+")
    bl.add_argument("--out", help="the blend's run directory (default outputs/blend/<date>_<time>)")
    bl.add_argument("--ridge", type=float, default=1.0, help="penalty on the weights (the intercept is free)")
    da = sub.add_parser("data", help="what a run would train on: rows read, dropped by each filter, users/items/"
                        "ratings, histogram, per-user/item counts, cold users/items of the split (no training)")
    da.add_argument("overrides", nargs="*", help="train.py's overrides: data=ratings_file data.path=r.csv data.*=...")
    da.add_argument("--format", choices=("table", "json"), default="table",
                    help="json: the data block run_info.json records, summary included")
    return p


def _blend(args) -> None:
    if args.ridge < 0:
        raise ValueError(f"--ridge {args.ridge}: must be >= 0")
    result = blend_runs(args.runs, args.out, args.ridge)
    width = max(len(m["run"]) for m in result["members"])
    if result.get("objective") == "ranking":  # weights on standardized scores, chosen by the validation metric
        metric = next(k for k in result if k.startswith("val/"))
        test = "test/" + metric.split("/", 1)[1]
        print(f"{'member':<{width}}  model         weight   {metric:<12} {test}")
        for m in result["members"]:
            own = m.get(test)
            print(f"{m['run']:<{width}}  {m['model']:<12} {m['weight']:>7.4f}   {m[metric]:<12.4f} "
                  f"{'' if own is None else format(own, '.4f')}")
        print(f"{'blend':<{width}}  {'':<12} {'':>7}   {result[metric]:<12.4f} {result[test]:.4f}")
        print(f"-> {result['out']}")
        return
    print(f"{'member':<{width}}  model         weight   val RMSE  test RMSE  test MAE")
    for m in result["members"]:
        print(f"{m['run']:<{width}}  {m['model']:<12} {m['weight']:>7.4f}   {m['val/rmse']:.4f}    "
              f"{m['test/rmse']:.4f}    {m['test/mae']:.4f}")
    print(f"{'blend (intercept ' + format(result['intercept'], '.4f') + ')':<{width}}  {'':<12} {'':>7}   "
          f"{result['val/rmse']:.4f}    {result['test/rmse']:.4f}    {result['test/mae']:.4f}")
    print(f"-> {result['out']}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command in ("blend", "data"):
            {"blend": _blend, "data": _data}[args.command](args)
            return 0
        rec = load(args.run)
        {"predict": _predict, "recommend": _recommend, "evaluate": _evaluate}[args.command](rec, args)
    except (ValueError, KeyError, FileNotFoundError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"recsys {args.command}: error: {message}", file=sys.stderr)
        return USAGE_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
