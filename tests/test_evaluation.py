"""Ranking metrics: the same numbers as torchmetrics' retrieval functions, per user, then averaged."""

import json

import numpy as np
import pytest
import torch
from torchmetrics.functional.retrieval import (
    retrieval_hit_rate,
    retrieval_normalized_dcg,
    retrieval_recall,
    retrieval_reciprocal_rank,
)

from recsys.data.interactions import Seen
from recsys.evaluation import ranking_sums
from recsys.training import train


@pytest.mark.parametrize("seed", range(5))
def test_ranking_sums_equal_torchmetrics_retrieval(seed):
    g = torch.Generator().manual_seed(seed)
    users, items = 7, 30
    scores = torch.randn(users, items, generator=g, dtype=torch.float64)
    relevant = torch.rand(users, items, generator=g) < 0.15
    relevant[0] = False  # a user without relevant items does not count
    excluded = torch.rand(users, items, generator=g) < 0.3
    excluded &= ~relevant
    sums = ranking_sums(scores.masked_fill(excluded, float("-inf")), relevant, (5, 10))
    counted = [u for u in range(users) if relevant[u].any()]
    assert sums["users"].item() == len(counted)
    for k in (5, 10):
        expect = {"ndcg": [], "recall": [], "hit_rate": [], "mrr": []}
        for u in counted:
            keep = ~excluded[u]  # the candidates: everything the user has not rated in training
            p, t = scores[u][keep], relevant[u][keep]
            p = p - p.min() + 1  # torchmetrics' recall counts only positive scores as retrieved; ranks stay
            expect["ndcg"].append(retrieval_normalized_dcg(p, t, top_k=k))
            expect["recall"].append(retrieval_recall(p, t, top_k=k))
            expect["hit_rate"].append(retrieval_hit_rate(p, t, top_k=k))
            expect["mrr"].append(retrieval_reciprocal_rank(p, t, top_k=k))
        for name, values in expect.items():
            mean = torch.stack(values).double().mean().item()
            assert sums[f"{name}@{k}"].item() / len(counted) == pytest.approx(mean, abs=1e-6), (name, k)


def test_seen_mask_reads_csr_rows():
    import numpy as np

    indptr, items = np.array([0, 2, 2, 3]), np.array([1, 3, 0], dtype=np.int32)
    built = Seen.of(np.array([2, 0, 0]), np.array([0, 3, 1]), 3)
    assert built.indptr.tolist() == indptr.tolist() and built.items.tolist() == items.tolist()
    mask = Seen(indptr, items).mask(torch.tensor([2, 0, 1]), 4)
    assert mask.tolist() == [[True, False, False, False], [False, True, False, True], [False] * 4]


def test_runs_report_ranking_metrics_beside_popularity(compose_cfg, tmp_path):
    metrics = train(compose_cfg("trainer.max_epochs=5", "~callbacks.early_stopping", "eval.k=[5,10]"))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for k in (5, 10):
        for name in ("ndcg", "recall", "hit_rate", "mrr"):
            assert 0 <= saved[f"test/{name}@{k}"] <= 1
        assert 0 <= saved[f"test/ndcg@{k}_popularity"] <= 1 and 0 <= saved[f"test/recall@{k}_popularity"] <= 1
    assert saved["test/recall@10"] >= saved["test/recall@5"] and metrics["test/ndcg@10"] == saved["test/ndcg@10"]
    off = train(compose_cfg("trainer.max_epochs=2", "~callbacks.early_stopping", "eval.ranking=false", "resume=never"))
    assert not [k for k in off if "@" in k]


def test_a_ranking_metric_selects_the_model_on_validation(compose_cfg, tmp_path):
    """optimized_metric=val/ndcg@10: every epoch ranks the validation split (training items left out) with the test
    evaluator; the best checkpoint is the epoch with the HIGHEST val/ndcg@10, and metrics.json reports its value."""
    import pandas as pd
    import torch

    from recsys.data import RatingsDataModule
    from recsys.evaluation import ranking_metrics
    from recsys.models.base import load_checkpoint

    cfg = compose_cfg("trainer.max_epochs=6", "~callbacks.early_stopping", "optimized_metric=val/ndcg@10",
                      "optimized_mode=max", "model.optimizer.lr=0.05")
    metrics = train(cfg)
    curve = pd.read_csv(next((tmp_path / "run" / "csv").glob("version_*/metrics.csv")))
    per_epoch = curve["val/ndcg@10"].dropna()
    assert len(per_epoch) == 6 and per_epoch.nunique() > 1
    assert metrics["val/ndcg@10"] == pytest.approx(per_epoch.max())  # the best is the largest
    best, _ = load_checkpoint(metrics["test_checkpoint"])
    dm = RatingsDataModule(**{k: v for k, v in cfg.data.items() if not k.startswith("_")})
    dm.setup()
    with torch.no_grad():
        again = ranking_metrics(best.score_all_items, dm.val_set, dm.seen("train"), None, dm.num_items, (10,),
                                stage="val")
    assert again["val/ndcg@10"] == pytest.approx(per_epoch.max(), abs=1e-6)


def test_a_ranking_metric_with_the_wrong_direction_is_refused(compose_cfg):
    cfg = compose_cfg("optimized_metric=val/ndcg@10")
    assert cfg.optimized_mode == "max"  # the direction follows the metric unless set
    with pytest.raises(ValueError, match="val/ndcg@10 is better when higher; set optimized_mode=max"):
        train(compose_cfg("optimized_metric=val/ndcg@10", "optimized_mode=min"))
    with pytest.raises(ValueError, match="val/rmse is better when lower; set optimized_mode=min"):
        train(compose_cfg("optimized_mode=max"))


@pytest.mark.parametrize("max_memory_mb", [1e-6, 0.01, 512])  # one user a chunk, a few, all at once
def test_chunked_ranking_equals_the_dense_users_by_items_computation(max_memory_mb):
    """The chunks (scores only, seen items set in place, top-k looked up among relevant pairs, popularity read off
    one order) give exactly the figures of the dense computation over the whole users × items matrices."""
    from recsys.data.interactions import Seen
    from recsys.evaluation import ranking_means, ranking_totals, users_per_chunk

    g = torch.Generator().manual_seed(4)
    n_users, n_items = 50, 70
    table = torch.randn(n_users, n_items, generator=g)
    seen_pairs = torch.rand(n_users, n_items, generator=g) < 0.3
    seen = Seen.of(*[t.numpy() for t in seen_pairs.nonzero(as_tuple=True)], n_users)
    relevant = (torch.rand(n_users, n_items, generator=g) < 0.1) & ~seen_pairs
    relevant[3] = False  # a user without relevant items counts nowhere
    users, items = relevant.nonzero(as_tuple=True)
    popularity = torch.randperm(n_items, generator=g).float()  # distinct counts: one order, no ties
    chunk = users_per_chunk(n_items, max_memory_mb)
    assert chunk == 1 if max_memory_mb < 1e-3 else 1 < chunk < n_users if max_memory_mb < 1 else chunk >= n_users
    got = ranking_means(ranking_totals(lambda rows: table[rows].clone(), users, items, seen, popularity, n_items,
                                       (1, 5, 10), max_memory_mb=max_memory_mb), (1, 5, 10))
    keep = relevant.any(1)
    want = {}
    for suffix, scores in (("", table), ("_popularity", popularity.expand(n_users, -1))):
        sums = ranking_sums(scores.masked_fill(seen_pairs, float("-inf"))[keep], relevant[keep], (1, 5, 10))
        want.update({f"test/{k}{suffix}": float(v / sums["users"]) for k, v in sums.items() if k != "users"})
    assert got.keys() <= want.keys() and len(got) == 12 + 6
    for key, value in got.items():
        assert value == pytest.approx(want[key], abs=1e-12), key


def _long_tail_factors(n_users=40, n_items=3000, dim=8, seed=5):
    """A catalogue where popular items have large biases and most items small factors, plus a few items with a
    low bias and large factors: they reach the top of some users only through their norm."""
    g = torch.Generator().manual_seed(seed)
    decay = (torch.arange(n_items) + 1.0) ** -0.7
    iv, ic = torch.randn(n_items, dim, generator=g) * decay.unsqueeze(1), 2 * decay
    uv, uc = torch.randn(n_users, dim, generator=g), torch.randn(n_users, generator=g)
    mid = slice(1000, 2000)  # no bias, mid-sized factors: each user's best of them beat most popular items
    iv[mid] = 0.6 * torch.nn.functional.normalize(torch.randn(1000, dim, generator=g), dim=1)
    ic[mid] = 0.0
    iv[-5:] = 6 * uv[:5] / uv[:5].norm(dim=1, keepdim=True)  # the tail's strong items, one per user 0..4
    ic[-5:] = -1.0
    return uv, uc, iv, ic


@pytest.mark.parametrize("max_memory_mb", [0.01, 512])
def test_bounded_top_k_equals_scoring_every_item(max_memory_mb, monkeypatch):
    """Ranking by the model's factors with norm-bound pruning gives the dense top-k exactly: items only a norm can
    lift into a user's top-k are found, seen items stay out, and a user with fewer unseen items than k still
    ranks them; the pruning must actually skip items (fewer scored than the catalogue)."""
    from recsys.evaluation import BoundedTop, ranking_means, ranking_totals

    monkeypatch.setattr(BoundedTop, "FIRST_BLOCK", 64)
    uv, uc, iv, ic = _long_tail_factors()
    n_users, n_items = len(uv), len(iv)
    table = uc.unsqueeze(1) + ic + uv @ iv.T
    g = torch.Generator().manual_seed(6)
    seen_pairs = torch.rand(n_users, n_items, generator=g) < 0.02
    seen_pairs[7, :n_items - 3] = True  # 3 unseen items left for k = 10
    seen = Seen.of(*[t.numpy() for t in seen_pairs.nonzero(as_tuple=True)], n_users)
    rows = torch.arange(n_users)
    bounded = BoundedTop((uv, uc, iv, ic))
    scored = []
    monkeypatch.setattr(torch, "mm", lambda a, b, _mm=torch.mm: scored.append(len(a) * b.shape[1]) or _mm(a, b))
    bounded(8, n_users, seen.entries(rows[8:]), 10)  # users 8.. have hundreds of unseen items
    assert 0 < sum(scored) < (n_users - 8) * n_items / 2  # most of the catalogue is never scored
    top = bounded(0, n_users, seen.entries(rows), 10)
    dense = torch.topk(table.masked_fill(seen_pairs, float("-inf")), 10, dim=1)
    finite = dense.values.isfinite()
    assert torch.equal(top[finite], dense.indices[finite])
    assert set(top[7, :3].tolist()) == set(range(n_items - 3, n_items))
    assert all(int(top[u, 0]) == n_items - 5 + u for u in range(5) if not seen_pairs[u, n_items - 5 + u])

    relevant = (torch.rand(n_users, n_items, generator=g) < 0.05) & ~seen_pairs
    relevant[:5, -5:] |= torch.eye(5, dtype=torch.bool) & ~seen_pairs[:5, -5:]
    users, items = relevant.nonzero(as_tuple=True)
    args = (users, items, seen, None, n_items, (1, 5, 10))
    want = ranking_means(ranking_totals(lambda r: table[r].clone(), *args, max_memory_mb=max_memory_mb), (1, 5, 10))
    got = ranking_means(ranking_totals(None, *args, max_memory_mb=max_memory_mb,
                                       ranking_factors=lambda r: (uv[r], uc[r], iv, ic)), (1, 5, 10))
    assert got == pytest.approx(want, abs=1e-12) and want["test/ndcg@10"] > 0


def test_users_whose_relevant_items_are_beaten_k_times_are_closed_early_with_exact_metrics(monkeypatch):
    """Factors of similar norms leave the norm bound nothing to prune; a user is then closed once k items beat all
    of its relevant ones (none can be in its top-k): the metrics stay those of scoring every item, for users whose
    relevant items rank first (hits) and users whose rank in the middle (closed after the first block)."""
    from recsys.evaluation import BoundedTop, ranking_means, ranking_totals

    monkeypatch.setattr(BoundedTop, "FIRST_BLOCK", 64)
    g = torch.Generator().manual_seed(3)
    n_users, n_items = 60, 3000
    uv, iv = torch.randn(n_users, 16, generator=g), torch.randn(n_items, 16, generator=g)
    uc, ic = torch.zeros(n_users), 0.1 * torch.randn(n_items, generator=g)
    table = uc.unsqueeze(1) + ic + uv @ iv.T
    seen = Seen.of(np.array([0, 1]), np.array([5, 6]), n_users)
    users = torch.arange(n_users).repeat_interleave(2)
    items = torch.randint(0, n_items, (2 * n_users,), generator=g)
    items[:20:2] = table[:10].argsort(1, descending=True)[:, 2]  # users 0-9: one at their rank 3
    args = (users, items, seen, None, n_items, (1, 5, 10))
    want = ranking_means(ranking_totals(lambda r: seen.exclude(table[r].clone(), r), *args), (1, 5, 10))
    scored = []
    monkeypatch.setattr(torch, "mm", lambda a, b, _mm=torch.mm: scored.append(len(a) * b.shape[1]) or _mm(a, b))
    got = ranking_means(ranking_totals(None, *args, ranking_factors=lambda r: (uv[r], uc[r], iv, ic)), (1, 5, 10))
    assert got == pytest.approx(want, abs=1e-12) and want["test/ndcg@10"] > 0.05
    assert sum(scored) < n_users * n_items / 4  # the bound alone would score every item of every user
    scored.clear()
    BoundedTop((uv, uc, iv, ic))(0, n_users, seen.entries(torch.arange(n_users)), 10)
    assert sum(scored) > 0.9 * n_users * n_items
