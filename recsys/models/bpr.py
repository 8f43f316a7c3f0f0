"""BPR-MF (Rendle, Freudenthaler, Gantner & Schmidt-Thieme 2009, "BPR: Bayesian Personalized Ranking from
Implicit Feedback", UAI): factors fitted so that each user ranks an item it interacted with above one it did not.

    x_ui = p_uᵀq_i + b_i

    min  mean_{(u,i,j)} [ −ln σ(x_ui − x_uj) + λ (‖p_u‖² + ‖q_i‖² + ‖q_j‖²) + λ_b (b_i² + b_j²) ]

over training positives (u, i), each with ``negatives`` items j drawn uniformly among the items u did not
interact with, anew every epoch: the data pipeline samples them (:meth:`RatingsDataModule.sample_negatives`,
keyed by the shuffle seed and the epoch, so a resumed run draws what an uninterrupted one draws and DDP ranks
draw disjoint work), because the model asks for them (:meth:`negatives_per_positive`). A user bias would cancel in
every difference, so there is none. λ (``reg``) and λ_b (``reg_bias``) are paid per sampled pair, as in the
paper's SGD. Minibatch gradient: ``gradients`` writes the loss's gradient in closed form (no autograd).

Scores are preferences, not ratings (no RMSE is reported); the model declares ``task = "ranking"``: it trains on
implicit feedback and is selected and judged by ranking (``val/ndcg@10``).
"""

from __future__ import annotations

import torch
from torch import nn

from recsys.models.base import Model
from recsys.models.nets import Bilinear, grad_buffer, plain
from recsys.validation import NonNegative, Reg, Size


class BPR(Model):
    """BPR-MF: −ln σ(x_ui − x_uj) over sampled negatives, x = pᵀq + b_i (Rendle et al. 2009)."""
    task = "ranking"
    training_input = "pairs"  # each positive with negatives_per_positive() sampled negatives
    default_optimizer = {"_target_": "torch.optim.Adam", "lr": 0.005, "fused": True}

    def __init__(self, dim: Size = 64, reg: Reg = 0.01, reg_bias: Reg | None = None,
                 negatives: Size = 1, init_std: NonNegative = 0.1):
        super().__init__()
        self.net = Bilinear(self.data.num_users, self.data.num_items, dim, bias=False, init_std=init_std)
        self.item_bias = nn.Embedding(self.data.num_items, 1)
        nn.init.zeros_(self.item_bias.weight)
        self.reg, self.reg_bias = reg, reg if reg_bias is None else reg_bias
        self.negatives = negatives

    def negatives_per_positive(self) -> int:
        return self.negatives

    # -- scores ------------------------------------------------------------------------------------------------
    def forward(self, users, items):
        return self.net(users, items) + self.item_bias(items).squeeze(-1)

    def reference(self, users, items):
        """Rendle et al. 2009, section 4.3.1 with an item bias: x̂_ui = w_uᵀh_i + b_i."""
        w, h, b = plain(self.net.user.weight), plain(self.net.item.weight), plain(self.item_bias.weight)[:, 0]
        return torch.tensor([float(w[u] @ h[i]) + b[i] for u, i in zip(users.tolist(), items.tolist())],
                            dtype=torch.float64)

    def all_item_scores(self, users):
        return self.net.all_items(users) + self.item_bias.weight.T

    def factor_tables(self) -> Bilinear:
        return self.net

    def ranking_factors(self, users):
        """The tables with cold rows zeroed, the item bias of known items added: this model's score, fallback
        included."""
        uv, uc, iv, ic = self.net.ranking_factors(users, self.user_seen[users], self.item_seen)
        return uv, uc, iv, ic + self.item_bias.weight.squeeze(1) * self.item_seen

    def fallback(self, users, items, user_known, item_known):
        """Cold pairs: the item's bias where the item is known (a cold user gets the items' overall appeal)."""
        return self.item_bias(items).squeeze(-1) * item_known

    # -- the objective -----------------------------------------------------------------------------------------
    def _negatives(self, negatives: torch.Tensor | None) -> torch.Tensor:
        if negatives is None:
            raise ValueError("BPR trains on (user, item, rating, negatives) batches: the data pipeline samples the "
                             "negatives the model asks for (negatives_per_positive)")
        return negatives.view(len(negatives), -1)

    def objective(self, users, items, ratings, negatives=None):
        neg = self._negatives(negatives)
        k = neg.shape[1]
        p, q_i, q_j = self.net.user(users), self.net.item(items), self.net.item(neg)  # (B,d) (B,d) (B,k,d)
        b_i, b_j = self.item_bias(items).squeeze(-1), self.item_bias(neg).squeeze(-1)
        diff = (p * q_i).sum(-1, keepdim=True) + b_i.unsqueeze(1) - (p.unsqueeze(1) * q_j).sum(-1) - b_j
        penalty = self.reg * (k * (p.square().sum(-1) + q_i.square().sum(-1)) + q_j.square().sum((-1, -2))) \
            + self.reg_bias * (k * b_i.square() + b_j.square().sum(-1))
        return (nn.functional.softplus(-diff).sum(-1) + penalty).sum() / (len(users) * k)

    @torch.no_grad()
    def gradients(self, users, items, ratings, negatives=None):
        """:meth:`objective` and its gradient in closed form: with d = x_ui − x_uj and g = −σ(−d)/n per pair,
        ∂/∂p_u = g(q_i − q_j) + 2λp_u/n, ∂/∂q_i = g·p_u + 2λq_i/n, ∂/∂q_j = −g·p_u + 2λq_j/n, ∂/∂b_i = g + 2λ_b b_i/n,
        ∂/∂b_j = −g + 2λ_b b_j/n (n = the batch's pairs). The items' factor gradient is one sparse product Sᵀ·P over
        the batch's (item, row) entries (no (pairs × d) outer products), the ridge term once per item from its count
        in the batch."""
        neg = self._negatives(negatives)
        n_rows, k = neg.shape
        c = 1.0 / max(n_rows * k, 1)
        w_u, w_i, w_b = self.net.user.weight, self.net.item.weight, self.item_bias.weight[:, 0]
        p, q_i, b_i = w_u[users], w_i[items], w_b[items]
        flat_neg = neg.reshape(-1)
        q_j, b_j = w_i[flat_neg].view(n_rows, k, -1), w_b[flat_neg].view(n_rows, k)
        diff = (p * q_i).sum(-1, keepdim=True) + b_i.unsqueeze(1) - torch.bmm(q_j, p.unsqueeze(2)).squeeze(2) - b_j
        loss = nn.functional.softplus(-diff).sum()
        g = torch.sigmoid(-diff).mul_(-c)  # (rows, k): d loss / d diff
        g_sum = g.sum(1)
        two_reg, two_reg_b = 2 * self.reg * c, 2 * self.reg_bias * c
        grad_u = torch.addcmul(p * (two_reg * k), g_sum.unsqueeze(1), q_i)
        grad_u -= torch.bmm(g.unsqueeze(1), q_j).squeeze(1)
        grad_buffer(self.net.user).index_add_(0, users, grad_u)
        rows = torch.arange(n_rows, device=users.device)
        entries = torch.stack([torch.cat([items, flat_neg]), torch.cat([rows, rows.repeat_interleave(k)])])
        s = torch.sparse_coo_tensor(entries, torch.cat([g_sum, -g.reshape(-1)]), (len(w_b), n_rows),
                                    check_invariants=False)
        neg_counts = torch.bincount(flat_neg, minlength=len(w_b))
        counts = torch.bincount(items, minlength=len(w_b)) * k + neg_counts
        item_grad = grad_buffer(self.net.item)
        torch.mul(w_i, (two_reg * counts.to(w_i.dtype)).unsqueeze(1), out=item_grad)
        item_grad += torch.sparse.mm(s, p)
        bias_grad = grad_buffer(self.item_bias)[:, 0]
        bias_grad.index_add_(0, items, g_sum + (two_reg_b * k) * b_i)
        bias_grad.index_add_(0, flat_neg, (-g + two_reg_b * b_j).reshape(-1))
        loss = loss + self.reg * (k * (p.square().sum() + q_i.square().sum())
                                  + neg_counts.to(w_i.dtype) @ w_i.square().sum(1)) \
            + self.reg_bias * (k * b_i.square().sum() + b_j.square().sum())
        return loss * c

    # -- fold in: a new user's factors from its items, the items fixed ----------------------------------------
    def fold_in(self, items: torch.Tensor, ratings: torch.Tensor, row: int | None = None) -> int:
        """Fit user ``row`` (None: a new row) to rank its items above every other item: the BPR objective over
        all (item, other item) pairs of the user, convex in p_u with the items fixed, minimized by L-BFGS."""
        row = self.add_user_row() if row is None else row
        w_i, w_b = self.net.item.weight.detach(), self.item_bias.weight.detach()[:, 0]
        pos = torch.unique(items.to(w_i.device))
        others = torch.ones(len(w_b), dtype=torch.bool, device=w_i.device)
        others[pos] = False
        neg = others.nonzero().squeeze(1)
        p = torch.zeros(w_i.shape[1], dtype=w_i.dtype, device=w_i.device, requires_grad=True)
        n = max(len(pos) * len(neg), 1)
        opt = torch.optim.LBFGS([p], lr=1.0, max_iter=200, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            x_pos, x_neg = w_i[pos] @ p + w_b[pos], w_i[neg] @ p + w_b[neg]
            loss = nn.functional.softplus(x_neg.unsqueeze(0) - x_pos.unsqueeze(1)).sum() / n \
                + self.reg * p.square().sum()
            loss.backward()
            return loss

        if len(pos) and len(neg):
            opt.step(closure)
        with torch.no_grad():
            self.net.user.weight[row] = p.detach()
        self.user_seen[row] = True
        return row
