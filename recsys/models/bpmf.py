"""Bayesian probabilistic matrix factorization (Salakhutdinov & Mnih 2008, "Bayesian Probabilistic Matrix
Factorization using Markov Chain Monte Carlo", ICML), with biases:

    r̂_ui = μ + b_u + b_i + p_uᵀq_i,   r_ui ~ N(r̂_ui, α⁻¹),   [p_u, b_u] ~ N(μ_U, Λ_U⁻¹),   [q_i, b_i] ~ N(μ_V, Λ_V⁻¹),

with hyperpriors on (μ_U, Λ_U), (μ_V, Λ_V) (``hyper``: per-coordinate Normal-Gamma, or the paper's
Normal-Wishart) and on α, fitted by Gibbs sampling (``solver="gibbs"``, :mod:`recsys.solvers.gibbs`):
one epoch is one sample, ``trainer.max_epochs`` the number of samples.

Prediction is the posterior mean, estimated by the running mean over the samples after ``burn_in``:

- for the validation and test pairs of the training run (tracked when training starts), the mean of every
  kept sample's prediction μ + b_u + b_i + p_uᵀq_i — what ``val/rmse`` and ``test/rmse`` measure;
- for any other pair, and for ``recommend``, ``similar_items`` and ``fold_in`` of ``recsys.load``, the
  prediction from the running means of the factors and biases (``mean_net``): the mean of p_uᵀq_i is not
  the product of the means, so these differ slightly from the sample average.

Before the first kept sample, predictions are the current sample's. The checkpoint holds the chain (the
current sample's tables, the hyperparameters, α) and the running means, so a resumed run continues the
very same chain (its draws are keyed by (seed, epoch, side, row)).
"""

from __future__ import annotations

from typing import Annotated

import torch

from recsys.models.base import Model
from recsys.models.nets import Bilinear, Centered, plain
from recsys.solvers.als import LeastSquares
from recsys.solvers.gibbs import HYPERS, Chain
from recsys.validation import AtLeast, NonNegative, OneOf, Size


class BPMF(Model):
    """Bayesian PMF with biases: the posterior mean of Gibbs samples (Salakhutdinov & Mnih 2008)."""
    solvers = ("gibbs",)  # the posterior is sampled: the sampler sets the tables, no optimizer steps

    def __init__(self, dim: Size = 10, burn_in: Annotated[int, AtLeast(0)] = 50,
                 hyper: Annotated[str, OneOf(*HYPERS)] = "gamma", init_std: NonNegative = 0.1, seed: int = 0):
        super().__init__()
        n_users, n_items = self.data.num_users, self.data.num_items
        self.net = Bilinear(n_users, n_items, dim, bias=True, init_std=init_std)  # the chain's current sample
        self.mean_net = Bilinear(n_users, n_items, dim, bias=True, init_std=0.0).requires_grad_(False)
        self.link = Centered(self.data.global_mean)
        width = dim + 1  # factors and bias
        self.register_buffer("hyper_mu", torch.zeros(2, width, dtype=torch.float64))
        self.register_buffer("hyper_lam", torch.eye(width, dtype=torch.float64).repeat(2, 1, 1))
        self.register_buffer("alpha", torch.tensor(1.0, dtype=torch.float64))
        self.register_buffer("kept", torch.tensor(0))
        # running sums of the kept samples' predictions for the tracked (validation and test) pairs
        self.register_data_buffer("pair_keys", torch.zeros(0, dtype=torch.long))
        self.register_data_buffer("pair_sums", torch.zeros(0, dtype=torch.float64))

    # -- the chain ---------------------------------------------------------------------------------------
    def chain(self) -> Chain:
        """The sampled tables in ALS's form (the ridge is unused: the sampler brings its prior) and the chain's
        hyperparameters, noise precision and seed."""
        return Chain(LeastSquares(self.net, self.link.target, (1.0, 1.0), "row"), self.hyper_mu, self.hyper_lam,
                     self.alpha, int(self.hparams.seed), self.hparams.hyper)

    def track(self, users: torch.Tensor, items: torch.Tensor) -> None:
        """Pairs whose prediction is averaged over samples (a training run's validation and test pairs)."""
        keys = torch.unique(users.long() * self.data.num_items + items.long()).to(self.pair_keys.device)
        self.pair_keys = keys
        self.pair_sums = torch.zeros(len(keys), dtype=torch.float64, device=keys.device)

    @torch.no_grad()
    def record(self, epoch: int) -> None:
        """After sample ``epoch``: add it to the running means if the burn-in is over."""
        if epoch < self.hparams.burn_in:
            return
        self.kept += 1
        if len(self.pair_keys):
            users, items = self.pair_keys // self.data.num_items, self.pair_keys % self.data.num_items
            self.pair_sums += self.link.rating(self.net(users, items)).double()
        weight = 1.0 / float(self.kept)
        for mean, now in zip(self.mean_net.parameters(), self.net.parameters()):
            mean.lerp_(now, weight)  # running mean of the samples' tables

    # -- predictions ---------------------------------------------------------------------------------------
    def factor_tables(self) -> Bilinear:
        return self.mean_net if int(self.kept) > 0 else self.net

    def all_item_scores(self, users):
        """Every item from the served tables (tracked pairs are a run's val/test pairs: never all items)."""
        scores = self.link.rating(self.factor_tables().all_items(users))
        if int(self.kept) and len(self.pair_keys):  # the tracked pairs among them: their sample averages
            keys = users.long().unsqueeze(1) * self.data.num_items + torch.arange(self.data.num_items,
                                                                                  device=users.device)
            idx = torch.searchsorted(self.pair_keys, keys).clamp(max=len(self.pair_keys) - 1)
            found = self.pair_keys[idx] == keys
            scores = torch.where(found, (self.pair_sums[idx] / self.kept).to(scores.dtype), scores)
        return scores

    def forward(self, users, items):
        if int(self.kept) == 0:
            return self.link.rating(self.net(users, items))
        pred = self.link.rating(self.mean_net(users, items))
        if len(self.pair_keys):
            keys = users.long() * self.data.num_items + items.long()
            idx = torch.searchsorted(self.pair_keys, keys).clamp(max=len(self.pair_keys) - 1)
            found = self.pair_keys[idx] == keys
            pred = torch.where(found, (self.pair_sums[idx] / self.kept).to(pred.dtype), pred)
        return pred

    def reference(self, users, items):
        """Salakhutdinov & Mnih 2008, eq. 10: the predictive mean, estimated by the mean over the kept samples of
        μ + b_u + b_i + U_iᵀV_j: each tracked pair's own running average of its per-sample predictions, other pairs
        from the samples' mean tables (the current sample before any is kept)."""
        tables = self.mean_net if int(self.kept) else self.net
        u_, v_ = plain(tables.user.weight), plain(tables.item.weight)
        bu, bi = plain(tables.user_bias.weight)[:, 0], plain(tables.item_bias.weight)[:, 0]
        tracked = dict(zip(self.pair_keys.tolist(), (plain(self.pair_sums) / max(int(self.kept), 1)).tolist()))
        out = []
        for u, i in zip(users.tolist(), items.tolist()):
            key = u * self.data.num_items + i
            if int(self.kept) and key in tracked:
                out.append(tracked[key])
            else:
                out.append(self.data.global_mean + bu[u] + bi[i] + float(u_[u] @ v_[i]))
        return torch.tensor(out, dtype=torch.float64)

    def fallback(self, users, items, user_known, item_known):
        """Cold pairs: μ plus the (averaged) bias of whichever side has training ratings."""
        return self.link.rating(self.factor_tables().known_bias(users, items, user_known, item_known))

    def least_squares(self) -> LeastSquares:
        """The posterior-mean tables with the prior's precision over α as ridge: ``fold_in`` solves a new
        user's row as ALS would, the items fixed at their means (the prior's mean is left out)."""
        ridge = tuple((lam.diagonal() / self.alpha).float() for lam in self.hyper_lam)
        return LeastSquares(self.factor_tables(), self.link.target, ridge, "row")
