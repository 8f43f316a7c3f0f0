"""Closed-form fitting (``model.solver=closed_form``): models whose optimum is one solve (EASE) fit once.

The model provides ``fit_closed_form()`` (a hook of the model contract), which fits from the training interactions
it received through ``setup_interactions``. The training set comes as one batch per epoch (``full_batch``); the
fit runs at the first epoch's last batch, and training stops after that epoch: the run validates once and tests
the fitted model. Under DDP every rank fits the same model from the same interactions (no communication).
"""

from __future__ import annotations

import torch

from recsys.solvers.als import ALS


class ClosedForm(ALS):
    """Fitting strategy: one closed-form fit, then one validation (see the module docstring)."""

    def check(self, model) -> None:
        if not model.has_closed_form():
            raise ValueError(f"model.solver=closed_form: {type(model).__name__} has no closed-form fit "
                             "(no fit_closed_form()); use model.solver=gradient")

    def configure_optimizers(self, model):
        # nothing to step: a no-op optimizer (lr 0) over a placeholder makes Lightning count the epoch's step
        self._placeholder = torch.zeros(1, requires_grad=True)
        return torch.optim.SGD([self._placeholder], lr=0.0)

    @torch.no_grad()
    def training_step(self, model, batch, batch_idx: int) -> torch.Tensor | None:
        if self._whole_epoch(model, batch, batch_idx) is None:
            return None
        model.fit_closed_form()
        model.optimizers().step()
        model.trainer.should_stop = True  # fitted: one validation, then the test
        return None
