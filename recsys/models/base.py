"""RatingModel: the Lightning system every rating model shares.

Subclasses call ``super().__init__()``, then ``self.save_hyperparameters()`` with explicit, typed,
primitive arguments that include ``num_users, num_items, num_train_ratings, global_mean, rating_min,
rating_max, lr, optimizer, weight_decay``, then ``self.init_common()``, build their scoring module,
and implement

- ``forward(users, items)``: predicted ratings on the rating scale (unclipped), and
- ``objective(users, items, ratings)``: the minibatch training loss.

The base class supplies training/validation/test steps, torchmetrics RMSE and MAE per stage (pooled
over the whole split and synced across DDP ranks, never a mean of per-batch values), logging as
``train/loss``, ``val/rmse``, ``test/mae`` ..., clipping to the rating range, and the optimizer.

Bilinear models (a ``self.net`` of :class:`recsys.models.layers.Bilinear` and ``target(ratings)``, the
ratings in the space of the squared error) may also be fit by closed-form ALS (``solver="als"``): one
epoch is a user half-sweep over the training batches followed by an item half-sweep over them again,
each accumulating normal equations, summing them across DDP ranks and solving (see recsys/als.py).
``train/loss`` is then the objective at the start of each epoch.
"""

from __future__ import annotations

import lightning as L
import torch
from torchmetrics import MeanAbsoluteError, MeanMetric, MeanSquaredError, MetricCollection

from recsys import als

OPTIMIZERS = ("adam", "sgd")
SOLVERS = ("gradient", "als")


class RatingModel(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        metrics = MetricCollection({"rmse": MeanSquaredError(squared=False), "mae": MeanAbsoluteError()})
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        # cold-start accounting on the test split (see predict): fractions and the warm subset's RMSE
        self.test_cold_user, self.test_cold_item, self.test_warm_mse = MeanMetric(), MeanMetric(), MeanMetric()

    def init_common(self) -> None:
        """Validate the shared hyperparameters and set up shared state; call after save_hyperparameters()."""
        hp = self.hparams
        if hp.optimizer not in OPTIMIZERS:
            raise ValueError(f"model.optimizer={hp.optimizer!r}: choose one of {OPTIMIZERS}")
        if hp.rating_min >= hp.rating_max:
            raise ValueError(f"rating_min={hp.rating_min} must be below rating_max={hp.rating_max}")
        if hp.num_users < 1 or hp.num_items < 1:
            raise ValueError(f"num_users={hp.num_users}, num_items={hp.num_items} must be positive")
        # which users/items have training ratings; set at fit start, saved with the weights
        self.register_buffer("user_seen", torch.ones(hp.num_users, dtype=torch.bool))
        self.register_buffer("item_seen", torch.ones(hp.num_items, dtype=torch.bool))
        solver = hp.get("solver", "gradient")
        if solver not in SOLVERS:
            raise ValueError(f"model.solver={solver!r}: choose one of {SOLVERS}")
        self.automatic_optimization = solver == "gradient"

    def _check_als(self, **lambdas: float) -> None:
        """Reject ALS settings that make the normal equations singular or ill-defined."""
        if self.hparams.get("solver") != "als":
            return
        if self.hparams.reg_scaling not in als.REG_SCALINGS:
            raise ValueError(f"model.reg_scaling={self.hparams.reg_scaling!r}: choose one of {als.REG_SCALINGS}")
        for name, value in lambdas.items():
            if value <= 0:
                raise ValueError(f"model.{name}={value} with model.solver=als: ALS needs a positive "
                                 "regularization (rows with fewer ratings than factors are singular)")

    def als_lambdas(self) -> tuple[float, float]:
        """(λ for the user half-sweep, λ for the item half-sweep)."""
        raise NotImplementedError

    # -- to implement -------------------------------------------------------------------------------
    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def objective(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------------
    def fallback(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Prediction for a cold pair (user or item without training ratings): the training mean μ.

        Models with biases override it to add whatever bias is known (see BiasedMF).
        """
        return torch.full(users.shape, float(self.hparams.global_mean), device=users.device)

    def predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Predicted ratings clipped to ``[rating_min, rating_max]``; cold pairs get :meth:`fallback`."""
        warm = self.user_seen[users] & self.item_seen[items]
        pred = torch.where(warm, self(users, items), self.fallback(users, items))
        return pred.clamp(self.hparams.rating_min, self.hparams.rating_max)

    def on_fit_start(self) -> None:
        train = getattr(self.trainer.datamodule, "train_set", None)
        if train is not None:  # every rank holds the whole training split, so all agree
            self.user_seen.copy_(torch.bincount(train[0], minlength=len(self.user_seen)) > 0)
            self.item_seen.copy_(torch.bincount(train[1], minlength=len(self.item_seen)) > 0)

    def training_step(self, batch, batch_idx):
        users, items, ratings = batch
        # training ratings seen this epoch, summed over batches and (once, at epoch end) over ranks
        self.log("train/ratings", float(len(ratings)), on_step=False, on_epoch=True, reduce_fx="sum",
                 sync_dist=True, batch_size=len(ratings))
        if not self.automatic_optimization:
            return self._als_step(batch, batch_idx)
        loss = self.objective(users, items, ratings)
        # epoch-level only: no per-step host sync
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(ratings))
        return loss

    # -- ALS ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _als_step(self, batch, batch_idx):
        users, items, ratings = batch
        self.log("train/loss", self.objective(users, items, ratings), on_step=False, on_epoch=True,
                 batch_size=len(ratings))
        if batch_idx == 0:
            self._stats = self._new_stats("user")
        self._accumulate("user", self._stats, batch)
        if batch_idx == self.trainer.num_training_batches - 1:
            self._solve("user", self._stats)
            self._stats = None
            # the second half-sweep sees every batch again
            self.als_half_sweep("item", ([t.to(self.device) for t in b] for b in self.trainer.train_dataloader))
            # a no-op step, so that global_step counts ALS epochs: checkpointing keys on it
            self.optimizers().step()

    @torch.no_grad()
    def als_half_sweep(self, side: str, batches) -> None:
        """Solve one side (``'user'`` or ``'item'``) in closed form from ``(users, items, ratings)`` batches.

        The same steps as training, in one process; useful for tests, benchmarks and warm starts.
        """
        stats = self._new_stats(side)
        for batch in batches:
            self._accumulate(side, stats, batch)
        self._solve(side, stats)

    def _new_stats(self, side: str) -> als.NormalEquations:
        w = als.side_weights(self.net, side)
        return als.NormalEquations(w.shape[0], w.shape[1], device=w.device, dtype=w.dtype)

    def _accumulate(self, side: str, stats: als.NormalEquations, batch) -> None:
        users, items, ratings = batch
        stats.add(*als.side_problem(self.net, side, users, items, self.target(ratings)))

    def _solve(self, side: str, stats: als.NormalEquations) -> None:
        if self._trainer is not None:  # sum the statistics over DDP ranks (a no-op on one)
            stats.all_reduce(lambda t: self.trainer.strategy.reduce(t, reduce_op="sum"))
        lam = self.als_lambdas()[0 if side == "user" else 1]
        try:
            x = stats.solve(lam, self.hparams.reg_scaling, als.side_weights(self.net, side))
        except FloatingPointError as err:
            raise FloatingPointError(f"ALS {side} half-sweep in epoch {self.current_epoch}: {err}") from None
        if not bool(torch.isfinite(x).all()):
            raise FloatingPointError(f"ALS produced non-finite {side} factors in epoch {self.current_epoch}")
        als.assign_side(self.net, side, x)

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

    def configure_optimizers(self):
        hp = self.hparams
        if not self.automatic_optimization:
            # ALS solves in closed form; this optimizer never changes a weight (no gradients, lr 0)
            return torch.optim.SGD(self.parameters(), lr=0.0)
        if hp.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        return torch.optim.SGD(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay,
                               momentum=hp.get("momentum", 0.0))
