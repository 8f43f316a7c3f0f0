"""Ranking metrics at test time: does the model put a user's liked test items at the top of all items?

For each test user with at least one relevant test item (test rating ≥ ``relevance_threshold``), the
candidates are all items except the user's training and validation items, ranked by the model's
unclipped score. Per user, at each k:

- NDCG@k: Σ_{hits at rank r ≤ k} 1/log2(r + 1), divided by the ideal: min(k, #relevant) hits at the top;
- Recall@k: hits / #relevant;   HitRate@k: 1 if any hit;   MRR@k: 1/rank of the first hit (0 if none);

averaged over those users, logged as ``test/ndcg@10`` etc. The same from a popularity ranking (items by
training count) as ``test/ndcg@10_popularity`` and ``test/recall@10_popularity``, so every run shows
whether it ranks better than popularity. Users are scored in chunks on the model's device; under DDP each
rank takes every world_size-th user and the sums and counts are all-reduced, so each user counts once.
"""

from __future__ import annotations

import lightning as L
import torch

from recsys.data.interactions import Seen

CHUNK = 1024  # users scored against all items at once: the one chunk size of ranking and recommend()
METRICS = ("ndcg", "recall", "hit_rate", "mrr")


def ranking_sums(scores: torch.Tensor, relevant: torch.Tensor, ks: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Sums over users (rows with ≥ 1 relevant item) of each metric at each k, and the user count ``users``.

    ``scores`` (users × items) has excluded candidates at -inf; ``relevant`` (users × items) is boolean.
    """
    n_rel = relevant.sum(1)
    keep = n_rel > 0
    scores, relevant, n_rel = scores[keep], relevant[keep], n_rel[keep].to(torch.float64)
    k_max = min(max(ks), scores.shape[1])
    hits = relevant.gather(1, torch.topk(scores, k_max, dim=1).indices).to(torch.float64)
    discount = 1.0 / torch.log2(torch.arange(2, k_max + 2, dtype=torch.float64, device=scores.device))
    ideal = torch.cumsum(discount, 0)
    first = torch.where(hits.any(1), hits.argmax(1).to(torch.float64) + 1, torch.inf)
    out = {"users": torch.tensor(float(len(n_rel)), dtype=torch.float64, device=scores.device)}
    for k in ks:
        h = hits[:, :min(k, k_max)]
        best = ideal[(torch.clamp(n_rel, max=min(k, k_max)) - 1).long()]
        out[f"ndcg@{k}"] = ((h * discount[:h.shape[1]]).sum(1) / best).sum()
        out[f"recall@{k}"] = (h.sum(1) / n_rel).sum()
        out[f"hit_rate@{k}"] = (h.sum(1) > 0).to(torch.float64).sum()
        out[f"mrr@{k}"] = torch.where(first <= k, 1.0 / first, 0.0).sum()
    return out


def ranking_totals(score_all_items, users: torch.Tensor, items: torch.Tensor, seen: Seen,
                   popularity: torch.Tensor | None, num_items: int, ks: tuple[int, ...], device=None, rank: int = 0,
                   world: int = 1) -> dict[str, torch.Tensor]:
    """Sums of the ranking metrics (model's and popularity's) over this rank's share of the users.

    ``users``/``items`` (indices) are the relevant test pairs; ``score_all_items(rows)`` gives the model's
    (len(rows), num_items) scores; ``seen`` is each user's training and validation items.
    """
    totals: dict[str, torch.Tensor] = {}
    mine = torch.unique(users)[rank::world]  # each user on one rank
    for lo in range(0, len(mine), CHUNK):
        rows = mine[lo:lo + CHUNK]
        relevant = torch.zeros(len(rows), num_items, dtype=torch.bool)
        pos = torch.searchsorted(rows, users)
        inside = (pos < len(rows)) & (rows[pos.clamp(max=len(rows) - 1)] == users)
        relevant[pos[inside], items[inside]] = True
        rows, relevant = rows.to(device), relevant.to(device)
        excluded = seen.mask(rows, num_items)
        systems = [("", score_all_items(rows))]
        if popularity is not None:  # the same users ranked by training counts
            systems.append(("_popularity", popularity.to(device, torch.float32).expand(len(rows), -1)))
        for suffix, scores in systems:
            for name, value in ranking_sums(scores.masked_fill(excluded, float("-inf")), relevant, ks).items():
                totals[name + suffix] = totals.get(name + suffix, 0) + value
    return totals


def ranking_means(totals: dict, ks: tuple[int, ...], reduce=lambda t: t, stage: str = "test") -> dict[str, float]:
    """``<stage>/<metric>@k[_popularity]`` means from :func:`ranking_totals` (``reduce`` sums over DDP ranks)."""
    out = {}
    for suffix, names in (("", METRICS), ("_popularity", ("ndcg", "recall"))):
        count = reduce(torch.as_tensor(totals.get("users" + suffix, 0.0), dtype=torch.float64))
        for k in ks:
            for metric in names:
                total = reduce(torch.as_tensor(totals.get(f"{metric}@{k}{suffix}", 0.0), dtype=torch.float64))
                if count > 0:
                    out[f"{stage}/{metric}@{k}{suffix}"] = float(total / count)
    return out


def ranking_metrics(score_all_items, test: tuple[torch.Tensor, ...], seen: Seen, popularity: torch.Tensor | None,
                    num_items: int, ks: tuple[int, ...] = (10,), relevance_threshold: float = 4.0, device=None,
                    rank: int = 0, world: int = 1, reduce=lambda t: t, stage: str = "test") -> dict[str, float]:
    """``<stage>/<metric>@k`` of a model (and of popularity, where given) on triples ``(users, items, ratings)``
    (indices): the one evaluation path of a run's validation (:class:`RankingValidation`), its test
    (:class:`RankingMetrics`) and ``recsys evaluate``."""
    users, items, ratings = test
    liked = ratings >= relevance_threshold
    totals = ranking_totals(score_all_items, users[liked], items[liked], seen, popularity, num_items, tuple(ks),
                            device, rank, world)
    return ranking_means(totals, tuple(ks), reduce, stage)


class RankingMetrics(L.Callback):
    """Logs ranking metrics at the end of testing; the data is handed over by training.py."""

    def __init__(self, test: tuple[torch.Tensor, ...], seen: Seen, popularity: torch.Tensor,
                 ks: tuple[int, ...] = (10,), relevance_threshold: float = 4.0):
        self.test, self.seen, self.popularity = test, seen, popularity
        self.ks, self.threshold = tuple(ks), relevance_threshold

    @torch.no_grad()
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        device = pl_module.device
        reduce = lambda t: trainer.strategy.reduce(t.to(device), reduce_op="sum")  # noqa: E731
        means = ranking_metrics(pl_module.score_all_items, self.test, self.seen, self.popularity,
                                len(pl_module.item_seen), self.ks, self.threshold, device, trainer.global_rank,
                                trainer.world_size, reduce)
        for key, value in means.items():
            pl_module.log(key, value, sync_dist=False)


class RankingValidation(L.Callback):
    """Logs ``val/<metric>@k`` at the end of every validation epoch: the test protocol on the validation split,
    each user's training items left out of the candidates. Added by training.py when ``optimized_metric`` is a
    ranking metric, so checkpoints, early stopping and sweeps can select by it."""

    def __init__(self, val: tuple[torch.Tensor, ...], seen: Seen, ks: tuple[int, ...] = (10,),
                 relevance_threshold: float = 4.0):
        self.val, self.seen, self.ks, self.threshold = val, seen, tuple(ks), relevance_threshold

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        device = pl_module.device
        reduce = lambda t: trainer.strategy.reduce(t.to(device), reduce_op="sum")  # noqa: E731
        means = ranking_metrics(pl_module.score_all_items, self.val, self.seen, None, len(pl_module.item_seen),
                                self.ks, self.threshold, device, trainer.global_rank, trainer.world_size, reduce,
                                stage="val")
        for key, value in means.items():
            pl_module.log(key, value, sync_dist=False)
