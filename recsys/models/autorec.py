"""I-AutoRec (Sedhain, Menon, Sanner & Xie 2015, "AutoRec: Autoencoders Meet Collaborative Filtering", WWW):
each item's vector of user ratings r_i ∈ R^m (unobserved entries 0) is encoded and decoded,

    h_i = g(V r_i + μ),   r̂_i = W h_i + b,   g the logistic function, identity output,

    min  Σ_i Σ_{u ∈ O_i} (r_ui − r̂_ui)² + λ/2 (‖W‖²_F + ‖V‖²_F),

the loss on observed entries only. The prediction of user u's rating of item i is r̂_i[u] = W_u·h_i + b_u.

Training batches are whole items (``data.batch_by=item``, set by configs/regime/autorec.yaml): a batch's
ratings are every training rating of its items, so each item's code h_i is exact. The minibatch loss is
the batch mean of (r − r̂)² plus λ/(2N)(‖W‖² + ‖V‖²), N the training ratings: an estimate of the objective
over N. The regime sums a whole epoch's batch gradients into one step (``trainer.accumulate_grad_batches``)
and steps with Rprop, as the paper fits it; on ml-1m full-batch Rprop reaches 0.838 test RMSE where
minibatch Adam stops at 0.846-0.852 (split seed 0, λ 100-300), and 0.8355 from a smaller initial weight scale
(``init_std`` 0.0107, λ 182: configs/experiment/ml1m_autorec.yaml). Early stopping does part of the
regularizing: full-batch L-BFGS (20 iterations a step), which nears the penalized optimum in a few steps, gave
0.907-0.968 on ml-100k for λ 100-3000, against Rprop's 0.891 (split seed 0). Batches are computed densely
(items × users matmuls) where the rating matrix is dense enough, else by gathering a row per rating
(DENSE_PER_RATING).
Predictions use the items' codes from the whole training set (``codes``: encoded by ``refresh()`` before every
validation and test from the training interactions the contract hands over (``setup_interactions``), saved
with the weights, so ``recsys.load`` needs no data). Users or items without training ratings fall back to the
training mean, as the base does.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from recsys.data.interactions import Interactions
from recsys.models.base import Model
from recsys.models.nets import plain
from recsys.validation import NonNegative, Reg, Size

CHUNK = 1 << 16  # training ratings encoded at once when refreshing the codes: bounds memory at O(CHUNK · hidden)
# A batch is computed densely (its items' full rating rows: two matmuls over items × users) when that
# matrix has at most DENSE_PER_RATING cells per observed rating; else by gathering one row per rating.
# Measured on 2 CPU cores at hidden 500: a dense cell costs ~1/170 of a gathered rating (0.05 vs 7.7 ns per
# hidden unit), so dense wins down to ~0.6% density (MovieLens 100K to 10M), gathering below (ML-25M).
DENSE_PER_RATING = 64


class AutoRec(Model):
    """I-AutoRec: items' rating vectors through a sigmoid layer, r̂ = W·g(V r_i + μ) + b (Sedhain et al. 2015)."""
    default_optimizer = {"_target_": "torch.optim.Rprop", "lr": 0.01}

    def __init__(self, hidden: Size = 500, reg: Reg = 100.0, init_std: NonNegative = 0.03):
        super().__init__()
        n_users, n_items = self.data.num_users, self.data.num_items
        self.encoder = nn.Embedding(n_users, hidden)  # V's column per user
        self.encoder_bias = nn.Parameter(torch.zeros(hidden))  # μ
        self.decoder = nn.Embedding(n_users, hidden)  # W's row per user
        self.decoder_bias = nn.Embedding(n_users, 1)  # b
        nn.init.normal_(self.encoder.weight, std=init_std)
        nn.init.normal_(self.decoder.weight, std=init_std)
        nn.init.constant_(self.decoder_bias.weight, float(self.data.global_mean))
        self.reg = reg
        self.register_buffer("codes", torch.zeros(n_items, hidden))  # h_i from the whole training set
        self._train: tuple[torch.Tensor, ...] | None = None  # the training ratings (setup_interactions)

    def _add_inputs(self, z: torch.Tensor, rows: torch.Tensor, users, ratings) -> torch.Tensor:
        """z + V r: each rating's encoder column, scaled by the rating, summed into its item's row of z."""
        return z.index_add(0, rows, self.encoder(users) * ratings.unsqueeze(1).to(z.dtype))

    def _encode(self, users, ratings, n_rows: int, rows: torch.Tensor) -> torch.Tensor:
        """g(V r + μ) for ``n_rows`` items; ``rows`` maps each rating to its item's row."""
        z = self.encoder.weight.new_zeros(n_rows, self.encoder.embedding_dim)
        return torch.sigmoid(self._add_inputs(z, rows, users, ratings) + self.encoder_bias)

    def _dense_pays(self, n_items: int, n_ratings: int) -> bool:
        """Whether ``n_items`` items' dense rating rows hold at most DENSE_PER_RATING cells per rating."""
        return n_items * self.data.num_users <= DENSE_PER_RATING * n_ratings

    def objective(self, users, items, ratings):
        """The batch's items encoded from their ratings (a batch holds whole items), decoded at the observed
        entries: mean squared error plus the weight penalty's share."""
        unique, rows = torch.unique(items, return_inverse=True)
        if self._dense_pays(len(unique), len(ratings)):
            pred = self._decode_dense(users, ratings, len(unique), rows)
        else:
            h = self._encode(users, ratings, len(unique), rows)
            pred = (self.decoder(users) * h[rows]).sum(1) + self.decoder_bias(users).squeeze(1)
        penalty = self.encoder.weight.square().sum() + self.decoder.weight.square().sum()
        return (ratings - pred).square().mean() + 0.5 * self.reg * penalty / self.data.num_train

    def _encode_dense(self, users, ratings, n_rows: int, rows: torch.Tensor) -> torch.Tensor:
        """g(R V + μ) with R the ``n_rows`` items' dense rating rows (unobserved entries 0)."""
        weight = self.encoder.weight
        dense = weight.new_zeros(n_rows, len(weight)).index_put_((rows, users), ratings.to(weight.dtype))
        return torch.sigmoid(torch.addmm(self.encoder_bias, dense, weight))

    def _decode_dense(self, users, ratings, n_rows: int, rows: torch.Tensor) -> torch.Tensor:
        """The same predictions at the observed entries through the batch's dense rating rows R (unobserved 0):
        g(R V + μ) Wᵀ + b, read at (row, user)."""
        h = self._encode_dense(users, ratings, n_rows, rows)
        return torch.addmm(self.decoder_bias.weight.view(1, -1), h, self.decoder.weight.t())[rows, users]

    def forward(self, users, items):
        return (self.decoder(users) * self.codes[items]).sum(1) + self.decoder_bias(users).squeeze(1)

    def reference(self, users, items):
        """Sedhain et al. 2015, eq. 2: r̂_i = f(W·g(V r_i + μ) + b), f the identity and g the logistic function,
        r_i item i's vector of training ratings over users (unobserved 0); user u's prediction is its entry u."""
        train = self.interactions
        if train is None:
            raise RuntimeError("AutoRec.reference needs the training ratings (attach_interactions)")
        v, mu = plain(self.encoder.weight), plain(self.encoder_bias)
        w, b = plain(self.decoder.weight), plain(self.decoder_bias.weight)[:, 0]
        r = np.zeros((self.data.num_items, self.data.num_users))
        r[train.items.numpy(), train.users.numpy()] = plain(train.ratings)
        out = []
        for u, i in zip(users.tolist(), items.tolist()):
            h = 1 / (1 + np.exp(-(r[i] @ v + mu)))
            out.append(float(w[u] @ h) + b[u])
        return torch.tensor(out, dtype=torch.float64)

    def all_item_scores(self, users):
        """W_u·h_i + b_u for every item: the item codes are shared by every user, so one matrix product (no
        per-pair hidden vectors: forward's 2 kB a pair at 500 units)."""
        return torch.addmm(self.decoder_bias(users), self.decoder(users), self.codes.T)

    @torch.no_grad()
    def refresh_codes(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> None:
        """Every item's code from the whole training set: densely (all items × users, in chunks of items)
        where the batch rule finds the matrix dense enough, else summed from chunks of ratings."""
        device = self.codes.device
        n_items, n_users = len(self.codes), self.data.num_users
        if self._dense_pays(n_items, len(ratings)):
            step = max(1, (CHUNK * self.codes.shape[1]) // n_users)  # items per chunk: O(CHUNK · hidden) cells
            users, items, ratings = users.to(device), items.to(device), ratings.to(device)
            for lo in range(0, n_items, step):
                hi = min(n_items, lo + step)
                mask = (items >= lo) & (items < hi)
                self.codes[lo:hi] = self._encode_dense(users[mask], ratings[mask], hi - lo, items[mask] - lo)
            return
        z = torch.zeros_like(self.codes)
        for lo in range(0, len(ratings), CHUNK):
            u, i, r = (t[lo:lo + CHUNK].to(device) for t in (users, items, ratings))
            z = self._add_inputs(z, i, u, r)
        self.codes.copy_(torch.sigmoid(z + self.encoder_bias))

    def setup_interactions(self, train: Interactions) -> None:
        """The training ratings the codes are encoded from (kept for the run, not saved: the codes are)."""
        self._train = train.triples()

    def refresh(self) -> None:
        """Encode every item from the training set with the current weights (the system calls it before every
        validation, test and predict epoch). Without training data (e.g. ``recsys.load``) the saved codes serve."""
        if self._train is not None:
            self.refresh_codes(*self._train)
