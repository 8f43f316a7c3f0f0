"""The models' own math: PMF's minibatch estimate of E, the sigmoid link, clipping to the scale."""

import pytest
import torch
from conftest import fake_facts

from recsys.models.mf import BiasedMF
from recsys.models.pmf import PMF
from recsys.models.pmf_sigmoid import SigmoidPMF


def _problem(n_users=20, n_items=15, n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    cells = torch.randperm(n_users * n_items, generator=g)[:n]  # distinct (user, item) pairs
    r = torch.randint(1, 6, (n,), generator=g).float()
    return cells // n_items, cells % n_items, r


def test_pmf_minibatch_loss_is_an_unbiased_estimate_of_E():
    torch.manual_seed(0)
    u, i, r = _problem(n=240)
    model = PMF(data=fake_facts(20, 15, len(r), float(r.mean())), dim=5, lambda_u=2.0, lambda_v=0.5).double()
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
    pred = model.link.mu + (model.net.user.weight[u] * model.net.item.weight[i]).sum(1)
    by_hand = 0.5 * (r - pred).square().sum() + 1.0 * model.net.user.weight.square().sum() \
        + 0.25 * model.net.item.weight.square().sum()
    assert torch.allclose(full, by_hand)


def test_sigmoid_pmf_scales_targets_and_rounds():
    model = SigmoidPMF(data=fake_facts(2, 2, 4), round_step=1.0)
    assert torch.allclose(model.link.target(torch.tensor([1.0, 3.0, 5.0])), torch.tensor([0.0, 0.5, 1.0]))
    pred = model.predict(torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert torch.equal(pred, pred.round()) and ((pred >= 1) & (pred <= 5)).all()
    centred = SigmoidPMF(data=fake_facts(2, 2, 4, global_mean=4.0), center=True)
    with torch.no_grad():
        centred.net.user.weight.zero_()
    # c = logit(t(μ)): with zero factors the prediction is the training mean
    assert centred.predict(torch.tensor([0]), torch.tensor([0])).item() == pytest.approx(4.0, abs=1e-5)


def test_predictions_are_clipped_to_the_rating_range():
    model = BiasedMF(data=fake_facts(2, 2, global_mean=3.0))
    with torch.no_grad():
        model.net.user_bias.weight[:] = torch.tensor([[10.0], [-10.0]])
    assert model.predict(torch.tensor([0, 1]), torch.tensor([0, 0])).tolist() == [5.0, 1.0]
