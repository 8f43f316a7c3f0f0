"""Biased matrix factorization (Koren, Bell & Volinsky 2009, "Matrix Factorization Techniques for
Recommender Systems", IEEE Computer 42(8)) — the model of the D2L chapter on matrix factorization.

    r̂_ui = μ + b_u + b_i + p_uᵀq_i

    min  Σ_{(u,i)∈train} (r_ui − r̂_ui)² + λ (‖p_u‖² + ‖q_i‖²) + λ_b (b_u² + b_i²)

(λ = ``reg``, λ_b = ``reg_bias``, equal to λ unless set). The regularizer is paid once per observed
rating, so frequent users and items are regularized in proportion to their counts, as SGD-MF does.
The minibatch loss is the batch mean of the summand.
μ is the training mean (``use_global_mean=false`` drops it, as the D2L chapter does).

``solver="als"`` minimizes the same objective in closed form (recsys/als.py): with
``reg_scaling="frequency"`` the ridge on row r is λ·n_r, exactly the per-rating penalty above;
``"row"`` uses a constant λ per row instead.
"""

from __future__ import annotations

import torch

from recsys.models.base import RatingModel
from recsys.models.layers import Bilinear


class BiasedMF(RatingModel):
    def __init__(self, num_users: int, num_items: int, num_train_ratings: int = 0, global_mean: float = 0.0,
                 rating_min: float = 1.0, rating_max: float = 5.0, dim: int = 64, reg: float = 0.1,
                 reg_bias: float | None = 0.01,
                 lr: float = 0.005, optimizer: str = "adam", weight_decay: float = 0.0,
                 momentum: float = 0.9, init_std: float = 0.01, use_global_mean: bool = True,
                 use_bias: bool = True, solver: str = "gradient", reg_scaling: str = "frequency"):
        super().__init__()
        self.save_hyperparameters()
        self.init_common()
        if reg < 0 or (reg_bias is not None and reg_bias < 0):
            raise ValueError(f"model.reg={reg}, model.reg_bias={reg_bias} must be >= 0")
        self._check_als(reg=reg, **({} if reg_bias is None or not use_bias else {"reg_bias": reg_bias}))
        self.net = Bilinear(num_users, num_items, dim, bias=use_bias, init_std=init_std)
        self.mu = global_mean if use_global_mean else 0.0
        self.reg_bias = reg if reg_bias is None else reg_bias

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.mu + self.net(users, items)

    def target(self, ratings):
        return ratings - self.mu

    def fallback(self, users, items):
        """Cold pairs: μ plus the bias of whichever side has training ratings."""
        pred = torch.full(users.shape, float(self.mu), device=users.device)
        if self.hparams.use_bias:
            pred = pred + self.net.user_bias(users).squeeze(-1) * self.user_seen[users]
            pred = pred + self.net.item_bias(items).squeeze(-1) * self.item_seen[items]
        return pred

    def objective(self, users, items, ratings):
        err = self.target(ratings) - self.net(users, items)
        factors, biases = self.net.row_penalty(users, items)
        return (err.square() + self.hparams.reg * factors + self.reg_bias * biases).mean()

    def als_lambdas(self):
        if not self.hparams.use_bias:
            return self.hparams.reg, self.hparams.reg
        ridge = torch.full((self.hparams.dim + 1,), float(self.hparams.reg))
        ridge[-1] = self.reg_bias  # the augmented coordinate is the bias
        return ridge, ridge
