"""Unit tests run for every model found in configs/model/*.yaml: adding a model config enrols the model.

Each model is built from its own config with fake data facts (as lightning-hydra-template's
tests/test_configs.py does) and handed its training interactions through the contract (``setup_interactions``).
It fits a target only its own terms can fit (rank-2 factors plus biases, every user with a history) by gradient
(and by ALS where it has a least-squares form); its all-item scores and ``recommend`` equal its own pairwise
scores; a loaded copy scores without the data; it rejects bad hyperparameters with errors naming them, and
survives a Lightning checkpoint.
"""

import inspect
import json

import lightning as L
import pytest
import torch
import yaml
from conftest import fake_facts, model_configs
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from recsys import validation
from recsys.data.interactions import Interactions
from recsys.solvers import als
from recsys.solvers.gradient import Gradient
from recsys.system import System

MODELS = model_configs()
#: each config's model class: what a model is (task, solvers, training input, regularizers) is read from it
CLASSES = {name: get_class(yaml.safe_load(path.read_text())["_target_"]) for name, path in MODELS.items()}
#: models fitted by sampling their posterior (model.solver=gibbs): no gradient or ALS fit, no fixed regularizer
SAMPLED = {name for name, cls in CLASSES.items() if "gibbs" in cls.solvers}
#: models fitted in one solve (model.solver=closed_form)
CLOSED = {name for name, cls in CLASSES.items() if "closed_form" in cls.solvers}
#: ranking models: trained on implicit feedback, selected and judged by ranking
RANKING = {name for name, cls in CLASSES.items() if cls.task == "ranking"}


def regularizers(name: str) -> tuple[str, ...]:
    """The hyperparameters the model's signature annotates as regularizers (recsys.validation.Reg)."""
    return validation.regularizers(CLASSES[name].__init__)


def build(name: str, facts, **overrides):
    """The model as train.py builds it (Hydra, from its config); errors unwrapped from Hydra's."""
    cfg = OmegaConf.merge(OmegaConf.load(MODELS[name]), overrides)
    try:
        return instantiate(cfg, data=facts)
    except InstantiationException as err:
        raise err.__cause__ from None


#: models whose terms cannot represent rank-2 factors (μ + b_u + b_i only): they fit the additive part
ADDITIVE_ONLY = {"baseline"}


def additive_ratings(n_users=20, n_items=15, n=120, seed=0):
    """μ + b_u + b_i on distinct pairs."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.randperm(n_users * n_items, generator=g)[:n]
    users, items = cells // n_items, cells % n_items
    bu, bi = 0.3 * torch.randn(n_users, generator=g), 0.3 * torch.randn(n_items, generator=g)
    return users, items, 3.0 + bu[users] + bi[items]


def structured_ratings(name: str, n_users=20, n_items=15, n=200, seed=0):
    """The target a model must fit with its own terms: μ + b_u + b_i + p_uᵀq_i with rank-2 factors (the additive
    part alone for ADDITIVE_ONLY models), on distinct pairs where every user has a history of several items."""
    users, items, ratings = additive_ratings(n_users, n_items, n, seed)
    if name not in ADDITIVE_ONLY:
        g = torch.Generator().manual_seed(seed + 1)
        p, q = 0.6 * torch.randn(n_users, 2, generator=g), 0.6 * torch.randn(n_items, 2, generator=g)
        ratings = ratings + (p[users] * q[items]).sum(1)
    return users, items, ratings


def grouped_interactions(seed=0):
    """Implicit feedback with two groups: users 0-9 interact with items 0-6, users 10-19 with items 7-14, each
    with one item of its group held out: (users, items, held-out (user, item) pairs)."""
    g = torch.Generator().manual_seed(seed)
    users, items, held = [], [], []
    for u in range(20):
        group = torch.arange(7) if u < 10 else torch.arange(7, 15)
        group = group[torch.randperm(len(group), generator=g)]
        held.append((u, int(group[0])))
        users += [u] * (len(group) - 2)
        items += group[1:-1].tolist()  # one more left out: not every user rated everything else
    return torch.tensor(users), torch.tensor(items), held


def interactions(users, items, ratings, n_users=20, n_items=15) -> Interactions:
    return Interactions(users, items, ratings, n_users, n_items)


def rmse(model, users, items, ratings) -> float:
    with torch.no_grad():
        return (model.predict(users, items) - ratings).square().mean().sqrt().item()


def tiny(name: str, ratings, prior: float = 1e-6, **overrides):
    weak = dict.fromkeys(regularizers(name), prior)  # (almost) no prior: the set can be fit exactly
    return build(name, fake_facts(20, 15, len(ratings), float(ratings.mean())), **weak, **overrides)


@pytest.mark.parametrize("name", MODELS)
def test_model_fits_a_target_of_its_own_terms_by_gradient(name):
    """Every model receives its training data through the contract and fits rank-2 factors plus biases."""
    torch.manual_seed(0)
    users, items, ratings = structured_ratings(name)
    train = interactions(users, items, ratings)
    if name in RANKING:  # fitted by its own solver on implicit feedback: it ranks each user's group of items first
        if "gradient" not in CLASSES[name].solvers:
            with pytest.raises(ValueError, match=f"{CLASSES[name].__name__} is fitted by model.solver=.* only"):
                tiny(name, ratings, solver="gradient")
        g_users, g_items, held_out = grouped_interactions()
        model = tiny(name, ratings, prior=1.0).double()  # a ridge of the data's scale
        train_g = interactions(g_users, g_items, torch.ones(len(g_users)))
        model.attach_interactions(train_g)
        if model.has_closed_form():
            model.fit_closed_form(train_g)
        elif model.negatives_per_positive():  # pairwise: gradient steps on positives with sampled negatives
            train_g, gen = interactions(g_users, g_items, torch.ones(len(g_users))), torch.Generator().manual_seed(0)
            model = tiny(name, ratings, prior=0.05, optimizer={"lr": 0.01}).double()
            model.attach_interactions(train_g)
            opt = Gradient().configure_optimizers(model)
            for _ in range(300):
                neg = train_g.sample_negatives(g_users, model.negatives_per_positive(), gen)
                opt.zero_grad()
                if model.has_closed_form_gradients():  # the solver's fast path where the model has one
                    model.gradients(g_users, g_items, torch.ones(len(g_users)), neg)
                else:
                    model.objective(g_users, g_items, torch.ones(len(g_users)), neg).backward()
                opt.step()
        else:
            for _ in range(20):
                for side in ("user", "item"):
                    als.half_sweep(model.least_squares(), side, g_users, g_items, torch.ones(len(g_users)).double())
        scores = model.score_all_items(torch.arange(20))
        in_group = (torch.arange(20).unsqueeze(1) < 10) == (torch.arange(15).unsqueeze(0) < 7)
        for u, i in held_out:  # an unseen item of the user's own group beats every item of the other group
            assert scores[u, i] > scores[u][~in_group[u]].max()
        return
    if name in SAMPLED:  # refuses gradient training, and its chain's running mean fits the set instead
        with pytest.raises(ValueError, match="model.solver=gibbs"):
            tiny(name, ratings, solver="gradient")
        from recsys.solvers.gibbs import Gibbs

        model = tiny(name, ratings).double()
        model.attach_interactions(train)
        sweeper = als.Sweeper(model.chain().problem, users, items, ratings.double())
        model.track(users, items)
        for epoch in range(200):
            Gibbs.sample(model.chain(), sweeper, epoch)
            model.record(epoch)
        assert rmse(model, users, items, ratings.double()) < 0.05
        return
    if "gradient" not in CLASSES[name].solvers:  # a rating model fitted by its own solver: it beats the mean
        model = tiny(name, ratings, prior=1.0).double()
        model.attach_interactions(train)
        if model.has_closed_form():
            model.fit_closed_form(train)
        else:
            for _ in range(20):
                for side in ("user", "item"):
                    als.half_sweep(model.least_squares(), side, users, items, ratings.double())
        assert rmse(model, users, items, ratings.double()) < 0.8 * float(ratings.double().std())
        return
    lr = min(0.05, 10 * yaml.safe_load(MODELS[name].read_text())["optimizer"]["lr"])  # fast, within its range
    model = tiny(name, ratings, optimizer={"lr": lr})
    model.attach_interactions(train)
    opt = Gradient().configure_optimizers(model)
    model.refresh()
    start = rmse(model, users, items, ratings)
    for step in range(1500):
        loss = model.objective(users, items, ratings)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 99:  # stop once fitted: the bound below is what is asserted
            model.refresh()
            if rmse(model, users, items, ratings) < 0.05:
                break
    model.refresh()
    assert rmse(model, users, items, ratings) < 0.05 < start


@pytest.mark.parametrize("name", MODELS)
def test_model_fits_a_target_of_its_own_terms_by_als_or_refuses_it(name):
    torch.manual_seed(0)
    users, items, ratings = structured_ratings(name)
    cls = CLASSES[name]
    if "als" not in cls.solvers:  # the contract refuses it, naming the model and the solvers it declares
        fitted = " or ".join(f"model.solver={s}" for s in cls.solvers)
        with pytest.raises(ValueError, match=f"model.solver='als': {cls.__name__} is fitted by {fitted} only"):
            tiny(name, ratings, solver="als")
        return
    if name in RANKING:  # its ALS fit on implicit feedback is the test above's; here: the form ALS solves
        problem = tiny(name, ratings).least_squares()
        assert problem is not None and problem.all_pairs and problem.weight is not None
        return
    model = tiny(name, ratings)
    assert model.least_squares() is not None  # declared: the contract checked the hook exists
    model = tiny(name, ratings, prior=1e-3, solver="als").double()  # a ridge that keeps k > n_r solvable
    model.attach_interactions(interactions(users, items, ratings))
    for _ in range(100):
        for side in ("user", "item"):
            als.half_sweep(model.least_squares(), side, users, items, ratings.double())
    assert rmse(model, users, items, ratings.double()) < 0.05


def _randomized(name: str, users, items, ratings, n_users=20, n_items=15, **overrides):
    """The model with random weights, handed its training data (every user with a history), state refreshed."""
    torch.manual_seed(0)
    counts = torch.bincount(users, minlength=n_users)
    counts[3] = 0  # one user without training ratings: cold
    facts = fake_facts(n_users, n_items, len(ratings), float(ratings.mean()), user_counts=counts,
                       item_counts=torch.bincount(items, minlength=n_items))
    model = build(name, facts, **overrides).double()
    train = interactions(users, items, ratings.double(), n_users, n_items)
    model.attach_interactions(train)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3).add_(0.05)
    if model.has_closed_form():  # its state is its fit
        model.fit_closed_form(train)
    model.refresh()
    return model


def modes(name: str) -> list[dict]:
    """Every mode a model's config can select, one switch at a time: the defaults, each other choice of a OneOf
    setting (EASE's values=, pmf_sigmoid's center ...), the other value of each boolean, and every size
    (``validation.Size``: dim, k, hidden) at SMALL, where a default larger than the test's shape would not bite."""
    cls = CLASSES[name]
    defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    out, sizes = [{}], {}
    for key, annotation in validation.hints(cls.__init__).items():
        if key not in defaults:
            continue
        if isinstance(defaults[key], bool):
            out.append({key: not defaults[key]})
        for meta in getattr(annotation, "__metadata__", ()):
            if isinstance(meta, validation.OneOf):
                out += [{key: v} for v in meta.values if v != defaults[key]]
            if annotation.__origin__ is int and isinstance(meta, validation.AtLeast) and meta.low == 1:
                sizes[key] = SMALL  # a size (dim, k neighbours, hidden units) that bites at the test's 15 items
    return out + ([sizes] if sizes else [])


SMALL = 3


REFERENCE_CASES = [(name, mode) for name in MODELS for mode in modes(name)]


@pytest.mark.parametrize("name,mode", REFERENCE_CASES,
                         ids=[f"{n}-{','.join(f'{k}={v}' for k, v in m.items()) or 'defaults'}"
                              for n, m in REFERENCE_CASES])
def test_every_scoring_path_equals_the_models_reference_in_every_mode(name, mode):
    """Each model ships its paper's prediction written out plainly (``reference``); forward, all_item_scores,
    Recommender.recommend and a folded-in user's scores equal it, for every mode its config can select. A model
    without a reference fails here: that is its enrolment."""
    import numpy as np

    from recsys.data.datasets import IdMap
    from recsys.data.interactions import Seen
    from recsys.recommender import Recommender

    users, items, ratings = structured_ratings(name)
    try:
        model = _randomized(name, users, items, ratings, **mode)
    except ValueError as err:  # a combination the model refuses is not a mode it can run in
        pytest.skip(f"{name} refuses {mode}: {err}")
    model.track(users[::3], items[::3])
    model.record(10**6)  # a sampler past its burn-in: tracked pairs served by their running averages ...
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.record(10**6 + 1)  # ... of two different samples, which the mean tables' product does not give
    model.refresh()
    warm_u = torch.nonzero(model.user_seen).squeeze(1)
    warm_i = torch.nonzero(model.item_seen).squeeze(1)
    grid_u, grid_i = warm_u.repeat_interleave(len(warm_i)), warm_i.repeat(len(warm_u))
    with torch.no_grad():
        ref = model.reference(grid_u, grid_i)
        assert ref.dtype == torch.float64 and ref.std() > 1e-3, "a reference that does not vary says nothing"
        torch.testing.assert_close(model(grid_u, grid_i).double(), ref, atol=1e-6, rtol=1e-6)
        every = model.score_all_items(warm_u)[:, warm_i].double()
        torch.testing.assert_close(every, ref.view(len(warm_u), len(warm_i)), atol=1e-6, rtol=1e-6)
        # recommend: the top items among the unseen ones, by the reference's scores
        seen = Seen.of(users.numpy(), items.numpy(), 20)
        rec = Recommender(model, IdMap(np.arange(20)), IdMap(np.arange(15)), seen)
        full = model.reference(torch.arange(15).repeat(len(warm_u)) * 0 + warm_u.repeat_interleave(15),
                               torch.arange(15).repeat(len(warm_u))).view(len(warm_u), 15)
        top = rec.recommend(warm_u.numpy(), n=3)
        for row, u in enumerate(warm_u.tolist()):
            want = full[row].clone()
            want[torch.as_tensor(seen.items[seen.indptr[u]:seen.indptr[u + 1]], dtype=torch.long)] = -np.inf
            mine = top[top["user"] == u]
            best = torch.topk(want, 3).values
            np.testing.assert_allclose(mine["score"].to_numpy(), best[torch.isfinite(best)].numpy(), atol=1e-6)
        # fold-in: a new user from a few ratings, then every path scores it as the reference does
        try:
            row = model.fold_in(torch.tensor([1, 4, 7]), torch.tensor([5.0, 2.0, 4.0], dtype=torch.float64))
        except NotImplementedError as err:
            pytest.skip(f"the reference holds on every path; {name} folds in no user: {err}")
        new = torch.full((len(warm_i),), row)
        ref_new = model.reference(new, warm_i)
        torch.testing.assert_close(model(new, warm_i).double(), ref_new, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(model.score_all_items(torch.tensor([row]))[0, warm_i].double(), ref_new,
                                   atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_scores_against_all_items_and_recommend_equal_pairwise_scores(name):
    """score_all_items (ranking metrics) and Recommender.recommend score as the model's own pairwise forward,
    for users with histories, a cold user and an unknown id."""
    import numpy as np

    from recsys.data.datasets import IdMap
    from recsys.data.interactions import Seen
    from recsys.recommender import Recommender

    users, items, ratings = structured_ratings(name, n=150)
    model = _randomized(name, users, items, ratings)
    rows = torch.arange(20)
    known = torch.ones(20, dtype=torch.bool)
    known[7] = False  # an id that is not in the model
    fast = model.score_all_items(rows, known)
    pairs = model.score(rows.repeat_interleave(15), torch.arange(15).repeat(20), known.repeat_interleave(15),
                        torch.ones(300, dtype=torch.bool)).view(20, 15)
    torch.testing.assert_close(fast, pairs, atol=1e-9, rtol=1e-9)
    assert float(fast.std()) > 0.05  # the weights matter: not a constant
    rec = Recommender(model, IdMap(np.arange(100, 120)), IdMap(np.arange(15)),
                      Seen.of(users.numpy(), items.numpy(), 20))
    top = rec.recommend(list(range(100, 120)), n=5)
    u, i = torch.as_tensor(top["user"].to_numpy(int) - 100), torch.as_tensor(top["item"].to_numpy(int))
    np.testing.assert_allclose(top["score"].to_numpy(), model.score(u, i).detach().double().numpy(), atol=1e-9)
    every = model.score_all_items(rows).detach()  # every id known to the Recommender
    best = every.masked_fill(Seen.of(users.numpy(), items.numpy(), 20).mask(rows, 15), float("-inf"))
    np.testing.assert_allclose(top.groupby("user")["score"].max().to_numpy(), best.max(1).values.numpy(), atol=1e-9)


@pytest.mark.parametrize("name", MODELS)
def test_loaded_model_scores_without_the_training_data(name, tmp_path):
    """Whatever a model derives from its training data for scoring is saved with its weights."""
    from recsys.models.base import load_checkpoint

    users, items, ratings = structured_ratings(name, n=150)
    model = _randomized(name, users, items, ratings)
    torch.save(model.checkpoint(), tmp_path / "m.ckpt")  # a model fitted without a trainer saves itself
    loaded, _ = load_checkpoint(tmp_path / "m.ckpt")
    loaded = loaded.double()
    rows = torch.arange(20)
    torch.testing.assert_close(loaded.score_all_items(rows), model.score_all_items(rows))


@pytest.mark.parametrize("name", MODELS)
def test_model_rejects_bad_hyperparameters(name):
    annotated = regularizers(name)
    if name in SAMPLED:  # its priors' precisions are sampled; the settings it has are checked instead
        assert not annotated
        with pytest.raises(ValueError, match="model.burn_in=-1"):
            build(name, fake_facts(), burn_in=-1)
        with pytest.raises(ValueError, match="model.hyper='normal'"):
            build(name, fake_facts(), hyper="normal")
    else:
        assert annotated, f"{name}: a fitted model should annotate its regularizers (recsys.validation.Reg)"
    for key in annotated:
        with pytest.raises(ValueError, match=f"model.{key}=-1.0"):
            build(name, fake_facts(), **{key: -1.0})
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'.* its hyperparameters are"):
        build(name, fake_facts(), nope=1)
    with pytest.raises(ValueError, match="model.solver='newton'"):
        build(name, fake_facts(), solver="newton")
    if "gradient" not in CLASSES[name].solvers:
        return  # nothing steps it: no optimizer setting to check
    with pytest.raises(ValueError, match=r"(torch.optim|recsys.solvers).* takes no argument \[.nope.\]"):
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
    model.attach_interactions(dm.interactions("train"))  # the contract's data channel, as train.py hands it over
    dm.sample_negatives(model.negatives_per_positive())
    json.dumps(dict(model.hparams))  # primitives only: weights_only loading needs nothing else
    spec = yaml.safe_load(MODELS[name].read_text())
    assert model.hparams.data == dm.facts().as_dict()
    if "gradient" in CLASSES[name].solvers:
        assert model.hparams.optimizer["_target_"] == spec["optimizer"]["_target_"]
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(System(model), datamodule=dm)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = type(model).load_from_checkpoint(tmp_path / "m.ckpt", weights_only=True)
    users, items = dm.test_set[0], dm.test_set[1]
    assert torch.equal(loaded.predict(users, items), model.predict(users, items))
    assert torch.equal(loaded.user_seen, model.user_seen) and loaded.hparams == model.hparams
    with pytest.raises(ValueError, match="is not a checkpoint of a recsys model"):
        torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
        type(model).load_from_checkpoint(tmp_path / "other.ckpt")


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
    if not model.has_closed_form_gradients():  # without closed-form gradients: autograd, if by gradient
        assert System(model).automatic_optimization is (model.hparams.solver == "gradient")
        return
    assert not System(model).automatic_optimization
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # biases away from their zero start
    extra = ()
    if model.negatives_per_positive():  # pairwise: the sampled negatives the data pipeline would add
        extra = (torch.randint(15, (len(users), model.negatives_per_positive() + 2)),)  # repeats add up too
    loss = model.objective(users, items, ratings.double(), *extra)
    expected = torch.autograd.grad(loss, list(model.parameters()))
    fast = model.gradients(users, items, ratings.double(), *extra)
    assert fast.item() == pytest.approx(loss.item(), rel=1e-10)
    for (pname, p), g in zip(model.named_parameters(), expected):
        if p.numel() == 0:  # baseline's empty factor tables: nothing to write
            continue
        if p.grad.is_sparse:  # row-sparse: one entry per distinct row the batch touched, and only those
            assert p.grad.is_coalesced() and set(p.grad._indices()[0].tolist()) == set(g.ne(0).any(1).nonzero()
                                                                                        .squeeze(1).tolist()), pname
        assert torch.allclose(p.grad.to_dense(), g, atol=1e-12, rtol=1e-9), pname


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


@pytest.mark.parametrize("name", MODELS)
def test_fold_in_adds_a_warm_user_the_model_scores_consistently_or_is_refused(name):
    """fold_in is the model's own (the contract's default solves its least-squares form): a new user becomes the
    last row, warm, scored alike by forward and score_all_items; a model that cannot fold in says so."""
    users, items, ratings = structured_ratings(name, n=150)
    model = _randomized(name, users, items, ratings)
    mine = users == 0
    new_items, new_ratings = items[mine], ratings[mine].double()
    try:
        with torch.no_grad():
            row = model.fold_in(new_items, new_ratings)
    except NotImplementedError as err:
        assert type(model).__name__ in str(err)
        return
    assert row == 20 and bool(model.user_seen[row])
    rows = torch.tensor([0, row])
    pairs = model.score(rows.repeat_interleave(15), torch.arange(15).repeat(2)).view(2, 15)
    torch.testing.assert_close(model.score_all_items(rows), pairs, atol=1e-9, rtol=1e-9)
    # the fit is the exact minimizer (tests/test_recommender.py and the svdpp test below check it): a second
    # fold-in of the same ratings into the same row changes nothing
    with torch.no_grad():
        before = model.score_all_items(rows[1:]).clone()
        assert model.fold_in(new_items, new_ratings, row) == row
    torch.testing.assert_close(model.score_all_items(rows[1:]), before, atol=1e-6, rtol=1e-6)


def test_svdpp_fold_in_solves_the_users_ridge_equations_exactly():
    """[p_u, b_u] minimize Σ(r − r̂)² + n(λ‖p_u‖² + λ_b b_u²) with the user's N(u) = the items given."""
    users, items, ratings = structured_ratings("svdpp", n=150)
    model = _randomized("svdpp", users, items, ratings)
    mine = users == 4
    new_items, new_ratings = items[mine], ratings[mine].double()
    with torch.no_grad():
        row = model.fold_in(new_items, new_ratings)
    p = model.net.user.weight[row].detach().clone().requires_grad_()
    b = model.net.user_bias.weight[row, 0].detach().clone().requires_grad_()
    with torch.no_grad():
        implicit = model.user_vectors(torch.tensor([row]))[0] - model.net.user.weight[row]
    q, bi = model.net.item.weight[new_items].detach(), model.net.item_bias.weight[new_items, 0].detach()
    pred = model.link.rating(q @ (p + implicit) + b + bi)
    n = len(new_ratings)
    loss = (new_ratings - pred).square().sum() + n * (model.reg * p.square().sum() + model.reg_bias * b.square())
    grads = torch.autograd.grad(loss, (p, b))
    assert all(float(g.abs().max()) < 1e-8 for g in grads)
    assert implicit.abs().max() > 0.01  # N(u) is the items given


@pytest.mark.parametrize("name", MODELS)
def test_ranking_factors_order_items_as_the_scores_do(name):
    """A model's ``ranking_factors`` (what the ranking evaluation prunes by) give, in every row, the order of its
    ``score_all_items``: a cold user (3) and a cold item (4) included. Models without them return None."""
    users, items, ratings = structured_ratings(name, n=150)
    model = _randomized(name, users, items, ratings)
    model.item_seen[4] = False  # an item without training ratings: its scores are the fallback's
    rows = torch.arange(20)
    factors = model.ranking_factors(rows)
    if factors is None:
        return
    uv, uc, iv, ic = factors
    form = (uc.unsqueeze(1) + ic + uv @ iv.T).detach()
    scores = model.score_all_items(rows).detach()
    assert float(scores[rows != 3].std(1).min()) > 1e-3  # every warm row ranks something
    form_gap, score_gap = form.unsqueeze(2) - form.unsqueeze(1), scores.unsqueeze(2) - scores.unsqueeze(1)
    assert bool((torch.sign(form_gap) == torch.sign(score_gap))[form_gap.abs() > 1e-9].all())
