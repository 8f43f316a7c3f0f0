"""Training objectives as functions of residuals and penalties (minibatch forms).

- :func:`per_rating_ridge`: SGD-MF's loss (Koren et al. 2009), the batch mean of
  e² + λ(‖p_u‖² + ‖q_i‖²) + λ_b(b_u² + b_i²): the regularizer is paid once per observed rating.
- :func:`map_estimate`: PMF's MAP objective E (Salakhutdinov & Mnih 2007) as an unbiased minibatch
  estimate of E/N, ½ mean_B(e²) + prior/N, where prior = ½(λ_U‖U‖² + λ_V‖V‖²); exact over an epoch of
  equal batches, so gradient training and ALS minimize the same function.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def per_rating_ridge(residual: torch.Tensor, factor_sq: torch.Tensor, bias_sq: torch.Tensor | float,
                     reg: float, reg_bias: float) -> torch.Tensor:
    return (residual.square() + reg * factor_sq + reg_bias * bias_sq).mean()


def gaussian_prior(user_sq: torch.Tensor, item_sq: torch.Tensor, lambda_u: float, lambda_v: float) -> torch.Tensor:
    """½(λ_U‖U‖² + λ_V‖V‖²): the negative log of PMF's zero-mean Gaussian priors, up to a constant."""
    return 0.5 * (lambda_u * user_sq + lambda_v * item_sq)


def map_estimate(residual: torch.Tensor, prior: torch.Tensor, num_train: int) -> torch.Tensor:
    return 0.5 * residual.square().mean() + prior / num_train


def map_objective(residual: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """E itself: ½ Σ e² + prior, over the ratings given (the whole training set for E)."""
    return 0.5 * residual.square().sum() + prior


def squared_error(target: torch.Tensor, scale: float = 1.0, mean_and_slope: Callable | None = None) -> Callable:
    """ℓ(s) = scale · mean_B (t − m(s))² per rating, with its derivative in s, as ``Bilinear.gradients`` takes
    it: m is the link's mean (the identity when ``mean_and_slope`` is None)."""
    n = max(len(target), 1)

    def loss_and_slope(score: torch.Tensor):
        mean, slope = (score, 1.0) if mean_and_slope is None else mean_and_slope(score)
        e = target - mean
        flat = e.reshape(-1)
        return torch.dot(flat, flat) * (scale / n), e * slope * (-2.0 * scale / n)

    return loss_and_slope
