"""Blends: the ridge fit recovers known weights, runs on one split blend and load like a model, runs on
different splits are refused."""

import json

import numpy as np
import pytest

import recsys
from recsys.blend import blend_runs, fit_ridge
from recsys.cli import main
from recsys.training import train


def test_ridge_fit_recovers_known_weights_and_intercept():
    rng = np.random.default_rng(0)
    x = rng.normal(3.5, 0.8, size=(5000, 3))
    y = 0.1 + 0.3 * x[:, 0] + 0.7 * x[:, 1] + 0.0 * x[:, 2]
    w, c = fit_ridge(x, y, ridge=1e-9)
    assert np.allclose(w, [0.3, 0.7, 0.0], atol=1e-8) and c == pytest.approx(0.1, abs=1e-7)
    # the penalty shrinks the weights (not the intercept) towards zero
    w_big, c_big = fit_ridge(x, y, ridge=1e5)
    assert np.abs(w_big).sum() < np.abs(w).sum() and c_big == pytest.approx(y.mean() - x.mean(0) @ w_big)
    with pytest.raises(ValueError, match="must be"):
        fit_ridge(x[:, 0], y)


@pytest.fixture
def runs(compose_cfg, tmp_path):
    def make(name, *overrides):
        cfg = compose_cfg("trainer.max_epochs=5", "~callbacks.early_stopping", "logger=none", *overrides)
        cfg.output_dir = str(tmp_path / name)
        train(cfg)
        return tmp_path / name
    return make


def test_blend_of_runs_beats_or_matches_its_members_and_loads_like_a_model(runs, tmp_path, capsys):
    a = runs("mf", "model=mf", "model.dim=8")
    b = runs("baseline", "model=baseline")
    out = tmp_path / "blend"
    assert main(["blend", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "blend" in printed and str(out) in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"test/rmse", "test/mae", "weights", "members"} and len(metrics["weights"]) == 2
    members = metrics["members"]
    # fitted on validation: at least as good there as the best member (up to the ridge), and reported on test
    assert metrics["val/rmse"] <= min(m["val/rmse"] for m in members) + 1e-3
    for m, run in zip(members, (a, b)):
        assert m["test/rmse"] == pytest.approx(json.loads((run / "metrics.json").read_text())["test/rmse"], abs=1e-5)
    rec = recsys.load(out)
    user, items = rec.users.ids[0], rec.items.ids[:3]
    member_preds = [recsys.load(r).predict(user, items) for r in (a, b)]
    expected = np.clip(metrics["intercept"] + sum(w * p for w, p in zip(metrics["weights"], member_preds)), 1, 5)
    assert np.allclose(rec.predict(user, items), expected, atol=1e-6)
    assert len(rec.recommend([user], n=3)) == 3
    with pytest.raises(ValueError, match="BlendModel has no item factors to compare"):
        rec.similar_items(items[0])


def test_runs_on_different_splits_are_refused(runs):
    a = runs("s0", "model=baseline")
    b = runs("s1", "model=baseline", "data.split_seed=1")
    with pytest.raises(ValueError, match="different splits.*split_seed"):
        blend_runs([a, b])
    with pytest.raises(ValueError, match="two runs or more"):
        blend_runs([a])


def test_ranking_runs_blend_by_their_validation_metric_weighing_refit_members_by_their_first_fits(runs, tmp_path):
    """Ranking members (selected by val/ndcg@10) blend standardized scores with simplex weights chosen on validation:
    the grid holds each member alone, so the blend is at least as good there as its best member; a refit member is
    weighed by its first fit (its own val/ndcg@10) and tested with its refit model."""
    import torch

    from recsys.blend import standardized

    a = runs("ease", "model=ease", "refit=true")
    b = runs("ials", "model=ials", "model.dim=8", "refit=true")
    out = tmp_path / "blend"
    assert main(["blend", str(a), str(b), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    members = metrics["members"]
    for m, run in zip(members, (a, b)):  # the first fits' validation figures: the refit models never saw val as val
        own = json.loads((run / "metrics.json").read_text())
        assert m["val/ndcg@10"] == pytest.approx(own["val/ndcg@10"], abs=1e-5)
    assert metrics["val/ndcg@10"] >= max(m["val/ndcg@10"] for m in members) - 1e-9
    assert sum(metrics["weights"]) == pytest.approx(1.0) and min(metrics["weights"]) >= 0
    rec, parts = recsys.load(out), [recsys.load(r).model for r in (a, b)]
    users = torch.arange(5)
    expected = sum(w * standardized(m.score_all_items(users)) for w, m in zip(metrics["weights"], parts))
    with torch.no_grad():
        assert torch.allclose(rec.model.score_all_items(users), expected, atol=1e-6)
    from recsys.cli import evaluate

    again = evaluate(rec, [])
    assert again["test/ndcg@10"] == pytest.approx(metrics["test/ndcg@10"], abs=1e-5)
    mixed = runs("mf", "model=mf", "model.dim=8")
    with pytest.raises(ValueError, match="blend ranking runs of one validation metric"):
        blend_runs([a, mixed], tmp_path / "mixed")
