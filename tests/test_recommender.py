"""recsys.load and the Recommender: answers in original ids, for every model."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import model_configs

import recsys
from recsys.training import train

QUICK = ("trainer.max_epochs=3", "~callbacks.early_stopping", "logger=none")


@pytest.fixture
def run(compose_cfg, tmp_path, model_run):
    def make(*overrides):
        if not overrides:  # the default mf run: the session's (these tests only read it)
            return model_run("mf").dir
        train(compose_cfg(*QUICK, *overrides))
        return tmp_path / "run"
    return make


def _split(udata):
    from recsys.data import RatingsDataModule

    dm = RatingsDataModule(path=str(udata))
    dm.setup()
    return dm


@pytest.mark.parametrize("name", model_configs())
def test_load_predicts_by_original_ids_for_every_model(model_run, name):
    trained = model_run(name)
    rec = recsys.load(trained.dir)
    target = yaml.safe_load(model_configs()[name].read_text())["_target_"]
    assert isinstance(rec, recsys.Recommender) and f"{type(rec.model).__module__}.{type(rec.model).__name__}" == target
    dm = _split(trained.data)
    users, items, _ = dm.test_set
    ids_u, ids_i = dm.user_map.to_ids(users.numpy()), dm.item_map.to_ids(items.numpy())
    expected = rec.model.predict(users, items).detach().double().numpy()
    assert np.allclose(rec.predict(ids_u, ids_i), expected, atol=1e-6)
    one = rec.predict(int(ids_u[0]), int(ids_i[0]))
    assert one.dtype == np.float64 and one.tolist() == rec.predict(str(ids_u[0]), np.int64(ids_i[0])).tolist()
    top = rec.recommend([ids_u[0], ids_u[1]], n=5)
    assert list(top.columns) == ["user", "item", "score", "rank"] and len(top) == 10


def test_unknown_ids_get_the_fallback_with_a_warning_or_a_key_error(run):
    rec = recsys.load(run())
    with pytest.warns(UserWarning, match="1 unknown user ids and 0 unknown item ids"):
        pred = rec.predict([999, 1], [3, 3])
    mu = rec.model.link.mu
    item_bias = rec.item_bias().loc[3, "bias"]
    assert pred[0] == pytest.approx(np.clip(mu + item_bias, 1, 5), abs=1e-6)
    with pytest.raises(KeyError, match=r"unknown user ids: \[999, 'x'\]"):
        rec.predict([999, "x"], [3, 3], strict=True)


def test_recommend_ranks_by_the_unclipped_score_and_leaves_out_seen_items(run, udata):
    rec = recsys.load(run())
    dm = _split(udata)
    user = int(dm.user_map.to_ids([0])[0])
    top = rec.recommend(user, n=8)
    seen = set(dm.item_map.to_ids(torch.cat([dm.train_set[1][dm.train_set[0] == 0],
                                              dm.val_set[1][dm.val_set[0] == 0]]).numpy()).tolist())
    assert not seen & set(top["item"]) and top["rank"].tolist() == list(range(1, 9))
    # brute force: every unseen item scored by the model, unclipped
    candidates = [i for i in dm.item_map.ids.tolist() if i not in seen]
    scores = rec.model.score(torch.zeros(len(candidates), dtype=torch.long),
                             torch.as_tensor(dm.item_map.to_index(candidates))).detach().numpy()
    best = np.argsort(-scores, kind="stable")[:8]
    assert top["item"].tolist() == [candidates[j] for j in best]
    assert np.allclose(top["score"], scores[best], atol=1e-6)
    everything = rec.recommend(user, n=8, exclude_seen=False)
    assert everything["score"].iloc[0] >= top["score"].iloc[0]


def test_a_bare_checkpoint_needs_seen_to_exclude_seen_items(run, tmp_path, udata):
    import shutil

    ckpt = tmp_path / "bare.ckpt"
    shutil.copy(run() / "checkpoints" / "last.ckpt", ckpt)
    rec = recsys.load(ckpt)
    with pytest.raises(ValueError, match="pass seen=<DataFrame of user, item>"):
        rec.recommend(1)
    seen = pd.DataFrame({"user": [1, 1], "item": [1, 2]})
    top = rec.recommend(1, n=40, seen=seen)
    assert {1, 2}.isdisjoint(top["item"]) and len(top) == 38


def test_load_refuses_what_is_not_a_recsys_checkpoint(tmp_path, run):
    (tmp_path / "x.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="x.ckpt is not a checkpoint of a recsys model"):
        recsys.load(tmp_path / "x.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="other.ckpt is not a checkpoint of a recsys model"):
        recsys.load(tmp_path / "other.ckpt")
    ckpt = torch.load(run() / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["recsys_model"] = "os.path.join"
    torch.save(ckpt, tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match="'os.path.join', which is not under recsys.models"):
        recsys.load(tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match="does not exist"):
        recsys.load(tmp_path / "nowhere")


def test_similar_items_by_cosine_of_item_factors(run):
    rec = recsys.load(run())
    sim = rec.similar_items([1, 2], n=4)
    assert list(sim.columns) == ["item", "similar", "score", "rank"] and len(sim) == 8
    assert 1 not in sim[sim["item"] == 1]["similar"].tolist()
    f = rec.item_factors()
    v = f.to_numpy() / np.linalg.norm(f.to_numpy(), axis=1, keepdims=True)
    cos = pd.Series(v @ v[f.index.get_loc(1)], index=f.index).drop(1).sort_values(ascending=False)
    assert sim[sim["item"] == 1]["similar"].tolist() == cos.index[:4].tolist()


def test_factors_and_biases_are_indexed_by_original_ids(run):
    rec = recsys.load(run("model.dim=6"))
    assert rec.user_factors().shape == (60, 6) and sorted(rec.user_factors().index) == list(range(1, 61))
    assert rec.item_bias().shape == (40, 1) and rec.item_factors().index.name == "id"
    with pytest.raises(ValueError, match="has no biases"):
        recsys.load(run("model=pmf", "resume=never")).user_bias()


def test_fold_in_equals_one_als_user_half_sweep(run, udata):
    from recsys.solvers.als import half_sweep

    path = run("model.solver=als")
    rec, reference = recsys.load(path), recsys.load(path).model  # two copies of the trained model
    dm = _split(udata)
    before = rec.model.least_squares().weights("user").clone()
    half_sweep(reference.least_squares(), "user", *dm.train_set, solve="cholesky")  # one exact ALS user half-sweep
    swept = reference.least_squares().weights("user")
    for row in (0, 7):
        mine = dm.train_set[0] == row
        ratings = dict(zip(dm.item_map.to_ids(dm.train_set[1][mine].numpy()).tolist(),
                           dm.train_set[2][mine].tolist()))
        new = rec.fold_in(ratings)  # a new user with user `row`'s training ratings
        got = rec.model.least_squares().weights("user")[-1]
        assert torch.allclose(got, swept[row], atol=1e-4), (row, got, swept[row])
        assert rec.predict(new, list(ratings)[:3]).shape == (3,)
        assert not set(ratings) & set(rec.recommend(new, n=5)["item"])  # its ratings count as seen
    assert torch.equal(before, rec.model.least_squares().weights("user")[:60])  # the others untouched


def test_fold_in_for_pmf_sigmoid_minimizes_the_users_E(run, udata):
    rec = recsys.load(run("model=pmf_sigmoid", "trainer.max_epochs=20"))
    dm = _split(udata)
    mine = dm.train_set[0] == 3
    items, ratings = dm.train_set[1][mine], dm.train_set[2][mine]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        user = rec.fold_in(dict(zip(dm.item_map.to_ids(items.numpy()).tolist(), ratings.tolist())))
    model = rec.model
    lam, v, t = model.lambdas[0], model.net.item.weight[items].detach(), model.link.target(ratings)

    def E(x):  # PMF's E restricted to this user: ½Σ(t − g(c + xᵀv))² + λ_U/2‖x‖²
        return 0.5 * (t - model.link.mean(v @ x)).square().sum() + 0.5 * lam * x.square().sum()

    x = model.net.user.weight[-1].detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(E(x), x)
    assert grad.norm() < 1e-4 and E(x).item() < E(torch.zeros_like(x)).item()
    replaced = rec.fold_in({1: 1.0, 3: 1.0}, user=user)
    assert replaced == user and len(rec.users) == 61


def test_api_errors_name_the_problem(run):
    rec = recsys.load(run())
    with pytest.raises(ValueError, match="n=0: must be a positive integer"):
        rec.recommend(1, n=0)
    with pytest.raises(ValueError, match="3 users and 2 items"):
        rec.predict([1, 2, 3], [1, 2])
    with pytest.warns(UserWarning, match="1 unknown item ids left out"):
        with pytest.raises(ValueError, match="fold_in: no ratings of known items"):
            rec.fold_in({9999: 4.0})
    baseline = recsys.load(run("model=baseline", "resume=never"))
    with pytest.raises(ValueError, match="Baseline has no item factors to compare"):
        baseline.similar_items(1)


def test_fold_in_gives_string_id_data_sets_a_whole_new_id():
    """A new user of a data set with string ids gets its full id (fixed-width id arrays once cut it to 'new-')."""
    from conftest import fake_facts

    from recsys.data.datasets import IdMap
    from recsys.models.mf import BiasedMF
    from recsys.recommender import Recommender

    model = BiasedMF(data=fake_facts(3, 4), dim=2)
    rec = Recommender(model, IdMap(np.array(["ann", "bob", "cy"])), IdMap(np.array(["a", "b", "c", "d"])))
    new = rec.fold_in({"a": 5.0, "c": 1.0})
    assert new == "new-3" and rec.users.to_index(["new-3"]).tolist() == [3]
    assert rec.fold_in({"b": 4.0}, user="a-much-longer-id") == "a-much-longer-id"
    assert rec.predict("a-much-longer-id", "b").shape == (1,)


def test_ease_recommends_from_its_saved_histories_and_answers_similar_items_by_b(run, udata):
    """A loaded EASE run: recommend is X_u·B with the saved histories (no data), similar_items reads B's rows,
    fold_in is X_new·B."""
    rec = recsys.load(run("model=ease", "trainer.max_epochs=1"))
    dm = _split(udata)
    b = rec.model.weights
    x = torch.zeros(dm.num_users, dm.num_items)
    x[dm.train_set[0], dm.train_set[1]] = 1.0  # implicit feedback: every training rating a positive
    top = rec.recommend([1, 2], n=3)
    for user, rows in top.groupby("user"):
        u = int(dm.user_map.to_index([user])[0])
        scores = (x[u] @ b).masked_fill(torch.as_tensor(rec.seen.mask(torch.tensor([u]), dm.num_items)[0]), -1e9)
        best = torch.topk(scores, 3).indices
        assert rows["item"].tolist() == dm.item_map.to_ids(best.numpy()).tolist()
    sim = rec.similar_items([1], n=3)
    i = int(dm.item_map.to_index([1])[0])
    weights = b[i].clone()
    weights[i] = float("-inf")
    assert sim["similar"].tolist() == dm.item_map.to_ids(torch.topk(weights, 3).indices.numpy()).tolist()
    liked = {int(it): 5.0 for it in dm.item_map.to_ids(dm.train_set[1][dm.train_set[0] == 0].numpy())}
    new = rec.fold_in(liked)  # a new user with user 0's training items scores as user 0 does: X_new·B = X_0·B
    row = int(rec.users.to_index([new])[0])
    torch.testing.assert_close(rec.model.score_all_items(torch.tensor([row])), (x[0] @ b).unsqueeze(0))
