"""Closed-form alternating least squares for any model with a bilinear least-squares form.

Setting ∂E/∂U_i = 0 in the PMF objective gives, for each user i with rated items Ω_i,

    U_i = (λ_U I + Σ_{j∈Ω_i} V_j V_jᵀ)⁻¹ Σ_{j∈Ω_i} R_ij V_j,

and symmetrically for items (Salakhutdinov & Mnih 2007). Biases fold in by augmenting the vectors: the
user side solves x_u = [p_u, b_u] against features f_i = [q_i, 1] and targets t(r) − b_i.

How an epoch runs (the costs are O(nnz · k²) for the Gram matrices and O(rows · k²) per solver step):

- **Row systems, built once per fit** (:class:`RowSystems`): each side's ratings sorted by row, rows grouped
  by rating count into geometric buckets (lengths 1, 2, …, 8, then ×1.12), so a row is padded by less than
  12% of its count. A bucket is a (rows × L) table of column ids (pads point at an all-zero feature row).
- **Gram stacks by gather + batched matmul**: per bucket block B = F[cols] (rows × L × k), G = BᵀB and
  b = Bᵀt in one ``bmm`` each, in the tables' dtype (float32 in training), written in place.
- **Solve** (``model.als_solve``): ``cg`` (default) runs a few steps of Jacobi-preconditioned conjugate
  gradient warm-started from the current factors — batched matrix-vector products, which torch runs as one
  call, where batched Cholesky on CPU factors one matrix after another (pytorch issue 22573); each step
  lowers every row's quadratic, and over epochs ALS reaches the exact-solve optimum. ``cholesky`` solves
  each system exactly.
- **DDP**: rank r owns a contiguous range of each side's rows (balanced by rating count), solves them and
  the ranks all-gather the factors: O((m+n)·k) floats per epoch, not the O((m+n)·k²) statistics a
  ratings-sharded all-reduce would move. Every rank ends with the factors one process computes.

A model takes part by returning a :class:`LeastSquares` from ``least_squares()``: its factor tables,
its targets t(r), its ridges and how to solve. :class:`ALS` is the fitting strategy the Lightning system runs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Protocol

import torch
from torch import nn

from recsys.validation import NonNegative, OneOf

REG_SCALINGS = ("row", "frequency")
RegScaling = Annotated[str, OneOf(*REG_SCALINGS)]  # ALS ridge per row: λ ('row') or λ·n_r ('frequency')
SOLVES = ("cg", "cholesky")
Solve = Annotated[str, OneOf(*SOLVES)]  # model.als_solve: conjugate gradient steps | exact Cholesky solve
Tolerance = NonNegative  # model.als_tol: stop once an epoch lowers the objective by less than this fraction

GROWTH = 1.12  # bucket lengths grow by this factor: a row is padded by less than 12% of its count
CHUNK = 1 << 16  # padded ratings per gathered block: bounds its memory, O(CHUNK · k), and keeps it in cache
GROUP = 1 << 24  # Gram entries solved together: 64 MB in float32 (ml-1m's users at k=64 are ~1.6 groups)
CG_STEPS = 3  # conjugate gradient steps per half-sweep, warm-started from the current factors


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
    hyperparameters that set them, for error messages. ``solve`` is ``cg`` or ``cholesky``; ``tol`` the
    relative decrease of the objective per epoch under which training stops (0: never).
    """

    tables: Tables
    target: Callable[[torch.Tensor], torch.Tensor]
    ridge: tuple[float | torch.Tensor, float | torch.Tensor]
    scaling: str
    names: tuple[str, ...] = ()
    solve: str = "cg"
    tol: float = 1e-4
    #: implicit feedback (Hu, Koren & Volinsky 2008): the squared error runs over ALL pairs, weight 1 and target 0
    #: where unobserved, weight 1 + ``weight(r)`` and target ``target(r)`` / (1 + ``weight(r)``) where observed
    #: (``target`` returns c·p, the confidence times the preference). Each row's Gram matrix is then FᵀF (once
    #: per half-sweep) plus Σ_obs weight·f fᵀ, its right-hand side Σ_obs target·f: the Gram trick.
    weight: Callable[[torch.Tensor], torch.Tensor] | None = None
    all_pairs: bool = False
    #: the weight w₀ of the unobserved pairs (Rendle et al. 2021): the shared Gram is w₀·FᵀF, and ``weight`` then
    #: returns an observed entry's confidence less w₀
    all_pairs_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.scaling not in REG_SCALINGS:
            raise ValueError(f"model.reg_scaling={self.scaling!r}: choose one of {REG_SCALINGS}")
        if self.solve not in SOLVES:
            raise ValueError(f"model.als_solve={self.solve!r}: choose one of {SOLVES}")

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

    def features(self, side: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fixed side's features per column, [q_i, 1] with biases, plus an all-zero row for padding;
        and its biases (targets are t(r) − b_i), with a zero for padding."""
        _, own_b, other, other_b = self.sides(side)
        feats = other.weight
        if own_b is not None:  # augmented: [q_i, 1]·[p_u, b_u]
            feats = torch.cat([feats, feats.new_ones(len(feats), 1)], 1)
        feats = torch.cat([feats, feats.new_zeros(1, feats.shape[1])])
        bias = None if other_b is None else torch.cat([other_b.weight[:, 0], other_b.weight.new_zeros(1)])
        return feats, bias

    def ridge_of(self, side: str, width: int, like: torch.Tensor) -> torch.Tensor:
        """The side's per-coordinate ridge as a (width,) vector."""
        lam = self.ridge[0 if side == "user" else 1]
        return torch.as_tensor(lam, device=like.device, dtype=like.dtype).expand(width)

    def penalty(self, side: str, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Σ_rows c_r x_rᵀ diag(ridge) x_r over the rows ``x`` with rating counts ``counts``."""
        c = counts.to(x.dtype) if self.scaling == "frequency" else torch.ones(len(x), dtype=x.dtype, device=x.device)
        return (c * (x.square() * self.ridge_of(side, x.shape[1], x)).sum(1)).sum()


def bucket_lengths(longest: int) -> list[int]:
    """Padded row lengths 1, 2, …, 8, then growing by ``GROWTH``, up to the first ≥ ``longest``."""
    lengths = [1]
    while lengths[-1] < longest:
        lengths.append(max(lengths[-1] + 1, math.ceil(lengths[-1] * GROWTH)))
    return lengths


def row_ranges(counts: torch.Tensor, world: int) -> list[int]:
    """Boundaries of ``world`` contiguous row ranges with about equal numbers of ratings."""
    total = torch.cumsum(counts, 0)
    cuts = torch.searchsorted(total, torch.arange(1, world) * int(total[-1]) / world).tolist()
    return [0, *cuts, len(counts)]


@dataclass
class _Block:
    start: int  # first row of the block in its group
    cols: torch.Tensor  # (m, L) column ids; pads point at the zero feature row
    ratings: torch.Tensor  # (m, L) ratings; 0 at pads
    pad: torch.Tensor | None  # (m, L) True at pads (None: no padding)


@dataclass
class _Group:
    rows: torch.Tensor  # (m,) row ids, local to the rank's range
    counts: torch.Tensor  # (m,) their rating counts
    blocks: list[_Block]


class RowSystems:
    """One side's ratings arranged for its normal equations: built once per fit (see the module docstring).

    ``rows``/``cols``/``ratings`` are the training ratings seen from this side (rows = users for the user
    side); ``width`` the number of unknowns per row. Rank ``rank`` of ``world`` keeps the rows of its range.
    """

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, ratings: torch.Tensor, n_rows: int,
                 n_cols: int, width: int, rank: int = 0, world: int = 1):
        self.n_rows, self.n_cols = n_rows, n_cols
        counts = torch.bincount(rows, minlength=n_rows)
        self.bounds = row_ranges(counts, world)
        self.lo, self.hi = self.bounds[rank], self.bounds[rank + 1]
        self.counts = counts[self.lo:self.hi]
        mine = (rows >= self.lo) & (rows < self.hi)
        rows, cols, ratings = rows[mine] - self.lo, cols[mine], ratings[mine]
        order = torch.argsort(rows * n_cols + cols)  # canonical: any order or sharding of the input agrees
        cols, ratings = cols[order], ratings[order]
        # the same entries as CSR (this rank's rows): the matrix-free conjugate gradient of implicit feedback
        self.indptr = torch.cat([self.counts.new_zeros(1), torch.cumsum(self.counts, 0)])
        self.cols, self.ratings = cols, ratings
        starts = torch.cumsum(self.counts, 0) - self.counts
        active = torch.nonzero(self.counts).squeeze(1)
        self.groups: list[_Group] = []
        if len(active) == 0:
            return
        lengths = torch.tensor(bucket_lengths(int(self.counts.max())))
        bucket = torch.searchsorted(lengths, self.counts[active])
        active = active[torch.argsort(bucket, stable=True)]
        bucket = torch.searchsorted(lengths, self.counts[active])
        per_group = max(1, GROUP // (width * width))
        blocks, group_rows = [], []
        buckets, sizes = torch.unique_consecutive(bucket, return_counts=True)
        for b, members in zip(buckets.tolist(), active.split(sizes.tolist())):
            length = int(lengths[b])
            for part in members.split(max(1, CHUNK // length)):
                offs = torch.arange(length)
                pad = offs >= self.counts[part].unsqueeze(1)
                idx = (starts[part].unsqueeze(1) + offs).clamp(max=max(len(cols) - 1, 0))
                block_cols = torch.where(pad, n_cols, cols[idx])
                block_ratings = torch.where(pad, 0.0, ratings[idx])
                if sum(len(r) for r in group_rows) + len(part) > per_group and group_rows:
                    self._close(group_rows, blocks)
                    blocks, group_rows = [], []
                blocks.append(_Block(sum(len(r) for r in group_rows), block_cols, block_ratings,
                                     pad if bool(pad.any()) else None))
                group_rows.append(part)
        self._close(group_rows, blocks)

    def _close(self, group_rows: list[torch.Tensor], blocks: list[_Block]) -> None:
        rows = torch.cat(group_rows)
        self.groups.append(_Group(rows, self.counts[rows], blocks))

    def to(self, device) -> RowSystems:
        self.counts = self.counts.to(device)
        self.indptr, self.cols, self.ratings = self.indptr.to(device), self.cols.to(device), self.ratings.to(device)
        for g in self.groups:
            g.rows, g.counts = g.rows.to(device), g.counts.to(device)
            for b in g.blocks:
                b.cols, b.ratings = b.cols.to(device), b.ratings.to(device)
                b.pad = None if b.pad is None else b.pad.to(device)
        return self

    @torch.no_grad()
    def normal_equations(self, problem: LeastSquares, side: str, dtype: torch.dtype):
        """Per group of this rank's rows: (group, G, b, Σt²) with G = Σ f fᵀ, b = Σ t f and Σ t² over each row's
        ratings (f the fixed side's features, t the targets less its biases), no ridge. G and b are views
        into one buffer per group, valid until the next group is yielded."""
        feats, bias = problem.features(side)
        width = feats.shape[1]
        feats = torch.cat([feats, feats.new_zeros(len(feats), 1)], 1).to(dtype)  # a last column for targets
        bias = None if bias is None else bias.to(dtype)
        for g in self.groups:
            # one batched product per block gives [[G, b], [bᵀ, Σt²]] = [F t]ᵀ[F t] for each row
            ext = feats.new_empty(len(g.rows), width + 1, width + 1)
            for blk in g.blocks:
                block = feats[blk.cols]  # (rows, L, k + 1) gathered features, pads all zero
                r = blk.ratings.to(dtype)
                t = problem.target(r)
                if bias is not None:
                    t = t - bias[blk.cols]
                if problem.weight is not None:  # Σ w f fᵀ and Σ t f from features scaled by √w, targets by 1/√w
                    root = problem.weight(r).clamp_min(0).sqrt()
                    block[..., :width] *= root.unsqueeze(-1)
                    t = torch.where(root > 0, t / root.clamp_min(torch.finfo(dtype).tiny), 0.0)
                block[..., width] = t if blk.pad is None else t.masked_fill(blk.pad, 0.0)
                torch.bmm(block.mT, block, out=ext[blk.start:blk.start + len(blk.cols)])
            yield g, ext[:, :width, :width], ext[:, :width, width], ext[:, width, width]

    @torch.no_grad()
    def solve(self, problem: LeastSquares, side: str, solve: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The side's new unknowns for this rank's rows (rows without ratings keep theirs), and the
        objective's part these rows account for: their squared errors and their own ridge terms."""
        x = problem.weights(side)[self.lo:self.hi].clone()
        ridge = problem.ridge_of(side, x.shape[1], x)
        if problem.all_pairs and problem.weight is not None and (solve or problem.solve) == "cg" \
                and problem.features(side)[1] is None:
            return self._solve_matrix_free(problem, side, x, ridge)
        objective = x.new_zeros(())
        shared = None
        if problem.all_pairs:  # FᵀF over every column of the fixed side, once per half-sweep
            feats = problem.features(side)[0][:-1].to(x.dtype)  # without the padding row
            shared = problem.all_pairs_weight * (feats.T @ feats)
        for g, gram, rhs, tt in self.normal_equations(problem, side, x.dtype):
            if shared is not None:
                gram += shared
            scale = g.counts.to(x.dtype) if problem.scaling == "frequency" else torch.ones_like(tt)
            gram.diagonal(dim1=1, dim2=2).add_(scale.unsqueeze(1) * ridge)  # A = G + c_r diag(λ)
            sol = cholesky_solve(gram, rhs) if (solve or problem.solve) == "cholesky" else \
                conjugate_gradient(gram, rhs, x[g.rows])
            x[g.rows] = sol
            # Σ (t − fᵀx)² + c xᵀDx = Σt² − 2xᵀb + xᵀAx for these rows
            objective += (tt - 2 * (sol * rhs).sum(1) + (sol * _matvec(gram, sol)).sum(1)).sum()
        return x, objective


    def _solve_matrix_free(self, problem: LeastSquares, side: str, x: torch.Tensor, ridge: torch.Tensor):
        """Implicit feedback's conjugate gradient without any row's Gram matrix (as implicit's CG solver does):
        A_r v = FᵀF v + Σ_{obs} w f (fᵀv) + c_r λ v, each product one sampled dense-dense product (fᵀv at the
        observed entries) and one sparse-dense product, O(nnz·k) per step instead of O(nnz·k²) to build the
        Gram matrices. The same Jacobi-preconditioned, warm-started steps as :func:`conjugate_gradient`, so the
        iterates equal the materialized path's up to rounding (a test checks it)."""
        feats = problem.features(side)[0][:-1].to(x.dtype)  # (n_cols, k), without the padding row
        r = self.ratings.to(x.dtype)
        w, t = problem.weight(r), problem.target(r)
        shape = (len(x), len(feats))
        with warnings.catch_warnings():  # torch marks sparse CSR as beta
            warnings.simplefilter("ignore")
            w_csr = torch.sparse_csr_tensor(self.indptr, self.cols, w, shape, check_invariants=False)
            t_csr = torch.sparse_csr_tensor(self.indptr, self.cols, t, shape, check_invariants=False)
            ones_csr = torch.sparse_csr_tensor(self.indptr, self.cols, torch.ones_like(w), shape,
                                               check_invariants=False)
            gram = problem.all_pairs_weight * (feats.T @ feats)
            scale = self.counts.to(x.dtype) if problem.scaling == "frequency" else torch.ones(len(x), dtype=x.dtype,
                                                                                               device=x.device)
            diag_ridge = scale.unsqueeze(1) * ridge

            def matvec(v: torch.Tensor) -> torch.Tensor:
                dots = torch.sparse.sampled_addmm(ones_csr, v, feats.T, beta=0.0)  # fᵀv at the observed entries
                weighted = torch.sparse_csr_tensor(self.indptr, self.cols, dots.values() * w, shape,
                                                   check_invariants=False)
                return v @ gram + diag_ridge * v + weighted @ feats

            b = t_csr @ feats
            inv_diag = 1.0 / (gram.diagonal().unsqueeze(0) + diag_ridge + w_csr @ feats.square())
        active = self.counts > 0  # rows without interactions keep their factors, as the materialized path does
        x = torch.where(active.unsqueeze(1), preconditioned_cg(matvec, b, x, inv_diag, CG_STEPS), x)
        tiny = torch.finfo(x.dtype).tiny
        # Σ t²/w − 2xᵀb + xᵀAx for these rows, as the materialized path reports it
        tt = torch.where(w > 0, t.square() / w.clamp_min(tiny), 0.0).sum()
        objective = tt + ((x * matvec(x)).sum(1) - 2 * (x * b).sum(1))[active].sum()
        return x, objective


def _matvec(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """a[r] x[r] for symmetric a, as the row products x[r]ᵀ a[r]: 3× faster than column products on CPU."""
    return torch.bmm(x.unsqueeze(1), a).squeeze(1)


def cholesky_solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve the SPD systems a[r] x[r] = b[r] by batched Cholesky (torch.linalg)."""
    chol, info = torch.linalg.cholesky_ex(a)
    if bool((info != 0).any()):  # cannot happen with λ > 0 unless the factors are non-finite
        raise FloatingPointError("ALS normal equations are not positive definite (non-finite factors?)")
    return torch.cholesky_solve(b.unsqueeze(-1), chol).squeeze(-1)


def conjugate_gradient(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
    """``steps`` of Jacobi-preconditioned conjugate gradient on the SPD systems a[r] x[r] = b[r], from ``x``.

    Each step minimizes every row's quadratic ½xᵀAx − bᵀx over a growing Krylov space, so it never rises;
    with k steps (k unknowns) it is exact up to rounding.
    """
    return preconditioned_cg(lambda v: _matvec(a, v), b, x, 1.0 / a.diagonal(dim1=1, dim2=2),
                             CG_STEPS if steps is None else steps)


def preconditioned_cg(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, x: torch.Tensor,
                      inv_diag: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` of Jacobi-preconditioned conjugate gradient on every row's SPD system A_r x_r = b_r at once, from
    ``x`` (not modified), given the rows' products ``matvec(v)`` = (A_r v_r)_r and 1/diag(A_r)."""
    x = x.clone()
    tiny = torch.finfo(b.dtype).tiny
    r = b - matvec(x)
    z = r * inv_diag
    p = z.clone()
    rz = (r * z).sum(1)
    for _ in range(steps):
        ap = matvec(p)
        alpha = rz / (p * ap).sum(1).clamp_min(tiny)
        x.addcmul_(alpha.unsqueeze(1), p)
        r.addcmul_(alpha.unsqueeze(1), ap, value=-1.0)
        z = r * inv_diag
        rz_next = (r * z).sum(1)
        p = z + (rz_next / rz.clamp_min(tiny)).unsqueeze(1) * p
        rz = rz_next
    return x


class Sweeper:
    """Both sides' :class:`RowSystems` for one training set, and the epoch that solves them.

    ``gather(t)`` all-gathers a tensor from every rank as (world, *t.shape) and ``reduce(t)`` sums it,
    under DDP (both None in one process).
    """

    def __init__(self, problem: LeastSquares, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor,
                 rank: int = 0, world: int = 1, gather=None, reduce=None):
        self.gather, self.reduce, self.num_ratings = gather, reduce, len(ratings)
        users, items, ratings = users.cpu(), items.cpu(), ratings.cpu()
        device = problem.weights("user").device
        self.systems = {}
        for side, rows, cols in (("user", users, items), ("item", items, users)):
            n_rows, n_cols = len(problem.weights(side)), len(problem.weights("item" if side == "user" else "user"))
            width = problem.weights(side).shape[1]
            self.systems[side] = RowSystems(rows, cols, ratings, n_rows, n_cols, width, rank, world).to(device)

    def half_sweep(self, problem: LeastSquares, side: str, solve: str | None = None) -> torch.Tensor:
        """Solve ``side`` (the other fixed); returns this rank's part of the objective after it."""
        x, objective = self.systems[side].solve(problem, side, solve)
        self.share(problem, side, x)
        return objective

    def share(self, problem: LeastSquares, side: str, x: torch.Tensor) -> None:
        """Set ``side``'s unknowns from this rank's rows ``x``: under DDP every rank's rows, padded to the longest
        range, are all-gathered, so every rank ends with the whole side."""
        systems = self.systems[side]
        if self.gather is not None:
            longest = max(b - a for a, b in zip(systems.bounds[:-1], systems.bounds[1:]))
            parts = self.gather(torch.cat([x, x.new_zeros(longest - len(x), x.shape[1])]))
            x = torch.cat([parts[r, :b - a] for r, (a, b) in enumerate(zip(systems.bounds[:-1], systems.bounds[1:]))])
        if not bool(torch.isfinite(x).all()):
            raise FloatingPointError(f"non-finite {side} factors")
        problem.assign(side, x)

    def epoch(self, problem: LeastSquares) -> float:
        """A user half-sweep then an item half-sweep; returns the objective after them, per rating."""
        self.half_sweep(problem, "user")
        objective = self.half_sweep(problem, "item")  # squared errors + the item ridge terms, this rank's items
        users, items = self.systems["user"], self.systems["item"]
        objective = objective + problem.penalty("user", problem.weights("user")[users.lo:users.hi], users.counts)
        cold = items.counts == 0  # item rows without ratings: only their ridge term
        objective = objective + problem.penalty("item", problem.weights("item")[items.lo:items.hi][cold],
                                                items.counts[cold])
        if self.reduce is not None:
            objective = self.reduce(objective)
        return float(objective.detach()) / max(self.num_ratings, 1)


@torch.no_grad()
def half_sweep(problem: LeastSquares, side: str, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor,
               solve: str | None = None) -> None:
    """Solve ``side`` of ``problem`` in closed form from these ratings, the other side fixed (one process).

    ``solve`` overrides the problem's (``cholesky`` for the exact solution).
    """
    Sweeper(problem, users, items, ratings).half_sweep(problem, side, solve)


def communicated_bytes(n_users: int, n_items: int, width: int, world: int, itemsize: int = 4) -> dict:
    """Bytes each rank receives per ALS epoch: all-gathered factors (this module) against an all-reduce of
    every row's statistics (Gram matrix, right-hand side, count), as a ratings-sharded ALS needs."""
    rows = n_users + n_items
    share = (world - 1) / world
    return {"all_gather_factors": rows * width * itemsize * share,
            "all_reduce_statistics": 2 * rows * (width * width + width + 1) * itemsize * share}


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

    The training set comes as one batch per epoch (``full_batch``: train.py gives ALS the whole set whatever
    ``data.batch_size`` says; batches handed in otherwise are kept and solved at the epoch's last one). Under
    DDP each rank's shard is all-gathered once, at the first epoch, to build its rows' systems.
    ``train/loss`` is the least-squares objective after the epoch, per training rating; training stops once
    an epoch lowers it by less than the fraction ``model.als_tol``.
    """

    full_batch = True

    def __init__(self) -> None:
        self._batches: list[tuple[torch.Tensor, ...]] = []
        self._sweeper: Sweeper | None = None
        self._key: tuple | None = None
        self._objective: float | None = None

    def automatic(self, model) -> bool:
        return False  # closed-form steps, no backward pass

    def check(self, model) -> None:
        check(model.least_squares(), type(model).__name__, model.hparams)

    def configure_optimizers(self, model):
        # the factors are solved in closed form; this optimizer never changes a weight (no gradients, lr 0),
        # its no-op step makes Lightning count one global step per epoch (checkpoints key on it)
        return torch.optim.SGD(model.parameters(), lr=0.0)

    def _sweeper_for(self, system, batches, problem: LeastSquares | None = None) -> Sweeper:
        """Both sides' row systems for ``problem`` (the model's least-squares form by default)."""
        rank, world = system.trainer.global_rank, system.trainer.world_size
        key = (sum(len(b[2]) for b in batches), rank, world)  # built once per fit: the training set is fixed
        if self._sweeper is None or self._key != key:
            self._key = key
            users, items, ratings = (torch.cat(t) for t in zip(*batches))
            gather = reduce = None
            if world > 1:
                gather, reduce = system.all_gather, system.sum_over_ranks
                users, items, ratings = _gather_ratings(gather, users, items, ratings)
            self._sweeper = Sweeper(problem or system.model.least_squares(), users, items, ratings, rank, world, gather,
                                    reduce)
        return self._sweeper

    def _whole_epoch(self, system, batch, batch_idx: int) -> list | None:
        """The epoch's batches once its last one has come (None before): a closed-form step uses them all."""
        self._batches.append(batch)
        if batch_idx + 1 < system.trainer.num_training_batches:
            return None
        batches, self._batches = self._batches, []
        return batches

    @torch.no_grad()
    def training_step(self, system, batch, batch_idx: int) -> torch.Tensor | None:
        batches = self._whole_epoch(system, batch, batch_idx)
        if batches is None:
            return None
        problem = system.model.least_squares()
        try:
            objective = self._sweeper_for(system, batches).epoch(problem)
        except FloatingPointError as err:
            raise FloatingPointError(f"ALS in epoch {system.current_epoch}: {err}") from None
        system.optimizers().step()
        previous, self._objective = self._objective, objective
        if previous is not None and problem.tol > 0 and 0 <= previous - objective < problem.tol * abs(previous):
            system.trainer.should_stop = True  # converged: the epoch changed the objective by < als_tol
        return torch.tensor(objective)


def _gather_ratings(gather, users, items, ratings):
    """Every rank's ratings (shards of different lengths), once per fit."""
    n = torch.tensor([len(ratings)], device=ratings.device)
    longest = int(gather(n).max())
    pad = longest - len(ratings)
    parts = [gather(torch.cat([t, t.new_full((pad,), -1)])).reshape(-1) for t in (users, items, ratings)]
    keep = parts[0] >= 0
    return tuple(p[keep] for p in parts)
