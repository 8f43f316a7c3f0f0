"""RatingModel: the Lightning system every rating model shares.

Subclasses call ``super().__init__()``, then ``self.save_hyperparameters()`` with explicit, typed,
primitive arguments that include ``num_users, num_items, num_ratings, global_mean, rating_min,
rating_max, lr, optimizer, weight_decay``, build their scoring module, and implement

- ``forward(users, items)``: predicted ratings on the rating scale (unclipped), and
- ``objective(users, items, ratings)``: the minibatch training loss.

The base class supplies training/validation/test steps, torchmetrics RMSE and MAE per stage (pooled
over the whole split and synced across DDP ranks, never a mean of per-batch values), logging as
``train/loss``, ``val/rmse``, ``test/mae`` ..., clipping to the rating range, and the optimizer.
"""

from __future__ import annotations

import lightning as L
import torch
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection

OPTIMIZERS = ("adam", "sgd")


class RatingModel(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        metrics = MetricCollection({"rmse": MeanSquaredError(squared=False), "mae": MeanAbsoluteError()})
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def _check_common(self) -> None:
        """Validate the shared hyperparameters; subclasses call it after save_hyperparameters()."""
        hp = self.hparams
        if hp.optimizer not in OPTIMIZERS:
            raise ValueError(f"model.optimizer={hp.optimizer!r}: choose one of {OPTIMIZERS}")
        if hp.rating_min >= hp.rating_max:
            raise ValueError(f"rating_min={hp.rating_min} must be below rating_max={hp.rating_max}")
        if hp.num_users < 1 or hp.num_items < 1:
            raise ValueError(f"num_users={hp.num_users}, num_items={hp.num_items} must be positive")

    # -- to implement -------------------------------------------------------------------------------
    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def objective(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------------
    def predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Predicted ratings clipped to ``[rating_min, rating_max]``."""
        return self(users, items).clamp(self.hparams.rating_min, self.hparams.rating_max)

    def training_step(self, batch, batch_idx):
        users, items, ratings = batch
        loss = self.objective(users, items, ratings)
        # epoch-level only: no per-step host sync
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(ratings))
        return loss

    def _eval_step(self, batch, metrics: MetricCollection) -> None:
        users, items, ratings = batch
        metrics.update(self.predict(users, items), ratings)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, self.val_metrics)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, self.test_metrics)

    def predict_step(self, batch, batch_idx):
        return self.predict(batch[0], batch[1])

    def configure_optimizers(self):
        hp = self.hparams
        if hp.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        return torch.optim.SGD(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay,
                               momentum=hp.get("momentum", 0.0))
