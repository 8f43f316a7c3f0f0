"""Model: the scoring math every model shares, and the contract a model follows — a plain ``nn.Module``.

A model holds the math only: its scores (``forward``), scores against every item, fold-in, its factor tables and
how a solver fits it (its objective, least-squares form or chain). It needs no trainer: build it, attach its data,
fit it with its solver (or load a checkpoint) and call it. The Lightning system that trains every model — steps,
metrics, logging, solver delegation, checkpoints — is :class:`recsys.system.System`, written once around any
model.

A model is a subclass whose ``__init__`` declares only its own hyperparameters (explicit, typed, primitive,
each with a default) and builds its scoring modules from ``self.data``, the
:class:`~recsys.data.facts.DataFacts` (users, items, training mean and count, rating scale). Every model is
built in one call,

    Model(data=facts, optimizer={"_target_": "torch.optim.Adam", "lr": 0.01}, solver="gradient", **own)

and the contract (the metaclass) does the rest in order: it takes the shared arguments, runs the subclass's
``__init__``, keeps every hyperparameter as primitives in ``hparams`` (so a checkpoint needs nothing else and
loads with ``weights_only=True``) and checks the combination (e.g. ALS on a model without a bilinear form).

**The declarations** (class attributes, checked when the class is defined): ``task`` (``rating`` | ``ranking``:
the feedback it trains on, the metric that selects it, the metrics it reports; :mod:`recsys.resolvers`),
``solvers`` (the solvers that fit it, the first the default; the contract refuses any other with one message),
``training_input`` (``ratings`` | ``pairs`` with sampled negatives), and the regularizers, annotated in the
``__init__`` signature (:data:`recsys.validation.Reg`). The data reaches a model through one channel,
:meth:`Model.attach_interactions` (``setup_interactions`` for what scoring keeps, ``fit_closed_form(train)``
for a one-solve fit).

**The hooks** are the methods of :class:`Model` below, each with a default correct for any model except
``forward`` (abstract) and ``objective`` (required with the ``gradient`` solver); their docstrings are the
reference, and docs/adding-a-model.md's hook table is generated from them when the site is built
(:mod:`recsys.models.catalogue`). Nothing is looked up by attribute name.

A model that overrides ``all_item_scores`` with a faster path must give exactly ``forward``'s scores: a test
compares the two for every model, for users with histories.
"""

from __future__ import annotations

import abc
import contextvars
import importlib
import inspect
from typing import ClassVar

import torch
from torch import nn

from recsys import memory, validation
from recsys.data.facts import DataFacts
from recsys.data.interactions import Interactions
from recsys.models.nets import Bilinear, take_saved_sizes
from recsys.solvers import SOLVERS
from recsys.solvers.als import LeastSquares, half_sweep
from recsys.solvers.gibbs import Chain
from recsys.solvers.gradient import optimizer_spec

SHARED = ("data", "optimizer", "solver")
PROBE_PAIRS = 64  # forward's working memory is first probed on this many pairs (memory.per_unit_bytes)
WHOLE_PAIRS = 1024  # calls of at most this many pairs run whole, unmeasured
_BUILDING: contextvars.ContextVar = contextvars.ContextVar("recsys_model_shared")


def _primitive(value) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(map(_primitive, value))
    if isinstance(value, dict):
        return all(isinstance(k, str) and _primitive(v) for k, v in value.items())
    return False


TASKS = ("rating", "ranking")  # what a model is for: predicting ratings, or ordering items (see Model.task)
INPUTS = ("ratings", "pairs")  # what a training batch holds: rated pairs, or positives with sampled negatives
#: the hook each solver fits a model through: a model declaring the solver must implement it
SOLVER_HOOKS = {"gradient": "objective", "als": "least_squares", "gibbs": "chain", "closed_form": "fit_closed_form"}


class _Contract(abc.ABCMeta):
    """Checks each model class's declarations and ``__init__`` when it is defined, and builds each model in one
    call."""

    def __init__(cls, name, bases, namespace, **kw):
        super().__init__(name, bases, namespace, **kw)
        if not any(isinstance(b, _Contract) for b in bases):
            return  # Model itself
        if "__init__" in namespace:  # a subclass that keeps its parent's hyperparameters has nothing new here
            cls._check_init()
        cls._check_declarations()

    def _check_init(cls) -> None:
        name = cls.__name__
        for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
            where = f"{cls.__module__}.{name}.__init__ argument {p.name!r}"
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"{where}: declare each hyperparameter explicitly (no *args/**kwargs)")
            if p.name in SHARED:
                raise TypeError(f"{where}: {SHARED} are the shared arguments every model receives; rename it")
            if p.default is p.empty:
                raise TypeError(f"{where}: give it a default, so that {name}(data=facts) builds a model")

    def _check_declarations(cls) -> None:
        """``task``, ``solvers`` and ``training_input`` are valid, and every declared solver's hook is implemented."""
        where = f"{cls.__module__}.{cls.__name__}"
        if cls.task not in TASKS:
            raise TypeError(f"{where}.task={cls.task!r}: declare one of {list(TASKS)}")
        if cls.training_input not in INPUTS:
            raise TypeError(f"{where}.training_input={cls.training_input!r}: declare one of {list(INPUTS)}")
        solvers = cls.solvers
        if not isinstance(solvers, tuple) or not solvers or any(s not in SOLVER_HOOKS for s in solvers):
            raise TypeError(f"{where}.solvers={solvers!r}: declare a tuple of one or more of {list(SOLVER_HOOKS)}")
        for solver in solvers:
            hook = SOLVER_HOOKS[solver]
            if getattr(cls, hook) is getattr(Model, hook):
                raise TypeError(f"{where} declares solver {solver!r} but does not implement {hook}(), which that "
                                "solver fits it through")

    def __call__(cls, *args, data=None, optimizer=None, solver: str | None = None, **kwargs):
        if data is None:
            raise TypeError(f"{cls.__name__} needs data=...: the datamodule's DataFacts (RatingsDataModule.facts())")
        own = cls._own_hyperparameters(args, kwargs)
        facts = DataFacts.coerce(data)
        spec = optimizer_spec(cls.default_optimizer if optimizer is None else optimizer)
        solver = cls.solvers[0] if solver is None else solver
        if solver not in cls.solvers:
            fitted = " or ".join(f"model.solver={s}" for s in cls.solvers)
            raise ValueError(f"model.solver={solver!r}: {cls.__name__} is fitted by {fitted} only")
        token = _BUILDING.set((facts, solver))
        try:
            model = super().__call__(*args, **kwargs)
        finally:
            _BUILDING.reset(token)
        model.hparams = HParams(data=facts.as_dict(), optimizer=spec, solver=solver, **own)
        model.least_squares()  # builds (and so checks) the least-squares form, e.g. reg_scaling, whatever the solver
        SOLVERS[solver]().check(model)
        if (model.negatives_per_positive() > 0) != (cls.training_input == "pairs"):
            raise TypeError(f"{cls.__name__} declares training_input={cls.training_input!r} but "
                            f"negatives_per_positive() is {model.negatives_per_positive()}: pairs need one or more "
                            "sampled negatives a positive, ratings none")
        return model

    def _own_hyperparameters(cls, args, kwargs) -> dict:
        sig = inspect.signature(cls.__init__)
        try:
            bound = sig.bind(None, *args, **kwargs)
        except TypeError as err:
            names = list(sig.parameters)[1:]
            raise TypeError(f"{cls.__name__}: {err}; its hyperparameters are {names} plus {SHARED}") from None
        bound.apply_defaults()
        own = dict(list(bound.arguments.items())[1:])
        annotations = validation.hints(cls.__init__)
        for key, value in own.items():
            if hasattr(value, "_content"):  # an OmegaConf container from Hydra
                from omegaconf import OmegaConf

                own[key] = value = OmegaConf.to_container(value, resolve=True)
            if not _primitive(value):
                raise TypeError(f"model.{key}={value!r}: hyperparameters are numbers, strings, booleans, None, "
                                "or lists and dicts of them")
            if key in annotations:  # the signature's types and constraints (recsys.validation)
                validation.check(f"model.{key}", annotations[key], value)
        return own

    def check_settings(cls, settings) -> None:
        """Every check a model's construction makes, on a one-user stand-in for the data, before data loading.

        ``settings`` is the model's config without ``_target_`` (own hyperparameters, ``solver``,
        ``optimizer``). The random state is left as it was.
        """
        stand_in = DataFacts(num_users=1, num_items=1, num_train=1, global_mean=3.0)
        with torch.random.fork_rng(devices=[]):
            cls(data=stand_in, **{k: v for k, v in dict(settings).items() if not k.startswith("_")})


class HParams(dict):
    """A model's hyperparameters (primitives): a dict whose keys read as attributes (``model.hparams.solver``)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


class Model(nn.Module, metaclass=_Contract):
    """The scoring math and the contract; see the module docstring for what a subclass provides."""

    #: the optimizer when none is given; each model config repeats it as its ``optimizer:`` block
    default_optimizer: ClassVar[dict] = {"_target_": "torch.optim.Adam", "lr": 0.001, "weight_decay": 0.0}
    #: what the model is for, checked when the class is defined. ``rating``: it predicts ratings, trains on explicit
    #: feedback, is selected by ``val/rmse`` and reports RMSE/MAE beside the ranking metrics; ``ranking``: it orders
    #: items, trains on implicit feedback (every training rating a positive), is selected by ``val/ndcg@10`` and
    #: reports ranking metrics only (configs/train.yaml reads this through the ``recsys.*`` resolvers)
    task: ClassVar[str] = "rating"
    #: the solvers that can fit it, the first the default (``model.solver``); any other is refused when the model
    #: is built, with one message naming the model and these. Each needs its hook (SOLVER_HOOKS) implemented.
    solvers: ClassVar[tuple[str, ...]] = ("gradient",)
    #: what a training batch holds: ``ratings`` (users, items, ratings) or ``pairs`` (a fourth tensor of
    #: ``negatives_per_positive()`` sampled negative items per positive)
    training_input: ClassVar[str] = "ratings"

    def __init__(self) -> None:
        super().__init__()
        try:
            facts, solver = _BUILDING.get()
        except LookupError:
            raise TypeError("a Model is built by calling its class: Model(data=facts, ...)") from None
        self.data: DataFacts = facts
        self._data_buffers: set[str] = set()
        #: the training interactions of the run (attach_interactions); None in a loaded model
        self.interactions: Interactions | None = None
        self._pair_cost: dict[tuple, float] = {}  # forward's bytes a pair, by grad mode and pattern (pairs_per_block)
        self.hparams = HParams(solver=solver)  # the contract sets every hyperparameter once __init__ returns
        # which users/items have training ratings: from the facts at training time, saved with the weights
        for side, counts, n in (("user", facts.user_counts, facts.num_users), ("item", facts.item_counts,
                                                                                facts.num_items)):
            seen = torch.ones(n, dtype=torch.bool) if counts is None else counts.cpu() > 0
            self.register_buffer(f"{side}_seen", seen)

    # -- to implement -------------------------------------------------------------------------------
    @abc.abstractmethod
    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The scores of the pairs: a rating model's predicted ratings on the rating scale, unclipped; a ranking
        model's preferences (higher ranks first)."""

    def objective(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> torch.Tensor:
        """The minibatch training loss: required of every model that declares the ``gradient`` solver (checked when
        the class is defined); a model fitted otherwise (ALS, Gibbs, a closed form) has none."""
        raise NotImplementedError(f"{type(self).__name__} has no minibatch objective: it is fitted by "
                                  f"{' or '.join(self.solvers)}")

    # -- the data channel ---------------------------------------------------------------------------------
    def attach_interactions(self, train: Interactions) -> None:
        """The contract's one data channel (train.py calls it for the fit and the refit): keeps ``train`` as
        :attr:`interactions` (what a closed-form fit receives) and hands it to :meth:`setup_interactions`."""
        self.interactions = train
        self.setup_interactions(train)

    def reference(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The paper's prediction for warm pairs (both sides with training data), written out plainly from the
        model's parameters, hyperparameters and data (numpy, loops are fine; never the model's own scoring code).
        The generic suite compares ``forward``, ``all_item_scores``, ``recommend`` and fold-in against it in every
        mode a config can select: a model without one fails enrolment. Returns float64 on the CPU."""
        raise NotImplementedError(f"{type(self).__name__} ships no reference(): write its paper's prediction out "
                                  "plainly (docs/adding-a-model.md)")

    # -- optional abilities, each with a default correct for any model (see the module docstring) ----------
    def setup_interactions(self, train: Interactions) -> None:
        """Receive the training interactions before fitting (every DDP rank, once per fit). Keep what scoring
        needs in buffers registered with :meth:`register_data_buffer`, so a loaded model scores without data."""

    def track(self, users: torch.Tensor, items: torch.Tensor) -> None:
        """The pairs whose predictions the run will ask for (its validation and test pairs)."""

    def refresh(self) -> None:
        """Bring state derived from the weights and the training data up to date (called before every
        validation, test and predict epoch)."""

    def gradients(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> torch.Tensor:
        """:meth:`objective` with its gradient written into each parameter's ``.grad`` in closed form (the
        gradient solver's fast path). Not overridden: the solver differentiates ``objective`` by autograd."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form gradients")

    def has_closed_form_gradients(self) -> bool:
        return type(self).gradients is not Model.gradients

    def negatives_per_positive(self) -> int:
        """Sampled negative items the model's ``objective``/``gradients`` take per training rating (pairwise
        objectives: BPR). The data pipeline draws them and the batches become ``(users, items, ratings,
        negatives)``. Default: 0, batches of ratings only."""
        return 0

    def least_squares(self) -> LeastSquares | None:
        """The model's objective in ALS's form, if it has one (bilinear models); None otherwise."""
        return None

    def fit_closed_form(self, train: Interactions) -> None:
        """Fit the model in one solve from the training interactions (``model.solver=closed_form``: EASE); the
        solver passes the run's :attr:`interactions`. Not overridden: the model has no closed-form fit."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form fit")

    def has_closed_form(self) -> bool:
        return type(self).fit_closed_form is not Model.fit_closed_form

    def chain(self) -> Chain | None:
        """The Markov chain's state a Gibbs sampler advances (Bayesian models); None otherwise."""
        return None

    def record(self, epoch: int) -> None:
        """Called by the sampler after sample ``epoch`` (e.g. to update running means)."""

    def fallback(self, users: torch.Tensor, items: torch.Tensor, user_known: torch.Tensor,
                 item_known: torch.Tensor) -> torch.Tensor:
        """Prediction for a cold pair (user or item without training ratings): the training mean μ.

        ``user_known``/``item_known`` say per pair which side has training ratings; models with biases
        override this to add whatever bias is known (see BiasedMF).
        """
        return torch.full(users.shape, float(self.data.global_mean), device=users.device)

    def all_item_scores(self, users: torch.Tensor) -> torch.Tensor:
        """(len(users), num_items): ``forward`` of each user against every item. The default scores the pairs in
        blocks that keep ``forward``'s working memory within half the scoring budget (:mod:`recsys.memory`; the
        other half holds the scores). Override only with a faster path that gives the same scores (a test
        compares them)."""
        n_items = len(self.item_seen)
        out = None
        for lo, hi, u, i in self._pair_blocks(users, n_items, share=0.5):
            block = self(u, i)
            if out is None:
                out = block.new_empty(len(users) * n_items)
            out[lo:hi] = block
        return (out if out is not None else torch.empty(0, device=users.device)).view(len(users), n_items)

    def _pair_blocks(self, users: torch.Tensor, n_items: int, share: float):
        """``(lo, hi, users, items)`` blocks of the flattened users × items pairs (pair p is user ``p // n_items``
        and item ``p % n_items``), never materializing every pair's indices at once."""
        total = len(users) * n_items

        def pairs(lo: int, hi: int):
            p = torch.arange(lo, hi, device=users.device)
            return users[p // n_items], p % n_items

        step = self.pairs_per_block(pairs, total, share, pattern="grid")
        for lo in range(0, total, step):
            hi = min(total, lo + step)
            yield (lo, hi, *pairs(lo, hi))

    def pairs_per_block(self, pairs, total: int, share: float = 1.0, pattern: str = "pairs") -> int:
        """How many of ``total`` pairs ``forward`` scores at once within ``share`` of the scoring budget
        (:func:`recsys.memory.budget_bytes`), from its working memory measured on ``pairs(0, n)`` for two probe
        sizes (:func:`recsys.memory.per_unit_bytes`), once per model, grad mode and ``pattern`` (``grid``: one
        user's items, as ``all_item_scores`` asks; ``pairs``: pairs in user order). Calls of at most
        ``WHOLE_PAIRS`` run whole."""
        if total <= WHOLE_PAIRS:
            return max(total, 1)
        key = (torch.is_grad_enabled(), pattern)
        if key not in self._pair_cost:
            self._pair_cost[key] = memory.per_unit_bytes(lambda n: memory.peak_bytes(self, *pairs(0, n))[1],
                                                         PROBE_PAIRS, total)
        return memory.units_within(self._pair_cost[key], limit=total, share=share)

    def ranking_factors(self, users: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """``(user_vectors, user_constants, item_vectors, item_constants)`` — (len(users), d), (len(users),),
        (num_items, d), (num_items,) — whose ``uc + ic + uv·iv`` orders each user's items exactly as
        :meth:`score_all_items` does (its scores a strictly increasing function of it, cold pairs included), or
        None. With them the ranking evaluation skips items whose norm bound cannot reach a user's top-k, exactly
        (:func:`recsys.evaluation.bounded_top`). Default: None (every item scored)."""
        return None

    def factor_tables(self) -> Bilinear | None:
        """The user and item factor (and bias) tables, for ``similar_items`` and ``user_factors``; None if the
        model has none."""
        return None

    def item_similarity(self, items: torch.Tensor) -> torch.Tensor | None:
        """(len(items), num_items) similarity of each of ``items`` to every item, for ``similar_items``. Default:
        the cosine of the factor tables' item factors; None without item factors."""
        tables = self.factor_tables()
        if tables is None or tables.item.embedding_dim == 0:
            return None
        factors = torch.nn.functional.normalize(tables.item.weight, dim=1)
        return factors[items] @ factors.T

    def fold_in(self, items: torch.Tensor, ratings: torch.Tensor, row: int | None = None) -> int:
        """Fit user ``row`` (None: a new row, from :meth:`add_user_row`) from ``ratings`` of ``items`` with the
        item side fixed, by the model's own objective; returns the row. The default solves the least-squares
        form's user step exactly (what one ALS half-sweep computes for the row)."""
        problem = self.least_squares()
        if problem is None:
            raise NotImplementedError(f"{type(self).__name__} cannot fold in a user: it has no least-squares form "
                                      "and does not implement fold_in()")
        row = self.add_user_row() if row is None else row
        half_sweep(problem, "user", torch.full_like(items, row), items, ratings, solve="cholesky")
        self.user_seen[row] = True
        return row

    def add_user_row(self) -> int:
        """Append a user without ratings (cold until fitted); returns its row. The default grows the factor
        tables' user side."""
        tables = self.factor_tables()
        if tables is None:
            raise NotImplementedError(f"{type(self).__name__} has no factor tables to grow: implement add_user_row()")
        tables.add_user()
        self.user_seen = torch.cat([self.user_seen, self.user_seen.new_zeros(1)])
        return len(self.user_seen) - 1

    def register_data_buffer(self, name: str, tensor: torch.Tensor) -> None:
        """A buffer sized by the data or the run (a user's history, tracked pairs): saved with the weights, and
        on loading it takes the checkpoint's size."""
        self.register_buffer(name, tensor)
        self._data_buffers.add(name)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        take_saved_sizes(self, self._data_buffers, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- shared -------------------------------------------------------------------------------------
    def score(self, users: torch.Tensor, items: torch.Tensor, user_known: torch.Tensor | None = None,
              item_known: torch.Tensor | None = None) -> torch.Tensor:
        """Unclipped predictions; cold pairs get :meth:`fallback`.

        A side is known where it had training ratings (``user_seen``/``item_seen``) and, where the masks
        are given, where they say so (ids that are not in the model at all pass False with any index).
        """
        uk = self.user_seen[users] if user_known is None else user_known & self.user_seen[users]
        ik = self.item_seen[items] if item_known is None else item_known & self.item_seen[items]
        return torch.where(uk & ik, self._pairwise(users, items), self.fallback(users, items, uk, ik))

    def _pairwise(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``forward`` of the pairs in blocks within the scoring budget; a call that needs several blocks takes
        them in user order, so a model whose work grows with a block's distinct users (EASE scores X_u·B) meets
        each user about once."""
        sorted_pairs: list[torch.Tensor] = []  # (order, users, items) in user order, made only when needed

        def in_user_order(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
            if not sorted_pairs:
                order = torch.argsort(users, stable=True)
                sorted_pairs.extend((order, users[order], items[order]))
            return sorted_pairs[1][lo:hi], sorted_pairs[2][lo:hi]

        step = self.pairs_per_block(in_user_order, len(users))  # measured once; later calls sort only to block
        if step >= len(users):
            return self(users, items)
        in_user_order(0, 0)
        order, su, si = sorted_pairs
        pred = torch.cat([self(su[lo:lo + step], si[lo:lo + step]) for lo in range(0, len(users), step)])
        return torch.empty_like(pred).index_copy_(0, order, pred)

    def score_all_items(self, users: torch.Tensor, user_known: torch.Tensor | None = None) -> torch.Tensor:
        """(len(users), num_items) unclipped scores against every item, as :meth:`score` gives them:
        :meth:`all_item_scores`, with :meth:`fallback` for cold pairs."""
        uk = self.user_seen[users] if user_known is None else user_known & self.user_seen[users]
        scores = self.all_item_scores(users)
        if not (bool(uk.all()) and bool(self.item_seen.all())):  # cold pairs: unknown users, items without ratings
            rows, cols = (~(uk.unsqueeze(1) & self.item_seen.unsqueeze(0))).nonzero(as_tuple=True)
            scores[rows, cols] = self.fallback(users[rows], cols, uk[rows], self.item_seen[cols]).to(scores.dtype)
        return scores

    def predict(self, users: torch.Tensor, items: torch.Tensor, user_known: torch.Tensor | None = None,
                item_known: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted ratings clipped to ``[rating_min, rating_max]``; cold pairs get :meth:`fallback`."""
        return self.score(users, items, user_known, item_known).clamp(self.data.rating_min, self.data.rating_max)

    @property
    def device(self) -> torch.device:
        """Where the model's tables are."""
        return self.user_seen.device

    def checkpoint(self, weights: bool = True) -> dict:
        """What a checkpoint holds of the model: its hyperparameters, the class that rebuilds it and (``weights``)
        its state_dict. ``torch.save(model.checkpoint(), path)`` writes one that :func:`load_checkpoint` reads;
        a trainer's checkpoints carry the same (:class:`recsys.system.System`)."""
        record = {"hyper_parameters": dict(self.hparams),
                  "recsys_model": f"{type(self).__module__}.{type(self).__qualname__}"}
        return {**record, "state_dict": self.state_dict()} if weights else record

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict: bool = True,
                             weights_only: bool = True, **overrides):
        """The model a checkpoint holds, rebuilt from its saved hyperparameters (``overrides`` replace them)."""
        if hparams_file is not None:
            raise ValueError("hparams_file is not used: a recsys checkpoint holds its hyperparameters")
        return load_checkpoint(checkpoint_path, map_location, cls, strict, weights_only, **overrides)[0]


def load_checkpoint(path, map_location=None, expect: type | None = None, strict: bool = True,
                    weights_only: bool = True, **overrides) -> tuple[Model, dict]:
    """(model, checkpoint dict) of a recsys checkpoint: the one loader behind ``recsys.load`` and
    ``Model.load_from_checkpoint``.

    The class is the one the checkpoint names (``recsys_model``, imported only from under ``recsys.models``);
    ``expect`` requires it to be that class or a subclass (a checkpoint without the name is rebuilt as
    ``expect``). Hyperparameters come from the checkpoint (``overrides`` replace them); weights load with
    ``weights_only=True`` by default.
    """
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same answer
        raise ValueError(f"{path} is not a checkpoint of a recsys model (torch.load: {err})") from None
    if not isinstance(ckpt, dict) or "data" not in ckpt.get("hyper_parameters", {}):
        raise ValueError(f"{path} is not a checkpoint of a recsys model (no data facts in its hyper_parameters)")
    name = ckpt.get("recsys_model")
    cls = expect
    if isinstance(name, str):
        module, _, cls_name = name.rpartition(".")
        if not module.startswith("recsys.models."):  # never import an arbitrary dotted path read from a file
            raise ValueError(f"{path} names the model class {name!r}, which is not under recsys.models")
        cls = getattr(importlib.import_module(module), cls_name, None)
        if not (isinstance(cls, type) and issubclass(cls, Model)):
            raise ValueError(f"{path} names {name!r}, which is not a recsys Model")
        if expect is not None and expect is not Model and not issubclass(cls, expect):
            raise ValueError(f"{path} holds a {cls.__name__}, not a {expect.__name__}")
    if cls is None or cls is Model:
        raise ValueError(f"{path} does not name its model class ('recsys_model'); load it with that class's "
                         "load_from_checkpoint")
    model = cls(**{**ckpt["hyper_parameters"], **overrides})
    model.load_state_dict(ckpt["state_dict"], strict=strict)
    return model, ckpt
