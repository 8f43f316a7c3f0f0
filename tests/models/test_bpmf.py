"""Bayesian PMF by Gibbs sampling: the conditional is ALS's normal equations, draws have its covariance,
predictions are running means over the kept samples, DDP ranks draw one chain, train.py and load serve it."""

import json

import pytest
import torch
from conftest import fake_facts, gloo_collectives

import recsys
from recsys.models.bpmf import BPMF
from recsys.solvers import als
from recsys.solvers.gibbs import Gibbs, normals, sample_side
from recsys.training import train


def _problem(n_users, n_items, n, seed):
    g = torch.Generator().manual_seed(seed)
    cells = torch.randperm(n_users * n_items, generator=g)[:n]
    return cells // n_items, cells % n_items, torch.randint(1, 6, (n,), generator=g).double()


def _model(r, n_users, n_items, **kw):
    torch.manual_seed(0)
    return BPMF(data=fake_facts(n_users, n_items, len(r), float(r.mean())), solver="gibbs", **kw).double()


@pytest.mark.parametrize("alpha", [1.0, 2.5])
def test_the_conditional_mean_is_the_als_solution(alpha):
    """No sampled noise, prior mean 0 and precision αλI: the draw is ALS's exact ridge solution (λ per row)."""
    users, items, r = _problem(30, 20, 300, seed=1)
    model, lam = _model(r, 30, 20, dim=4), 0.7
    width = 5
    reference = _model(r, 30, 20, dim=4)
    reference.load_state_dict(model.state_dict())
    sweeper = als.Sweeper(model.chain().problem, users, items, r)
    sample_side(sweeper, model.chain().problem, "user", torch.zeros(width), alpha * lam * torch.eye(width), alpha, None)
    exact = als.LeastSquares(reference.net, reference.link.target, (lam, lam), "row")
    als.half_sweep(exact, "user", users, items, r, solve="cholesky")
    assert torch.allclose(model.chain().problem.weights("user"), exact.weights("user"), atol=1e-10)


def test_draws_have_the_conditionals_mean_and_covariance():
    users, items, r = _problem(3, 12, 30, seed=2)
    model = _model(r, 3, 12, dim=2)
    problem = model.chain().problem
    sweeper = als.Sweeper(problem, users, items, r)
    mu, lam, alpha = torch.tensor([0.1, -0.2, 0.05]), torch.diag(torch.tensor([2.0, 3.0, 4.0])), 1.7
    # the conditional of user 0, from its ratings (items fixed): precision αG + Λ, mean A⁻¹(αb + Λμ)
    f = torch.cat([problem.tables.item.weight.detach(), torch.ones(12, 1, dtype=torch.float64)], 1)
    mine = users == 0
    t = r[mine] - model.link.mu - problem.tables.item_bias.weight.detach()[items[mine], 0]
    a = alpha * f[items[mine]].T @ f[items[mine]] + lam
    mean = torch.linalg.solve(a, alpha * f[items[mine]].T @ t + lam @ mu)
    draws = []
    for epoch in range(4000):
        z = normals(0, epoch, "user", 3, 3).double()
        sample_side(sweeper, problem, "user", mu, lam, alpha, z)
        draws.append(problem.weights("user")[0].clone())
    draws = torch.stack(draws)
    assert torch.allclose(draws.mean(0), mean, atol=0.05 * float(a.diagonal().rsqrt().max()))
    assert torch.allclose(torch.cov(draws.T), torch.linalg.inv(a), rtol=0.1, atol=5e-3)


def _chain(model, users, items, r, epochs, **kw):
    sweeper = als.Sweeper(model.chain().problem, users, items, r, **kw)
    for epoch in range(epochs):
        Gibbs.sample(model.chain(), sweeper, epoch)
        model.record(epoch)


@pytest.mark.parametrize("hyper", ["gamma", "wishart"])
def test_predictions_are_the_running_mean_of_the_kept_samples(hyper):
    users, items, r = _problem(40, 30, 600, seed=3)
    model = _model(r, 40, 30, dim=3, burn_in=2, hyper=hyper)
    tracked_u, tracked_i = torch.tensor([0, 5, 7, 39]), torch.tensor([1, 2, 29, 0])
    model.track(tracked_u, tracked_i)
    sweeper = als.Sweeper(model.chain().problem, users, items, r)
    samples, tables = [], []
    with torch.no_grad():
        for epoch in range(6):
            Gibbs.sample(model.chain(), sweeper, epoch)
            model.record(epoch)
            if epoch >= 2:
                samples.append(model.link.rating(model.net(tracked_u, tracked_i)))
                tables.append(model.net.user.weight.clone())
            if epoch == 1:  # before the first kept sample: the current sample predicts
                assert torch.allclose(model(tracked_u, tracked_i), model.link.rating(model.net(tracked_u, tracked_i)))
        assert int(model.kept) == 4
        assert torch.allclose(model(tracked_u, tracked_i), torch.stack(samples).mean(0), atol=1e-10)
        # other pairs: the running means of the tables (the mean of products is not the product of means)
        assert torch.allclose(model.mean_net.user.weight, torch.stack(tables).mean(0), atol=1e-10)
        other = model(torch.tensor([3]), torch.tensor([4]))
        assert torch.allclose(other, model.link.rating(model.mean_net(torch.tensor([3]), torch.tensor([4]))))
        assert float(model.alpha) > 0 and torch.isfinite(model.hyper_lam).all()


def _ddp_worker(rank, world, init, users, items, ratings, state, hyper, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model = _model(ratings, 50, 30, dim=4, burn_in=1, hyper=hyper)
        model.track(torch.arange(10), torch.arange(10))
        model.load_state_dict(state)
        gather, reduce = gloo_collectives(world)

        _chain(model, users, items, ratings, 5, rank=rank, world=world, gather=gather, reduce=reduce)
        if rank == 0:
            torch.save(model.state_dict(), out)
    finally:
        dist.destroy_process_group()


@pytest.mark.integration  # starts processes
@pytest.mark.parametrize("hyper", ["gamma", "wishart"])
def test_two_ranks_draw_the_chain_of_one_process(tmp_path, hyper):
    """Rows sharded over 2 gloo processes, draws keyed by (seed, epoch, side, row): one process's chain."""
    import torch.multiprocessing as mp

    users, items, r = _problem(50, 30, 700, seed=5)
    model = _model(r, 50, 30, dim=4, burn_in=1, hyper=hyper)
    model.track(torch.arange(10), torch.arange(10))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    _chain(model, users, items, r, 5)
    out = tmp_path / "two.pt"
    mp.spawn(_ddp_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", users, items, r, state, hyper, out),
             nprocs=2)
    two = torch.load(out, weights_only=True)
    for key, value in model.state_dict().items():
        assert torch.allclose(two[key].double(), value.double(), atol=1e-5, rtol=1e-5), key
    assert int(two["kept"]) == 4


def test_bpmf_trains_through_train_py_and_load_serves_its_posterior_means(compose_cfg, tmp_path):
    metrics = train(compose_cfg("model=bpmf", "trainer.max_epochs=8", "model.burn_in=3", "model.dim=4"))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["epochs"] == 8 and saved["test/rmse"] == pytest.approx(metrics["test/rmse"])
    assert saved["test/rmse"] < 1.2
    rec = recsys.load(tmp_path / "run")
    model = rec.model
    assert int(model.kept) == 5 and len(model.pair_keys) > 0
    # the tracked pairs' running means came back with the checkpoint: the same predictions as in the run
    users, items = model.pair_keys // model.data.num_items, model.pair_keys % model.data.num_items
    with torch.no_grad():
        assert torch.allclose(model(users, items).double(), model.pair_sums / 5)
    assert model.factor_tables() is model.mean_net  # recommend, similar_items and fold_in use the means
    top = rec.recommend([rec.users.ids[0]], n=3)
    with torch.no_grad():
        scores = model.link.rating(model.mean_net.all_items(torch.tensor([0])))[0]
    assert len(top) == 3 and float(top["score"].max()) == pytest.approx(float(scores.max()), abs=1e-5)


def test_bpmf_refuses_other_solvers_and_other_models_refuse_gibbs():
    with pytest.raises(ValueError, match="model.solver=gibbs"):
        BPMF(data=fake_facts(), solver="als")
    from recsys.models.mf import BiasedMF

    with pytest.raises(ValueError, match="BiasedMF is fitted by model.solver=gradient or model.solver=als only"):
        BiasedMF(data=fake_facts(), solver="gibbs")
