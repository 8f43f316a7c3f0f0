"""Biased matrix factorization (Koren, Bell & Volinsky 2009, "Matrix Factorization Techniques for
Recommender Systems", IEEE Computer 42(8)) — the model of the D2L chapter on matrix factorization.

    r̂_ui = μ + b_u + b_i + p_uᵀq_i

    min  Σ_{(u,i)∈train} (r_ui − r̂_ui)² + λ (‖p_u‖² + ‖q_i‖² + b_u² + b_i²)

The regularizer is paid once per observed rating, so frequent users and items are regularized in
proportion to their counts, as SGD-MF does. The minibatch loss is the batch mean of the summand.
μ is the training mean (``use_global_mean=false`` drops it, as the D2L chapter does).
"""

from __future__ import annotations

import torch

from recsys.models.base import RatingModel
from recsys.models.layers import Bilinear


class BiasedMF(RatingModel):
    def __init__(self, num_users: int, num_items: int, num_ratings: int = 0, global_mean: float = 0.0,
                 rating_min: float = 1.0, rating_max: float = 5.0, dim: int = 64, reg: float = 0.05,
                 lr: float = 0.005, optimizer: str = "adam", weight_decay: float = 0.0,
                 momentum: float = 0.9, init_std: float = 0.01, use_global_mean: bool = True,
                 use_bias: bool = True):
        super().__init__()
        self.save_hyperparameters()
        self._check_common()
        if reg < 0:
            raise ValueError(f"model.reg={reg} must be >= 0")
        self.net = Bilinear(num_users, num_items, dim, bias=use_bias, init_std=init_std)
        self.mu = global_mean if use_global_mean else 0.0

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.mu + self.net(users, items)

    def objective(self, users, items, ratings):
        err = ratings - self(users, items)
        return (err.square() + self.hparams.reg * self.net.row_penalty(users, items)).mean()
