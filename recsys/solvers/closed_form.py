"""Closed-form fitting (``model.solver=closed_form``): models whose optimum is one solve (EASE) fit once.

The model provides ``fit_closed_form(train)`` (a hook of the model contract) and gets the training
:class:`~recsys.data.interactions.Interactions` as its argument: the very interactions the run handed it through
the contract (``model.interactions``). The fit runs at the first training batch (``full_batch``: one batch an
epoch), and training stops after that epoch: the run validates once and tests the fitted model. Under DDP every
rank fits the same model from the same interactions (no communication).
"""

from __future__ import annotations

import torch


class ClosedForm:
    """Fitting strategy: one closed-form fit, then one validation (see the module docstring)."""

    full_batch = True

    def automatic(self, model) -> bool:
        return False  # nothing to differentiate

    def check(self, model) -> None:
        if not model.has_closed_form():
            raise ValueError(f"model.solver=closed_form: {type(model).__name__} has no closed-form fit "
                             "(no fit_closed_form(train))")

    def configure_optimizers(self, model):
        # no weight is stepped; a no-op step (lr 0, over no weight of the model's) makes Lightning count the
        # epoch's global step, which checkpoints key on
        self._step_counter = torch.zeros(1, requires_grad=True)
        return torch.optim.SGD([self._step_counter], lr=0.0)

    @torch.no_grad()
    def training_step(self, system, batch, batch_idx: int) -> torch.Tensor | None:
        model = system.model
        if batch_idx == 0:
            if model.interactions is None:
                raise RuntimeError(f"{type(model).__name__}: no training interactions were attached "
                                   "(model.attach_interactions(train)) before fitting")
            model.fit_closed_form(model.interactions)
            system.optimizers().step()
        if batch_idx + 1 == system.trainer.num_training_batches:
            system.trainer.should_stop = True  # fitted: one validation, then the test
        return None
