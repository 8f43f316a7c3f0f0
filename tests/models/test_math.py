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


# -- every model's prediction, written out from its paper's equation with the model's own parameters -------------
def _pairs(n_users=6, n_items=5):
    users = torch.arange(n_users).repeat_interleave(n_items)
    return users, torch.arange(n_items).repeat(n_users)


def _randomize(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.2, 0.5)
    return model


def test_biased_mf_predicts_mu_plus_both_biases_plus_the_factor_product():
    model = _randomize(BiasedMF(data=fake_facts(6, 5, global_mean=3.3), dim=3))
    u, i = _pairs()
    n = model.net
    by_hand = 3.3 + n.user_bias.weight[u, 0] + n.item_bias.weight[i, 0] + (n.user.weight[u] * n.item.weight[i]).sum(1)
    torch.testing.assert_close(model(u, i), by_hand)


@pytest.mark.parametrize("solver", ["gradient", "als"])
def test_biased_mf_pays_lambda_on_factors_and_lambda_b_on_biases_once_per_rating(solver):
    """Koren et al. 2009's regularized squared error: the batch mean of (r − r̂)² + λ(‖p_u‖² + ‖q_i‖²) +
    λ_b(b_u² + b_i²), λ ≠ λ_b; ALS's row ridges carry the same two constants (λ on factors, λ_b on the bias)."""
    import numpy as np

    model = _randomize(BiasedMF(data=fake_facts(20, 15, global_mean=3.2), dim=3, reg=0.1, reg_bias=0.7,
                                solver=solver)).double()
    u, i, r = _problem()
    n = model.net
    p, q = n.user.weight.detach().numpy(), n.item.weight.detach().numpy()
    bu, bi = n.user_bias.weight.detach().numpy()[:, 0], n.item_bias.weight.detach().numpy()[:, 0]
    terms = []
    for a, b, rating in zip(u.tolist(), i.tolist(), r.tolist()):
        pred = 3.2 + bu[a] + bi[b] + p[a] @ q[b]
        terms.append((rating - pred) ** 2 + 0.1 * (p[a] @ p[a] + q[b] @ q[b]) + 0.7 * (bu[a] ** 2 + bi[b] ** 2))
    assert float(model.objective(u, i, r.double())) == pytest.approx(np.mean(terms), rel=1e-10)
    ridge = model.least_squares().ridge
    assert [float(x) for x in ridge[0]] == pytest.approx([0.1, 0.1, 0.1, 0.7])


def test_baseline_predicts_mu_plus_both_biases():
    from recsys.models.baseline import Baseline

    model = _randomize(Baseline(data=fake_facts(6, 5, global_mean=3.3)))
    u, i = _pairs()
    torch.testing.assert_close(model(u, i), 3.3 + model.net.user_bias.weight[u, 0] + model.net.item_bias.weight[i, 0])


def test_pmf_predicts_mu_plus_the_factor_product_and_its_sigmoid_variant_squashes_it():
    u, i = _pairs()
    pmf = _randomize(PMF(data=fake_facts(6, 5, global_mean=3.3), dim=3))
    dot = (pmf.net.user.weight[u] * pmf.net.item.weight[i]).sum(1)
    torch.testing.assert_close(pmf(u, i), 3.3 + dot)
    sig = _randomize(SigmoidPMF(data=fake_facts(6, 5, global_mean=3.3), dim=3))
    dot = (sig.net.user.weight[u] * sig.net.item.weight[i]).sum(1)
    torch.testing.assert_close(sig(u, i), 1 + 4 * torch.sigmoid(dot))


def test_svdpp_adds_the_normalized_implicit_sum_of_the_users_history():
    from recsys.data.interactions import Interactions
    from recsys.models.svdpp import SVDpp

    model = _randomize(SVDpp(data=fake_facts(6, 5, global_mean=3.3), dim=3))
    hist_u, hist_i = torch.tensor([0, 0, 0, 1, 2, 2, 4]), torch.tensor([0, 2, 4, 1, 3, 0, 2])  # user 3, 5: none
    model.attach_interactions(Interactions(hist_u, hist_i, torch.ones(7), 6, 5))
    u, i = _pairs()
    n, y = model.net, model.implicit.weight
    implicit = torch.zeros(6, 3)
    for user in range(6):
        mine = hist_i[hist_u == user]
        if len(mine):
            implicit[user] = y[mine].sum(0) / len(mine) ** 0.5
    by_hand = 3.3 + n.user_bias.weight[u, 0] + n.item_bias.weight[i, 0] + \
        (n.item.weight[i] * (n.user.weight[u] + implicit[u])).sum(1)
    torch.testing.assert_close(model(u, i), by_hand)
    assert (implicit[u] * n.item.weight[i]).sum(1).abs().max() > 0.1  # the implicit term matters here


def test_autorec_decodes_the_sigmoid_code_of_each_items_rating_vector():
    from recsys.data.interactions import Interactions
    from recsys.models.autorec import AutoRec

    model = _randomize(AutoRec(data=fake_facts(6, 5, global_mean=3.3), hidden=4))
    u_obs, i_obs, r_obs = _problem(6, 5, 18, seed=4)
    model.attach_interactions(Interactions(u_obs, i_obs, r_obs, 6, 5))
    model.refresh()
    dense = torch.zeros(5, 6)  # r_i ∈ R^m, unobserved 0
    dense[i_obs, u_obs] = r_obs
    h = torch.sigmoid(dense @ model.encoder.weight + model.encoder_bias)  # g(V r_i + μ)
    u, i = _pairs()
    by_hand = (model.decoder.weight[u] * h[i]).sum(1) + model.decoder_bias.weight[u, 0]  # W h_i + b
    torch.testing.assert_close(model(u, i), by_hand)


@pytest.mark.parametrize("values", ["binary", "rating"])
def test_ease_solves_its_constrained_ridge_in_closed_form_and_scores_x_times_b(values):
    """B minimizes ‖X − XB‖² + λ‖B‖² with diag(B) = 0: its stationarity condition is (XᵀX + λI)(I − B) diagonal.
    X holds 1 per interaction, or its rating with ``values=rating``."""
    from recsys.data.interactions import Interactions
    from recsys.models.ease import EASE

    g = torch.Generator().manual_seed(3)
    cells = torch.randperm(8 * 6, generator=g)[:26]
    users, items = cells // 6, cells % 6
    ratings = torch.randint(1, 6, (26,), generator=g).float()
    model = EASE(data=fake_facts(8, 6, 26), solver="closed_form", reg=2.5, values=values).double()
    train = Interactions(users, items, ratings, 8, 6)
    model.attach_interactions(train)
    model.fit_closed_form(train)
    x = torch.zeros(8, 6, dtype=torch.float64)
    x[users, items] = 1.0 if values == "binary" else ratings.double()
    b = model.weights.double()
    assert torch.equal(b.diagonal(), torch.zeros(6, dtype=torch.float64))
    kkt = (x.T @ x + 2.5 * torch.eye(6, dtype=torch.float64)) @ (torch.eye(6, dtype=torch.float64) - b)
    off = kkt - torch.diag(kkt.diagonal())
    assert off.abs().max() < 1e-3 and (kkt.diagonal() > 0).all()
    torch.testing.assert_close(model.score_all_items(torch.arange(8)), (x @ b).to(model.weights.dtype))
    row = model.fold_in(torch.tensor([1, 4]), torch.tensor([5.0, 2.0]))  # X_new·B, X_new as the model's X
    x_new = torch.zeros(6, dtype=torch.float64)
    x_new[torch.tensor([1, 4])] = 1.0 if values == "binary" else torch.tensor([5.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(model.score_all_items(torch.tensor([row]))[0], (x_new @ b).to(model.weights.dtype))


def test_ease_refuses_an_item_count_whose_matrices_do_not_fit(monkeypatch):
    from recsys.models import ease, item_item

    monkeypatch.setattr(item_item, "available_bytes", lambda device: 10 * 2**30)  # 10 GiB free
    with pytest.raises(MemoryError, match=r"model=ease needs 13.7 GiB on cpu for 35000 items .* and 10.0 GiB is free: "
                                          r"use a factor model"):
        ease.EASE(data=fake_facts(10, 35000, 100), solver="closed_form")
    with pytest.raises(ValueError, match="model.solver='gradient': EASE is fitted by model.solver=closed_form only"):
        ease.EASE(data=fake_facts(10, 5, 100), solver="gradient")


@pytest.mark.parametrize(("w0", "confidence"), [(1.0, "linear"), (0.2, "linear"), (0.2, "log")])
def test_ials_user_step_solves_the_all_pairs_confidence_weighted_ridge(w0, confidence):
    """One exact user half-sweep gives x_u = (w₀YᵀY + Σ_{i∈N(u)} (c_ui − w₀) y_i y_iᵀ + λI)⁻¹ Σ_{i∈N(u)} c_ui y_i,
    c = 1 + α·r (``confidence=log``: 1 + α·log(1 + r/ε), Hu et al. 2008, eq. 6): the minimizer of
    Σ_{all i} c_ui (p_ui − x_uᵀy_i)² + λ‖x_u‖² with weight w₀ on unobserved pairs
    (Rendle et al. 2021; 1 in Hu et al.), written out densely."""
    from recsys.models.ials import IALS
    from recsys.solvers.als import half_sweep

    g = torch.Generator().manual_seed(5)
    cells = torch.randperm(7 * 9, generator=g)[:25]
    users, items = cells // 9, cells % 9
    ratings = torch.randint(1, 6, (25,), generator=g).double()
    model = _randomize(IALS(data=fake_facts(7, 9, 25), solver="als", dim=3, reg=0.7, alpha=2.0,
                            unobserved_weight=w0, confidence=confidence, epsilon=0.5)).double()
    half_sweep(model.least_squares(), "user", users, items, ratings, solve="cholesky")
    y = model.net.item.weight.detach()
    for u in users.unique().tolist():
        c = torch.full((9,), w0, dtype=torch.float64)
        p = torch.zeros(9, dtype=torch.float64)
        mine = users == u
        r = ratings[mine]
        c[items[mine]] = 1 + 2.0 * (r if confidence == "linear" else torch.log(1 + r / 0.5))
        p[items[mine]] = 1.0
        a = y.T @ (c.unsqueeze(1) * y) + 0.7 * torch.eye(3, dtype=torch.float64)
        expected = torch.linalg.solve(a, y.T @ (c * p))
        torch.testing.assert_close(model.net.user.weight[u].detach(), expected)


def test_bpr_objective_is_the_papers_pairwise_log_likelihood_with_its_priors():
    """BPR-Opt (Rendle et al. 2009): −Σ ln σ(x̂_ui − x̂_uj) + λ‖Θ‖² over sampled (u, i, j), x̂_ui = p_uᵀq_i + b_i,
    averaged over the pairs; written out pair by pair."""
    from recsys.models.bpr import BPR

    model = _randomize(BPR(data=fake_facts(6, 8, 10), dim=3, reg=0.3, reg_bias=0.2)).double()
    users, items = torch.tensor([0, 1, 1, 5]), torch.tensor([2, 3, 7, 0])
    neg = torch.tensor([[1, 4], [0, 0], [6, 2], [3, 7]])
    p, q, b = model.net.user.weight.detach(), model.net.item.weight.detach(), model.item_bias.weight.detach()[:, 0]
    terms = []
    for row in range(4):
        u, i = int(users[row]), int(items[row])
        for j in neg[row].tolist():
            x_ui, x_uj = p[u] @ q[i] + b[i], p[u] @ q[j] + b[j]
            prior = 0.3 * (p[u] @ p[u] + q[i] @ q[i] + q[j] @ q[j]) + 0.2 * (b[i] ** 2 + b[j] ** 2)
            terms.append(-torch.log(torch.sigmoid(x_ui - x_uj)) + prior)
    expected = torch.stack(terms).mean()
    torch.testing.assert_close(model.objective(users, items, torch.ones(4), neg).detach(), expected)
    torch.testing.assert_close(model.gradients(users, items, torch.ones(4), neg), expected)
    torch.testing.assert_close(model(users, items), (p[users] * q[items]).sum(1) + b[items])


def test_ials_refuses_an_unobserved_weight_above_the_observed_ones():
    from recsys.models.ials import IALS

    with pytest.raises(ValueError, match=r"model.unobserved_weight=1.5: must lie in \(0, 1\]"):
        IALS(data=fake_facts(7, 9, 25), solver="als", unobserved_weight=1.5)
