"""Models: one module per model under ``recsys.models`` (any name), each with configs/model/<name>.yaml.

:class:`RatingModel` is the shared Lightning system and the contract a model follows (see
:mod:`recsys.models.base`); the scoring math lives in :mod:`recsys.models.nets` and
:mod:`recsys.models.objectives`.
"""

from recsys.models.base import RatingModel

__all__ = ["RatingModel"]
