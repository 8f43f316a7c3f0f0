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
