"""Probabilistic matrix factorization (Salakhutdinov & Mnih 2007, "Probabilistic Matrix
Factorization", NIPS 20), trained on its MAP objective

    E = ½ Σ_{(i,j)∈train} (R_ij − μ − U_iᵀV_j)² + λ_U/2 Σ_i ‖U_i‖² + λ_V/2 Σ_j ‖V_j‖²,
    λ_U = σ²/σ_U²,  λ_V = σ²/σ_V²,

with ratings centred by the training mean μ (``center=false`` drops it). The minibatch loss for a
batch B drawn from the N training ratings is

    Ê_B / N = 1/|B| Σ_{B} ½ (R_ij − μ − U_iᵀV_j)² + (λ_U ‖U‖² + λ_V ‖V‖²) / (2N),

an unbiased estimate of E/N (exact when averaged over one epoch of equal batches), so gradient training
and alternating least squares optimize the same function.

``solver="als"`` minimizes E in closed form (recsys/als.py): ``reg_scaling="row"`` is E exactly
(λ_U, λ_V per row); ``"frequency"`` scales them by each row's rating count (ALS-WR, Zhou et al. 2008).
"""

from __future__ import annotations

import torch

from recsys.models.base import RatingModel
from recsys.models.layers import Bilinear


class PMF(RatingModel):
    def __init__(self, num_users: int, num_items: int, num_train_ratings: int = 1, global_mean: float = 0.0,
                 rating_min: float = 1.0, rating_max: float = 5.0, dim: int = 4,
                 lambda_u: float = 3.0, lambda_v: float = 3.0, lr: float = 0.1,
                 optimizer: str = "adam", weight_decay: float = 0.0, momentum: float = 0.9,
                 init_std: float = 0.1, center: bool = True, solver: str = "gradient",
                 reg_scaling: str = "row"):
        super().__init__()
        self.save_hyperparameters()
        self.init_common()
        if lambda_u < 0 or lambda_v < 0:
            raise ValueError(f"model.lambda_u={lambda_u}, model.lambda_v={lambda_v} must be >= 0")
        self._check_als(lambda_u=lambda_u, lambda_v=lambda_v)
        if num_train_ratings < 1:
            raise ValueError(f"num_train_ratings={num_train_ratings}: PMF needs the training-set size")
        self.net = Bilinear(num_users, num_items, dim, bias=False, init_std=init_std)
        self.mu = global_mean if center else 0.0

    def score(self, users, items):
        """The model's raw output before mapping to the rating scale."""
        return self.net(users, items)

    def target(self, ratings):
        """Ratings in the space where the squared error of E is taken."""
        return ratings - self.mu

    def forward(self, users, items):
        return self.mu + self.score(users, items)

    def _prior(self) -> torch.Tensor:
        hp = self.hparams
        return 0.5 * (hp.lambda_u * self.net.user.weight.square().sum()
                      + hp.lambda_v * self.net.item.weight.square().sum())

    def _fit(self, users, items, ratings) -> torch.Tensor:
        return self.target(ratings) - self.score(users, items)

    def objective(self, users, items, ratings):
        return 0.5 * self._fit(users, items, ratings).square().mean() + self._prior() / self.hparams.num_train_ratings

    def als_lambdas(self):
        return self.hparams.lambda_u, self.hparams.lambda_v

    def map_objective(self, users, items, ratings) -> torch.Tensor:
        """E itself over the given (full training) ratings."""
        return 0.5 * self._fit(users, items, ratings).square().sum() + self._prior()
