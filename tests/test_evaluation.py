"""Ranking metrics: the same numbers as torchmetrics' retrieval functions, per user, then averaged."""

import json

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
    with pytest.raises(ValueError, match="val/ndcg@10 is better when higher; set optimized_mode=max"):
        train(compose_cfg("optimized_metric=val/ndcg@10"))
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
