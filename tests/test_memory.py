"""The scoring memory budget (eval.max_memory_mb) holds for every model, not only for its score matrix.

A model whose ``forward`` holds a hidden layer per pair (I-AutoRec's 500 units: ~2 kB a pair) once asked 42.6 GB
in the ml1m_autorec preset's test phase: the default ``all_item_scores`` ran ``forward`` on every pair of a chunk
sized by its scores alone. The unit tests measure working memory with :func:`recsys.memory.peak_bytes` (what the
budget is enforced with); the integration guard runs every model config at ML-1M's shape in a fresh process and
reads the process's own peak resident memory.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import fake_facts, model_configs

from recsys import memory
from recsys.data.interactions import Seen
from recsys.evaluation import ranking_metrics
from recsys.models.base import Model
from recsys.models.nets import Bilinear

MB = 2**20


class Hidden(Model):
    """A forward with a per-pair hidden layer and no all-items shortcut: the default paths must block it."""

    def __init__(self, hidden: int = 256):
        super().__init__()
        self.net = Bilinear(self.data.num_users, self.data.num_items, hidden, bias=False, init_std=0.3)

    def forward(self, users, items):
        return torch.tanh(self.net.user(users) * self.net.item(items)).sum(1)

    def objective(self, users, items, ratings):
        return (ratings - self(users, items)).square().mean()


def test_peak_bytes_counts_what_is_alive_at_once():
    x = torch.randn(1000, 250)  # 10⁶ bytes
    _, peak = memory.peak_bytes(lambda: [(x * 2).sum() for _ in range(5)])  # each product freed before the next
    assert 1e6 <= peak < 1.01e6
    _, held = memory.peak_bytes(lambda: [x * 2 for _ in range(5)])  # all kept
    assert held >= 5e6
    _, views = memory.peak_bytes(lambda: (x.view(-1)[:10], x.t(), x.mul_(1.0)))  # views and in place: nothing new
    assert views == 0


def test_default_all_item_scores_and_score_block_forward_within_the_budget():
    torch.manual_seed(0)
    model = Hidden(data=fake_facts(50, 400)).eval()
    users = torch.arange(50)
    with torch.no_grad():
        whole = model(users.repeat_interleave(400), torch.arange(400).repeat(50)).view(50, 400)  # ~42 MB at once
        _, unblocked = memory.peak_bytes(model, users.repeat_interleave(400), torch.arange(400).repeat(50))
        with memory.budget(2):
            scores, peak = memory.peak_bytes(model.score_all_items, users)
            every = (users.repeat_interleave(400), torch.arange(400).repeat(50))
            pairs, pair_peak = memory.peak_bytes(model.predict, *every)
    assert unblocked > 40 * MB
    torch.testing.assert_close(scores, whole)
    torch.testing.assert_close(pairs, whole.reshape(-1).clamp(1, 5))
    output = scores.numel() * 4
    assert peak <= 2 * MB + output, peak / MB  # the blocks' working memory within the budget, beside the scores
    assert pair_peak <= 2 * MB + 10 * output, pair_peak / MB  # beside the pairs: their order, flags, clamp


def test_ranking_evaluation_chunks_by_the_scorers_measured_memory():
    """A scorer with 40 bytes of temporaries a cell: the chunk shrinks to the budget, the metrics stay the same."""
    torch.manual_seed(0)
    n_users, n_items = 600, 500
    table = torch.randn(n_users, n_items)

    def costly(rows):
        work = table[rows].unsqueeze(-1).expand(-1, -1, 10).contiguous()  # 40 bytes a cell
        return work.sum(-1) / 10

    g = torch.Generator().manual_seed(1)
    test = (torch.randint(0, n_users, (3000,), generator=g), torch.randint(0, n_items, (3000,), generator=g),
            torch.randint(1, 6, (3000,), generator=g).float())
    seen = Seen.of(torch.randint(0, n_users, (4000,), generator=g).numpy(),
                   torch.randint(0, n_items, (4000,), generator=g).numpy(), n_users)
    want = ranking_metrics(lambda rows: table[rows].clone(), test, seen, None, n_items, max_memory_mb=512)
    got, peak = memory.peak_bytes(ranking_metrics, costly, test, seen, None, n_items, max_memory_mb=2)
    assert got == pytest.approx(want)
    assert peak <= 2 * MB + 100 * len(test[0]), peak / MB  # the chunks, beside the test pairs' own index arrays
    _, everything = memory.peak_bytes(costly, torch.arange(n_users))
    assert everything > 10 * MB  # what a chunk of every user would have taken


GUARD = Path(__file__).with_name("memory_guard.py")
BUDGET_MB = 64
MARGIN_MB = 32  # the allocator's pages, Python objects and numpy/pandas temporaries beside the tracked tensors


@pytest.mark.integration
@pytest.mark.parametrize("name", model_configs())
def test_every_model_scores_ml1m_in_bulk_within_eval_max_memory_mb(name):
    """Each model config at ML-1M's shape (6,040 × 3,706, 1M synthetic ratings): the test phase's ranking
    evaluation, recommend for every user and predicting every test pair each grow the process's resident memory
    by at most eval.max_memory_mb plus its own tables plus MARGIN_MB (the regression asked 42.6 GB)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONWARNINGS": "ignore"}  # freed blocks leave
    done = subprocess.run([sys.executable, str(GUARD), name, str(BUDGET_MB)], capture_output=True, text=True,
                          env=env, timeout=600, cwd=GUARD.parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    bound = BUDGET_MB + figures["tables_mb"] + MARGIN_MB
    for key in ("evaluation_mb", "recommend_mb", "predict_mb"):
        assert figures[key] <= bound, (key, figures)
    assert figures["recommended_rows"] == 6040 * 10


def test_the_library_default_budget_is_the_configs():
    """eval.max_memory_mb's default is written in configs/train.yaml; the library's (recommend, recsys evaluate of
    runs without it) is that same number."""
    import yaml
    from conftest import CONFIGS

    assert yaml.safe_load((CONFIGS / "train.yaml").read_text())["eval"]["max_memory_mb"] == memory.MAX_MEMORY_MB
