"""Ask a trained model questions in the user's own ids: ``rec = recsys.load(run)``.

- ``rec.predict(users, items)``: ratings on the model's scale (clipped as in training); unknown ids get the
  model's cold-start fallback (μ plus the known side's bias) with a warning, or ``KeyError`` with ``strict``.
- ``rec.recommend(users, n)``: each user's top-n items by the model's unclipped score, the items the user
  rated in training and validation excluded (``seen.npz`` in the run directory).
- ``rec.similar_items(items, n)``: nearest items by cosine similarity of item factors.
- ``rec.fold_in(ratings, user)``: fit one user from ratings with the item side fixed, by the model's own
  objective (the ridge normal equations of ALS for bilinear models; Newton steps for pmf_sigmoid).
- ``rec.user_factors()``, ``rec.item_factors()``, ``rec.user_bias()``, ``rec.item_bias()``: DataFrames by id.

The model's class is read from the checkpoint and imported only from under ``recsys.models``; the
checkpoint is loaded with ``weights_only=True``.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recsys import memory
from recsys.data.datasets import IdMap
from recsys.data.interactions import Seen
from recsys.evaluation import users_per_chunk
from recsys.io import atomic_file
from recsys.models.base import Model, load_checkpoint
from recsys.models.nets import Bilinear

log = logging.getLogger(__name__)

SEEN_FILE = "seen.npz"


def save_seen(run_dir: str | Path, seen: Seen, popularity: np.ndarray) -> Path:
    """Each user's training and validation items (CSR by user index) and each item's training count,
    atomically: what ``recommend`` leaves out and what ``recsys evaluate`` ranks popularity by."""
    path = Path(run_dir) / SEEN_FILE
    with atomic_file(path) as out:
        np.savez(out, indptr=seen.indptr.astype(np.int64), items=seen.items.astype(np.int32),
                 popularity=np.asarray(popularity, dtype=np.int64))
    return path


def load_seen(run_dir: str | Path) -> tuple[Seen, np.ndarray]:
    """(seen items, popularity) as :func:`save_seen` wrote them."""
    with np.load(Path(run_dir) / SEEN_FILE) as z:
        return Seen(z["indptr"], z["items"]), z["popularity"]


def _checkpoint_path(path: Path) -> Path:
    if path.is_dir():
        # the tested checkpoint: metrics.json's, or failed.json's where the test phase failed after the fit
        for record in (path / "metrics.json", path / "failed.json"):
            named = json.loads(record.read_text()).get("test_checkpoint") if record.exists() else None
            if named and named != "last" and Path(named).exists():
                return Path(named)
        last = path / "checkpoints" / "last.ckpt"
        if not last.exists():
            raise ValueError(f"{path}: a run directory needs checkpoints/last.ckpt (or metrics.json naming one)")
        return last
    if not path.exists():
        raise ValueError(f"{path} does not exist: give a run directory or a .ckpt file of recsys")
    return path


def load(path: str | Path, device: str = "cpu") -> Recommender:
    """The model of a run directory (its tested checkpoint, else ``last.ckpt``) or of a ``.ckpt`` file."""
    path = Path(path).expanduser()
    ckpt_path = _checkpoint_path(path)
    model, ckpt = load_checkpoint(ckpt_path, device)
    ids = ckpt.get("RatingsDataModule")
    if not ids:
        raise ValueError(f"{ckpt_path} is not a checkpoint of a recsys run: expected the id maps "
                         "('RatingsDataModule') that train.py saves")
    model.to(device).eval()
    run_dir = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else None
    seen = popularity = None
    if run_dir is not None and (run_dir / SEEN_FILE).exists():
        seen, popularity = load_seen(run_dir)
    rec = Recommender(model, IdMap(ids["user_ids"]), IdMap(ids["item_ids"]), seen)
    rec.popularity, rec.run_dir = popularity, run_dir
    return rec


def _normalize(ids, id_map: IdMap) -> np.ndarray:
    """Ids as the map holds them: ``196``, ``"196"`` and ``np.int64(196)`` are one MovieLens user."""
    arr = np.atleast_1d(np.asarray(ids, dtype=object))
    if id_map.ids.dtype.kind in "iu":
        def as_int(x):
            if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
                return int(x)
            s = str(x).strip()
            return int(s) if s.lstrip("-").isdigit() else x
        return np.array([as_int(x) for x in arr], dtype=object)
    return np.array([str(x.item() if isinstance(x, np.generic) else x) for x in arr], dtype=object)


class Recommender:
    """A trained model with its id maps; see the module docstring."""

    def __init__(self, model: Model, users: IdMap, items: IdMap,
                 seen: tuple[np.ndarray, np.ndarray] | None = None):
        self.model, self.users, self.items, self._seen = model, users, items, seen
        self.popularity, self.run_dir = None, None  # training counts per item and the run, when loaded from one
        self.device = next(model.buffers()).device

    def __repr__(self) -> str:
        return (f"Recommender({type(self.model).__name__}, {len(self.users)} users, {len(self.items)} items, "
                f"seen={'saved' if self._seen is not None else 'none'})")

    @property
    def seen(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Each user's training and validation items as CSR arrays ``(indptr, items)`` (None if unknown)."""
        return self._seen

    def lookup(self, ids, side: str, strict: bool = False) -> tuple[torch.Tensor, torch.Tensor, list]:
        """(indices, known mask, unknown ids) of user (``side="user"``) or item ids; unknown ids get index 0."""
        return self._index(ids, self.users if side == "user" else self.items, side, strict)

    # -- ids ------------------------------------------------------------------------------------------
    def _index(self, ids, id_map: IdMap, what: str, strict: bool) -> tuple[torch.Tensor, torch.Tensor, list]:
        values = _normalize(ids, id_map)
        idx = id_map.lookup(values)
        unknown = values[idx < 0].tolist()
        if unknown and strict:
            raise KeyError(f"unknown {what} ids: {unknown[:20]}" + (" ..." if len(unknown) > 20 else ""))
        known = torch.from_numpy(idx >= 0).to(self.device)
        return torch.from_numpy(np.maximum(idx, 0)).to(self.device), known, unknown

    # -- questions ------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, users, items, strict: bool = False) -> np.ndarray:
        """Predicted ratings (float64) for each (user, item) pair; a single id broadcasts against a list."""
        u, uk, unknown_u = self._index(users, self.users, "user", strict)
        i, ik, unknown_i = self._index(items, self.items, "item", strict)
        if len(u) != len(i) and 1 not in (len(u), len(i)):
            raise ValueError(f"predict: {len(u)} users and {len(i)} items; give equal lengths or one of either")
        u, i = torch.broadcast_tensors(u, i)
        uk, ik = torch.broadcast_tensors(uk, ik)
        if unknown_u or unknown_i:
            warnings.warn(f"predict: {len(unknown_u)} unknown user ids and {len(unknown_i)} unknown item ids got "
                          "the cold-start fallback (the training mean plus the known side's bias); strict=True "
                          "raises instead", stacklevel=2)
        return self.model.predict(u, i, uk, ik).double().cpu().numpy()

    def _seen_from(self, seen: pd.DataFrame) -> Seen:
        u, _, _ = self._index(seen["user"], self.users, "user", strict=False)
        i, ik, _ = self._index(seen["item"], self.items, "item", strict=False)
        return Seen.of(u[ik].cpu().numpy(), i[ik].cpu().numpy(), len(self.users))

    @torch.no_grad()
    def recommend(self, users, n: int = 10, exclude_seen: bool = True, seen: pd.DataFrame | None = None,
                  strict: bool = False, max_memory_mb: float = memory.MAX_MEMORY_MB) -> pd.DataFrame:
        """Top-``n`` items per user: DataFrame ``user, item, score, rank`` (score unclipped, rank 1 best). Users are
        scored in chunks whose whole working memory stays within ``max_memory_mb``, measured on a probe chunk
        (:func:`recsys.evaluation.users_per_chunk`)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r}: must be a positive integer")
        csr = self._seen_from(seen) if seen is not None else self._seen
        if exclude_seen and csr is None:
            raise ValueError("recommend(exclude_seen=True) needs each user's training items: this checkpoint has no "
                             f"{SEEN_FILE} beside it; pass seen=<DataFrame of user, item> or exclude_seen=False")
        u, uk, unknown = self._index(users, self.users, "user", strict)
        if unknown:
            warnings.warn(f"recommend: {len(unknown)} unknown user ids are ranked by the cold-start fallback "
                          "(the training mean plus item biases)", stacklevel=2)
        k = min(n, len(self.items))

        def top_of(rows: torch.Tensor, known: torch.Tensor) -> torch.return_types.topk:
            scores = self.model.score_all_items(rows, known)
            if exclude_seen:  # the known users' seen items
                csr.exclude(scores, rows, only=known)
            return torch.topk(scores, k, dim=1)

        frames = []
        probe = csr.heaviest_first(u[uk]) if csr is not None else u[uk]  # the costliest chunk of known users
        step = users_per_chunk(len(self.items), max_memory_mb,
                               lambda rows: top_of(rows, torch.ones_like(rows, dtype=torch.bool)), probe)
        for lo in range(0, len(u), step):
            with memory.budget(max_memory_mb):
                top = top_of(u[lo:lo + step], uk[lo:lo + step])
            frames.append((lo, top.values.cpu().numpy(), top.indices.cpu().numpy()))
        values = np.concatenate([v for _, v, _ in frames]) if frames else np.zeros((0, k))
        indices = np.concatenate([i for _, _, i in frames]) if frames else np.zeros((0, k), dtype=np.int64)
        ok = np.isfinite(values)  # fewer than n unseen items: the row ends early
        original = _normalize(users, self.users)
        return pd.DataFrame({"user": np.repeat(original, ok.sum(1)), "item": self.items.to_ids(indices[ok]),
                             "score": values[ok].astype(np.float64),
                             "rank": np.broadcast_to(np.arange(1, k + 1), values.shape)[ok]})

    def _tables(self) -> Bilinear:
        net = self.model.factor_tables()
        if net is None:
            raise ValueError(f"{type(self.model).__name__} has no factor tables")
        return net

    @torch.no_grad()
    def similar_items(self, items, n: int = 10, strict: bool = True) -> pd.DataFrame:
        """The most similar items by the model's own item similarity (``model.item_similarity``: cosine of item
        factors by default, EASE's item-item weights): ``item, similar, score, rank``."""
        i, _, _ = self._index(items, self.items, "item", strict)
        sims = self.model.item_similarity(i)
        if sims is None:
            raise ValueError(f"{type(self.model).__name__} has no item factors to compare")
        sims = sims.clone()
        sims[torch.arange(len(i)), i] = float("-inf")  # the item itself
        top = torch.topk(sims, min(n, len(self.items) - 1), dim=1)
        original = _normalize(items, self.items)
        return pd.concat([pd.DataFrame({"item": original[r], "similar": self.items.to_ids(top.indices[r].cpu().numpy()),
                                        "score": top.values[r].double().cpu().numpy(),
                                        "rank": np.arange(1, top.indices.shape[1] + 1)})
                          for r in range(len(i))], ignore_index=True)

    # -- export ---------------------------------------------------------------------------------------
    def _frame(self, weight: torch.Tensor, id_map: IdMap, prefix: str) -> pd.DataFrame:
        w = weight.detach().double().cpu().numpy()
        columns = [f"{prefix}{j}" for j in range(w.shape[1])] if prefix else ["bias"]
        return pd.DataFrame(w, index=pd.Index(id_map.ids, name="id"), columns=columns)

    def user_factors(self) -> pd.DataFrame:
        return self._frame(self._tables().user.weight, self.users, "f")

    def item_factors(self) -> pd.DataFrame:
        return self._frame(self._tables().item.weight, self.items, "f")

    def user_bias(self) -> pd.DataFrame:
        net = self._tables()
        if net.user_bias is None:
            raise ValueError(f"{type(self.model).__name__} has no biases")
        return self._frame(net.user_bias.weight, self.users, "")

    def item_bias(self) -> pd.DataFrame:
        net = self._tables()
        if net.item_bias is None:
            raise ValueError(f"{type(self.model).__name__} has no biases")
        return self._frame(net.item_bias.weight, self.items, "")

    # -- fold in --------------------------------------------------------------------------------------
    @torch.no_grad()
    def fold_in(self, ratings: Mapping | pd.DataFrame, user=None):
        """Fit one user from ``ratings`` (item -> rating) with the item side fixed; returns the user's id.

        ``user`` new (or None: a fresh id) adds the user; an existing id replaces that user's row. The fit is
        the model's own (``model.fold_in``): for models with a least-squares form, the user's ridge normal
        equations (what one ALS user half-sweep computes); pmf_sigmoid takes Newton steps on its E.
        """
        frame = pd.DataFrame({"item": list(ratings), "rating": list(ratings.values())}) \
            if isinstance(ratings, Mapping) else ratings[["item", "rating"]]
        i, ik, unknown = self._index(frame["item"], self.items, "item", strict=False)
        if unknown:
            warnings.warn(f"fold_in: {len(unknown)} unknown item ids left out: {unknown[:10]}", stacklevel=2)
        i = i[ik]
        r = torch.as_tensor(frame["rating"].to_numpy(np.float32)[ik.cpu().numpy()], device=self.device)
        if len(r) == 0:
            raise ValueError("fold_in: no ratings of known items")
        known = None
        if user is not None:
            idx = self.users.lookup(_normalize([user], self.users))[0]
            known = int(idx) if idx >= 0 else None
        try:
            row = self.model.fold_in(i, r, known)
        except NotImplementedError as err:
            raise ValueError(f"fold_in: {err}") from None
        if known is None:  # the model added a row: give it the user's id
            if user is None:
                ids = self.users.ids
                user = int(ids.max()) + 1 if ids.dtype.kind in "iu" else f"new-{len(ids)}"
            ids = self.users.ids
            # integer ids stay integers; string ids widen as needed (a fixed-width dtype would truncate the new id)
            new = np.asarray(_normalize([user], self.users), dtype=ids.dtype if ids.dtype.kind in "iu" else str)
            self.users = IdMap(np.concatenate([ids, new]))
            if row != len(self.users) - 1:
                raise RuntimeError(f"{type(self.model).__name__}.fold_in gave row {row} for a new user; new users "
                                   "are appended as the last row (add_user_row)")
        if self._seen is not None:
            self._seen = self._seen.with_row(row, i.cpu().numpy())
        return self.users.ids[row].item() if isinstance(self.users.ids[row], np.generic) else self.users.ids[row]
