"""Unit tests run for every model found in configs/model/*.yaml: adding a model config enrols the model.

Each model is built from its own config with fake data facts (as lightning-hydra-template's
tests/test_configs.py does), overfits a tiny set by gradient (and by ALS where it has a least-squares
form), rejects bad hyperparameters with errors naming them, and survives a Lightning checkpoint.
"""

import json

import lightning as L
import pytest
import torch
import yaml
from conftest import fake_facts, model_configs
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from recsys.solvers import als

MODELS = model_configs()
REGULARIZERS = ("reg", "reg_bias", "lambda_u", "lambda_v")
#: models fitted by sampling their posterior (model.solver=gibbs): no gradient or ALS fit, no fixed regularizer
SAMPLED = {name for name, path in MODELS.items() if yaml.safe_load(path.read_text()).get("solver") == "gibbs"}


def build(name: str, facts, **overrides):
    """The model as train.py builds it (Hydra, from its config); errors unwrapped from Hydra's."""
    cfg = OmegaConf.merge(OmegaConf.load(MODELS[name]), overrides)
    try:
        return instantiate(cfg, data=facts)
    except InstantiationException as err:
        raise err.__cause__ from None


def additive_ratings(n_users=20, n_items=15, n=120, seed=0):
    """μ + b_u + b_i on distinct pairs: a structure every model here can represent exactly."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.randperm(n_users * n_items, generator=g)[:n]
    users, items = cells // n_items, cells % n_items
    bu, bi = 0.3 * torch.randn(n_users, generator=g), 0.3 * torch.randn(n_items, generator=g)
    return users, items, 3.0 + bu[users] + bi[items]


def rmse(model, users, items, ratings) -> float:
    with torch.no_grad():
        return (model.predict(users, items) - ratings).square().mean().sqrt().item()


def tiny(name: str, ratings, prior: float = 1e-6, **overrides):
    spec = yaml.safe_load(MODELS[name].read_text())
    weak = {k: prior for k in REGULARIZERS if k in spec}  # (almost) no prior: the set can be fit exactly
    return build(name, fake_facts(20, 15, len(ratings), float(ratings.mean())), **weak, **overrides)


@pytest.mark.parametrize("name", MODELS)
def test_model_overfits_a_tiny_set_by_gradient(name):
    torch.manual_seed(0)
    users, items, ratings = additive_ratings()
    if name in SAMPLED:  # refuses gradient training, and its chain's running mean fits the set instead
        with pytest.raises(ValueError, match="model.solver=gibbs"):
            tiny(name, ratings, solver="gradient")
        from recsys.solvers.gibbs import Gibbs

        model = tiny(name, ratings).double()
        sweeper = als.Sweeper(model.chain(), users, items, ratings.double())
        model.track(users, items)
        for epoch in range(200):
            Gibbs.sample(model, sweeper, epoch)
            model.record(epoch)
        assert rmse(model, users, items, ratings.double()) < 0.05
        return
    lr = min(0.05, 10 * yaml.safe_load(MODELS[name].read_text())["optimizer"]["lr"])  # fast, within its range
    model = tiny(name, ratings, optimizer={"lr": lr})
    # models that predict from codes of the training set (autorec) encode it before predicting, as a run does
    encode = getattr(model, "refresh_codes", lambda *_: None)
    opt = model.configure_optimizers()
    encode(users, items, ratings)
    start = rmse(model, users, items, ratings)
    for _ in range(800):
        loss = model.objective(users, items, ratings)
        opt.zero_grad()
        loss.backward()
        opt.step()
    encode(users, items, ratings)
    assert rmse(model, users, items, ratings) < 0.05 < start


@pytest.mark.parametrize("name", MODELS)
def test_model_overfits_a_tiny_set_by_als_or_refuses_it(name):
    torch.manual_seed(0)
    users, items, ratings = additive_ratings()
    if name in SAMPLED:
        with pytest.raises(ValueError, match="model.solver=gibbs"):
            tiny(name, ratings, solver="als")
        return
    model = tiny(name, ratings)
    problem = model.least_squares()
    if problem is None:  # not bilinear: ALS must be refused, naming the model
        with pytest.raises(ValueError, match=f"{type(model).__name__} is not bilinear"):
            tiny(name, ratings, solver="als")
        return
    model = tiny(name, ratings, prior=1e-3, solver="als").double()  # a ridge that keeps k > n_r solvable
    for _ in range(50):
        for side in ("user", "item"):
            als.half_sweep(model.least_squares(), side, users, items, ratings.double())
    assert rmse(model, users, items, ratings.double()) < 0.05


@pytest.mark.parametrize("name", MODELS)
def test_model_rejects_bad_hyperparameters(name):
    spec = yaml.safe_load(MODELS[name].read_text())
    regularizers = [k for k in REGULARIZERS if k in spec]
    if name in SAMPLED:  # its priors' precisions are sampled; the settings it has are checked instead
        regularizers = []
        with pytest.raises(ValueError, match="model.burn_in=-1"):
            build(name, fake_facts(), burn_in=-1)
        with pytest.raises(ValueError, match="model.hyper='normal'"):
            build(name, fake_facts(), hyper="normal")
    else:
        assert regularizers, f"{name}: a rating model should expose its regularization"
    for key in regularizers:
        with pytest.raises(ValueError, match=f"model.{key}=-1.0"):
            build(name, fake_facts(), **{key: -1.0})
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'.* its hyperparameters are"):
        build(name, fake_facts(), nope=1)
    with pytest.raises(ValueError, match="model.solver='newton'"):
        build(name, fake_facts(), solver="newton")
    with pytest.raises(ValueError, match=r"torch.optim.* takes no argument \['nope'\]"):
        build(name, fake_facts(), optimizer={"nope": 0.9})
    with pytest.raises(ValueError, match="model.optimizer._target_='collections.OrderedDict': name an optimizer"):
        build(name, fake_facts(), optimizer={"_target_": "collections.OrderedDict"})
    with pytest.raises(ValueError, match="recsys.data.facts.DataFacts' is not a torch.optim.Optimizer"):
        build(name, fake_facts(), optimizer={"_target_": "recsys.data.facts.DataFacts"})
    with pytest.raises(ValueError, match="rating_min=5.0 must be below rating_max=1.0"):
        build(name, {**fake_facts().as_dict(), "rating_min": 5.0, "rating_max": 1.0})


@pytest.mark.parametrize("name", MODELS)
def test_model_saves_primitives_and_loads_from_a_lightning_checkpoint(name, udata, tmp_path):
    from recsys.data import RatingsDataModule

    dm = RatingsDataModule(path=str(udata), batch_size=512)
    dm.setup()
    model = build(name, dm.facts())
    json.dumps(dict(model.hparams))  # primitives only: weights_only loading needs nothing else
    spec = yaml.safe_load(MODELS[name].read_text())
    assert model.hparams.data == dm.facts().as_dict()
    assert model.hparams.optimizer["_target_"] == spec["optimizer"]["_target_"]
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = type(model).load_from_checkpoint(tmp_path / "m.ckpt", weights_only=True)
    users, items = dm.test_set[0], dm.test_set[1]
    assert torch.equal(loaded.predict(users, items), model.predict(users, items))
    assert torch.equal(loaded.user_seen, model.user_seen) and loaded.hparams == model.hparams
    with pytest.raises(ValueError, match="is not a checkpoint of a recsys model"):
        torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
        type(model).load_from_checkpoint(tmp_path / "other.ckpt")


@pytest.mark.parametrize("name", MODELS)
def test_scores_against_all_items_equal_pairwise_scores(name):
    torch.manual_seed(0)
    counts = torch.tensor([3, 1, 0, 2, 5, 1])  # user 2 and item 4 have no training ratings
    model = build(name, fake_facts(6, 5, 12, user_counts=counts, item_counts=torch.tensor([2, 3, 1, 4, 0])))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    users, known = torch.tensor([0, 2, 5, 1]), torch.tensor([True, True, True, False])  # user 1: unknown id
    fast = model.score_all_items(users, known)
    pairs = model.score(users.repeat_interleave(5), torch.arange(5).repeat(4), known.repeat_interleave(5),
                        torch.ones(20, dtype=torch.bool)).view(4, 5)
    assert torch.allclose(fast, pairs, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_closed_form_gradients_equal_autograd(name):
    """The gradient solver's fast path (``gradients``) computes the objective and the gradient autograd would."""
    torch.manual_seed(0)
    users, items, ratings = additive_ratings()
    users, items = torch.cat([users, users[:7]]), torch.cat([items, items[:7]])  # repeated rows add up
    ratings = torch.cat([ratings, ratings[:7]]) + 0.3 * torch.randn(len(users))
    spec = yaml.safe_load(MODELS[name].read_text())
    model = build(name, fake_facts(20, 15, len(ratings), float(ratings.mean())),
                  **({"init_std": 0.3} if "init_std" in spec else {})).double()
    if not callable(getattr(model, "gradients", None)):  # without closed-form gradients: autograd, if by gradient
        assert model.automatic_optimization is (model.hparams.solver == "gradient")
        return
    assert not model.automatic_optimization
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # biases away from their zero start
    loss = model.objective(users, items, ratings.double())
    expected = torch.autograd.grad(loss, list(model.parameters()))
    fast = model.gradients(users, items, ratings.double())
    assert fast.item() == pytest.approx(loss.item(), rel=1e-10)
    for (pname, p), g in zip(model.named_parameters(), expected):
        assert torch.allclose(p.grad, g, atol=1e-12, rtol=1e-9), pname


def test_autorec_dense_and_gathered_batches_agree(monkeypatch):
    """AutoRec computes a batch and its codes densely (items × users) or by gathering a row per rating, by
    density: both give the same objective, gradients and codes."""
    from recsys.models import autorec

    users, items, ratings = additive_ratings()
    torch.manual_seed(0)
    model = tiny("autorec", ratings).double()
    results = []
    for cells_per_rating in (0, 10**9):  # gather always, dense always
        monkeypatch.setattr(autorec, "DENSE_PER_RATING", cells_per_rating)
        model.zero_grad()
        loss = model.objective(users, items, ratings.double())
        loss.backward()
        model.refresh_codes(users, items, ratings.double())
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()], model.codes.clone()))
    (loss_g, grads_g, codes_g), (loss_d, grads_d, codes_d) = results
    torch.testing.assert_close(loss_d, loss_g)
    torch.testing.assert_close(codes_d, codes_g)
    assert codes_g.std() > 0
    for g_dense, g_gather in zip(grads_d, grads_g, strict=True):
        torch.testing.assert_close(g_dense, g_gather)
    assert loss_g > 0 and any(g.abs().sum() > 0 for g in grads_g)
