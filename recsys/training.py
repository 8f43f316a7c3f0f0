"""The training pipeline behind ``train.py``: datamodule -> model -> fit -> test -> metrics.json."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from recsys import evaluation, rundir, tracking, validation
from recsys.io import atomic_write_json
from recsys.models.base import RatingModel
from recsys.recommender import save_seen
from recsys.solvers import SOLVERS
from recsys.validation import AtLeast, OneOf, Size

log = logging.getLogger(__name__)


def _quiet_duplicate_console_logs() -> None:
    """Lightning adds its own console handler; under Hydra the root logger prints the same lines."""
    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch"):
            pl_log = logging.getLogger(name)
            for h in list(pl_log.handlers):
                if type(h) is logging.StreamHandler:
                    pl_log.removeHandler(h)


def _instantiate_all(group: DictConfig | None) -> list:
    return [instantiate(c) for c in (group or {}).values() if c is not None and "_target_" in c]


def _best_validation(metric: str, history: tracking.History, ckpt, mode: str = "min") -> dict:
    """The validation metrics of the epoch that was best by ``metric`` (``optimized_metric``).

    ``metric`` gets the checkpoint callback's best score where there is one; the epoch's other ``val/*``
    metrics come from the history, so ``val/rmse`` is always reported beside it.
    """
    rows = [r for r in history.rows if metric in r]
    pick = max if mode == "max" else min
    best = dict(pick(rows, key=lambda r: r[metric])) if rows else {}
    best = {k: v for k, v in best.items() if k.startswith("val/")}
    if ckpt is not None and ckpt.best_model_score is not None:
        best[metric] = float(ckpt.best_model_score)
    return best


#: train.yaml's own keys: what each may be (the groups' keys are checked by their classes' signatures)
RUN_SETTINGS = {
    "seed": int,
    "optimized_metric": str,
    "optimized_mode": Annotated[str, OneOf("min", "max")],
    "resume": Annotated[str, OneOf(*rundir.RESUME)],
    "test_ckpt": Annotated[str, OneOf("best", "last")],
    "progress": Annotated[str, OneOf(*tracking.PROGRESS)],
    "trainer.max_epochs": Annotated[int, OneOf(-1)] | Size,
    "callbacks.early_stopping.patience": Annotated[int, AtLeast(0)],
    "eval.ranking": bool,
    "eval.k": Size | list,
    "eval.relevance_threshold": float,
}


def is_ranking_metric(name: str) -> bool:
    """Ranking metrics (``val/ndcg@10``, ``val/recall@20``) are better higher; errors (``val/rmse``) lower."""
    return "@" in name


def check_settings(cfg: DictConfig) -> None:
    """Every setting, before any data is read: errors name the key, the value and what is allowed."""
    for key, annotation in RUN_SETTINGS.items():
        value = OmegaConf.select(cfg, key, default=None)
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        if value is not None or key in ("seed", "resume"):
            validation.check(key, annotation, value)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    cls = get_class(model.pop("_target_"))
    if not (isinstance(cls, type) and issubclass(cls, RatingModel)):
        raise ValueError(f"model._target_={cfg.model._target_!r} is not a recsys.models.RatingModel")
    cls.check_settings(model)
    metric, mode = str(cfg.optimized_metric), str(cfg.get("optimized_mode", "min"))
    better = "max" if is_ranking_metric(metric) else "min"
    if mode != better:
        raise ValueError(f"optimized_metric={metric} with optimized_mode={mode}: {metric} is better when "
                         f"{'higher' if better == 'max' else 'lower'}; set optimized_mode={better}")
    if is_ranking_metric(metric) and not metric.startswith("val/"):
        raise ValueError(f"optimized_metric={metric}: select by a validation metric (val/ndcg@10, val/rmse, ...)")
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"trainer.accelerator={accelerator}: no GPU was found (torch.cuda.is_available() is False); "
                         "use trainer=cpu, or trainer=ddp_cpu for DDP on CPU processes")


def train(cfg: DictConfig) -> dict:
    """Fit and test the configured model; return (and write to metrics.json) the final metrics.

    Any failure writes ``failed.json`` (error type, message and the phase it happened in: ``config``,
    ``data``, ``fit`` or ``test``) into the run directory before it propagates, so a multirun report can
    list it; W&B runs are finished whatever happens, so sweeps go on. The one exception: a run directory
    holding another run is left untouched (see :mod:`recsys.rundir`).
    """
    _quiet_duplicate_console_logs()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rank_zero = rank_zero_only.rank == 0
    phase, loggers, failed = "config", [], True
    try:
        check_settings(cfg)
        # checks the data settings; reads nothing yet. ALS takes the whole training set each epoch.
        datamodule = instantiate(cfg.data, **({"batch_size": None} if SOLVERS[cfg.model.solver].full_batch else {}))
        resume_from = rundir.prepare(cfg, out, set_aside=rank_zero)
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        tracking.wandb_offline_unless_logged_in(cfg.get("logger"))
        tracking.wandb_resume_id(cfg.get("logger"), out)
        loggers = _instantiate_all(cfg.get("logger"))
        history, clock = tracking.History(), tracking.RunClock()
        callbacks, bar = [*_instantiate_all(cfg.get("callbacks")), history, clock], True
        progress = tracking.resolve_progress(cfg.get("progress", "auto"))
        if progress != "bar":  # no redraws: one line per epoch (epoch) or nothing (none)
            callbacks, bar = [c for c in callbacks if not isinstance(c, ProgressBar)], False
            callbacks += [tracking.EpochLines()] if progress == "epoch" else []
        trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks,
                                         enable_progress_bar=bar and cfg.trainer.get("enable_progress_bar", True))
        phase = "data"
        # the model is sized by the data: read and split first (downloads once: a file lock serializes ranks)
        datamodule.prepare_data()
        datamodule.setup("fit")
        facts, seen = datamodule.facts(), datamodule.seen()
        if rank_zero:  # what each user rated in training and validation: recommend() excludes it
            save_seen(out, seen, facts.item_counts.numpy())
        model = instantiate(cfg.model, data=facts)
        # the contract's data channel: the training interactions, and the pairs the run will ask about
        model.setup_interactions(datamodule.interactions("train"))
        datamodule.sample_negatives(model.negatives_per_positive())  # pairwise models: negatives in the batches
        model.track(*(torch.cat([datamodule.val_set[k], datamodule.test_set[k]]) for k in (0, 1)))
        if is_ranking_metric(cfg.optimized_metric):  # ranking on validation each epoch: what selects the model
            k = int(str(cfg.optimized_metric).rsplit("@", 1)[1])
            trainer.callbacks.append(evaluation.RankingValidation(datamodule.val_set, datamodule.seen("train"), (k,),
                                                                  cfg.eval.relevance_threshold))
        phase = "fit"
        _fit(cfg, trainer, datamodule, model, loggers, out, resume_from)
        phase = "test"
        if cfg.eval.ranking:  # handed the test set, seen items and popularity: logged with the test metrics
            ks = (cfg.eval.k,) if isinstance(cfg.eval.k, int) else tuple(cfg.eval.k)
            trainer.callbacks.append(evaluation.RankingMetrics(datamodule.test_set, seen, facts.item_counts, ks,
                                                               cfg.eval.relevance_threshold))
        metrics = _test_and_report(cfg, trainer, datamodule, model, loggers, history, clock, out)
        failed = False
        return metrics
    except rundir.RunDirectoryError:
        raise  # the directory belongs to another run: write nothing into it
    except BaseException as err:
        if rank_zero:
            cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err
            atomic_write_json(out / "failed.json", {
                "error": f"{type(cause).__name__}: {cause}"[:4000], "error_type": type(cause).__name__,
                "message": str(cause)[:4000], "phase": phase})
        raise
    finally:
        if tracking.wandb_loggers(loggers):
            import wandb

            wandb.finish(exit_code=1 if failed else 0)


def _fit(cfg: DictConfig, trainer: L.Trainer, datamodule, model, loggers: list, out: Path,
         resume_from: str | None) -> None:
    applied = tracking.applied_defaults(*tracking.hydra_choices())
    for group, found in applied.items():  # defaults chosen by interpolation: say which applied and what they set
        if found is None:
            log.info("%s: no file for this choice; nothing set", group)
        else:
            log.info("%s: configs/%s set %s", group, found["file"],
                     ", ".join(f"{k}={v}" for k, v in found["sets"].items()))
    run_info = {"config": OmegaConf.to_container(cfg, resolve=True), "data": datamodule.describe(),
                "applied_defaults": applied, "git": tracking.git_state(),
                "parameters": tracking.parameter_counts(model)}
    for lg in loggers:
        lg.log_hyperparams(run_info)
    if trainer.is_global_zero:
        atomic_write_json(out / "run_info.json", run_info)

    trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from)


def _last_checkpoint(out: Path) -> Path | str:
    last = out / "checkpoints" / "last.ckpt"
    return last if last.exists() else "last"


def _test_and_report(cfg: DictConfig, trainer: L.Trainer, datamodule, model, loggers: list,
                     history: tracking.History, clock: tracking.RunClock, out: Path) -> dict:
    fit_seconds = clock.seconds  # every part of the run, resumed ones included
    ckpt = trainer.checkpoint_callback
    test_ckpt = cfg.get("test_ckpt", "best")
    use_best = test_ckpt == "best" and ckpt is not None and ckpt.best_model_path
    results = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt.best_model_path if use_best else None,
                           verbose=False)[0]

    epochs = trainer.current_epoch
    n_train = len(datamodule.train_set[0])
    metrics = {k: float(v) for k, v in results.items()}
    metrics.update(_best_validation(cfg.optimized_metric, history, ckpt, cfg.get("optimized_mode", "min")))
    metrics.update({
        "epochs": int(epochs),
        "fit_seconds": fit_seconds,
        "train_ratings_per_second": n_train * epochs / fit_seconds if fit_seconds > 0 else 0.0,
        "num_train": n_train,
        "restarts": clock.restarts,
        "world_size": trainer.world_size,
        "test_checkpoint": str(ckpt.best_model_path) if use_best else str(_last_checkpoint(out)),
    })
    if trainer.is_global_zero:
        atomic_write_json(out / "metrics.json", metrics)
        curve = tracking.save_learning_curve(history.rows, out / "learning_curve.png",
                                             title=f"{cfg.model._target_.rsplit('.', 1)[-1]} on {cfg.data.name}")
        for lg in tracking.wandb_loggers(loggers):
            lg.experiment.summary.update(metrics)
            if curve is not None:
                lg.log_image(key="learning_curve", images=[str(curve)])
        shown = ["test/rmse", "test/mae", *(k for k in metrics if k.startswith("test/ndcg@")), cfg.optimized_metric]
        figures = " ".join(f"{k}={metrics[k]:.4f}" for k in dict.fromkeys(shown) if k in metrics)
        print(f"{figures} epochs={epochs} fit_seconds={fit_seconds:.1f} -> {out / 'metrics.json'}")
    return metrics
