"""Cold start: pairs whose user or item has no training rating get the documented fallback and are counted."""

import numpy as np
import pytest
import torch
from conftest import fake_facts, synthetic_ratings, write_udata

from recsys.data import load_ratings, split_ratings
from recsys.models.baseline import Baseline
from recsys.models.mf import BiasedMF
from recsys.models.pmf import PMF
from recsys.training import train


@pytest.mark.parametrize("cls", [BiasedMF, Baseline])
def test_fallback_is_the_mean_plus_known_biases(cls):
    model = cls(data=fake_facts(3, 3, global_mean=3.5))
    with torch.no_grad():
        model.net.user_bias.weight[:] = torch.tensor([[0.5], [0.2], [9.0]])
        model.net.item_bias.weight[:] = torch.tensor([[-0.3], [7.0], [0.1]])
    model.user_seen[2] = False  # user 2 and item 1 have no training ratings
    model.item_seen[1] = False
    pred = model.predict(torch.tensor([2, 0, 2]), torch.tensor([0, 1, 1]))
    assert pred.tolist() == pytest.approx([3.5 - 0.3, 3.5 + 0.5, 3.5])
    pmf = PMF(data=fake_facts(2, 2, global_mean=3.2, user_counts=torch.tensor([0, 4])))
    assert pmf.user_seen.tolist() == [False, True]  # from the facts' training counts
    assert pmf.predict(torch.tensor([0]), torch.tensor([1])).item() == pytest.approx(3.2)


def test_cold_fractions_and_warm_rmse_are_reported(tmp_path, compose_cfg):
    rows = synthetic_ratings()
    late = rows[:, 3].max() + 1000
    extra = np.array([[999, 1, 4, late], [999, 2, 3, late + 1], [1, 999, 5, late + 2]])
    path = write_udata(tmp_path / "cold.data", np.concatenate([rows, extra]))
    cfg = compose_cfg(f"data.path={path}", "data.split=temporal", "trainer.max_epochs=3")
    metrics = train(cfg)
    _, _, test = split_ratings(load_ratings(path=path), "temporal", test_ratio=0.1, val_ratio=0.05, seed=0)
    train_df = split_ratings(load_ratings(path=path), "temporal", test_ratio=0.1, val_ratio=0.05, seed=0)[0]
    cold_u = ~test["user"].isin(train_df["user"])
    cold_i = ~test["item"].isin(train_df["item"])
    assert cold_u.sum() >= 2 and cold_i.sum() >= 1
    assert metrics["test/cold_user_fraction"] == pytest.approx(cold_u.mean())
    assert metrics["test/cold_item_fraction"] == pytest.approx(cold_i.mean())
    assert 0 < metrics["test/rmse_warm"] < 4 and metrics["test/rmse_warm"] != metrics["test/rmse"]
