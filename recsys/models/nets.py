"""Scoring math shared by the models, kept apart from the Lightning systems: small ``nn.Module``\\ s.

- :class:`Bilinear`: s(u, i) = P_uᵀQ_i [+ b_u + b_i], the factor (and bias) tables. ``dim=0`` leaves only
  the biases (the baseline model). It exposes the tables ALS needs (:class:`recsys.solvers.als.Tables`).
- :class:`Histories`: each user's training items as saved CSR buffers (models that score from N(u)).
- Links map between ratings and the space where the squared error is taken:
  :class:`Centered` (t = r − μ, r̂ = μ + s) and :class:`ScaledSigmoid` (t = (r − r_min)/(r_max − r_min),
  r̂ = r_min + (r_max − r_min)·g(c + s), g the logistic function).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from recsys.data.interactions import CSR, csr_entries
from recsys.solvers import native
from recsys.solvers.sparse import RowIndex, row_gradient, set_row_gradient


def plain(t: torch.Tensor) -> np.ndarray:
    """A tensor as float64 numpy on the CPU: what a model's ``reference`` computes with."""
    return t.detach().cpu().double().numpy()


class Bilinear(nn.Module):
    """``s(u, i) = P_uᵀQ_i [+ b_u + b_i]``: user/item factor tables with optional bias tables.

    Dense embeddings on purpose: sparse gradients do not all-reduce under DDP on NCCL.
    """

    def __init__(self, num_users: int, num_items: int, dim: int, bias: bool, init_std: float):
        super().__init__()
        self.user = nn.Embedding(num_users, dim)
        self.item = nn.Embedding(num_items, dim)
        nn.init.normal_(self.user.weight, std=init_std)
        nn.init.normal_(self.item.weight, std=init_std)
        self.user_bias = nn.Embedding(num_users, 1) if bias else None
        self.item_bias = nn.Embedding(num_items, 1) if bias else None
        if bias:
            nn.init.zeros_(self.user_bias.weight)
            nn.init.zeros_(self.item_bias.weight)
        self._rows = (RowIndex(), RowIndex())  # working buffers of the row-sparse gradients (not state)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        score = (self.user(users) * self.item(items)).sum(-1)
        if self.user_bias is not None:
            score = score + self.user_bias(users).squeeze(-1) + self.item_bias(items).squeeze(-1)
        return score

    def all_items(self, users: torch.Tensor) -> torch.Tensor:
        """(len(users), num_items) scores of each user against every item: one matrix product."""
        score = self.user(users) @ self.item.weight.T
        if self.user_bias is not None:
            score = score + self.user_bias(users) + self.item_bias.weight.T
        return score

    def ranking_factors(self, users: torch.Tensor, user_known: torch.Tensor, item_known: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(P_u, b_u, Q, b)`` with the rows of cold users and cold items zeroed: ``b_u + b_i + P_uᵀQ_i`` with the
        cold side's factors and bias left out, what :meth:`known_bias` gives a cold pair (a model's
        ``ranking_factors``; see :mod:`recsys.evaluation`)."""
        uk, ik = user_known.to(self.user.weight.dtype), item_known.to(self.item.weight.dtype)
        factors = self.user(users) * uk.unsqueeze(1), self.item.weight * ik.unsqueeze(1)
        if self.user_bias is None:
            return factors[0], torch.zeros_like(uk), factors[1], torch.zeros_like(ik)
        return factors[0], self.user_bias(users).squeeze(1) * uk, factors[1], self.item_bias.weight.squeeze(1) * ik

    @torch.no_grad()
    def add_user(self) -> None:
        """Append one user row of zeros (factors and bias): a fold-in's starting point."""
        for name in ("user", "user_bias"):
            old = getattr(self, name)
            if old is not None:
                grown = nn.Embedding(old.num_embeddings + 1, old.embedding_dim, device=old.weight.device,
                                     dtype=old.weight.dtype)
                grown.weight.copy_(torch.cat([old.weight, old.weight.new_zeros(1, old.embedding_dim)]))
                setattr(self, name, grown)

    def row_penalty(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        """Per-rating ``(‖P_u‖² + ‖Q_i‖², b_u² + b_i²)``: the SGD-MF regularizer, one term per rating."""
        factors = self.user(users).square().sum(-1) + self.item(items).square().sum(-1)
        if self.user_bias is None:
            return factors, 0.0
        return factors, self.user_bias(users).squeeze(-1).square() + self.item_bias(items).squeeze(-1).square()

    def known_bias(self, users: torch.Tensor, items: torch.Tensor, user_known: torch.Tensor,
                   item_known: torch.Tensor) -> torch.Tensor:
        """The cold-start score: b_u + b_i counting only the known sides (per-pair masks; 0 without biases)."""
        if self.user_bias is None:
            return torch.zeros(users.shape, device=users.device)
        known_user = self.user_bias(users).squeeze(-1) * user_known
        return known_user + self.item_bias(items).squeeze(-1) * item_known

    @torch.no_grad()
    def gradients(self, users: torch.Tensor, items: torch.Tensor, loss_of_score: Callable, reg: float = 0.0,
                  reg_bias: float = 0.0, sparse: bool = True) -> torch.Tensor:
        """The minibatch loss  Σ_b ℓ(s_b) + reg·c(‖p_u‖² + ‖q_i‖²) + reg_bias·c(b_u² + b_i²)  summed over the
        batch (c = 1/batch size), with its gradient written into each table's ``.grad`` (no autograd).

        ``loss_of_score(s)`` returns (Σ_b ℓ(s_b), dℓ/ds per rating), e.g.
        :func:`recsys.models.objectives.squared_error`. ``sparse``: each table's gradient is row-sparse, one entry
        per distinct row of the batch (:func:`recsys.solvers.sparse.row_gradient`): the cost of a step is its
        batch's, whatever the tables' size. ``sparse=False``: dense ``.grad`` tensors (for a model that adds a
        gradient to every row, as PMF's prior).
        """
        c = 1.0 / max(len(users), 1)
        P, Q = self.user.weight, self.item.weight
        biases = (self.user_bias.weight, self.item_bias.weight) if self.user_bias is not None else None
        if sparse and P.shape[1] > 0 and native.serves((P, Q, *(biases or ())), (users, items)):
            return self._native_gradients(users, items, loss_of_score, reg, reg_bias, biases)
        p, q = P.index_select(0, users), Q.index_select(0, items)
        score = torch.bmm(p.unsqueeze(1), q.unsqueeze(2)).view(-1)  # the rows' dot products: no B × d temporary
        if biases is not None:
            bu, bi = biases[0].index_select(0, users).squeeze(1), biases[1].index_select(0, items).squeeze(1)
            score = score + bu + bi
        loss, d_score = loss_of_score(score)
        d = d_score.unsqueeze(1)
        # each side's distinct rows found once, shared by its factor and bias tables (None: dense gradients)
        user_rows = self._rows[0](users, self.user.num_embeddings) if sparse else None
        item_rows = self._rows[1](items, self.item.num_embeddings) if sparse else None
        if P.shape[1]:  # d·q + 2λc·p: one broadcast product, one in-place add (two passes, not three)
            _write(self.user, users, user_rows, torch.mul(q, d).add_(p, alpha=2 * reg * c))
            _write(self.item, items, item_rows, torch.mul(p, d).add_(q, alpha=2 * reg * c))
            loss = loss + reg * c * (_sq(p) + _sq(q))
        if biases is not None:
            _write(self.user_bias, users, user_rows, (d_score + bu * (2 * reg_bias * c)).unsqueeze(1))
            _write(self.item_bias, items, item_rows, (d_score + bi * (2 * reg_bias * c)).unsqueeze(1))
            loss = loss + reg_bias * c * (_sq(bu) + _sq(bi))
        return loss

    def _native_gradients(self, users: torch.Tensor, items: torch.Tensor, loss_of_score: Callable, reg: float,
                          reg_bias: float, biases: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """:meth:`gradients` on CPU float32 tables through :mod:`recsys.solvers.native`: the scores (biases
        included) in one pass over the batch's rows, every table's row gradients in a second."""
        c = 1.0 / max(len(users), 1)
        P, Q = self.user.weight, self.item.weight
        score, sums = native.dot_rows(P, Q, users, items, biases)
        loss, d_score = loss_of_score(score)
        user_rows = self._rows[0](users, self.user.num_embeddings)
        item_rows = self._rows[1](items, self.item.num_embeddings)
        grads = native.accumulate_rows(P, Q, users, items, d_score, 2 * reg * c, user_rows[1], item_rows[1],
                                       len(user_rows[0]), len(item_rows[0]), biases, 2 * reg_bias * c)
        tables = (P, Q, *(biases or ()))
        for table, rows, grad in zip(tables, (user_rows[0], item_rows[0]) * 2, grads):
            set_row_gradient(table, rows, grad)
        return loss + reg * c * (sums[0] + sums[1]) + reg_bias * c * (sums[2] + sums[3])

    def squared_norms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(‖P‖², ‖Q‖²) over all rows: PMF's Gaussian priors."""
        return self.user.weight.square().sum(), self.item.weight.square().sum()


def _sq(x: torch.Tensor) -> torch.Tensor:
    """Σ x², as one dot product (no temporary)."""
    flat = x.reshape(-1)
    return torch.dot(flat, flat)


def _write(table: nn.Embedding, index: torch.Tensor, rows: tuple[torch.Tensor, torch.Tensor] | None,
           grad: torch.Tensor) -> None:
    """The table's gradient with row ``index[b]`` receiving ``grad[b]``: row-sparse over ``rows`` (``RowIndex``'s
    distinct rows and positions), or dense where ``rows`` is None."""
    if rows is not None:
        row_gradient(table.weight, grad, *rows)
    else:
        grad_buffer(table).index_add_(0, index, grad)


def grad_buffer(table: nn.Embedding) -> torch.Tensor:
    """The table's dense gradient buffer, zeroed: allocated once, reused every step."""
    weight = table.weight
    if weight.grad is None or weight.grad.is_sparse:
        weight.grad = torch.zeros_like(weight)
    return weight.grad.zero_()


class Histories(nn.Module):
    """Each user's training items N(u) and their ratings as CSR buffers (``indptr``, ``items``, ``values``), kept
    for scoring and saved with the model (SVD++'s implicit sums, EASE's rows of X). Sized by the data: on loading
    they take the checkpoint's sizes. ``version`` changes with every edit, so a model can cache what it derives
    from them."""

    def __init__(self, num_users: int):
        super().__init__()
        self.register_buffer("indptr", torch.zeros(num_users + 1, dtype=torch.long))
        self.register_buffer("items", torch.zeros(0, dtype=torch.long))
        self.register_buffer("values", torch.zeros(0))
        self.version = 0

    def set(self, by_user: CSR) -> None:
        """The users' items and ratings from the training interactions' CSR view by user."""
        device = self.indptr.device
        self.indptr, self.items = by_user.indptr.to(device), by_user.indices.to(device)
        self.values = by_user.values.to(device=device, dtype=self.values.dtype)
        self.version += 1

    @property
    def counts(self) -> torch.Tensor:
        return self.indptr[1:] - self.indptr[:-1]

    def dense(self, users: torch.Tensor, num_items: int, dtype: torch.dtype, ratings: bool = False) -> torch.Tensor:
        """(len(users), num_items) rows: 1 where the user has the item (``ratings=True``: its rating), else 0."""
        which, items = csr_entries(self.indptr, self.items, users)
        rows = torch.zeros(len(users), num_items, dtype=dtype, device=users.device)
        if ratings:
            _, positions = csr_entries(self.indptr, torch.arange(len(self.items), device=self.items.device), users)
            rows[which, items] = self.values[positions].to(dtype)
        else:
            rows[which, items] = 1.0
        return rows

    @torch.no_grad()
    def replace(self, row: int, items: torch.Tensor, ratings: torch.Tensor | None = None) -> None:
        """User ``row``'s items (and their ratings; 1 where not given) become ``items`` (a fold-in)."""
        items = items.to(self.items)
        ratings = torch.ones(len(items)) if ratings is None else ratings
        mine, first = torch.unique(items, return_inverse=True)
        values = torch.zeros(len(mine), dtype=self.values.dtype, device=self.values.device)
        values[first] = ratings.to(values)  # a repeated item keeps its last rating
        lo, hi = int(self.indptr[row]), int(self.indptr[row + 1])
        self.items = torch.cat([self.items[:lo], mine, self.items[hi:]])
        self.values = torch.cat([self.values[:lo], values, self.values[hi:]])
        self.indptr[row + 1:] += len(mine) - (hi - lo)
        self.version += 1

    def append_user(self) -> None:
        """One more user, without items."""
        self.indptr = torch.cat([self.indptr, self.indptr[-1:]])
        self.version += 1

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "items" in state_dict and prefix + "values" not in state_dict:
            # saved before histories kept ratings: every entry a 1, which is how those models scored them
            state_dict[prefix + "values"] = torch.ones(state_dict[prefix + "items"].shape)
        take_saved_sizes(self, ("indptr", "items", "values"), state_dict, prefix)  # sized by the training data
        self.version += 1
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def take_saved_sizes(module: nn.Module, names, state_dict: dict, prefix: str) -> None:
    """Give ``module``'s buffers ``names`` the shapes a state dict holds for them (buffers sized by the data or the
    run, not by the hyperparameters), so that loading fills them."""
    for name in names:
        saved = state_dict.get(prefix + name)
        if saved is not None:
            setattr(module, name, torch.empty(saved.shape, dtype=saved.dtype, device=getattr(module, name).device))


class Centered(nn.Module):
    """Identity link around the training mean: t(r) = r − μ, r̂ = μ + s."""

    def __init__(self, mu: float):
        super().__init__()
        self.mu = float(mu)

    def target(self, ratings: torch.Tensor) -> torch.Tensor:
        return ratings - self.mu

    def mean(self, score: torch.Tensor) -> torch.Tensor:
        """The model's estimate of t(r) from the raw score."""
        return score

    def mean_and_slope(self, score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        """(mean(s), d mean/ds): for analytic gradients."""
        return score, 1.0

    def rating(self, mean: torch.Tensor) -> torch.Tensor:
        return self.mu + mean


class ScaledSigmoid(nn.Module):
    """Logistic link onto the rating scale: t(r) = (r − r_min)/span, r̂ = r_min + span·g(c + s)."""

    def __init__(self, rating_min: float, rating_max: float, offset: float = 0.0):
        super().__init__()
        self.low, self.span, self.offset = float(rating_min), float(rating_max - rating_min), float(offset)

    def target(self, ratings: torch.Tensor) -> torch.Tensor:
        return (ratings - self.low) / self.span

    def mean(self, score: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.offset + score)

    def mean_and_slope(self, score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.mean(score)
        return g, g * (1 - g)

    def rating(self, mean: torch.Tensor) -> torch.Tensor:
        return self.low + self.span * mean
