"""Item-item models (EASE, ItemKNN): user u's score of item i is X_u·W_:i = Σ_{j∈N(u)} x_uj W_ji, with X the users ×
items training matrix (1 per interaction; ``values=rating``: the ratings) and W an items × items matrix each model
fits in one solve (``fit_closed_form(train)``).

What every such model shares, written once here: the users' histories (X's rows, kept as buffers so a loaded model
scores without the data), X's Gram matrix XᵀX, the scores of every item and of pairs, cold rows (no history: 0),
fold-in (a new user is a new row of X: nothing to fit), ``item_similarity`` (W's rows), the O(n_items²) memory
check, and the reference's scoring Σ_j x_uj W_ji with the W its paper gives (:meth:`ItemItem.reference_weights`,
written out plainly by each model). A subclass declares its hyperparameters (with ``values``), calls
``super().__init__(values=values)`` and fits ``self.weights``.
"""

from __future__ import annotations

import abc
import os
from typing import Annotated

import numpy as np
import torch

from recsys.data.interactions import Interactions
from recsys.models.base import Model
from recsys.models.nets import Histories, plain
from recsys.validation import OneOf

#: float32 matrices of n_items² a fit holds at once: the Gram matrix (factored in place), its inverse and W
WORK_MATRICES = 3
Values = Annotated[str, OneOf("binary", "rating")]  # X's entries: 1 per interaction, or its rating


def available_bytes(device: torch.device) -> int:
    """Free memory on ``device``: the GPU's free memory, or the host's available memory (Linux)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_fits(name: str, n_items: int, device: torch.device) -> None:
    need, free = WORK_MATRICES * 4 * n_items ** 2, available_bytes(device)
    if need > free:
        raise MemoryError(f"model={name} needs {need / 2**30:.1f} GiB on {device} for {n_items} items "
                          f"({WORK_MATRICES} float32 matrices of n_items²) and {free / 2**30:.1f} GiB is free: use a "
                          "factor model for this many items (model=mf, model=svdpp), or a data set with fewer items")


class ItemItem(Model):
    """The shared part of the item-item models (see the module docstring); not a model of its own."""

    task = "ranking"
    solvers = ("closed_form",)  # W in one solve: no optimizer steps

    def __init__(self, values: Values = "binary"):
        super().__init__()
        n_users, n_items = self.data.num_users, self.data.num_items
        check_fits(type(self).__name__.lower(), n_items, torch.device("cpu"))
        self.values = values
        self.register_buffer("weights", torch.zeros(n_items, n_items))  # W
        self.history = Histories(n_users)  # each user's row of X, saved with W

    # -- the data -------------------------------------------------------------------------------------------------
    def setup_interactions(self, train: Interactions) -> None:
        self.history.set(train.by_user)

    def gram(self, train: Interactions) -> torch.Tensor:
        """XᵀX (items × items, in the weights' dtype and on their device) of the training matrix X: one sparse
        product."""
        device, n_items = self.weights.device, self.data.num_items
        check_fits(type(self).__name__.lower(), n_items, device)
        users, items = train.users.to(device), train.items.to(device)
        entries = train.ratings.to(device=device, dtype=torch.float32) if self.values == "rating" else \
            torch.ones(len(users), device=device)
        x = torch.sparse_coo_tensor(torch.stack([users, items]), entries, (self.data.num_users, n_items)).coalesce()
        if self.values == "binary":
            x.values().clamp_(max=1.0)  # 0/1: a repeated pair counts once
        return torch.sparse.mm(x.t().coalesce(), x).to_dense().to(self.weights.dtype)  # W's: float32, a test's float64

    @abc.abstractmethod
    def fit_closed_form(self, train: Interactions) -> None:
        """Fit ``self.weights`` (W) from the training interactions."""

    # -- scores ---------------------------------------------------------------------------------------------------
    def all_item_scores(self, users):
        """X_u·W for every item: one (users × items) @ (items × items) product."""
        x = self.history.dense(users, self.data.num_items, self.weights.dtype, ratings=self.values == "rating")
        return x @ self.weights

    def forward(self, users, items):
        unique, inverse = torch.unique(users, return_inverse=True)
        return self.all_item_scores(unique)[inverse, items]

    def fallback(self, users, items, user_known, item_known):
        """Cold pairs score as the model scores them: X_u·W, 0 without a history or for an item never seen."""
        return torch.zeros(users.shape, dtype=self.weights.dtype, device=users.device)

    def item_similarity(self, items):
        """W's rows: how much having item j raises each item's score."""
        return self.weights[items]

    @abc.abstractmethod
    def reference_weights(self) -> np.ndarray:
        """W as the model's paper gives it, computed plainly from the training data (``self.interactions``)."""

    def reference(self, users, items):
        """Σ_{j∈N(u)} x_uj W_ji, X_u the user's row now (fold-ins included), W from :meth:`reference_weights`."""
        w = self.reference_weights()
        indptr, held, values = self.history.indptr.tolist(), self.history.items.tolist(), plain(self.history.values)
        out = []
        for u, i in zip(users.tolist(), items.tolist()):
            lo, hi = indptr[u], indptr[u + 1]
            x = values[lo:hi] if self.values == "rating" else np.ones(hi - lo)
            out.append(sum(x[k] * w[j, i] for k, j in enumerate(held[lo:hi])))
        return torch.tensor(out, dtype=torch.float64)

    def training_matrix(self) -> np.ndarray:
        """X (users × items, float64) of the training interactions, for a plain reference."""
        train = self.interactions
        if train is None:
            raise RuntimeError(f"{type(self).__name__}.reference needs the training data (attach_interactions)")
        x = np.zeros((self.data.num_users, self.data.num_items))
        values = plain(train.ratings) if self.values == "rating" else np.ones(len(train.users))
        x[train.users.numpy(), train.items.numpy()] = values
        return x

    # -- fold in: a new user's row of X ---------------------------------------------------------------------------
    @torch.no_grad()
    def fold_in(self, items: torch.Tensor, ratings: torch.Tensor, row: int | None = None) -> int:
        """User ``row`` (None: a new row) scores X_new·W with X_new the items given: nothing to fit."""
        row = self.add_user_row() if row is None else row
        self.history.replace(row, items, ratings)
        self.user_seen[row] = True
        return row

    def add_user_row(self) -> int:
        self.history.append_user()
        self.user_seen = torch.cat([self.user_seen, self.user_seen.new_zeros(1)])
        return len(self.user_seen) - 1
