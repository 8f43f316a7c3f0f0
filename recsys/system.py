"""System: the one Lightning system that trains, validates and tests any model (:class:`recsys.models.base.Model`).

The model holds the math; the system holds what a trainer needs, written once for every model: the training
step (delegated to the model's solver, :mod:`recsys.solvers`), torchmetrics RMSE and MAE per stage for a rating
model (pooled over the whole split and synced across DDP ranks, never a mean of per-batch values), logging as
``train/loss``, ``val/rmse``, ``test/mae`` ..., the cold-start accounting of the test split, the model's
``refresh`` before every evaluation, and checkpoints that name the model's class and hold its hyperparameters
(read back by :func:`recsys.models.base.load_checkpoint`, without the system).

    system = System(model)                 # model = BiasedMF(data=facts, ...)
    trainer.fit(system, datamodule=dm)
    system.model.predict(users, items)     # the fitted model, callable without a trainer
"""

from __future__ import annotations

import lightning as L
import torch
from torchmetrics import MeanAbsoluteError, MeanMetric, MeanSquaredError, MetricCollection

from recsys.models.base import Model
from recsys.solvers import SOLVERS


class System(L.LightningModule):
    """The Lightning system around ``model`` (see the module docstring)."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        if not isinstance(model, Model):
            raise TypeError(f"System(model): {type(model).__name__} is not a recsys Model")
        self.model = model
        self.solver = SOLVERS[model.hparams.solver]()
        self.automatic_optimization = self.solver.automatic(model)
        metrics = MetricCollection({"rmse": MeanSquaredError(squared=False), "mae": MeanAbsoluteError()})
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        # cold-start accounting on the test split (see Model.predict): fractions and the warm subset's RMSE
        self.test_cold_user, self.test_cold_item, self.test_warm_mse = MeanMetric(), MeanMetric(), MeanMetric()

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.model(users, items)

    def sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over DDP ranks (the identity in one process or outside a trainer)."""
        if self._trainer is None:
            return tensor
        return self.trainer.strategy.reduce(tensor, reduce_op="sum")

    def configure_optimizers(self):
        return self.solver.configure_optimizers(self.model)

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

    def _eval_step(self, batch, metrics: MetricCollection) -> torch.Tensor | None:
        """RMSE/MAE of a rating model's predictions; a ranking model predicts no rating (its validation and test
        are the ranking metrics, :mod:`recsys.evaluation`)."""
        if self.model.task != "rating":
            return None
        users, items, ratings = batch
        pred = self.model.predict(users, items)
        metrics.update(pred, ratings)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True)
        return pred

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, self.val_metrics)

    def test_step(self, batch, batch_idx):
        pred = self._eval_step(batch, self.test_metrics)
        users, items, ratings = batch
        cold_u, cold_i = ~self.model.user_seen[users], ~self.model.item_seen[items]
        self.test_cold_user.update(cold_u.float())
        self.test_cold_item.update(cold_i.float())
        if pred is not None:
            self.test_warm_mse.update((pred - ratings).square(), weight=(~(cold_u | cold_i)).float())
        self.log("test/cold_user_fraction", self.test_cold_user, on_step=False, on_epoch=True)
        self.log("test/cold_item_fraction", self.test_cold_item, on_step=False, on_epoch=True)

    def on_test_epoch_end(self) -> None:
        if self.model.task == "rating":
            self.log("test/rmse_warm", self.test_warm_mse.compute().sqrt())
        self.test_warm_mse.reset()

    def predict_step(self, batch, batch_idx):
        return self.model.predict(batch[0], batch[1])

    def on_validation_epoch_start(self) -> None:
        self.model.refresh()

    def on_test_epoch_start(self) -> None:
        self.model.refresh()

    def on_predict_epoch_start(self) -> None:
        self.model.refresh()

    def state_dict(self, *args, **kwargs):
        """The model's weights, under the model's own names: a checkpoint holds the model, not the system (whose
        metrics keep no state)."""
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the class that rebuilds the model and its hyperparameters; the weights are the model's (state_dict)
        checkpoint.update(self.model.checkpoint(weights=False))
