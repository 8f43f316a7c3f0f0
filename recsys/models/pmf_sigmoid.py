"""Sigmoid-squashed PMF (Salakhutdinov & Mnih 2007, section 3, "constrained" outputs):

    t(r) = (r − r_min) / (r_max − r_min) ∈ [0, 1],     r̂ = r_min + (r_max − r_min) · g(c + U_iᵀV_j),

with g the logistic function, trained on

    E = ½ Σ_{(i,j)∈train} (t(R_ij) − g(c + U_iᵀV_j))² + λ_U/2 Σ_i ‖U_i‖² + λ_V/2 Σ_j ‖V_j‖²

by the same unbiased minibatch estimate as :mod:`recsys.models.pmf` (this class is PMF with another
link). The fixed offset
c = logit(t(μ)) is this model's centring (``center=true``): the prior then shrinks towards the training
mean μ rather than towards the middle of the scale (c = 0, the paper's form, with ``center=false``,
the default: better on ml-100k). Because t lies in [0, 1] the λ's live on a scale (r_max − r_min)²
smaller than plain PMF's. ``round_step > 0`` rounds predictions to the nearest valid rating (1.0 whole
stars, 0.5 half stars), which usually costs RMSE. The sigmoid breaks ALS's closed form: gradient only.
"""

from __future__ import annotations

import math

import torch

from recsys.models.nets import ScaledSigmoid, plain
from recsys.models.pmf import PMF
from recsys.validation import NonNegative, Reg, Size


class SigmoidPMF(PMF):
    """PMF with a logistic link onto the rating scale: r̂ = 1 + (K − 1)·g(U_iᵀV_j)."""
    solvers = ("gradient",)  # the logistic link has no least-squares form
    default_optimizer = {"_target_": "torch.optim.Adam", "lr": 0.05, "weight_decay": 0.0}

    def __init__(self, dim: Size = 4, lambda_u: Reg = 0.3, lambda_v: Reg = 0.3,
                 init_std: NonNegative = 0.1, center: bool = False, round_step: NonNegative = 0.0):
        super().__init__(dim=dim, lambda_u=lambda_u, lambda_v=lambda_v, init_std=init_std)
        d = self.data
        t_mu = min(max((d.global_mean - d.rating_min) / (d.rating_max - d.rating_min), 1e-3), 1 - 1e-3)
        self.link = ScaledSigmoid(d.rating_min, d.rating_max, math.log(t_mu / (1 - t_mu)) if center else 0.0)
        self.round_step = round_step

    def least_squares(self) -> None:
        return None  # g(c + UᵀV) is not bilinear in either side

    def reference(self, users, items):
        """Salakhutdinov & Mnih 2007, eq. 5: g(U_iᵀV_j) with g the logistic function, mapped onto the rating scale
        as r_min + (r_max − r_min)·g; center=true adds the fixed offset logit(t(μ)) inside g."""
        d = self.data
        u_, v_ = plain(self.net.user.weight), plain(self.net.item.weight)
        t_mu = min(max((d.global_mean - d.rating_min) / (d.rating_max - d.rating_min), 1e-3), 1 - 1e-3)
        offset = math.log(t_mu / (1 - t_mu)) if self.hparams.center else 0.0
        out = [d.rating_min + (d.rating_max - d.rating_min) / (1 + math.exp(-(offset + float(u_[u] @ v_[i]))))
               for u, i in zip(users.tolist(), items.tolist())]
        return torch.tensor(out, dtype=torch.float64)

    @torch.no_grad()
    def fold_in(self, items: torch.Tensor, ratings: torch.Tensor, row: int | None = None, steps: int = 20) -> int:
        """Minimize ½Σ(t − g(c + xᵀv))² + λ_U/2‖x‖² over user ``row``'s x (E restricted to one user) by Newton
        steps, the items fixed; where the exact Hessian is not positive definite, that step uses its
        Gauss-Newton part."""
        row = self.add_user_row() if row is None else row
        link, lam, net = self.link, float(self.lambdas[0]), self.net
        v, t = net.item.weight[items], link.target(ratings)
        x = net.user.weight[row].clone()
        eye = torch.eye(len(x), dtype=x.dtype, device=x.device)
        for _ in range(steps):
            g = link.mean(v @ x)
            d1 = g * (1 - g)  # g', and g'' = g'(1 − 2g)
            grad = -(v * (d1 * (t - g)).unsqueeze(1)).sum(0) + lam * x
            if grad.norm() < 1e-7:
                break
            gauss_newton = (v * (d1 * d1).unsqueeze(1)).T @ v + lam * eye
            exact = gauss_newton - (v * ((t - g) * d1 * (1 - 2 * g)).unsqueeze(1)).T @ v
            chol, info = torch.linalg.cholesky_ex(exact)
            if info != 0:
                chol = torch.linalg.cholesky(gauss_newton)
            x = x - torch.cholesky_solve(grad.unsqueeze(1), chol).squeeze(1)
        net.user.weight[row] = x
        self.user_seen[row] = True
        return row

    def predict(self, users, items, user_known=None, item_known=None):
        pred = super().predict(users, items, user_known, item_known)
        if self.round_step > 0:
            lo = self.data.rating_min
            pred = lo + torch.round((pred - lo) / self.round_step) * self.round_step
        return pred
