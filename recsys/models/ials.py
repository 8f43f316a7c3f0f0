"""Implicit ALS (Hu, Koren & Volinsky 2008, "Collaborative Filtering for Implicit Feedback Datasets", ICDM):
factors fitted to every user-item pair, observed interactions with more confidence,

    min  Σ_{u,i} c_ui (p_ui − x_uᵀy_i)² + λ (Σ_u ‖x_u‖² + Σ_i ‖y_i‖²),

p_ui = 1 where u interacted with i (0 elsewhere), c_ui = 1 + α·r_ui there (``confidence=linear``) or
1 + α·log(1 + r_ui/ε) (``log``), w₀ elsewhere (``unobserved_weight``, 1 in Hu et al.; Rendle et al. 2021 weigh
the unobserved pairs down). Setting the gradient to zero gives, per user,

    (w₀YᵀY + Σ_{i∈N(u)} (c_ui − w₀) y_i y_iᵀ + λ_u I) x_u = Σ_{i∈N(u)} c_ui y_i,

YᵀY shared by every row of a half-sweep (the Gram trick), the correction only over the row's observed items: the
project's ALS solver (``model.solver=als``: bucketed gather + batched matmul, warm-started conjugate-gradient
steps, row-sharded under DDP) with per-entry weights and the shared Gram (:class:`LeastSquares` ``weight``,
``all_pairs``). ``reg_scaling=frequency`` scales λ by each row's number of interactions (Rendle et al. 2021,
"Revisiting the Performance of iALS on Item Recommendation Benchmarks": frequency-scaled regularization).
Scores are x_uᵀy_i: preferences, not ratings (no RMSE is reported); it declares ``task = "ranking"``: implicit
feedback, selected and judged by ranking (``val/ndcg@10``).
"""

from __future__ import annotations

from typing import Annotated

import torch

from recsys.models.base import Model
from recsys.models.nets import Bilinear, plain
from recsys.solvers.als import LeastSquares, RegScaling, Solve
from recsys.validation import NonNegative, OneOf, Positive, PositiveReg, Size


class IALS(Model):
    """Implicit ALS: Σ_all c_ui (p_ui − x_uᵀy_i)², c = 1 + α·r, by the Gram trick (Hu, Koren & Volinsky 2008)."""
    task = "ranking"
    solvers = ("als",)  # the factors are solved: no optimizer steps

    def __init__(self, dim: Size = 64, reg: PositiveReg = 40.0, alpha: NonNegative = 1.0,
                 confidence: Annotated[str, OneOf("linear", "log")] = "linear", epsilon: Positive = 1.0,
                 reg_scaling: RegScaling = "row", init_std: NonNegative = 0.01, als_solve: Solve = "cg",
                 unobserved_weight: Positive = 1.0):
        super().__init__()
        self.net = Bilinear(self.data.num_users, self.data.num_items, dim, bias=False, init_std=init_std)
        self.reg, self.alpha, self.epsilon = reg, alpha, epsilon
        self.confidence, self.reg_scaling, self.als_solve = confidence, reg_scaling, als_solve
        if unobserved_weight > 1:
            raise ValueError(f"model.unobserved_weight={unobserved_weight}: must lie in (0, 1] (the unobserved "
                             "pairs' weight, at most an observed pair's)")
        self.unobserved_weight = unobserved_weight

    def extra_confidence(self, ratings: torch.Tensor) -> torch.Tensor:
        """c − w₀ of observed entries: α·r (or α·log(1 + r/ε)) + 1 − w₀, never negative (w₀ ≤ 1)."""
        if self.confidence == "log":
            return self.alpha * torch.log1p(ratings / self.epsilon) + (1.0 - self.unobserved_weight)
        return self.alpha * ratings + (1.0 - self.unobserved_weight)

    def _target(self, ratings: torch.Tensor) -> torch.Tensor:
        return self.unobserved_weight + self.extra_confidence(ratings)  # c·p with p = 1 on observed entries

    def least_squares(self) -> LeastSquares:
        return LeastSquares(self.net, self._target, (self.reg, self.reg), self.reg_scaling, ("reg",),
                            solve=self.als_solve, tol=0.0, weight=self.extra_confidence, all_pairs=True,
                            all_pairs_weight=self.unobserved_weight)

    def forward(self, users, items):
        return self.net(users, items)

    def reference(self, users, items):
        """Hu, Koren & Volinsky 2008, eq. 2: the preference p̂_ui = x_uᵀy_i."""
        x, y = plain(self.net.user.weight), plain(self.net.item.weight)
        return torch.tensor([float(x[u] @ y[i]) for u, i in zip(users.tolist(), items.tolist())], dtype=torch.float64)

    def all_item_scores(self, users):
        return self.net.all_items(users)

    def factor_tables(self) -> Bilinear:
        return self.net

    def ranking_factors(self, users):
        """The tables with cold rows zeroed: that is this model's score, fallback included."""
        return self.net.ranking_factors(users, self.user_seen[users], self.item_seen)

    def fallback(self, users, items, user_known, item_known):
        """Cold pairs score 0: no preference either way."""
        return torch.zeros(users.shape, dtype=self.net.user.weight.dtype, device=users.device)

