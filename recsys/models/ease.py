"""EASE (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW): an item-item model fitted in
closed form. With X the users × items 0/1 matrix of training interactions (``values=rating``: their ratings instead
of 1s, a variant of ours that ranks ratings ≥ 4 better where ratings are given: λ then scales with r²),

    min_B ‖X − XB‖²_F + λ‖B‖²_F   subject to diag(B) = 0

has the solution P = (XᵀX + λI)⁻¹, B = I − P·diag(1/diag P) (so B_ij = −P_ij / P_jj, B_jj = 0), and user u's
score of item i is X_u·B_:i = Σ_{j∈N(u)} B_ji.

The model receives the training interactions through the contract (``setup_interactions``, and
``fit_closed_form(train)`` for the fit; with implicit feedback, which its ranking task sets, every positive is
a 1), keeps each user's items
(``history``, a :class:`Histories`) and B as buffers, so a loaded model scores without the data.
``model.solver=closed_form`` fits it once: the Gram matrix by one sparse product, then one float32 Cholesky
factorization and inverse on the training device. Memory is O(n_items²): the model refuses, naming the size,
where B and the solve's two work matrices will not fit. EASE's scores are not ratings: its RMSE and MAE are
reported but mean nothing; it is selected and judged by ranking (``val/ndcg@10``).
"""

from __future__ import annotations

import os
from typing import Annotated

import numpy as np
import torch

from recsys.data.interactions import Interactions
from recsys.models.base import RatingModel
from recsys.models.nets import Histories, plain
from recsys.validation import OneOf, Reg

#: float32 matrices of n_items² the fit holds at once: the Gram matrix (factored in place), its inverse and B
WORK_MATRICES = 3


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


def check_fits(n_items: int, device: torch.device) -> None:
    need, free = WORK_MATRICES * 4 * n_items ** 2, available_bytes(device)
    if need > free:
        raise MemoryError(f"model=ease needs {need / 2**30:.1f} GiB on {device} for {n_items} items "
                          f"({WORK_MATRICES} float32 matrices of n_items²) and {free / 2**30:.1f} GiB is free: use a "
                          "factor model for this many items (model=mf, model=svdpp), or a data set with fewer items")


class EASE(RatingModel):
    """EASE: item-item B = I − P·diag(1/diag P), P = (XᵀX + λI)⁻¹, scores X_u·B (Steck 2019)."""
    task = "ranking"
    solvers = ("closed_form",)  # B in one solve: no optimizer steps

    def __init__(self, reg: Reg = 250.0, values: Annotated[str, OneOf("binary", "rating")] = "binary"):
        super().__init__()
        n_users, n_items = self.data.num_users, self.data.num_items
        check_fits(n_items, torch.device("cpu"))
        self.reg, self.values = reg, values
        self.register_buffer("weights", torch.zeros(n_items, n_items))  # B, zero diagonal
        self.history = Histories(n_users)  # each user's row of X, saved with B

    # -- the data and the fit ------------------------------------------------------------------------------
    def setup_interactions(self, train: Interactions) -> None:
        self.history.set(train.by_user)

    @torch.no_grad()
    def fit_closed_form(self, train: Interactions) -> None:
        """B = I − P·diag(1/diag P), P = (XᵀX + λI)⁻¹ of the training interactions X: one Gram product, one
        Cholesky factorization and inverse."""
        device, n_items = self.weights.device, self.data.num_items
        check_fits(n_items, device)
        users, items = train.users.to(device), train.items.to(device)
        entries = train.ratings.to(device=device, dtype=torch.float32) if self.values == "rating" else \
            torch.ones(len(users), device=device)
        x = torch.sparse_coo_tensor(torch.stack([users, items]), entries, (self.data.num_users, n_items)).coalesce()
        if self.values == "binary":
            x.values().clamp_(max=1.0)  # 0/1: a repeated pair counts once
        gram = torch.sparse.mm(x.t().coalesce(), x).to_dense()  # XᵀX
        gram.diagonal().add_(float(self.reg))
        chol, info = torch.linalg.cholesky_ex(gram)
        if int(info) != 0:
            raise FloatingPointError(f"EASE: XᵀX + λI is not positive definite (model.reg={self.reg}); use reg > 0")
        del gram
        p = torch.cholesky_inverse(chol)
        del chol
        b = p.div_(-p.diagonal().clone().unsqueeze(0))  # −P_ij / P_jj
        b.diagonal().zero_()
        self.weights.copy_(b)

    # -- scores ------------------------------------------------------------------------------------------------
    def all_item_scores(self, users):
        """X_u·B for every item: one (users × items) @ (items × items) product."""
        x = self.history.dense(users, self.data.num_items, self.weights.dtype, ratings=self.values == "rating")
        return x @ self.weights

    def forward(self, users, items):
        unique, inverse = torch.unique(users, return_inverse=True)
        scores = self.all_item_scores(unique)
        return scores[inverse, items]

    def reference(self, users, items):
        """Steck 2019, eq. 1: S_u· = X_u·B, X_u the user's row (1 per interaction; the ratings with values=rating)."""
        b = plain(self.weights)
        indptr, held, values = self.history.indptr.tolist(), self.history.items.tolist(), plain(self.history.values)
        out = []
        for u, i in zip(users.tolist(), items.tolist()):
            lo, hi = indptr[u], indptr[u + 1]
            x = values[lo:hi] if self.values == "rating" else np.ones(hi - lo)
            out.append(sum(x[k] * b[j, i] for k, j in enumerate(held[lo:hi])))
        return torch.tensor(out, dtype=torch.float64)

    def fallback(self, users, items, user_known, item_known):
        """Cold pairs score as the model scores them: X_u·B, 0 without a history or for an item never seen."""
        return torch.zeros(users.shape, dtype=self.weights.dtype, device=users.device)

    def item_similarity(self, items):
        """B's rows: how much having item i raises each item's score (Steck's item-item weights)."""
        return self.weights[items]

    # -- fold in: a new user's row of X ------------------------------------------------------------------------
    @torch.no_grad()
    def fold_in(self, items: torch.Tensor, ratings: torch.Tensor, row: int | None = None) -> int:
        """User ``row`` (None: a new row) scores X_new·B with X_new the items given: nothing to fit."""
        row = self.add_user_row() if row is None else row
        self.history.replace(row, items, ratings)
        self.user_seen[row] = True
        return row

    def add_user_row(self) -> int:
        self.history.append_user()
        self.user_seen = torch.cat([self.user_seen, self.user_seen.new_zeros(1)])
        return len(self.user_seen) - 1
