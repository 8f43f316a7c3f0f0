"""``hparams_search=optuna``: Hydra's Optuna sweeper, refusing to run a study that tunes nothing.

The search space of ``model=<name>`` is ``configs/hparams_search/space/optuna_<name>.yaml`` (an optional
default of train.yaml, so runs without a search work for every model). A model without that file would
otherwise give ``n_trials`` identical jobs; this sweeper stops before the first one, naming the file.
"""

from __future__ import annotations

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as _HydraOptunaSweeper

DISTRIBUTIONS = ("choice(", "range(", "interval(", "tag(")


class OptunaSweeper(_HydraOptunaSweeper):
    def setup(self, *, hydra_context, task_function, config) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self._model = config.hydra.runtime.choices.get("model")

    def sweep(self, arguments: list[str]) -> None:
        from_command_line = any(v.split("=", 1)[-1].startswith(DISTRIBUTIONS) for v in arguments)
        if not self.sweeper.params and not from_command_line:
            raise ValueError(
                f"hparams_search=optuna: model={self._model} has no search space. Add "
                f"configs/hparams_search/space/optuna_{self._model}.yaml (e.g. `model.optimizer.lr: "
                "interval(0.001, 0.05)`, see optuna_mf.yaml), or give ranges on the command line")
        return super().sweep(arguments)
