import pytest
import torch

from recsys.models import PMF, BiasedMF, SigmoidPMF


def _problem(n_users=20, n_items=15, n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    cells = torch.randperm(n_users * n_items, generator=g)[:n]  # distinct (user, item) pairs
    r = torch.randint(1, 6, (n,), generator=g).float()
    return cells // n_items, cells % n_items, r


def _kw(r, n_users=20, n_items=15):
    return dict(num_users=n_users, num_items=n_items, num_train_ratings=len(r), global_mean=float(r.mean()))


@pytest.mark.parametrize("cls,extra", [
    (BiasedMF, dict(dim=8, reg=0.0)),
    (PMF, dict(dim=8, lambda_u=1e-4, lambda_v=1e-4)),
    (SigmoidPMF, dict(dim=8, lambda_u=1e-5, lambda_v=1e-5)),
])
def test_each_model_overfits_a_tiny_set(cls, extra):
    torch.manual_seed(0)
    u, i, r = _problem(n=60)
    model = cls(**_kw(r), lr=0.05, **extra)
    opt = model.configure_optimizers()
    start = (model.predict(u, i) - r).square().mean().sqrt().item()
    for _ in range(1500):
        loss = model.objective(u, i, r)
        opt.zero_grad()
        loss.backward()
        opt.step()
    rmse = (model.predict(u, i) - r).square().mean().sqrt().item()
    assert rmse < 0.1 < start


def test_pmf_minibatch_loss_is_an_unbiased_estimate_of_E():
    torch.manual_seed(0)
    u, i, r = _problem(n=240)
    model = PMF(**_kw(r), dim=5, lambda_u=2.0, lambda_v=0.5).double()
    r = r.double()
    full = model.map_objective(u, i, r)
    perm = torch.randperm(len(r))
    # averaged over one epoch of equal batches, N * loss is exactly E
    batches = [model.objective(u[b], i[b], r[b]) for b in perm.split(40)]
    assert torch.allclose(len(r) * torch.stack(batches).mean(), full, rtol=1e-12)
    # and the gradients agree as well
    g_full = torch.autograd.grad(full / len(r), model.net.user.weight)[0]
    g_mean = torch.autograd.grad(torch.stack(batches).mean(), model.net.user.weight)[0]
    assert torch.allclose(g_full, g_mean, rtol=1e-10, atol=1e-12)
    # E by hand, as written in the paper
    pred = model.mu + (model.net.user.weight[u] * model.net.item.weight[i]).sum(1)
    by_hand = 0.5 * (r - pred).square().sum() + 1.0 * model.net.user.weight.square().sum() \
        + 0.25 * model.net.item.weight.square().sum()
    assert torch.allclose(full, by_hand)


def test_sigmoid_pmf_scales_targets_and_rounds():
    model = SigmoidPMF(num_users=2, num_items=2, num_train_ratings=4, rating_min=1.0, rating_max=5.0, round_step=1.0)
    assert torch.allclose(model.target(torch.tensor([1.0, 3.0, 5.0])), torch.tensor([0.0, 0.5, 1.0]))
    pred = model.predict(torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert torch.equal(pred, pred.round()) and ((pred >= 1) & (pred <= 5)).all()


def test_predictions_are_clipped_to_the_rating_range():
    model = BiasedMF(num_users=2, num_items=2, global_mean=3.0, rating_min=1.0, rating_max=5.0)
    with torch.no_grad():
        model.net.user_bias.weight[:] = torch.tensor([[10.0], [-10.0]])
    assert model.predict(torch.tensor([0, 1]), torch.tensor([0, 0])).tolist() == [5.0, 1.0]


@pytest.mark.parametrize("kwargs,match", [
    (dict(optimizer="rmsprop"), "model.optimizer='rmsprop'"),
    (dict(reg=-1.0), "model.reg=-1.0"),
    (dict(rating_min=5.0, rating_max=1.0), "rating_min=5.0"),
])
def test_bad_hyperparameters_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BiasedMF(num_users=2, num_items=2, **kwargs)
