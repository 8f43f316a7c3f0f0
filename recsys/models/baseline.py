"""Baseline predictor (Koren 2008, "Factorization Meets the Neighborhood", section 2.1):

    r̂_ui = μ + b_u + b_i,     min  Σ_{(u,i)∈train} (r_ui − μ − b_u − b_i)² + λ (b_u² + b_i²)

with the penalty paid once per observed rating, as in biased MF. It is biased MF without factors: the
floor any factor model must beat, and the worked example of the README's "Adding a model".
``solver="als"`` solves the biases in closed form (each side's 1×1 normal equations).
"""

from __future__ import annotations

import torch

from recsys.models.base import Model
from recsys.models.nets import Bilinear, Centered, plain
from recsys.models.objectives import per_rating_ridge, squared_error
from recsys.solvers.als import LeastSquares, RegScaling, Solve, Tolerance
from recsys.validation import Reg


class Baseline(Model):
    """The baseline predictor μ + b_u + b_i (Koren 2008): the floor to beat."""
    solvers = ("gradient", "als")
    default_optimizer = {"_target_": "torch.optim.Adam", "lr": 0.01, "weight_decay": 0.0}

    def __init__(self, reg: Reg = 0.01, reg_scaling: RegScaling = "frequency",
                 als_solve: Solve = "cg", als_tol: Tolerance = 1e-4):
        super().__init__()
        self.net = Bilinear(self.data.num_users, self.data.num_items, 0, bias=True, init_std=0.0)
        self.link = Centered(self.data.global_mean)
        self.reg, self.reg_scaling = reg, reg_scaling
        self.als = {"solve": als_solve, "tol": als_tol}

    def forward(self, users, items):
        return self.link.rating(self.net(users, items))

    def reference(self, users, items):
        """Koren 2008, eq. 1: b_ui = μ + b_u + b_i."""
        bu, bi = plain(self.net.user_bias.weight)[:, 0], plain(self.net.item_bias.weight)[:, 0]
        return torch.tensor([self.data.global_mean + bu[u] + bi[i] for u, i in zip(users.tolist(), items.tolist())],
                            dtype=torch.float64)

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
        return per_rating_ridge(residual, 0.0, self.net.row_penalty(users, items)[1], 0.0, self.reg)

    def gradients(self, users, items, ratings):
        """:meth:`objective` and its gradient in closed form (the gradient solver's fast path)."""
        return self.net.gradients(users, items, squared_error(self.link.target(ratings)), 0.0, self.reg)

    def least_squares(self) -> LeastSquares:
        ridge = torch.tensor([float(self.reg)])
        return LeastSquares(self.net, self.link.target, (ridge, ridge), self.reg_scaling, ("reg",), **self.als)
