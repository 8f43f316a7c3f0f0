"""Config values read off the model class's declarations (``Model.task``), as OmegaConf resolvers.

What a model is decides three run settings, so no YAML file repeats it (configs/train.yaml and
configs/data/_ratings.yaml use these; each stays an ordinary override):

- ``${recsys.feedback:${model._target_}}``: ``data.feedback`` — explicit for a rating model, implicit (every
  training rating a positive) for a ranking model;
- ``${recsys.metric:${model._target_}}``: ``optimized_metric`` — ``val/rmse`` or ``val/ndcg@10``;
- ``${recsys.mode:${optimized_metric}}``: ``optimized_mode`` — ``max`` for a ranking metric (``@k``), else ``min``.

The class is imported only when a value is read (``hydra.utils.get_class``), so composing stays fast.
"""

from __future__ import annotations

from omegaconf import OmegaConf

FEEDBACK = {"rating": "explicit", "ranking": "implicit"}
METRIC = {"rating": "val/rmse", "ranking": "val/ndcg@10"}


def task_of(target: str) -> str:
    """The ``task`` a model class declares, from its dotted name (``model._target_``)."""
    from hydra.utils import get_class

    from recsys.models.base import Model

    cls = get_class(target)
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise ValueError(f"model._target_={target!r} is not a recsys.models.base.Model")
    return cls.task


def register() -> None:
    """Register the ``recsys.*`` resolvers (once per process)."""
    if OmegaConf.has_resolver("recsys.feedback"):
        return
    OmegaConf.register_new_resolver("recsys.feedback", lambda target: FEEDBACK[task_of(target)])
    OmegaConf.register_new_resolver("recsys.metric", lambda target: METRIC[task_of(target)])
    OmegaConf.register_new_resolver("recsys.mode", lambda metric: "max" if "@" in str(metric) else "min")
