"""One model at ML-1M's shape, scored in bulk under a memory budget: run as a fresh process by test_memory.py.

    python tests/memory_guard.py MODEL MAX_MEMORY_MB   ->   one JSON line of measured MB

The model is built from configs/model/MODEL.yaml with its own random initial weights at 6,040 users × 3,706
items and handed synthetic MovieLens-like interactions (power-law histories, 1,000,209 ratings) through the
contract, in the state a finished run tests it in: a closed-form model solved, tracked test pairs, a sampler's
running means started, derived state refreshed. Then the test phase's ranking evaluation (every test user
against every item), ``Recommender.recommend`` for every user and the prediction of every test pair run with
``max_memory_mb``, each after the
process's peak resident memory was reset (/proc/self/clear_refs), so its growth is that call's alone.
Large allocations are mmapped (MALLOC_MMAP_THRESHOLD_, set by the test) so freed memory leaves the process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from recsys import memory
from recsys.data.datasets import IdMap
from recsys.data.facts import DataFacts
from recsys.data.interactions import Interactions, Seen
from recsys.data.synthetic import generate_ratings
from recsys.evaluation import ranking_metrics
from recsys.recommender import Recommender

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
USERS, ITEMS, RATINGS = 6040, 3706, 1_000_209  # ML-1M


def _status(key: str) -> float:
    """A /proc/self/status figure (VmRSS, VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def measured(fn) -> float:
    """MB the process's resident memory rose above its level before ``fn()`` at its peak during it."""
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from the current size
    before = _status("VmRSS")
    fn()
    return _status("VmHWM") - before


def main(name: str, max_memory_mb: float) -> dict:
    torch.manual_seed(0)
    frame = generate_ratings(RATINGS, USERS, ITEMS, seed=0)
    users, items = (torch.as_tensor(frame[c].to_numpy(np.int64)) for c in ("user", "item"))
    ratings = torch.as_tensor(frame["rating"].to_numpy(np.float32))
    test = torch.rand(len(users), generator=torch.Generator().manual_seed(1)) < 0.1
    train = Interactions(users[~test], items[~test], ratings[~test], USERS, ITEMS)
    facts = DataFacts(num_users=USERS, num_items=ITEMS, num_train=len(train), global_mean=float(ratings.mean()),
                      user_counts=torch.bincount(users[~test], minlength=USERS),
                      item_counts=torch.bincount(items[~test], minlength=ITEMS))
    model = instantiate(OmegaConf.load(CONFIGS / "model" / f"{name}.yaml"), data=facts)
    model.attach_interactions(train)
    if model.has_closed_form():
        model.fit_closed_form(train)
    model.track(users[test], items[test])
    model.record(10**6)  # a sampler past its burn-in: its running means and tracked pair sums in use
    model.eval().refresh()
    tables = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())) / 2**20
    seen = Seen.of(users[~test].numpy(), items[~test].numpy(), USERS)
    popularity = facts.item_counts
    out = {"model": name, "max_memory_mb": max_memory_mb, "tables_mb": tables}
    with torch.no_grad():
        figures = {}
        out["evaluation_mb"] = measured(lambda: figures.update(ranking_metrics(
            model.score_all_items, (users[test], items[test], ratings[test]), seen, popularity, ITEMS, (10,),
            max_memory_mb=max_memory_mb, ranking_factors=model.ranking_factors)))
        rec = Recommender(model, IdMap(np.arange(USERS)), IdMap(np.arange(ITEMS)), seen)
        top = {}
        out["recommend_mb"] = measured(lambda: top.update(frame=rec.recommend(np.arange(USERS), n=10,
                                                                              max_memory_mb=max_memory_mb)))
        with memory.budget(max_memory_mb):  # as a run's test steps and recsys evaluate score pairs
            out["predict_mb"] = measured(lambda: model.predict(users[test], items[test]))
    out["ndcg@10"] = figures["test/ndcg@10"]
    out["recommended_rows"] = len(top["frame"])
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(json.dumps(main(sys.argv[1], float(sys.argv[2]))))
