"""RatingModel: the Lightning system every rating model shares, and the contract a model follows.

A model is a subclass whose ``__init__`` declares only its own hyperparameters (explicit, typed,
primitive, each with a default) and builds its scoring modules from ``self.data``, the
:class:`~recsys.data.facts.DataFacts` (users, items, training mean and count, rating scale). It implements

- ``forward(users, items)``: predicted ratings on the rating scale (unclipped), and
- ``objective(users, items, ratings)``: the minibatch training loss,

and where it has them ``fallback`` (cold pairs), ``least_squares()`` (its bilinear form, for ALS) and
``predict`` (e.g. rounding). Every model is built in one call,

    Model(data=facts, optimizer={"_target_": "torch.optim.Adam", "lr": 0.01}, solver="gradient", **own)

and the contract (the metaclass) does the rest in order: it takes the shared arguments, runs the
subclass's ``__init__``, saves every hyperparameter as primitives (so ``load_from_checkpoint`` needs
nothing else and loads with ``weights_only=True``) and checks the combination (e.g. ALS on a model without
a bilinear form). There is no call to remember and no half-built model.

The system supplies training/validation/test steps, torchmetrics RMSE and MAE per stage (pooled over the
whole split and synced across DDP ranks, never a mean of per-batch values), logging as ``train/loss``,
``val/rmse``, ``test/mae`` ..., clipping to the rating scale, the cold-start fallback, and delegates
fitting to its solver (:mod:`recsys.solvers`).
"""

from __future__ import annotations

import abc
import contextvars
import inspect
from typing import ClassVar

import lightning as L
import torch
from torchmetrics import MeanAbsoluteError, MeanMetric, MeanSquaredError, MetricCollection

from recsys import validation
from recsys.data.facts import DataFacts
from recsys.models.nets import Bilinear
from recsys.solvers import SOLVERS
from recsys.solvers.als import LeastSquares
from recsys.solvers.gradient import optimizer_spec

SHARED = ("data", "optimizer", "solver")
_BUILDING: contextvars.ContextVar = contextvars.ContextVar("recsys_model_shared")


def _primitive(value) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(map(_primitive, value))
    if isinstance(value, dict):
        return all(isinstance(k, str) and _primitive(v) for k, v in value.items())
    return False


class _Contract(abc.ABCMeta):
    """Checks each model class's ``__init__`` when it is defined, and builds each model in one call."""

    def __init__(cls, name, bases, namespace, **kw):
        super().__init__(name, bases, namespace, **kw)
        if "__init__" not in namespace or not any(isinstance(b, _Contract) for b in bases):
            return  # RatingModel itself, or a subclass that keeps its parent's hyperparameters
        for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
            where = f"{cls.__module__}.{name}.__init__ argument {p.name!r}"
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"{where}: declare each hyperparameter explicitly (no *args/**kwargs)")
            if p.name in SHARED:
                raise TypeError(f"{where}: {SHARED} are the shared arguments every model receives; rename it")
            if p.default is p.empty:
                raise TypeError(f"{where}: give it a default, so that {name}(data=facts) builds a model")

    def __call__(cls, *args, data=None, optimizer=None, solver: str = "gradient", **kwargs):
        if data is None:
            raise TypeError(f"{cls.__name__} needs data=...: the datamodule's DataFacts (RatingsDataModule.facts())")
        own = cls._own_hyperparameters(args, kwargs)
        facts = DataFacts.coerce(data)
        spec = optimizer_spec(cls.default_optimizer if optimizer is None else optimizer)
        if solver not in SOLVERS:
            raise ValueError(f"model.solver={solver!r}: choose one of {sorted(SOLVERS)}")
        token = _BUILDING.set((facts, solver))
        try:
            model = super().__call__(*args, **kwargs)
        finally:
            _BUILDING.reset(token)
        # logger=False: loggers get the run's own record (resolved config, data set, git), see training.py
        model.save_hyperparameters({"data": facts.as_dict(), "optimizer": spec, "solver": solver, **own},
                                   logger=False)
        model.automatic_optimization = model.solver.automatic(model)
        model.least_squares()  # builds (and so checks) the least-squares form, e.g. reg_scaling, whatever the solver
        model.solver.check(model)
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


class RatingModel(L.LightningModule, metaclass=_Contract):
    """The shared Lightning system; see the module docstring for what a subclass provides."""

    #: the optimizer when none is given; each model config repeats it as its ``optimizer:`` block
    default_optimizer: ClassVar[dict] = {"_target_": "torch.optim.Adam", "lr": 0.001, "weight_decay": 0.0}

    def __init__(self) -> None:
        super().__init__()
        try:
            facts, solver = _BUILDING.get()
        except LookupError:
            raise TypeError("a RatingModel is built by calling its class: Model(data=facts, ...)") from None
        self.data: DataFacts = facts
        self.solver = SOLVERS[solver]()
        metrics = MetricCollection({"rmse": MeanSquaredError(squared=False), "mae": MeanAbsoluteError()})
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        # cold-start accounting on the test split (see predict): fractions and the warm subset's RMSE
        self.test_cold_user, self.test_cold_item, self.test_warm_mse = MeanMetric(), MeanMetric(), MeanMetric()
        # which users/items have training ratings: from the facts at training time, saved with the weights
        for side, counts, n in (("user", facts.user_counts, facts.num_users), ("item", facts.item_counts,
                                                                                facts.num_items)):
            seen = torch.ones(n, dtype=torch.bool) if counts is None else counts.cpu() > 0
            self.register_buffer(f"{side}_seen", seen)

    # -- to implement -------------------------------------------------------------------------------
    @abc.abstractmethod
    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Predicted ratings on the rating scale, unclipped."""

    @abc.abstractmethod
    def objective(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> torch.Tensor:
        """The minibatch training loss."""

    def least_squares(self) -> LeastSquares | None:
        """The model's objective in ALS's form, if it has one (bilinear models); None otherwise."""
        return None

    def fallback(self, users: torch.Tensor, items: torch.Tensor, user_known: torch.Tensor,
                 item_known: torch.Tensor) -> torch.Tensor:
        """Prediction for a cold pair (user or item without training ratings): the training mean μ.

        ``user_known``/``item_known`` say per pair which side has training ratings; models with biases
        override this to add whatever bias is known (see BiasedMF).
        """
        return torch.full(users.shape, float(self.data.global_mean), device=users.device)

    # -- shared -------------------------------------------------------------------------------------
    def score(self, users: torch.Tensor, items: torch.Tensor, user_known: torch.Tensor | None = None,
              item_known: torch.Tensor | None = None) -> torch.Tensor:
        """Unclipped predictions; cold pairs get :meth:`fallback`.

        A side is known where it had training ratings (``user_seen``/``item_seen``) and, where the masks
        are given, where they say so (ids that are not in the model at all pass False with any index).
        """
        uk = self.user_seen[users] if user_known is None else user_known & self.user_seen[users]
        ik = self.item_seen[items] if item_known is None else item_known & self.item_seen[items]
        return torch.where(uk & ik, self(users, items), self.fallback(users, items, uk, ik))

    def score_all_items(self, users: torch.Tensor, user_known: torch.Tensor | None = None) -> torch.Tensor:
        """(len(users), num_items) unclipped scores against every item, as :meth:`score` gives them.

        Models with a Bilinear ``net`` and a ``link`` score by one matrix product; others through ``forward``
        on every (user, item) pair.
        """
        n_items = len(self.item_seen)
        uk = self.user_seen[users] if user_known is None else user_known & self.user_seen[users]
        warm = uk.unsqueeze(1) & self.item_seen.unsqueeze(0)
        net, link = self.factor_tables(), getattr(self, "link", None)
        if net is not None and link is not None:
            scores = link.rating(link.mean(net.all_items(users)))
        else:
            items = torch.arange(n_items, device=users.device)
            scores = self(users.repeat_interleave(n_items), items.repeat(len(users))).view(len(users), n_items)
        if not bool(warm.all()):  # cold pairs (rare: unknown users, items without training ratings)
            rows, cols = (~warm).nonzero(as_tuple=True)
            scores[rows, cols] = self.fallback(users[rows], cols, uk[rows], self.item_seen[cols])
        return scores

    def factor_tables(self) -> Bilinear | None:
        """The factor (and bias) tables that serve scores: ``net`` where it is a Bilinear (a Bayesian model
        serves its posterior means instead)."""
        net = getattr(self, "net", None)
        return net if isinstance(net, Bilinear) else None

    def predict(self, users: torch.Tensor, items: torch.Tensor, user_known: torch.Tensor | None = None,
                item_known: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted ratings clipped to ``[rating_min, rating_max]``; cold pairs get :meth:`fallback`."""
        return self.score(users, items, user_known, item_known).clamp(self.data.rating_min, self.data.rating_max)

    def sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over DDP ranks (the identity in one process or outside a trainer)."""
        if self._trainer is None:
            return tensor
        return self.trainer.strategy.reduce(tensor, reduce_op="sum")

    def configure_optimizers(self):
        return self.solver.configure_optimizers(self)

    def on_train_epoch_start(self) -> None:
        self._epoch = {"ratings": 0, "loss": 0.0, "weight": 0}

    def training_step(self, batch, batch_idx):
        n = len(batch[2])
        loss = self.solver.training_step(self, batch, batch_idx)
        # the epoch's sums stay on the device: no per-step host sync, and one log call per epoch
        tally = self._epoch
        tally["ratings"] += n
        if loss is not None:
            tally["loss"], tally["weight"] = tally["loss"] + loss.detach() * n, tally["weight"] + n
        if batch_idx + 1 == self.trainer.num_training_batches:
            # training ratings seen this epoch, summed over ranks (once, at epoch end); the batch-weighted loss
            self.log("train/ratings", float(tally["ratings"]), on_step=False, on_epoch=True, reduce_fx="sum",
                     sync_dist=True)
            if tally["weight"]:
                self.log("train/loss", tally["loss"] / tally["weight"], on_step=False, on_epoch=True)
        return loss if self.automatic_optimization else None

    def _eval_step(self, batch, metrics: MetricCollection) -> torch.Tensor:
        users, items, ratings = batch
        pred = self.predict(users, items)
        metrics.update(pred, ratings)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True)
        return pred

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, self.val_metrics)

    def test_step(self, batch, batch_idx):
        pred = self._eval_step(batch, self.test_metrics)
        users, items, ratings = batch
        cold_u, cold_i = ~self.user_seen[users], ~self.item_seen[items]
        self.test_cold_user.update(cold_u.float())
        self.test_cold_item.update(cold_i.float())
        err = (pred - ratings).square()
        self.test_warm_mse.update(err, weight=(~(cold_u | cold_i)).float())
        self.log("test/cold_user_fraction", self.test_cold_user, on_step=False, on_epoch=True)
        self.log("test/cold_item_fraction", self.test_cold_item, on_step=False, on_epoch=True)

    def on_test_epoch_end(self) -> None:
        self.log("test/rmse_warm", self.test_warm_mse.compute().sqrt())
        self.test_warm_mse.reset()

    def predict_step(self, batch, batch_idx):
        return self.predict(batch[0], batch[1])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the class that rebuilds this model (recsys.load imports it only from under recsys.models)
        checkpoint["recsys_model"] = f"{type(self).__module__}.{type(self).__qualname__}"

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict: bool = True,
                             weights_only: bool = True, **overrides):
        """The model a checkpoint holds, rebuilt from its saved hyperparameters (``overrides`` replace them)."""
        if hparams_file is not None:
            raise ValueError("hparams_file is not used: a recsys checkpoint holds its hyperparameters")
        ckpt = torch.load(checkpoint_path, map_location=map_location, weights_only=weights_only)
        if not isinstance(ckpt, dict) or "hyper_parameters" not in ckpt or "data" not in ckpt["hyper_parameters"]:
            raise ValueError(f"{checkpoint_path} is not a checkpoint of a recsys model (no data facts in its "
                             "hyper_parameters)")
        model = cls(**{**ckpt["hyper_parameters"], **overrides})
        model.on_load_checkpoint(ckpt)
        model.load_state_dict(ckpt["state_dict"], strict=strict)
        return model
