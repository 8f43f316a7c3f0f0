"""Fitting strategies, apart from the models they fit: ``model.solver=gradient|als|gibbs|closed_form``.

A strategy is a small object with ``full_batch``, ``automatic(model)``, ``check(model)``,
``configure_optimizers(model)`` (each on the plain model, :class:`recsys.models.base.Model`) and
``training_step(system, batch, batch_idx)`` (on the Lightning system, :class:`recsys.system.System`, which
delegates to it; the model is ``system.model``). :mod:`recsys.solvers.als` works on any model
whose ``least_squares()`` returns a :class:`~recsys.solvers.als.LeastSquares`.
"""

from recsys.solvers.als import ALS, LeastSquares
from recsys.solvers.closed_form import ClosedForm
from recsys.solvers.gibbs import Gibbs
from recsys.solvers.gradient import Gradient

SOLVERS = {"gradient": Gradient, "als": ALS, "gibbs": Gibbs, "closed_form": ClosedForm}

__all__ = ["ALS", "SOLVERS", "ClosedForm", "Gibbs", "Gradient", "LeastSquares"]
