"""Gibbs sampling for Bayesian matrix factorization (``model.solver=gibbs``), on ALS's normal equations.

Bayesian PMF (Salakhutdinov & Mnih 2008) with biases folded in as ALS folds them ([p_u, b_u]·[q_i, 1]):
every row x_r of a side (its k factors and its bias) has the prior N(μ, Λ⁻¹), every rating the noise
N(t(r) − fᵀx_r, α⁻¹). Given the other side fixed, a row's conditional is Gaussian with

    precision A_r = α G_r + Λ,   mean A_r⁻¹ (α b_r + Λ μ),

G_r = Σ f fᵀ and b_r = Σ t f the very Gram matrix and right-hand side ALS builds (:meth:`RowSystems.
normal_equations`); a draw is mean + L_r⁻ᵀ z with A_r = L_r L_rᵀ (batched Cholesky) and z standard normal.
With z = 0, α = 1, μ = 0 and Λ = λI it is ALS's exact solve (a test checks it).

One epoch (one sample): the user side's hyperparameters (μ, Λ) given the user rows, every user row, the
item side's hyperparameters, every item row, then the noise precision α given the squared error.
Hyperpriors (``model.hyper``): ``gamma``, a Normal-Gamma per coordinate (Λ diagonal; as libFM and myFM), or
``wishart``, the paper's Normal-Wishart (Λ full). α has a Gamma(1, 1) prior.

Randomness is keyed, not streamed: the draws of epoch e for side s come from a generator seeded by
(seed, e, s), the whole side's normals at once, of which row r takes row r. A row's draw is therefore a
function of (seed, epoch, side, row) alone: any sharding of rows over DDP ranks gives the same chain, and a
run resumed at epoch e draws what the uninterrupted run drew.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recsys.solvers.als import ALS, LeastSquares, Sweeper

HYPERS = ("gamma", "wishart")
STREAMS = {"user": 0, "item": 1, "user_hyper": 2, "item_hyper": 3, "noise": 4}

# hyperprior settings: μ0 = 0; Normal-Gamma: μ | λ ~ N(μ0, (γ0 λ)⁻¹), λ ~ Gamma(a0, b0) (rate);
# Normal-Wishart: β0 = 2, ν0 = width, W0 = I (the paper's); noise α ~ Gamma(1, 1)
GAMMA0, A0, B0 = 1.0, 1.0, 1.0
BETA0 = 2.0
ALPHA_A0, ALPHA_B0 = 1.0, 1.0


@dataclass(frozen=True)
class Chain:
    """What a Bayesian model hands the sampler (``Model.chain()``): the sampled tables in ALS's form and the
    chain's other state, tensors the sampler updates in place (the model keeps them as buffers, so they travel
    in checkpoints)."""

    problem: LeastSquares  # the current sample's tables (its ridge is unused: the prior replaces it)
    mu: torch.Tensor  # (2, w) prior means of the user and item rows (float64)
    lam: torch.Tensor  # (2, w, w) prior precisions
    alpha: torch.Tensor  # () noise precision
    seed: int  # keys every draw: (seed, epoch, stream)
    hyper: str  # one of HYPERS


def rng(seed: int, epoch: int, stream: str) -> np.random.Generator:
    """The generator for (seed, epoch, stream): the same numbers on every rank and every resume."""
    return np.random.default_rng([int(seed), int(epoch), STREAMS[stream]])


def normals(seed: int, epoch: int, side: str, rows: int, width: int) -> torch.Tensor:
    """(rows, width) standard normals for a side's rows: row r's draw depends on (seed, epoch, side, r) only."""
    return torch.from_numpy(rng(seed, epoch, side).standard_normal((rows, width)))


def sample_hyper(x: torch.Tensor, kind: str, mu: torch.Tensor, gen: np.random.Generator) -> tuple[torch.Tensor,
                                                                                                    torch.Tensor]:
    """(μ, Λ) drawn from their conditional given the side's rows ``x`` (n × w), in float64.

    ``gamma``: per coordinate d, λ_d ~ Gamma(a0 + (n+1)/2, b0 + ½[Σ_r (x_rd − μ_d)² + γ0 μ_d²]) with the
    current μ_d, then μ_d ~ N(Σ_r x_rd / (n + γ0), ((n + γ0) λ_d)⁻¹). ``wishart``: Λ ~ W(W*, ν0 + n) with
    W*⁻¹ = I + n S + β0 n/(β0 + n) x̄ x̄ᵀ, then μ ~ N(n x̄/(β0 + n), ((β0 + n) Λ)⁻¹).
    """
    x = x.detach().double().cpu()
    n, w = x.shape
    if kind == "gamma":
        rate = B0 + 0.5 * ((x - mu).square().sum(0) + GAMMA0 * mu.square())
        lam = torch.from_numpy(gen.gamma(A0 + (n + 1) / 2, 1.0 / rate.numpy()))
        mean = x.sum(0) / (n + GAMMA0)
        new_mu = mean + torch.from_numpy(gen.standard_normal(w)) / ((n + GAMMA0) * lam).sqrt()
        return new_mu, torch.diag(lam)
    if kind == "wishart":
        xbar = x.mean(0)
        centred = x - xbar
        w_inv = torch.eye(w, dtype=x.dtype) + centred.T @ centred + (BETA0 * n / (BETA0 + n)) * torch.outer(xbar, xbar)
        scale = torch.linalg.inv(w_inv)
        lam = wishart(scale, w + n, gen)
        chol = torch.linalg.cholesky((BETA0 + n) * lam)
        z = torch.from_numpy(gen.standard_normal(w))
        new_mu = n * xbar / (BETA0 + n) + torch.linalg.solve_triangular(chol.T, z.unsqueeze(1), upper=True).squeeze(1)
        return new_mu, lam
    raise ValueError(f"model.hyper={kind!r}: choose one of {HYPERS}")


def wishart(scale: torch.Tensor, df: float, gen: np.random.Generator) -> torch.Tensor:
    """A draw of W(scale, df) by the Bartlett decomposition: L A Aᵀ Lᵀ, L = chol(scale)."""
    w = len(scale)
    a = np.tril(gen.standard_normal((w, w)), -1)
    a[np.diag_indices(w)] = np.sqrt(gen.chisquare(df - np.arange(w)))
    la = torch.linalg.cholesky(scale) @ torch.from_numpy(a)
    return la @ la.T


def sample_noise(sse: float, n: int, gen: np.random.Generator) -> float:
    """α ~ Gamma(a0 + n/2, rate b0 + SSE/2)."""
    return float(gen.gamma(ALPHA_A0 + n / 2, 1.0 / (ALPHA_B0 + sse / 2)))


@torch.no_grad()
def sample_side(sweeper: Sweeper, problem: LeastSquares, side: str, mu: torch.Tensor, lam: torch.Tensor,
                alpha: float, z: torch.Tensor | None) -> torch.Tensor:
    """Draw this rank's rows of ``side`` from their conditional (``z``: the side's normals; None: the mean),
    share them over ranks and return this rank's squared error Σ(t − fᵀx)² over the new rows' ratings."""
    systems = sweeper.systems[side]
    x = problem.weights(side)[systems.lo:systems.hi]
    dtype = x.dtype
    mu, lam = mu.to(dtype), lam.to(dtype)
    prior_h = lam @ mu
    # rows without ratings: the prior itself
    chol_prior = torch.linalg.cholesky(lam)
    x = mu.expand_as(x).clone()
    if z is not None:
        z = z[systems.lo:systems.hi].to(dtype)
        x += torch.linalg.solve_triangular(chol_prior.T, z.T, upper=True).T
    sse = x.new_zeros(())
    for g, gram, rhs, tt in systems.normal_equations(problem, side, dtype):
        a = alpha * gram + lam
        h = alpha * rhs + prior_h
        chol, info = torch.linalg.cholesky_ex(a)
        if bool((info != 0).any()):
            raise FloatingPointError(f"Gibbs: a {side} conditional's precision is not positive definite")
        # mean + L⁻ᵀz = L⁻ᵀ(L⁻¹h + z): two triangular solves
        y = torch.linalg.solve_triangular(chol, h.unsqueeze(-1), upper=False)
        if z is not None:
            y += z[g.rows].unsqueeze(-1)
        draw = torch.linalg.solve_triangular(chol.mT, y, upper=True).squeeze(-1)
        x[g.rows] = draw
        sse += (tt - 2 * (draw * rhs).sum(1) + (draw * (gram @ draw.unsqueeze(-1)).squeeze(-1)).sum(1)).sum()
    sweeper.share(problem, side, x)
    return sse


class Gibbs(ALS):
    """Fitting strategy: one epoch draws one sample of the chain (see the module docstring).

    The model provides ``chain()`` (a :class:`Chain`) and ``record(epoch)``, called after each sample (running
    means), both hooks of the model contract. ``train/loss`` is the sample's mean squared training error.
    """

    def check(self, model) -> None:
        if model.chain() is None:
            raise ValueError(f"model.solver=gibbs: {type(model).__name__} is not a Bayesian model (its chain() is "
                             "None); use model=bpmf")

    @torch.no_grad()
    def training_step(self, system, batch, batch_idx: int) -> torch.Tensor | None:
        batches = self._whole_epoch(system, batch, batch_idx)
        if batches is None:
            return None
        model, epoch = system.model, system.current_epoch
        sweeper = self._sweeper_for(system, batches, model.chain().problem)
        try:
            sse = self.sample(model.chain(), sweeper, epoch)
        except FloatingPointError as err:
            raise FloatingPointError(f"Gibbs sample {epoch}: {err}") from None
        model.record(epoch)
        system.optimizers().step()
        return torch.tensor(sse / max(sweeper.num_ratings, 1))

    @staticmethod
    @torch.no_grad()
    def sample(chain: Chain, sweeper: Sweeper, epoch: int, noise: bool = True) -> float:
        """One sweep of the chain; returns the training squared error after it (summed over ranks)."""
        problem, seed, kind = chain.problem, int(chain.seed), chain.hyper
        for s, side in enumerate(("user", "item")):
            rows = problem.weights(side)
            mu, lam = sample_hyper(rows, kind, chain.mu[s].double().cpu(), rng(seed, epoch, f"{side}_hyper"))
            chain.mu[s], chain.lam[s] = mu.to(chain.mu), lam.to(chain.lam)
            n_rows, width = rows.shape
            z = normals(seed, epoch, side, n_rows, width) if noise else None
            sse = sample_side(sweeper, problem, side, chain.mu[s], chain.lam[s],
                              float(chain.alpha), None if z is None else z.to(chain.mu.device))
        if sweeper.reduce is not None:
            sse = sweeper.reduce(sse)
        sse = float(sse)
        chain.alpha.fill_(sample_noise(sse, sweeper.num_ratings, rng(seed, epoch, "noise")))
        return sse
