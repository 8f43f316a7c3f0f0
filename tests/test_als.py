"""ALS: exact half-steps, monotone objective, cold rows, agreement with gradient training, bad input."""

import json

import lightning as L
import pytest
import torch
from conftest import fake_facts, gloo_collectives
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.models.baseline import Baseline
from recsys.models.mf import BiasedMF
from recsys.models.pmf import PMF
from recsys.models.pmf_sigmoid import SigmoidPMF
from recsys.solvers import als
from recsys.solvers.gradient import Gradient
from recsys.system import System
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


@pytest.mark.parametrize("solve", ["cholesky", "cg"])
@pytest.mark.parametrize("scaling", ["row", "frequency"])
@pytest.mark.parametrize("model_cls", ["pmf", "mf", "baseline"])
def test_half_step_equals_naive_normal_equations(model_cls, scaling, solve, monkeypatch):
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
    monkeypatch.setattr(als, "CHUNK", 20)  # several blocks per bucket
    monkeypatch.setattr(als, "GROUP", 8 * k * k)  # several solve groups
    monkeypatch.setattr(als, "CG_STEPS", k)  # conjugate gradient is exact after k steps (up to rounding)
    als.half_sweep(problem, "user", users, items, r, solve=solve)
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
    (lambda: SigmoidPMF(data=fake_facts(), solver="als"), "SigmoidPMF is fitted by model.solver=gradient only"),
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
        trainer.fit(System(model), datamodule=dm)


@pytest.mark.parametrize("model", ["mf", "pmf", "baseline"])
def test_als_runs_through_train_py_like_gradient_training(compose_cfg, tmp_path, model):
    metrics = train(compose_cfg(f"model={model}", "model.solver=als", "trainer.max_epochs=4", "model.als_tol=0",
                                "~callbacks.early_stopping"))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["epochs"] == 4 and saved["test/rmse"] == pytest.approx(metrics["test/rmse"])
    assert saved["test/rmse"] < 1.0 and saved["val/rmse"] < 1.2
    ckpts = {p.name for p in (tmp_path / "run" / "checkpoints").glob("*.ckpt")}
    assert "last.ckpt" in ckpts and len(ckpts) == 2  # the best one is kept too


def _sweep(model, users, items, ratings, epochs, **kw):
    sweeper = als.Sweeper(model.least_squares(), users, items, ratings, **kw)
    return [sweeper.epoch(model.least_squares()) for _ in range(epochs)]


@pytest.mark.parametrize("kind", ["mf-frequency", "pmf-row"])
def test_conjugate_gradient_reaches_the_exact_solves_optimum(kind):
    """A few warm-started CG steps per half-sweep (the default) end where exact Cholesky solves end."""
    users, items, r = _problem(120, 80, 3000, seed=4)
    ends = {}
    for solve in ("cg", "cholesky"):
        torch.manual_seed(0)
        if kind == "pmf-row":
            model = PMF(**_kw(r, 120, 80), dim=8, lambda_u=10.0, lambda_v=10.0, solver="als", als_solve=solve)
        else:
            model = BiasedMF(**_kw(r, 120, 80), dim=8, reg=0.3, solver="als", als_solve=solve, init_std=0.1)
        model = model.double()  # structureless ratings converge slowly: compare ends, not rounding
        curve = _sweep(model, users, items, r, 100)
        assert all(b <= a * (1 + 1e-6) for a, b in zip(curve, curve[1:])), "the objective never rises"
        # the epoch's reported objective is the least-squares objective itself, per rating
        assert curve[-1] == pytest.approx(_als_objective(model, users, items, r) / len(r), rel=1e-4)
        with torch.no_grad():
            ends[solve] = (curve[-1], model.predict(users, items))
    assert ends["cg"][0] == pytest.approx(ends["cholesky"][0], rel=1e-4)
    assert torch.allclose(ends["cg"][1], ends["cholesky"][1], atol=2e-3)


def test_buckets_pad_rows_by_less_than_twelve_percent():
    lengths = als.bucket_lengths(5000)
    assert lengths[:8] == list(range(1, 9)) and lengths[-1] >= 5000
    for count in range(1, 5001, 7):
        padded = next(n for n in lengths if n >= count)
        assert padded < 1.12 * count + 1e-9 or padded - count < 1
    counts = torch.randint(1, 400, (1000,))
    bounds = als.row_ranges(counts, 3)
    shares = [int(counts[a:b].sum()) for a, b in zip(bounds[:-1], bounds[1:])]
    assert bounds[0] == 0 and bounds[-1] == 1000 and max(shares) - min(shares) <= 2 * 400


def _sharded_worker(rank, world, init, users, items, ratings, state, solve, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model = BiasedMF(data=fake_facts(60, 40, len(ratings), float(ratings.mean())), dim=5, reg=0.1,
                         solver="als", als_solve=solve)
        model.load_state_dict(state)
        gather, reduce = gloo_collectives(world)

        shard = torch.arange(len(ratings)).tensor_split(world)[rank]  # each rank starts from its own ratings
        users_all, items_all, ratings_all = als._gather_ratings(gather, users[shard], items[shard], ratings[shard])
        curve = _sweep(model, users_all, items_all, ratings_all, 4, rank=rank, world=world, gather=gather,
                       reduce=reduce)
        if rank == 0:
            torch.save({"curve": curve, "state": model.state_dict()}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.integration  # starts processes
@pytest.mark.parametrize("solve", ["cg", "cholesky"])
def test_row_sharded_als_on_two_processes_equals_one(tmp_path, solve):
    """Ranks own row ranges, solve them and all-gather the factors: the result is one process's, to 1e-5."""
    import torch.multiprocessing as mp

    users, items, r = _problem(60, 40, 900, seed=7)
    torch.manual_seed(0)
    model = BiasedMF(data=fake_facts(60, 40, len(r), float(r.mean())), dim=5, reg=0.1, solver="als",
                     als_solve=solve)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    one = _sweep(model, users, items, r, 4)
    out = tmp_path / "two.pt"
    rendezvous = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_sharded_worker, args=(2, rendezvous, users, items, r, state, solve, out), nprocs=2)
    two = torch.load(out, weights_only=True)
    assert two["curve"] == pytest.approx(one, rel=1e-5)
    for key in ("net.user.weight", "net.item.weight", "net.user_bias.weight", "net.item_bias.weight"):
        assert torch.allclose(two["state"][key], model.state_dict()[key], atol=1e-5, rtol=0), key


def test_communication_is_factors_not_statistics():
    # ML-25M shapes, k = 64 with the bias: gathering factors moves ~65x fewer bytes than reducing statistics
    sizes = als.communicated_bytes(162_541, 59_047, 65, world=2)
    assert sizes["all_reduce_statistics"] / sizes["all_gather_factors"] > 60
    assert als.communicated_bytes(10, 10, 4, world=1)["all_gather_factors"] == 0


def test_als_stops_once_converged(compose_cfg, tmp_path):
    metrics = train(compose_cfg("model=pmf", "model.solver=als", "trainer.max_epochs=300", "model.als_tol=1e-3",
                                "~callbacks.early_stopping"))
    assert 3 <= metrics["epochs"] < 300 and metrics["test/rmse"] < 1.1


def _gradient_worker(rank, world, init, users, items, ratings, state, out):
    import torch.distributed as dist


    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model = BiasedMF(data=fake_facts(60, 40, len(ratings), float(ratings.mean())), dim=5, reg=0.1)
        model.load_state_dict(state)
        opt, solver = Gradient().configure_optimizers(model), Gradient()
        for step, batch in enumerate(torch.arange(len(ratings)).split(300)):
            piece = batch.tensor_split(world)[rank]  # each rank takes its half of the global batch
            model.gradients(users[piece], items[piece], ratings[piece])
            solver.all_reduce(list(model.parameters()), world)
            opt.step()
            if step == 1:
                opt.zero_grad(set_to_none=True)  # as Lightning may: the next step's .grad are new tensors
        if rank == 0:
            torch.save(model.state_dict(), out)
    finally:
        dist.destroy_process_group()


@pytest.mark.integration  # starts processes
def test_closed_form_gradient_steps_on_two_processes_equal_one(tmp_path):
    """The gradient solver's fast path under DDP (row-sparse gradients exchanged by rows, or densely where that is
    cheaper; lazy Adam on the union of the ranks' rows): the same steps as one process."""
    import torch.multiprocessing as mp

    users, items, r = _problem(60, 40, 900, seed=8)
    r = r.float()
    torch.manual_seed(0)
    model = BiasedMF(data=fake_facts(60, 40, len(r), float(r.mean())), dim=5, reg=0.1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    opt = Gradient().configure_optimizers(model)
    for batch in torch.arange(len(r)).split(300):
        model.gradients(users[batch], items[batch], r[batch])
        opt.step()
    out = tmp_path / "two.pt"
    mp.spawn(_gradient_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", users, items, r, state, out), nprocs=2)
    two = torch.load(out, weights_only=True)
    for key, value in model.state_dict().items():
        assert torch.allclose(two[key], value, atol=1e-5, rtol=0), key


@pytest.mark.parametrize("w0", [1.0, 0.3])
def test_implicit_feedbacks_matrix_free_cg_takes_the_materialized_cg_steps(w0):
    """model=ials's default solve: conjugate gradient without Gram matrices (products at the observed entries only)
    takes the steps the materialized Jacobi-preconditioned CG takes on A_u = YᵀY + Σ_{i∈N(u)} (c − 1) y yᵀ + λI."""
    from conftest import fake_facts

    from recsys.models.ials import IALS
    from recsys.solvers.als import CG_STEPS, conjugate_gradient, half_sweep

    g = torch.Generator().manual_seed(2)
    cells = torch.randperm(9 * 11, generator=g)[:40]
    users, items = cells // 11, cells % 11
    ratings = torch.randint(1, 6, (40,), generator=g).double()
    model = IALS(data=fake_facts(9, 11, 40), solver="als", dim=4, reg=0.3, alpha=0.7, unobserved_weight=w0).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    x0, y = model.net.user.weight.detach().clone(), model.net.item.weight.detach()
    grams, rhs = [], []
    for u in range(9):
        mine = users == u
        c = 1 + 0.7 * ratings[mine]
        f = y[items[mine]]
        grams.append(w0 * y.T @ y + f.T @ ((c - w0).unsqueeze(1) * f) + 0.3 * torch.eye(4, dtype=torch.float64))
        rhs.append(f.T @ c)
    expected = conjugate_gradient(torch.stack(grams), torch.stack(rhs), x0, CG_STEPS)
    active = torch.bincount(users, minlength=9) > 0
    expected[~active] = x0[~active]
    half_sweep(model.least_squares(), "user", users, items, ratings)  # als_solve=cg: the matrix-free path
    torch.testing.assert_close(model.net.user.weight.detach(), expected)
