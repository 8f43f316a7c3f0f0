"""Blends of trained runs, fitted on their common validation split, reported on their common test split.

    recsys blend RUN1 RUN2 ... [--out DIR] [--ridge 1.0]

Rating runs (selected by ``val/rmse``): a ridge regression of the members' predictions,

    r̂ = c + Σ_k w_k r̂_k,   (w, c) = argmin Σ_val (r − c − Σ_k w_k r̂_k)² + ridge·‖w‖²   (c unpenalized)

Ranking runs (every member selected by a ranking metric, ``val/ndcg@10``): each member's scores are standardized
per user over all items, z_k = (s_k − mean_u) / std_u, and s = Σ_k w_k z_k with weights on the simplex (a grid of
step 0.05, 0.1 for three members or more) chosen by the members' validation metric on the validation split, the
user's training items left out, as ``train.py`` validates. Members refit on train+val (``refit=true``) are
weighed by their validation checkpoints (fitted on train) and tested with their refit models.

Members must share the split: the same data file (checksum), split strategy, ratios, seed and fold, and
the same id maps; anything else is refused, naming what differs. The blend is written as a run directory:
``blend.json`` (members, weights, intercept), ``metrics.json`` (``test/rmse``, ``test/mae``, ``val/rmse``,
the weights and each member's figures), and the first member's ``run_info.json`` and ``seen.npz``, so that
``recsys.load(DIR)`` serves it like a model (predict, recommend, evaluate; it has no factor tables of its own,
so ``similar_items`` and ``fold_in`` are refused).
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recsys import memory, recommender
from recsys.evaluation import users_per_chunk
from recsys.io import atomic_write_json

BLEND_FILE = "blend.json"
#: the data settings members must share (run_info.json "data")
SPLIT_KEYS = ("name", "source_sha256", "rating_scale", "split", "split_seed", "test_ratio", "val_ratio",
              "leave_last_n", "folds", "fold", "num_users", "num_items", "num_train", "num_val", "num_test")


def fit_ridge(x: np.ndarray, y: np.ndarray, ridge: float = 1.0) -> tuple[np.ndarray, float]:
    """(weights, intercept) minimizing Σ (y − c − x·w)² + ridge·‖w‖², the intercept unpenalized."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f"fit_ridge: x {x.shape} and y {y.shape} must be (n, k) and (n,) with n > 0")
    mx, my = x.mean(0), y.mean()
    xc = x - mx
    w = np.linalg.solve(xc.T @ xc + ridge * np.eye(x.shape[1]), xc.T @ (y - my))
    return w, float(my - mx @ w)


def standardized(scores: torch.Tensor) -> torch.Tensor:
    """Each row's scores minus its mean, over its standard deviation (a constant row: 0)."""
    scores = scores.double()
    mean, std = scores.mean(1, keepdim=True), scores.std(1, keepdim=True)
    return (scores - mean) / torch.where(std > 0, std, torch.ones_like(std))


def simplex_grid(k: int, step: float) -> np.ndarray:
    """Every weight vector of ``k`` non-negative multiples of ``step`` summing to 1."""
    n = round(1 / step)
    rows = [c for c in itertools.product(range(n + 1), repeat=k - 1) if sum(c) <= n]
    return np.array([[*c, n - sum(c)] for c in rows], dtype=np.float64) / n


class BlendModel(nn.Module):
    """The members' models combined: what :class:`recsys.Recommender` asks a model (predict, scores)."""

    def __init__(self, members: list[nn.Module], weights, intercept: float, standardize: bool = False):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", torch.as_tensor(np.asarray(weights), dtype=torch.float64))
        self.intercept, self.standardize = float(intercept), standardize
        first = members[0]
        self.data, self.user_seen, self.item_seen = first.data, first.user_seen, first.item_seen

    def _combine(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return self.intercept + sum(w * p.double() for w, p in zip(self.weights.tolist(), parts))

    def predict(self, users, items, user_known=None, item_known=None) -> torch.Tensor:
        if self.standardize:  # a ranking blend: its pairwise score is its all-item score of the pair
            unique, inverse = torch.unique(users, return_inverse=True)
            return self.score_all_items(unique)[inverse, items]
        parts = [m.predict(users, items, user_known, item_known) for m in self.members]
        return self._combine(parts).clamp(self.data.rating_min, self.data.rating_max)

    def score_all_items(self, users, user_known=None) -> torch.Tensor:
        """The blend of the members' scores against every item: clipped ratings (the weights were fitted on
        clipped predictions), or for a ranking blend each member's scores standardized per user."""
        if self.standardize:
            return self._combine([standardized(m.score_all_items(users, user_known)) for m in self.members])
        return self._combine([m.score_all_items(users, user_known).clamp(m.data.rating_min, m.data.rating_max)
                              for m in self.members])

    def factor_tables(self):
        return None  # a blend has no factor tables of its own

    def item_similarity(self, items):
        return None  # nor an item similarity

    def ranking_factors(self, users):
        return None  # nor one bilinear form: the ranking evaluation scores every item

    def least_squares(self):
        return None

    def fold_in(self, items, ratings, row=None) -> int:
        raise NotImplementedError("a blend cannot fold in a user: fold the user into each member's run instead")


def _run_info(run: Path) -> dict:
    path = run / "run_info.json"
    if not path.exists():
        raise ValueError(f"{run}: not a run directory of train.py (no run_info.json)")
    return json.loads(path.read_text())


def check_same_split(runs: list[Path]) -> dict:
    """The members' common data settings; refuses runs on different splits, naming the settings that differ."""
    infos = [_run_info(r)["data"] for r in runs]
    for run, info in zip(runs[1:], infos[1:]):
        differ = [k for k in SPLIT_KEYS if info.get(k) != infos[0].get(k)]
        if differ:
            shown = ", ".join(f"{k}: {infos[0].get(k)!r} vs {info.get(k)!r}" for k in differ)
            raise ValueError(f"{runs[0]} and {run} are on different splits ({shown}): blend runs of one split")
    return infos[0]


def blend_runs(runs: list[str | Path], out: str | Path | None = None, ridge: float = 1.0) -> dict:
    """Fit the blend of ``runs`` on their validation split, report it on their test split, write ``out``."""
    from omegaconf import OmegaConf

    from recsys.data import RatingsDataModule

    runs = [Path(r).expanduser().resolve() for r in runs]
    if len(runs) < 2:
        raise ValueError("recsys blend: give two runs or more")
    check_same_split(runs)
    recs = [recommender.load(r) for r in runs]
    for run, rec in zip(runs[1:], recs[1:]):
        if not (np.array_equal(rec.users.ids, recs[0].users.ids) and np.array_equal(rec.items.ids, recs[0].items.ids)):
            raise ValueError(f"{runs[0]} and {run} have different id maps: blend runs of one data set and split")
    cfg = OmegaConf.create(_run_info(runs[0])["config"])
    dm = RatingsDataModule(**{k: v for k, v in OmegaConf.to_container(cfg.data).items() if not k.startswith("_")})
    dm.setup()
    if not np.array_equal(dm.user_map.ids, recs[0].users.ids):
        raise ValueError(f"{runs[0]}: its data no longer gives the run's id maps (the data file changed?)")
    metrics_of = [_ranking_metric(r) for r in runs]
    if any(metrics_of):
        if not all(m == metrics_of[0] for m in metrics_of):
            raise ValueError(f"recsys blend: the runs were selected by {metrics_of}; blend ranking runs of one "
                             "validation metric (val/ndcg@10), or rating runs")
        return _blend_ranking(runs, recs, dm, cfg, metrics_of[0], out)

    def predictions(split):
        users, items, ratings = split
        with torch.no_grad():
            x = np.stack([rec.model.predict(users, items).double().cpu().numpy() for rec in recs], 1)
        return x, ratings.double().numpy()

    (xv, yv), (xt, yt) = predictions(dm.val_set), predictions(dm.test_set)
    weights, intercept = fit_ridge(xv, yv, ridge)
    scale = (dm.hparams.rating_min, dm.hparams.rating_max)
    blended_v, blended_t = (np.clip(intercept + x @ weights, *scale) for x in (xv, xt))

    def figures(pred, y):
        return float(np.sqrt(np.mean((pred - y) ** 2))), float(np.mean(np.abs(pred - y)))

    members = []
    for k, run in enumerate(runs):
        (v_rmse, _), (t_rmse, t_mae) = figures(xv[:, k], yv), figures(xt[:, k], yt)
        members.append({"run": str(run), "model": type(recs[k].model).__name__, "weight": float(weights[k]),
                        "val/rmse": v_rmse, "test/rmse": t_rmse, "test/mae": t_mae})
    (v_rmse, _), (t_rmse, t_mae) = figures(blended_v, yv), figures(blended_t, yt)
    metrics = {"test/rmse": t_rmse, "test/mae": t_mae, "val/rmse": v_rmse, "weights": weights.tolist(),
               "intercept": intercept, "ridge": ridge, "members": members}
    return _write_blend(runs, out, {"weights": weights.tolist(), "intercept": intercept, "ridge": ridge}, metrics)


def _write_blend(runs: list[Path], out, spec: dict, metrics: dict) -> dict:
    out = Path(out) if out is not None else Path("outputs") / "blend" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("run_info.json", "seen.npz"):  # the data settings (evaluate) and seen items (recommend)
        if (runs[0] / name).exists():
            shutil.copyfile(runs[0] / name, out / name)
    atomic_write_json(out / BLEND_FILE, {"members": [str(r) for r in runs], **spec})
    atomic_write_json(out / "metrics.json", metrics)
    metrics["out"] = str(out)
    return metrics


def _metrics_json(run: Path) -> dict:
    path = run / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _ranking_metric(run: Path) -> str | None:
    """The validation ranking metric a run was selected by (``val/ndcg@10``), or None for a rating run."""
    metric = str(_run_info(run)["config"]["optimized_metric"])
    return metric if "@" in metric else None


def _blend_ranking(runs: list[Path], recs: list, dm, cfg, metric: str, out) -> dict:
    """Standardized member scores, simplex weights chosen by ``metric`` on validation (members' first fits)."""
    from recsys.evaluation import ranking_metrics

    k = int(metric.rsplit("@", 1)[1])
    name = metric.split("/", 1)[1].split("@")[0]
    threshold = float(cfg["eval"]["relevance_threshold"])  # the members' run config (train.yaml's eval)
    n_users, n_items = dm.num_users, dm.num_items
    everyone = torch.arange(n_users)

    budget = float(cfg["eval"]["max_memory_mb"])

    def z_scores(models) -> list[torch.Tensor]:
        """Each model's standardized scores of every user (the weight search needs them all), in chunks whose
        working memory stays within the run's eval.max_memory_mb."""
        out = []
        with torch.no_grad():
            for m in models:
                work = lambda rows, m=m: standardized(m.score_all_items(rows)).float()  # noqa: E731
                step = users_per_chunk(n_items, budget, work, everyone)
                with memory.budget(budget):
                    out.append(torch.cat([work(chunk) for chunk in everyone.split(step)]))
        return out

    val_models, owns = [], [_metrics_json(run) for run in runs]
    for own, rec in zip(owns, recs):  # a refit member is weighed by the model validation chose (fitted on train)
        first = own.get("validation_checkpoint")
        val_models.append(recommender.load(first).model if own.get("refit") and first else rec.model)
    val_z, seen_train = z_scores(val_models), dm.seen("train")

    def evaluate(z, weights, split, seen, stage):
        table = sum(w * part for w, part in zip(weights.tolist(), z))
        return ranking_metrics(lambda users: table[users.cpu()], split, seen, None, n_items, (k,), threshold,
                               torch.device("cpu"), stage=stage)

    grid = simplex_grid(len(runs), 0.05 if len(runs) == 2 else 0.1)
    scored = [(evaluate(val_z, w, dm.val_set, seen_train, "val")[metric], n) for n, w in enumerate(grid)]
    best_val, best = max(scored)
    weights = grid[best]
    members_val = [evaluate([z], np.ones(1), dm.val_set, seen_train, "val")[metric] for z in val_z]
    del val_z
    test_z = z_scores([rec.model for rec in recs])
    test = evaluate(test_z, weights, dm.test_set, dm.seen("val"), "test")
    members = []
    for n, (run, rec, own) in enumerate(zip(runs, recs, owns)):
        members.append({"run": str(run), "model": type(rec.model).__name__, "weight": float(weights[n]),
                        metric: members_val[n], f"test/{name}@{k}": own.get(f"test/{name}@{k}"),
                        "fit_seconds": own.get("fit_seconds")})
    fits = [m["fit_seconds"] for m in members]
    metrics = {**test, metric: best_val, "weights": weights.tolist(), "intercept": 0.0, "objective": "ranking",
               "members": members, "fit_seconds": sum(fits) if None not in fits else None}
    return _write_blend(runs, out, {"weights": weights.tolist(), "intercept": 0.0, "standardize": True,
                                    "objective": "ranking"}, metrics)


def load(path: str | Path, device: str = "cpu") -> recommender.Recommender:
    """``recsys.load``: a run directory, a ``.ckpt`` file, or a blend directory, as a Recommender."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / BLEND_FILE).exists():
        return load_blend(path, device)
    return recommender.load(path, device)


def load_blend(path: Path, device: str = "cpu") -> recommender.Recommender:
    """A blend directory as a :class:`recsys.Recommender` over :class:`BlendModel`."""
    spec = json.loads((path / BLEND_FILE).read_text())
    recs = [recommender.load(m, device) for m in spec["members"]]
    model = BlendModel([r.model for r in recs], spec["weights"], spec["intercept"],
                       spec.get("standardize", False)).to(device)
    rec = recommender.Recommender(model, recs[0].users, recs[0].items, recs[0].seen)
    rec.popularity, rec.run_dir = recs[0].popularity, path
    return rec
