"""ALS: exact half-steps, monotone objective, cold rows, agreement with gradient training, bad input."""

import json

import lightning as L
import pytest
import torch
from conftest import fake_facts
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.models.baseline import Baseline
from recsys.models.mf import BiasedMF
from recsys.models.pmf import PMF
from recsys.models.pmf_sigmoid import SigmoidPMF
from recsys.solvers import als
from recsys.training import train


def _problem(n_users, n_items, n, seed):
    g = torch.Generator().manual_seed(seed)
    cells = torch.randperm(n_users * n_items, generator=g)[:n]
    r = torch.randint(1, 6, (n,), generator=g).double()
    return cells // n_items, cells % n_items, r


def _kw(r, n_users, n_items):
    return dict(data=fake_facts(n_users, n_items, len(r), float(r.mean())))


def _half_step(model, side, users, items, ratings):
    als.half_sweep(model.least_squares(), side, users, items, ratings)


def _naive_user_step(model, users, items, ratings, lam_vec, scaling):
    """Per user: torch.linalg.solve of the normal equations, written out directly."""
    net = model.net
    out = model.least_squares().weights("user").clone()
    for u in users.unique():
        sel = users == u
        feats = net.item.weight[items[sel]]
        target = model.link.target(ratings[sel])
        if net.user_bias is not None:
            feats = torch.cat([feats, torch.ones(len(feats), 1, dtype=feats.dtype)], 1)
            target = target - net.item_bias.weight[items[sel], 0]
        scale = sel.sum() if scaling == "frequency" else 1
        a = feats.T @ feats + scale * torch.diag(lam_vec)
        out[u] = torch.linalg.solve(a, feats.T @ target)
    return out


@pytest.mark.parametrize("scaling", ["row", "frequency"])
@pytest.mark.parametrize("model_cls", ["pmf", "mf", "baseline"])
def test_half_step_equals_naive_normal_equations(model_cls, scaling, monkeypatch):
    torch.manual_seed(0)
    users, items, r = _problem(30, 25, 300, seed=1)
    if model_cls == "pmf":
        model = PMF(**_kw(r, 30, 25), dim=6, lambda_u=0.7, lambda_v=1.3, solver="als", reg_scaling=scaling)
    elif model_cls == "mf":
        model = BiasedMF(**_kw(r, 30, 25), dim=6, reg=0.2, reg_bias=0.05, solver="als", reg_scaling=scaling,
                         init_std=0.3)
    else:
        model = Baseline(**_kw(r, 30, 25), reg=0.2, solver="als", reg_scaling=scaling)
        with torch.no_grad():
            model.net.item_bias.weight.normal_()
    model = model.double()
    problem = model.least_squares()
    k = problem.weights("user").shape[1]
    lam_vec = torch.as_tensor(problem.ridge[0], dtype=torch.float64).expand(k)
    expected = _naive_user_step(model, users, items, r, lam_vec, scaling)
    monkeypatch.setattr(als, "CHUNK", 75)  # the normal equations accumulated over 4 chunks
    _half_step(model, "user", users, items, r)
    assert torch.allclose(problem.weights("user"), expected, atol=1e-6, rtol=0)


def _E(model, users, items, ratings):
    return model.map_objective(users, items, ratings).item()


def _als_objective(model, users, items, ratings):
    """Σ (t − s)² + Σ_rows c_r x_rᵀ diag(λ) x_r, c_r = n_r (frequency) or 1 (row): what ALS minimizes.

    For PMF with row scaling it is 2E; for MF with frequency scaling, N times its minibatch loss.
    """
    problem = model.least_squares()
    total = (model.link.target(ratings) - model.net(users, items)).square().sum()
    for side, rows, lam in zip(("user", "item"), (users, items), problem.ridge):
        x = problem.weights(side)
        n = torch.bincount(rows, minlength=len(x)).to(x.dtype)
        c = n if model.hparams.reg_scaling == "frequency" else torch.ones_like(n)
        total = total + (c.unsqueeze(1) * torch.as_tensor(lam, dtype=x.dtype) * x.square()).sum()
    return total.item()


@settings(max_examples=25, deadline=None)
@given(n_users=st.integers(2, 12), n_items=st.integers(2, 12), density=st.floats(0.2, 1.0),
       dim=st.integers(1, 5), lam=st.floats(0.01, 5.0), seed=st.integers(0, 10_000),
       kind=st.sampled_from(["pmf-row", "pmf-frequency", "mf-frequency", "mf-row"]))
def test_objective_never_increases_across_half_steps(n_users, n_items, density, dim, lam, seed, kind):
    n = max(1, int(density * n_users * n_items))
    users, items, r = _problem(n_users, n_items, n, seed)
    torch.manual_seed(seed)
    name, scaling = kind.split("-")
    if name == "pmf":
        model = PMF(**_kw(r, n_users, n_items), dim=dim, lambda_u=lam, lambda_v=lam, solver="als",
                    reg_scaling=scaling)
    else:
        model = BiasedMF(**_kw(r, n_users, n_items), dim=dim, reg=lam, reg_bias=lam / 3, solver="als",
                         reg_scaling=scaling, init_std=0.5)
    model = model.double()
    if kind == "pmf-row":  # the objective ALS minimizes is exactly PMF's E (times 2)
        assert _als_objective(model, users, items, r) == pytest.approx(2 * _E(model, users, items, r))
    if kind == "mf-frequency":  # ... and exactly MF's per-rating objective
        assert _als_objective(model, users, items, r) == pytest.approx(n * model.objective(users, items, r).item())
    before = _als_objective(model, users, items, r)
    with torch.no_grad():
        for _ in range(3):
            for side in ("user", "item"):
                _half_step(model, side, users, items, r)
                after = _als_objective(model, users, items, r)
                assert after <= before + 1e-9 * max(1.0, abs(before))
                before = after


def test_rows_without_training_ratings_keep_their_initialization():
    users, items, r = _problem(10, 10, 60, seed=2)
    keep = (users != 9) & (items != 9)  # user 9 and item 9 have no training ratings
    model = PMF(**_kw(r[keep], 10, 10), dim=3, solver="als").double()
    cold_user, cold_item = model.net.user.weight[9].clone(), model.net.item.weight[9].clone()
    with torch.no_grad():
        for side in ("user", "item"):
            _half_step(model, side, users[keep], items[keep], r[keep])
    assert torch.equal(model.net.user.weight[9], cold_user) and torch.equal(model.net.item.weight[9], cold_item)
    # and they are predicted like any gradient model's cold rows: μ plus a vanishing interaction
    assert abs(model.predict(torch.tensor([9]), torch.tensor([0])).item() - model.link.mu) < 0.2


def test_gradient_and_als_reach_the_same_objective():
    users, items, r = _problem(40, 30, 500, seed=3)
    kw = dict(**_kw(r, 40, 30), dim=3, lambda_u=2.0, lambda_v=2.0)
    torch.manual_seed(0)
    grad = PMF(**kw).double()
    opt = torch.optim.Adam(grad.parameters(), lr=0.05)
    for _ in range(3000):
        loss = grad.objective(users, items, r)  # full batch: exactly E/N
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.manual_seed(0)
    closed = PMF(**kw, solver="als").double()
    with torch.no_grad():
        for _ in range(50):
            for side in ("user", "item"):
                _half_step(closed, side, users, items, r)
    e_grad, e_als = _E(grad, users, items, r), _E(closed, users, items, r)
    assert abs(e_grad - e_als) / e_als < 0.02, (e_grad, e_als)


@pytest.mark.parametrize("make,match", [
    (lambda: PMF(data=fake_facts(), lambda_u=0.0, solver="als"), "model.lambda_u=0.0, .* with model.solver=als"),
    (lambda: BiasedMF(data=fake_facts(), reg=0.0, solver="als"), "model.reg=0.0, .* with model.solver=als"),
    (lambda: Baseline(data=fake_facts(), reg=0.0, solver="als"), "model.reg=0.0 with model.solver=als"),
    (lambda: SigmoidPMF(data=fake_facts(), solver="als"), "SigmoidPMF is not bilinear"),
    (lambda: PMF(data=fake_facts(), solver="newton"), "model.solver='newton'"),
    (lambda: PMF(data=fake_facts(), reg_scaling="both"), "model.reg_scaling='both'"),
])
def test_bad_als_settings_are_rejected(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_non_finite_factors_stop_training_naming_the_epoch(udata):
    from recsys.data import RatingsDataModule

    dm = RatingsDataModule(path=str(udata))
    dm.setup()
    model = PMF(data=dm.facts(), solver="als")
    with torch.no_grad():
        model.net.item.weight[0, 0] = float("nan")
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        num_sanity_val_steps=0)
    with pytest.raises(FloatingPointError, match="epoch 0"):
        trainer.fit(model, datamodule=dm)


@pytest.mark.parametrize("model", ["mf", "pmf", "baseline"])
def test_als_runs_through_train_py_like_gradient_training(compose_cfg, tmp_path, model):
    metrics = train(compose_cfg(f"model={model}", "model.solver=als", "trainer.max_epochs=4",
                                "~callbacks.early_stopping"))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["epochs"] == 4 and saved["test/rmse"] == pytest.approx(metrics["test/rmse"])
    assert saved["test/rmse"] < 1.0 and saved["val/rmse"] < 1.2
    ckpts = {p.name for p in (tmp_path / "run" / "checkpoints").glob("*.ckpt")}
    assert "last.ckpt" in ckpts and len(ckpts) == 2  # the best one is kept too
