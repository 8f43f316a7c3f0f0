"""Closed-form alternating least squares for any model with a bilinear least-squares form.

Setting ∂E/∂U_i = 0 in the PMF objective gives, for each user i with rated items Ω_i,

    U_i = (λ_U I + Σ_{j∈Ω_i} V_j V_jᵀ)⁻¹ Σ_{j∈Ω_i} R_ij V_j,

and symmetrically for items (Salakhutdinov & Mnih 2007). Biases fold in by augmenting the vectors: the
user side solves x_u = [p_u, b_u] against features f_i = [q_i, 1] and targets t(r) − b_i. The per-row
Gram matrices Σ f fᵀ and right-hand sides Σ t f are sufficient statistics: they are accumulated chunk by
chunk, summed across DDP ranks (so every rank reaches the factors one process would), then solved with
batched Cholesky.

Gram matrices are built by bucketed batched GEMM: a chunk is sorted by row, rows with similar counts
are padded to a common length L (a power of two), and each bucket's (rows × L × k) block is multiplied
by its transpose — one bmm per bucket, memory O(chunk · k), never a per-rating k × k outer product.

A model takes part by returning a :class:`LeastSquares` from ``least_squares()``: its factor tables,
its targets t(r) and its ridges. :class:`ALS` is the fitting strategy the Lightning system runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Protocol

import torch
from torch import nn

from recsys.validation import OneOf

REG_SCALINGS = ("row", "frequency")
RegScaling = Annotated[str, OneOf(*REG_SCALINGS)]  # ALS ridge per row: λ ('row') or λ·n_r ('frequency')


class NormalEquations:
    """Running sums G_r = Σ f fᵀ, b_r = Σ t f and counts n_r for ``n_rows`` rows of width ``k``."""

    def __init__(self, n_rows: int, k: int, device=None, dtype=torch.float32):
        self.gram = torch.zeros(n_rows, k, k, device=device, dtype=dtype)
        self.rhs = torch.zeros(n_rows, k, device=device, dtype=dtype)
        self.count = torch.zeros(n_rows, device=device, dtype=dtype)

    def add(self, rows: torch.Tensor, feats: torch.Tensor, targets: torch.Tensor) -> None:
        """Accumulate ratings: ``rows`` (B,) row ids, ``feats`` (B, k) fixed-side features, ``targets`` (B,)."""
        order = torch.argsort(rows)
        rows = rows[order]
        feats = feats[order].to(self.gram.dtype)
        targets = targets[order].to(self.gram.dtype)
        uniq, counts = torch.unique_consecutive(rows, return_counts=True)
        self.count.index_add_(0, uniq, counts.to(self.count.dtype))
        starts = torch.cumsum(counts, 0) - counts
        # bucket by the next power of two of each row's count in this batch
        bucket = torch.ceil(torch.log2(counts.to(torch.float64))).long()
        pad = len(feats)  # index of the zero row appended below
        feats = torch.cat([feats, feats.new_zeros(1, feats.shape[1])])
        targets = torch.cat([targets, targets.new_zeros(1)])
        for b in torch.unique(bucket).tolist():
            sel = bucket == b
            offs = torch.arange(1 << b, device=rows.device)
            idx = torch.where(offs < counts[sel].unsqueeze(1), starts[sel].unsqueeze(1) + offs, pad)
            block = feats[idx]  # (m, L, k)
            block_t = block.transpose(1, 2)
            self.gram.index_add_(0, uniq[sel], block_t @ block)
            self.rhs.index_add_(0, uniq[sel], (block_t @ targets[idx].unsqueeze(-1)).squeeze(-1))

    def all_reduce(self, reduce) -> None:
        """Sum the statistics across processes with ``reduce(tensor) -> tensor`` (a no-op on one)."""
        self.gram, self.rhs, self.count = reduce(self.gram), reduce(self.rhs), reduce(self.count)

    def solve(self, lam: float | torch.Tensor, scaling: str, current: torch.Tensor) -> torch.Tensor:
        """Solve (G_r + λ_r D) x_r = b_r for every row seen; rows without ratings keep ``current``.

        ``scaling='row'`` uses λ_r = λ (the MAP objective E); ``'frequency'`` λ_r = λ·n_r (ALS-WR).
        ``lam`` is a number (D = I) or a vector of k per-coordinate ridges (D = diag(lam), λ_r = n_r or 1).
        """
        seen = self.count > 0
        scale = self.count[seen] if scaling == "frequency" else torch.ones_like(self.count[seen])
        k = self.gram.shape[-1]
        ridge = torch.as_tensor(lam, device=self.gram.device, dtype=self.gram.dtype).expand(k)
        a = self.gram[seen] + scale.view(-1, 1, 1) * torch.diag(ridge)
        x = current.clone().to(self.gram.dtype)
        x[seen] = cholesky_solve(a, self.rhs[seen])
        return x.to(current.dtype)


def cholesky_solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve the SPD systems a[r] x[r] = b[r] by batched Cholesky (torch.linalg)."""
    chol, info = torch.linalg.cholesky_ex(a)
    if bool((info != 0).any()):  # cannot happen with λ > 0 unless the factors are non-finite
        raise FloatingPointError("ALS normal equations are not positive definite (non-finite factors?)")
    return torch.cholesky_solve(b.unsqueeze(-1), chol).squeeze(-1)




class Tables(Protocol):
    """The bilinear structure ALS needs: s(u, i) = P_uᵀQ_i [+ b_u + b_i] as embedding tables."""

    user: nn.Embedding
    item: nn.Embedding
    user_bias: nn.Embedding | None
    item_bias: nn.Embedding | None


@dataclass(frozen=True)
class LeastSquares:
    """A model's objective in the form ALS solves exactly, one side at a time:

        Σ_obs (t(r_ui) − s(u, i))² + Σ_rows c_r x_rᵀ diag(ridge) x_r,   c_r = n_r ('frequency') or 1 ('row'),

    with s the bilinear score of ``tables`` and x_r a row's factors (and bias, as the last coordinate).
    ``ridge`` holds (user side, item side), each a number or a per-coordinate vector; ``names`` are the
    hyperparameters that set them, for error messages.
    """

    tables: Tables
    target: Callable[[torch.Tensor], torch.Tensor]
    ridge: tuple[float | torch.Tensor, float | torch.Tensor]
    scaling: str
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.scaling not in REG_SCALINGS:
            raise ValueError(f"model.reg_scaling={self.scaling!r}: choose one of {REG_SCALINGS}")

    def sides(self, side: str):
        """(own factors, own bias, other factors, other bias) for ``side`` ('user' or 'item')."""
        t = self.tables
        if side == "user":
            return t.user, t.user_bias, t.item, t.item_bias
        if side == "item":
            return t.item, t.item_bias, t.user, t.user_bias
        raise ValueError(f"side={side!r}: 'user' or 'item'")

    def weights(self, side: str) -> torch.Tensor:
        """A side's unknowns per row: factors, with the bias appended as the last coordinate."""
        own, own_b, _, _ = self.sides(side)
        return torch.cat([own.weight, own_b.weight], 1) if own_b is not None else own.weight

    def assign(self, side: str, x: torch.Tensor) -> None:
        own, own_b, _, _ = self.sides(side)
        k = own.weight.shape[1]
        own.weight.data.copy_(x[:, :k])
        if own_b is not None:
            own_b.weight.data.copy_(x[:, k:])

    def assign_row(self, side: str, row: int, x: torch.Tensor) -> None:
        """Set one row's unknowns (factors, then bias), as :meth:`assign` sets all."""
        own, own_b, _, _ = self.sides(side)
        k = own.weight.shape[1]
        own.weight.data[row] = x[:k]
        if own_b is not None:
            own_b.weight.data[row] = x[k:]

    def rows(self, side: str, users, items, ratings):
        """Row ids, fixed-side features and adjusted targets of each rating, for solving ``side``."""
        _, own_b, other, other_b = self.sides(side)
        rows, cols = (users, items) if side == "user" else (items, users)
        feats = other.weight[cols]
        targets = self.target(ratings)
        if own_b is not None:  # augmented: [q_i, 1]·[p_u, b_u], target t(r) − b_i
            feats = torch.cat([feats, feats.new_ones(len(feats), 1)], 1)
            targets = targets - other_b.weight[cols, 0]
        return rows, feats, targets


CHUNK = 1 << 20  # ratings per accumulation: bounds the bucketed blocks' memory, O(CHUNK · k)


@torch.no_grad()
def half_sweep(problem: LeastSquares, side: str, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor,
               reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
    """Solve ``side`` of ``problem`` in closed form from these ratings, the other side fixed.

    ``reduce`` sums a tensor over DDP ranks when each rank holds a shard of the ratings.
    """
    current = problem.weights(side)
    stats = NormalEquations(current.shape[0], current.shape[1], device=current.device, dtype=current.dtype)
    for part in torch.arange(len(ratings), device=ratings.device).split(CHUNK):
        stats.add(*problem.rows(side, users[part], items[part], ratings[part]))
    if reduce is not None:
        stats.all_reduce(reduce)
    x = stats.solve(problem.ridge[0 if side == "user" else 1], problem.scaling, current)
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(f"ALS produced non-finite {side} factors")
    problem.assign(side, x)


def check(problem: LeastSquares | None, model_name: str, hparams) -> None:
    """Refuse models without a least-squares form and ridges that make the normal equations singular."""
    if problem is None:
        raise ValueError(f"model.solver=als: {model_name} is not bilinear (it has no least_squares() form), so "
                         "it has no closed-form ALS step; use model.solver=gradient")
    if any(bool((torch.as_tensor(r) <= 0).any()) for r in problem.ridge):
        given = ", ".join(f"model.{n}={hparams[n]}" for n in problem.names)
        raise ValueError(f"{given} with model.solver=als: ALS needs a positive regularization "
                         "(rows with fewer ratings than factors are singular)")


class ALS:
    """Fitting strategy: one epoch is a user half-sweep, then an item half-sweep, over the training set.

    The epoch's training batches are handed to :meth:`training_step`; they are kept (a rank's shard of
    the training set, by reference) and solved in one go at the epoch's last batch, so the result does not
    depend on ``data.batch_size``. ``train/loss`` is the objective at the start of the epoch.
    """

    automatic_optimization = False

    def __init__(self) -> None:
        self._batches: list[tuple[torch.Tensor, ...]] = []

    def check(self, model) -> None:
        check(model.least_squares(), type(model).__name__, model.hparams)

    def configure_optimizers(self, model):
        # the factors are solved in closed form; this optimizer never changes a weight (no gradients, lr 0),
        # its no-op step makes Lightning count one global step per epoch (checkpoints key on it)
        return torch.optim.SGD(model.parameters(), lr=0.0)

    @torch.no_grad()
    def training_step(self, model, batch, batch_idx: int) -> torch.Tensor:
        loss = model.objective(*batch)
        self._batches.append(batch)
        if batch_idx + 1 == model.trainer.num_training_batches:
            users, items, ratings = (torch.cat(t) for t in zip(*self._batches))
            self._batches = []
            problem = model.least_squares()
            for side in ("user", "item"):
                try:
                    half_sweep(problem, side, users, items, ratings, reduce=model.sum_over_ranks)
                except FloatingPointError as err:
                    raise FloatingPointError(f"ALS {side} half-sweep in epoch {model.current_epoch}: {err}") from None
            model.optimizers().step()
        return loss
