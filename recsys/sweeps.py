"""``hparams_search=optuna``: refuse a study that would tune nothing, before its first trial.

The search space of ``model=<name>`` is ``configs/hparams_search/space/optuna_<name>.yaml`` (an optional
default of train.yaml, so runs without a search work for every model). A model without that file would
otherwise give ``n_trials`` identical jobs. :class:`RequireSearchSpace` is a Hydra callback (configured
by configs/hparams_search/optuna.yaml) that stops the multirun before it starts, naming the file to add.
"""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

DISTRIBUTIONS = ("choice(", "range(", "interval(", "tag(")


class MissingSearchSpace(SystemExit):
    """Raised before the first trial. A SystemExit: Hydra turns a callback's ordinary exception into a warning."""


class RequireSearchSpace(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        params = config.hydra.sweeper.get("params") or {}
        overrides = config.hydra.overrides.task
        from_command_line = any(o.split("=", 1)[-1].startswith(DISTRIBUTIONS) for o in overrides)
        if not params and not from_command_line:
            model = config.hydra.runtime.choices.get("model")
            raise MissingSearchSpace(
                f"hparams_search=optuna: model={model} has no search space. Add "
                f"configs/hparams_search/space/optuna_{model}.yaml (e.g. `model.optimizer.lr: interval(0.001, 0.05)`, "
                "see optuna_mf.yaml), or give ranges on the command line")
