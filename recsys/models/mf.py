"""Biased matrix factorization (Koren, Bell & Volinsky 2009, "Matrix Factorization Techniques for
Recommender Systems", IEEE Computer 42(8)) — the model of the D2L chapter on matrix factorization.

    r̂_ui = μ + b_u + b_i + p_uᵀq_i

    min  Σ_{(u,i)∈train} (r_ui − r̂_ui)² + λ (‖p_u‖² + ‖q_i‖²) + λ_b (b_u² + b_i²)

(λ = ``reg``, λ_b = ``reg_bias``, equal to λ when null). The regularizer is paid once per observed
rating, so frequent users and items are regularized in proportion to their counts, as SGD-MF does.
The minibatch loss is the batch mean of the summand. μ is the training mean (``use_global_mean=false``
drops it, as the D2L chapter does).

``solver="als"`` minimizes the same objective in closed form (recsys/solvers/als.py): with
``reg_scaling="frequency"`` the ridge on row r is λ·n_r, exactly the per-rating penalty above;
``"row"`` uses a constant λ per row instead.
"""

from __future__ import annotations

import numpy as np
import torch

from recsys.models.base import Model
from recsys.models.nets import Bilinear, Centered, plain
from recsys.models.objectives import per_rating_ridge, squared_error
from recsys.solvers.als import LeastSquares, RegScaling, Solve, Tolerance
from recsys.validation import NonNegative, Reg, Size


class BiasedMF(Model):
    """Biased MF: r̂ = μ + b_u + b_i + p_uᵀq_i, λ per observed rating (Koren et al. 2009)."""
    solvers = ("gradient", "als")
    # lazy Adam on the batch's rows (recsys.solvers.sparse): a step's cost is its batch's, whatever the tables' size
    default_optimizer = {"_target_": "recsys.solvers.sparse.RowAdam", "lr": 0.005, "weight_decay": 0.0}

    def __init__(self, dim: Size = 64, reg: Reg = 0.1, reg_bias: Reg | None = 0.01,
                 init_std: NonNegative = 0.01, use_global_mean: bool = True, use_bias: bool = True,
                 reg_scaling: RegScaling = "frequency",
                 als_solve: Solve = "cg", als_tol: Tolerance = 1e-4):
        super().__init__()
        self.net = Bilinear(self.data.num_users, self.data.num_items, dim, bias=use_bias, init_std=init_std)
        self.link = Centered(self.data.global_mean if use_global_mean else 0.0)
        self.reg, self.reg_bias = reg, reg if reg_bias is None else reg_bias
        self.reg_scaling = reg_scaling
        self.als = {"solve": als_solve, "tol": als_tol}

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.link.rating(self.net(users, items))

    def reference(self, users, items):
        """Koren, Bell & Volinsky 2009, eq. 3: r̂_ui = μ + b_u + b_i + q_iᵀp_u (μ = 0 without use_global_mean, no
        biases without use_bias)."""
        p, q = plain(self.net.user.weight), plain(self.net.item.weight)
        mu = self.data.global_mean if self.hparams.use_global_mean else 0.0
        out = np.zeros(len(users))
        for n, (u, i) in enumerate(zip(users.tolist(), items.tolist())):
            out[n] = mu + sum(q[i, f] * p[u, f] for f in range(p.shape[1]))
            if self.hparams.use_bias:
                out[n] += plain(self.net.user_bias.weight)[u, 0] + plain(self.net.item_bias.weight)[i, 0]
        return torch.from_numpy(out)

    def fallback(self, users, items, user_known, item_known):
        """Cold pairs: μ plus the bias of whichever side has training ratings."""
        return self.link.rating(self.net.known_bias(users, items, user_known, item_known))

    def all_item_scores(self, users):
        """One matrix product against the item tables: ``forward`` for every item."""
        return self.link.rating(self.net.all_items(users))

    def factor_tables(self) -> Bilinear:
        return self.net

    def ranking_factors(self, users):
        """The tables with cold rows zeroed: μ + that is this model's score, fallback included."""
        return self.net.ranking_factors(users, self.user_seen[users], self.item_seen)

    def objective(self, users, items, ratings):
        residual = self.link.target(ratings) - self.net(users, items)
        return per_rating_ridge(residual, *self.net.row_penalty(users, items), self.reg, self.reg_bias)

    def gradients(self, users, items, ratings):
        """:meth:`objective` and its gradient in closed form (the gradient solver's fast path)."""
        return self.net.gradients(users, items, squared_error(self.link.target(ratings)), self.reg, self.reg_bias)

    def least_squares(self) -> LeastSquares:
        if self.net.user_bias is None:
            return LeastSquares(self.net, self.link.target, (self.reg, self.reg), self.reg_scaling, ("reg",),
                                **self.als)
        ridge = torch.full((self.net.user.embedding_dim + 1,), float(self.reg))
        ridge[-1] = self.reg_bias  # the augmented coordinate is the bias
        return LeastSquares(self.net, self.link.target, (ridge, ridge), self.reg_scaling,
                            ("reg", "reg_bias"), **self.als)
