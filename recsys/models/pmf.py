"""Probabilistic matrix factorization (Salakhutdinov & Mnih 2007, "Probabilistic Matrix
Factorization", NIPS 20), trained on its MAP objective

    E = ½ Σ_{(i,j)∈train} (R_ij − μ − U_iᵀV_j)² + λ_U/2 Σ_i ‖U_i‖² + λ_V/2 Σ_j ‖V_j‖²,
    λ_U = σ²/σ_U²,  λ_V = σ²/σ_V²,

with ratings centred by the training mean μ (``center=false`` drops it). The minibatch loss for a
batch B drawn from the N training ratings is

    Ê_B / N = 1/|B| Σ_{B} ½ (R_ij − μ − U_iᵀV_j)² + (λ_U ‖U‖² + λ_V ‖V‖²) / (2N),

an unbiased estimate of E/N (exact when averaged over one epoch of equal batches), so gradient training
and alternating least squares optimize the same function.

``solver="als"`` minimizes E in closed form (recsys/solvers/als.py): ``reg_scaling="row"`` is E exactly
(λ_U, λ_V per row); ``"frequency"`` scales them by each row's rating count (ALS-WR, Zhou et al. 2008).
"""

from __future__ import annotations

import torch

from recsys.models.base import Model
from recsys.models.nets import Bilinear, Centered, plain
from recsys.models.objectives import gaussian_prior, map_estimate, map_objective, squared_error
from recsys.solvers.als import LeastSquares, RegScaling, Solve, Tolerance
from recsys.validation import NonNegative, Reg, Size


class PMF(Model):
    """PMF on its MAP objective with λ_U, λ_V: r̂ = μ + U_iᵀV_j (Salakhutdinov & Mnih 2007)."""
    solvers = ("gradient", "als")
    default_optimizer = {"_target_": "torch.optim.Adam", "lr": 0.1, "weight_decay": 0.0}

    def __init__(self, dim: Size = 4, lambda_u: Reg = 3.0, lambda_v: Reg = 3.0,
                 init_std: NonNegative = 0.1, center: bool = True, reg_scaling: RegScaling = "row",
                 als_solve: Solve = "cg", als_tol: Tolerance = 1e-4):
        super().__init__()
        self.net = Bilinear(self.data.num_users, self.data.num_items, dim, bias=False, init_std=init_std)
        self.link = Centered(self.data.global_mean if center else 0.0)
        self.lambdas, self.reg_scaling = (lambda_u, lambda_v), reg_scaling
        self.als = {"solve": als_solve, "tol": als_tol}

    def forward(self, users, items):
        return self.link.rating(self.link.mean(self.net(users, items)))

    def reference(self, users, items):
        """Salakhutdinov & Mnih 2007: R̂_ij = U_iᵀV_j, on ratings centred by the training mean (center=true)."""
        u_, v_ = plain(self.net.user.weight), plain(self.net.item.weight)
        mu = self.data.global_mean if self.hparams.center else 0.0
        return torch.tensor([mu + float(u_[u] @ v_[i]) for u, i in zip(users.tolist(), items.tolist())],
                            dtype=torch.float64)

    def _prior(self) -> torch.Tensor:
        return gaussian_prior(*self.net.squared_norms(), *self.lambdas)

    def _residual(self, users, items, ratings) -> torch.Tensor:
        return self.link.target(ratings) - self.link.mean(self.net(users, items))

    def all_item_scores(self, users):
        """One matrix product against the item tables: ``forward`` for every item."""
        return self.link.rating(self.link.mean(self.net.all_items(users)))

    def factor_tables(self) -> Bilinear:
        return self.net

    def objective(self, users, items, ratings):
        return map_estimate(self._residual(users, items, ratings), self._prior(), self.data.num_train)

    def gradients(self, users, items, ratings):
        """:meth:`objective` and its gradient in closed form (the gradient solver's fast path); the prior's
        gradient λ·U/N is dense, added to every row."""
        loss = self.net.gradients(users, items, squared_error(self.link.target(ratings), 0.5, self.link.mean_and_slope),
                                  sparse=False)
        with torch.no_grad():
            for table, lam in ((self.net.user, self.lambdas[0]), (self.net.item, self.lambdas[1])):
                table.weight.grad.add_(table.weight, alpha=lam / self.data.num_train)
        return loss + self._prior().detach() / self.data.num_train

    def map_objective(self, users, items, ratings) -> torch.Tensor:
        """E itself over the given (full training) ratings."""
        return map_objective(self._residual(users, items, ratings), self._prior())

    def least_squares(self) -> LeastSquares:
        return LeastSquares(self.net, self.link.target, self.lambdas, self.reg_scaling,
                            ("lambda_u", "lambda_v"), **self.als)
