"""Models: one module per model under ``recsys.models`` (any name), each with configs/model/<name>.yaml.

:class:`Model` is the scoring math and the contract a model follows (see :mod:`recsys.models.base`), a plain
``nn.Module`` a user calls without a trainer; shared pieces of the math live in :mod:`recsys.models.nets` and
:mod:`recsys.models.objectives`. The Lightning system that trains any model is :class:`recsys.system.System`.
"""

from recsys.models.base import Model

__all__ = ["Model"]
