"""Closed-form alternating least squares for the bilinear models.

Setting ∂E/∂U_i = 0 in the PMF objective gives, for each user i with rated items Ω_i,

    U_i = (λ_U I + Σ_{j∈Ω_i} V_j V_jᵀ)⁻¹ Σ_{j∈Ω_i} R_ij V_j,

and symmetrically for items (Salakhutdinov & Mnih 2007). Biased MF folds its biases in by augmenting
the vectors: the user side solves x_u = [p_u, b_u] against features f_i = [q_i, 1] and targets
r − μ − b_i. The per-row Gram matrices Σ f fᵀ and right-hand sides Σ t f are sufficient statistics:
they are accumulated batch by batch (so DDP ranks can all-reduce them and reach identical factors),
then solved with batched Cholesky.

Gram matrices are built by bucketed batched GEMM: a batch is sorted by row, rows with similar counts
are padded to a common length L (a power of two), and each bucket's (rows × L × k) block is multiplied
by its transpose — one bmm per bucket, memory O(batch · k), never a per-rating k × k outer product.
"""

from __future__ import annotations

import torch

REG_SCALINGS = ("row", "frequency")


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
        if scaling not in REG_SCALINGS:
            raise ValueError(f"model.reg_scaling={scaling!r}: choose one of {REG_SCALINGS}")
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


def _tables(net, side: str):
    """(own factors, own bias, other factors, other bias) embeddings of a Bilinear for ``side``."""
    if side == "user":
        return net.user, net.user_bias, net.item, net.item_bias
    return net.item, net.item_bias, net.user, net.user_bias


def side_problem(net, side: str, users, items, targets):
    """Rows, fixed-side features and adjusted targets for solving ``side`` ('user' or 'item')."""
    own, own_b, other, other_b = _tables(net, side)
    rows, cols = (users, items) if side == "user" else (items, users)
    feats = other.weight[cols]
    if own_b is not None:  # augmented: [q_i, 1]·[p_u, b_u], target r − μ − b_i
        feats = torch.cat([feats, torch.ones_like(feats[:, :1])], 1)
        targets = targets - other_b.weight[cols, 0]
    return rows, feats, targets


def side_weights(net, side: str) -> torch.Tensor:
    own, own_b, _, _ = _tables(net, side)
    return torch.cat([own.weight, own_b.weight], 1) if own_b is not None else own.weight


def assign_side(net, side: str, x: torch.Tensor) -> None:
    own, own_b, _, _ = _tables(net, side)
    k = own.weight.shape[1]
    own.weight.data.copy_(x[:, :k])
    if own_b is not None:
        own_b.weight.data.copy_(x[:, k:])
