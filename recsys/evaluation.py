"""Ranking metrics at test time: does the model put a user's liked test items at the top of all items?

For each test user with at least one relevant test item (test rating ≥ ``relevance_threshold``), the
candidates are all items except the user's training and validation items, ranked by the model's
unclipped score. Per user, at each k:

- NDCG@k: Σ_{hits at rank r ≤ k} 1/log2(r + 1), divided by the ideal: min(k, #relevant) hits at the top;
- Recall@k: hits / #relevant;   HitRate@k: 1 if any hit;   MRR@k: 1/rank of the first hit (0 if none);

averaged over those users, logged as ``test/ndcg@10`` etc. The same from a popularity ranking (items by
training count) as ``test/ndcg@10_popularity`` and ``test/recall@10_popularity``, so every run shows
whether it ranks better than popularity. Users are scored in chunks on the model's device, as many as fit in
``eval.max_memory_mb`` with the whole working memory of scoring them, measured on a probe chunk
(:mod:`recsys.memory`): no users × items matrix beyond it, no users × items × hidden tensor, and the same figures
whatever the chunk. Under DDP each rank takes every world_size-th user and the sums and counts are all-reduced, so each
user counts once.
"""

from __future__ import annotations

import lightning as L
import torch

from recsys import memory
from recsys.data.interactions import Seen
from recsys.memory import MAX_MEMORY_MB

BYTES_PER_CELL = 16  # without a probe: a chunk's float32 scores, the temporaries of scoring them and cold flags
PROBE_SHARE = 32  # a scorer's working memory is first probed on 1/32 of the chunk BYTES_PER_CELL would give
METRICS = ("ndcg", "recall", "hit_rate", "mrr")


def users_per_chunk(num_items: int, max_memory_mb: float = MAX_MEMORY_MB, work=None,
                    users: torch.Tensor | None = None) -> int:
    """How many users are scored against all ``num_items`` items at once within ``max_memory_mb`` (at least one).

    With ``work(rows)`` (a chunk's whole computation: its scores, what excludes the seen items, the top-k, the
    hits) and the ``users`` it will be asked for, heaviest first (:meth:`Seen.heaviest_first`: a chunk's work
    grows with its users' histories, so the probe is the costliest chunk), its working memory is measured
    (:func:`recsys.memory.peak_bytes`, with the budget in force as it will be) on the first 1/32 of the chunk
    ``BYTES_PER_CELL`` a score would give, then on as many as that says fit an eighth of the budget
    (:func:`recsys.memory.per_unit_bytes`), and the chunk sized by that; without, by ``BYTES_PER_CELL`` a score."""
    with memory.budget(max_memory_mb):
        guess = memory.units_within(float(max(num_items, 1) * BYTES_PER_CELL))
        small = max(1, guess // PROBE_SHARE)
        if work is None or users is None or len(users) <= 2 * small:
            return guess
        per_user = memory.per_unit_bytes(lambda n: memory.peak_bytes(work, users[:n])[1], small, len(users))
        return memory.units_within(max(per_user, 4.0 * num_items))  # never less than the float32 scores


def _sums_from_hits(hits: torch.Tensor, n_rel: torch.Tensor, ks: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """The metric sums of users whose top-k_max items are hits (users × k_max, 1 = relevant) out of n_rel relevant."""
    hits, n_rel = hits.to(torch.float64), n_rel.to(torch.float64)
    k_max = hits.shape[1]
    discount = 1.0 / torch.log2(torch.arange(2, k_max + 2, dtype=torch.float64, device=hits.device))
    ideal = torch.cumsum(discount, 0)
    first = torch.where(hits.any(1), hits.argmax(1).to(torch.float64) + 1, torch.inf)
    out = {"users": torch.tensor(float(len(n_rel)), dtype=torch.float64, device=hits.device)}
    for k in ks:
        h = hits[:, :min(k, k_max)]
        best = ideal[(torch.clamp(n_rel, max=min(k, k_max)) - 1).long()]
        out[f"ndcg@{k}"] = ((h * discount[:h.shape[1]]).sum(1) / best).sum()
        out[f"recall@{k}"] = (h.sum(1) / n_rel).sum()
        out[f"hit_rate@{k}"] = (h.sum(1) > 0).to(torch.float64).sum()
        out[f"mrr@{k}"] = torch.where(first <= k, 1.0 / first, 0.0).sum()
    return out


def ranking_sums(scores: torch.Tensor, relevant: torch.Tensor, ks: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Sums over users (rows with ≥ 1 relevant item) of each metric at each k, and the user count ``users``.

    ``scores`` (users × items) has excluded candidates at -inf; ``relevant`` (users × items) is boolean.
    """
    n_rel = relevant.sum(1)
    keep = n_rel > 0
    scores, relevant, n_rel = scores[keep], relevant[keep], n_rel[keep]
    k_max = min(max(ks), scores.shape[1])
    return _sums_from_hits(relevant.gather(1, torch.topk(scores, k_max, dim=1).indices), n_rel, ks)


def _popular_top(rows_seen: tuple[torch.Tensor, torch.Tensor], n_rows: int, order: torch.Tensor,
                 rank_of: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's first ``k`` items of the popularity ``order`` that it has not seen (-1 past the last): the top-k
    of a ranking shared by every user, without scoring every item for every user."""
    which, cols = rows_seen
    most = int(torch.bincount(which, minlength=n_rows).max()) if len(which) else 0
    width = min(len(order), k + most)  # enough candidates for k unseen ones in every row
    blocked = torch.zeros(n_rows, width, dtype=torch.bool, device=order.device)
    r = rank_of[cols]
    inside = r < width
    blocked[which[inside], r[inside]] = True
    pos = torch.argsort(blocked.to(torch.int8), dim=1, stable=True)[:, :k]  # unseen first, in popularity order
    return torch.where(blocked.gather(1, pos), -1, order[pos])


class BoundedTop:
    """Each user's top-k unseen items by ``uc + ic + uv·iv`` (a model's ``ranking_factors``), scoring items in
    blocks of a fixed order and stopping, user by user, once no item left can enter the user's top-k: exact, with
    no scores of items that cannot make it.

    Items are ordered once by ``ic_i + X·‖iv_i‖`` (X the largest user norm), the Cauchy-Schwarz bound on their score
    for any user. From position j on, user u's scores (less its constant ``uc_u``, which does not change its order)
    are at most the smaller of ``max_{j' ≥ j}(ic + x·‖iv‖)`` (x the largest norm of the user's chunk) and
    ``max_{j' ≥ j} ic + ‖uv_u‖·max_{j' ≥ j} ‖iv‖``. Blocks of growing size are scored (one matrix product of
    ``[uv, 1]`` and ``[iv, ic]``) for the users still open, and each block's top-k merged into theirs; a user is
    closed once that bound (with a margin for float rounding) is below its k-th best. Where most items have small
    factors and biases (a young model on a long-tail catalogue) most are never scored; where the bound never bites
    (high-dimensional factors of similar norms), every item is scored in a few blocks, as the dense path would.
    """

    FIRST_BLOCK = 4096
    MARGIN = 1e-4  # relative slack on the bound: a float32 dot product of d terms may exceed ‖u‖‖v‖ by rounding

    def __init__(self, factors: tuple[torch.Tensor, ...], device=None):
        uv, uc, iv, ic = (t.to(device) for t in factors)
        self.user_norms = uv.norm(dim=1)
        # a user's constant uc does not change the order of its items: scores are uv·iv + ic, one product of
        # [uv, 1] and [iv, ic]
        self.uv = torch.cat([uv, uv.new_ones(len(uv), 1)], 1)
        norms = iv.norm(dim=1)
        most = self.user_norms.max() if len(uv) else uv.new_zeros(())
        self.order = torch.argsort(ic + most * norms, descending=True)
        self.position = torch.empty_like(self.order)
        self.position[self.order] = torch.arange(len(self.order), device=self.order.device)
        self.iv = torch.cat([iv, ic.unsqueeze(1)], 1)[self.order]
        self.ic, self.norms = ic[self.order], norms[self.order]
        self.ic_after, self.norms_after = _suffix_max(self.ic), _suffix_max(self.norms)

    def pair_scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``ic + uv·iv`` of pairs (users as rows of the factors, items as the model numbers them): the scores the
        blocks compare, less each user's constant."""
        return (self.uv[users] * self.iv[self.position[items]]).sum(1)

    def __call__(self, lo: int, hi: int, seen_entries: tuple[torch.Tensor, torch.Tensor], k: int,
                 beat: torch.Tensor | None = None) -> torch.Tensor:
        """(hi − lo, k) item indices, best first, for users ``lo:hi`` of the factors (-1 past a user's last unseen
        item); ``seen_entries``: (row in the chunk, item) pairs left out, as ``Seen.exclude`` leaves them out.

        ``beat`` (one score a user, as :meth:`pair_scores` gives them): a user is also closed once k items score
        above its own (by the float margin), its list then being k items that do, not necessarily its best k. The
        metrics ask only whether a user's relevant items are in its top k: with ``beat`` its best relevant item's
        score, once k items beat that, none is, whatever the items not yet scored."""
        uv, x, n = self.uv[lo:hi], self.user_norms[lo:hi], len(self.order)
        chunk_bound = _suffix_max(self.ic + x.max() * self.norms)
        which, at = seen_entries[0], self.position[seen_entries[1]]
        best_v = uv.new_full((len(uv), k), float("-inf"))
        best_i = torch.full((len(uv), k), -1, dtype=torch.long, device=uv.device)
        slot = torch.full((len(uv),), -1, dtype=torch.long, device=uv.device)  # an open user's row in the block
        open_, start, block = torch.arange(len(uv), device=uv.device), 0, self.FIRST_BLOCK
        while start < n and len(open_):
            stop = min(n, start + block)
            slot.fill_(-1)[open_] = torch.arange(len(open_), device=uv.device)
            scores = torch.mm(uv[open_], self.iv[start:stop].T)
            inside = (at >= start) & (at < stop) & (slot[which] >= 0)
            scores[slot[which[inside]], at[inside] - start] = float("-inf")
            # the block's own top-k, merged with the running one (2k candidates a user)
            block_top = torch.topk(scores, min(k, stop - start), dim=1)
            top = torch.topk(torch.cat([best_v[open_], block_top.values], 1), k, dim=1)
            kept = top.indices < k  # from the running top-k, else from this block
            block_items = block_top.indices.gather(1, (top.indices - k).clamp(min=0)) + start
            best_i[open_] = torch.where(kept, best_i[open_].gather(1, top.indices.clamp(max=k - 1)), block_items)
            best_v[open_] = top.values
            start, block = stop, 4 * block
            if start < n:
                reach = torch.minimum(chunk_bound[start], self.ic_after[start] + x[open_] * self.norms_after[start])
                kth = best_v[open_, -1]
                undecided = reach + self.MARGIN * (1 + reach.abs()) >= kth
                if beat is not None:  # k items above every relevant one: no relevant item can enter the top k
                    undecided &= kth <= beat[open_] + self.MARGIN * (1 + beat[open_].abs())
                open_ = open_[undecided]
        return torch.where(best_i >= 0, self.order[best_i.clamp(min=0)], -1)


def _suffix_max(values: torch.Tensor) -> torch.Tensor:
    """out[j] = max(values[j:])."""
    return torch.cummax(values.flip(0), 0).values.flip(0)


def ranking_totals(score_all_items, users: torch.Tensor, items: torch.Tensor, seen: Seen,
                   popularity: torch.Tensor | None, num_items: int, ks: tuple[int, ...], device=None, rank: int = 0,
                   world: int = 1, max_memory_mb: float = MAX_MEMORY_MB, ranking_factors=None,
                   memo: dict | None = None) -> dict[str, torch.Tensor]:
    """Sums of the ranking metrics (model's and popularity's) over this rank's share of the users.

    ``users``/``items`` (indices) are the relevant test pairs; ``score_all_items(rows)`` gives the model's
    (len(rows), num_items) scores; ``seen`` is each user's training and validation items. Users are scored in
    chunks of :func:`users_per_chunk` (``max_memory_mb``, measured on a probe chunk of this very scorer): the
    chunk's scores are the only users × items matrix;
    seen items are set to -inf in place, the top-k found by ``topk`` and looked up among the relevant pairs (no
    dense relevance matrix). Popularity ranks every user by one order, so its top-k is read off that order.
    ``ranking_factors(users)`` (a model's, where it has them): the top-k comes from :class:`BoundedTop` instead of
    scoring every item, each user closed as soon as its top-k is known or k items beat all its relevant ones.
    ``memo``: a dict the caller keeps across calls on the same model and data (a run's validation every epoch):
    the chunk size measured at the first call is kept there and reused.
    """
    totals: dict[str, torch.Tensor] = {}
    mine = torch.unique(users)[rank::world].contiguous()  # each user on one rank
    keys = torch.unique(users.long() * num_items + items.long())  # the relevant pairs, sorted
    n_rel_all = torch.bincount(torch.searchsorted(mine, users[torch.isin(users, mine)]), minlength=len(mine))
    k_max = min(max(ks), num_items)
    if popularity is not None:
        order = torch.sort(popularity.to(torch.float64), descending=True, stable=True).indices.to(device)
        rank_of = torch.empty_like(order)
        rank_of[order] = torch.arange(len(order), device=order.device)
    keys = keys.to(device)
    factors = ranking_factors(mine.to(device)) if ranking_factors is not None and len(mine) else None
    bounded = BoundedTop(factors, device) if factors is not None else None

    def chunk_sums(lo: int, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """The metric sums of users ``rows`` (rows ``lo:`` of ``mine``): the whole work of one chunk."""
        n_rel = n_rel_all[lo:lo + len(rows)].to(device)
        if bounded is not None:  # closing each user once k items beat its best relevant item
            top = {"": bounded(lo, lo + len(rows), seen.entries(rows), k_max, _best_relevant(bounded, keys, rows, lo,
                                                                                          num_items))}
        else:
            top = {"": torch.topk(seen.exclude(score_all_items(rows), rows), k_max, dim=1).indices}
        if popularity is not None:  # the same users ranked by training counts
            top["_popularity"] = _popular_top(seen.entries(rows), len(rows), order, rank_of, k_max)
        found = rows.long().unsqueeze(1) * num_items
        sums = {}
        for suffix, items_top in top.items():
            pair = (found + items_top).reshape(-1)
            at = torch.searchsorted(keys, pair).clamp(max=max(len(keys) - 1, 0))
            hits = ((keys[at] == pair) & (items_top.reshape(-1) >= 0)).view(len(rows), -1)
            sums.update({name + suffix: value for name, value in _sums_from_hits(hits, n_rel, ks).items()})
        return sums

    rows_all = mine.to(device)
    step = memo.get("users_per_chunk") if memo is not None else None
    if step is None:  # measured on the costliest chunk (working memory grows with the users' histories)
        step = users_per_chunk(num_items, max_memory_mb, lambda rows: chunk_sums(0, rows),
                               seen.heaviest_first(rows_all))
        if memo is not None:
            memo["users_per_chunk"] = step
    for lo in range(0, len(mine), step):
        with memory.budget(max_memory_mb):  # a model's default pairwise path blocks within it
            for name, value in chunk_sums(lo, rows_all[lo:lo + step]).items():
                totals[name] = totals.get(name, 0) + value
    return totals


def _best_relevant(bounded: BoundedTop, keys: torch.Tensor, rows: torch.Tensor, lo: int, num_items: int
                   ) -> torch.Tensor:
    """Each of the chunk's users' highest score among its relevant items (``keys``: sorted user·num_items + item
    pairs; ``rows``: the chunk's users, sorted, rows ``lo:`` of ``bounded``'s factors)."""
    if not len(rows):
        return bounded.uv.new_empty(0)
    span = torch.searchsorted(keys, torch.stack([rows[0].long() * num_items, (rows[-1].long() + 1) * num_items]))
    pairs = keys[span[0]:span[1]]
    user, item = pairs // num_items, pairs % num_items
    local = torch.searchsorted(rows.long(), user)
    inside = rows.long()[local.clamp(max=len(rows) - 1)] == user  # the chunk's users only (under DDP the other
    local, item = local[inside], item[inside]  # ranks' users lie between)
    best = bounded.uv.new_full((len(rows),), float("-inf"))
    return best.scatter_reduce_(0, local, bounded.pair_scores(lo + local, item), "amax")


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
                    rank: int = 0, world: int = 1, reduce=lambda t: t, stage: str = "test",
                    max_memory_mb: float = MAX_MEMORY_MB, ranking_factors=None, memo: dict | None = None
                    ) -> dict[str, float]:
    """``<stage>/<metric>@k`` of a model (and of popularity, where given) on triples ``(users, items, ratings)``
    (indices): the one evaluation path of a run's validation (:class:`RankingValidation`), its test
    (:class:`RankingMetrics`) and ``recsys evaluate``. ``ranking_factors``: the model's, for exact pruning;
    ``memo``: see :func:`ranking_totals`."""
    users, items, ratings = test
    liked = ratings >= relevance_threshold
    totals = ranking_totals(score_all_items, users[liked], items[liked], seen, popularity, num_items, tuple(ks),
                            device, rank, world, max_memory_mb, ranking_factors, memo)
    return ranking_means(totals, tuple(ks), reduce, stage)


class RankingMetrics(L.Callback):
    """Logs ranking metrics at the end of testing; the data is handed over by training.py."""

    def __init__(self, test: tuple[torch.Tensor, ...], seen: Seen, popularity: torch.Tensor,
                 ks: tuple[int, ...] = (10,), relevance_threshold: float = 4.0, max_memory_mb: float = MAX_MEMORY_MB):
        self.test, self.seen, self.popularity = test, seen, popularity
        self.ks, self.threshold, self.max_memory_mb = tuple(ks), relevance_threshold, max_memory_mb

    @torch.no_grad()
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        model, device = pl_module.model, pl_module.device
        reduce = lambda t: trainer.strategy.reduce(t.to(device), reduce_op="sum")  # noqa: E731
        means = ranking_metrics(model.score_all_items, self.test, self.seen, self.popularity,
                                len(model.item_seen), self.ks, self.threshold, device, trainer.global_rank,
                                trainer.world_size, reduce, max_memory_mb=self.max_memory_mb,
                                ranking_factors=model.ranking_factors)
        for key, value in means.items():
            pl_module.log(key, value, sync_dist=False)


class RankingValidation(L.Callback):
    """Logs ``val/<metric>@k`` at the end of every validation epoch: the test protocol on the validation split,
    each user's training items left out of the candidates. Added by training.py when ``optimized_metric`` is a
    ranking metric, so checkpoints, early stopping and sweeps can select by it."""

    def __init__(self, val: tuple[torch.Tensor, ...], seen: Seen, ks: tuple[int, ...] = (10,),
                 relevance_threshold: float = 4.0, max_memory_mb: float = MAX_MEMORY_MB):
        self.val, self.seen, self.ks, self.threshold = val, seen, tuple(ks), relevance_threshold
        self.max_memory_mb = max_memory_mb
        self._memos: dict[int, dict] = {}  # per model: the chunk size measured at its first validation

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        model, device = pl_module.model, pl_module.device
        reduce = lambda t: trainer.strategy.reduce(t.to(device), reduce_op="sum")  # noqa: E731
        means = ranking_metrics(model.score_all_items, self.val, self.seen, None, len(model.item_seen),
                                self.ks, self.threshold, device, trainer.global_rank, trainer.world_size, reduce,
                                stage="val", max_memory_mb=self.max_memory_mb,
                                ranking_factors=model.ranking_factors,
                                memo=self._memos.setdefault(id(model), {}))
        for key, value in means.items():
            pl_module.log(key, value, sync_dist=False)
