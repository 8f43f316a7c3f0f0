"""Sigmoid-squashed PMF (Salakhutdinov & Mnih 2007, section 3, "constrained" outputs):

    t(r) = (r − r_min) / (r_max − r_min) ∈ [0, 1],     r̂ = r_min + (r_max − r_min) · g(c + U_iᵀV_j),

with g the logistic function, trained on

    E = ½ Σ_{(i,j)∈train} (t(R_ij) − g(c + U_iᵀV_j))² + λ_U/2 Σ_i ‖U_i‖² + λ_V/2 Σ_j ‖V_j‖²

by the same unbiased minibatch estimate as :mod:`recsys.models.pmf`. The fixed offset
c = logit(t(μ)) is this model's centring (``center=true``): the prior then shrinks towards the training
mean μ rather than towards the middle of the scale (c = 0, the paper's form, with ``center=false``,
the default: better on ml-100k). Because t lies in [0, 1] the λ's live on a scale (r_max − r_min)²
smaller than plain PMF's. ``round_step > 0`` rounds predictions
to the nearest valid rating (1.0 whole stars, 0.5 half stars), which usually costs RMSE.
"""

from __future__ import annotations

import math

import torch

from recsys.models.pmf import PMF


class SigmoidPMF(PMF):
    def __init__(self, num_users: int, num_items: int, num_train_ratings: int = 1, global_mean: float = 0.0,
                 rating_min: float = 1.0, rating_max: float = 5.0, dim: int = 4,
                 lambda_u: float = 0.3, lambda_v: float = 0.3, lr: float = 0.05,
                 optimizer: str = "adam", weight_decay: float = 0.0, momentum: float = 0.9,
                 init_std: float = 0.1, center: bool = False, solver: str = "gradient",
                 reg_scaling: str = "row", round_step: float = 0.0):
        if solver != "gradient":
            raise ValueError(f"model.solver={solver!r}: the sigmoid model is not bilinear, so it has no "
                             "closed-form ALS step; use solver=gradient (ALS serves model=mf and model=pmf)")
        super().__init__(num_users, num_items, num_train_ratings, global_mean, rating_min, rating_max, dim,
                         lambda_u, lambda_v, lr, optimizer, weight_decay, momentum, init_std, center,
                         solver, reg_scaling)
        self.save_hyperparameters()
        self.span = rating_max - rating_min
        t_mu = min(max((global_mean - rating_min) / self.span, 1e-3), 1 - 1e-3)
        self.offset = math.log(t_mu / (1 - t_mu)) if center else 0.0

    def score(self, users, items):
        return torch.sigmoid(self.offset + self.net(users, items))

    def target(self, ratings):
        return (ratings - self.hparams.rating_min) / self.span

    def forward(self, users, items):
        return self.hparams.rating_min + self.span * self.score(users, items)

    def predict(self, users, items):
        pred = super().predict(users, items)
        step = self.hparams.round_step
        if step > 0:
            lo = self.hparams.rating_min
            pred = lo + torch.round((pred - lo) / step) * step
        return pred
