"""Blends of trained runs: a ridge regression of the members' predictions, fitted on their common
validation split, reported on their common test split.

    recsys blend RUN1 RUN2 ... [--out DIR] [--ridge 1.0]

    r̂ = c + Σ_k w_k r̂_k,   (w, c) = argmin Σ_val (r − c − Σ_k w_k r̂_k)² + ridge·‖w‖²   (c unpenalized)

Members must share the split: the same data file (checksum), split strategy, ratios, seed and fold, and
the same id maps; anything else is refused, naming what differs. The blend is written as a run directory:
``blend.json`` (members, weights, intercept), ``metrics.json`` (``test/rmse``, ``test/mae``, ``val/rmse``,
the weights and each member's figures), and the first member's ``run_info.json`` and ``seen.npz``, so that
``recsys.load(DIR)`` serves it like a model (predict, recommend, evaluate; it has no factor tables of its own,
so ``similar_items`` and ``fold_in`` are refused).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recsys import recommender
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


class BlendModel(nn.Module):
    """The members' models combined: what :class:`recsys.Recommender` asks a model (predict, scores)."""

    def __init__(self, members: list[nn.Module], weights, intercept: float):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", torch.as_tensor(np.asarray(weights), dtype=torch.float64))
        self.intercept = float(intercept)
        first = members[0]
        self.data, self.user_seen, self.item_seen = first.data, first.user_seen, first.item_seen

    def _combine(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return self.intercept + sum(w * p.double() for w, p in zip(self.weights.tolist(), parts))

    def predict(self, users, items, user_known=None, item_known=None) -> torch.Tensor:
        parts = [m.predict(users, items, user_known, item_known) for m in self.members]
        return self._combine(parts).clamp(self.data.rating_min, self.data.rating_max)

    def score_all_items(self, users, user_known=None) -> torch.Tensor:
        """The blend of the members' clipped scores against every item (the weights were fitted on clipped
        predictions)."""
        return self._combine([m.score_all_items(users, user_known).clamp(m.data.rating_min, m.data.rating_max)
                              for m in self.members])

    def factor_tables(self):
        return None  # a blend has no factor tables of its own

    def item_similarity(self, items):
        return None  # nor an item similarity

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
    out = Path(out) if out is not None else Path("outputs") / "blend" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("run_info.json", "seen.npz"):  # the data settings (evaluate) and seen items (recommend)
        if (runs[0] / name).exists():
            shutil.copyfile(runs[0] / name, out / name)
    atomic_write_json(out / BLEND_FILE, {"members": [str(r) for r in runs], "weights": weights.tolist(),
                                         "intercept": intercept, "ridge": ridge})
    atomic_write_json(out / "metrics.json", metrics)
    metrics["out"] = str(out)
    return metrics


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
    model = BlendModel([r.model for r in recs], spec["weights"], spec["intercept"]).to(device)
    rec = recommender.Recommender(model, recs[0].users, recs[0].items, recs[0].seen)
    rec.popularity, rec.run_dir = recs[0].popularity, path
    return rec
