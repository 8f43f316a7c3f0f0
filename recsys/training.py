"""The training pipeline behind ``train.py``: datamodule -> model -> fit -> test -> metrics.json."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Annotated

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from recsys import checkpoints, evaluation, memory, rundir, threads, tracking, validation, wandb_setup
from recsys.io import atomic_write_json
from recsys.models.base import Model
from recsys.recommender import save_seen
from recsys.solvers import SOLVERS
from recsys.system import System
from recsys.validation import AtLeast, OneOf, Positive, Size

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
    "refit": bool,
    "progress": Annotated[str, OneOf(*tracking.PROGRESS)],
    "trainer.max_epochs": Annotated[int, OneOf(-1)] | Size,
    "trainer.threads": Size,
    "callbacks.early_stopping.patience": Annotated[int, AtLeast(0)],
    "eval.ranking": bool,
    "eval.k": Size | list,
    "eval.relevance_threshold": float,
    "eval.max_memory_mb": Positive,
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
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise ValueError(f"model._target_={cfg.model._target_!r} is not a recsys.models.base.Model")
    cls.check_settings(model)
    metric, mode = str(cfg.optimized_metric), str(cfg.optimized_mode)
    better = "max" if is_ranking_metric(metric) else "min"
    if mode != better:
        raise ValueError(f"optimized_metric={metric} with optimized_mode={mode}: {metric} is better when "
                         f"{'higher' if better == 'max' else 'lower'}; set optimized_mode={better}")
    if is_ranking_metric(metric) and not metric.startswith("val/"):
        raise ValueError(f"optimized_metric={metric}: select by a validation metric (val/ndcg@10, val/rmse, ...)")
    accelerator = str(cfg.trainer.accelerator)
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"trainer.accelerator={accelerator}: no GPU was found (torch.cuda.is_available() is False); "
                         "use trainer=cpu, or trainer=ddp_cpu for DDP on CPU processes")


def _trainer_config(cfg: DictConfig) -> DictConfig:
    """``cfg.trainer`` as Lightning's Trainer takes it: without recsys's own ``threads``."""
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer.pop("threads", None)
    return OmegaConf.create(trainer)


def _ranks_on_node(cfg: DictConfig) -> int:
    """Processes of this run that share one machine's CPUs: the CPU ranks of DDP (``trainer=ddp_cpu``), else 1."""
    devices = cfg.trainer.devices
    cpu = str(cfg.trainer.accelerator) == "cpu" or not torch.cuda.is_available()
    return int(devices) if cpu and isinstance(devices, int) and devices > 1 else 1


def _set_threads(cfg: DictConfig) -> None:
    """torch's threads for this process (``trainer.threads``, else its share of the CPUs it may use); under DDP
    on CPUs the ranks Lightning starts take the same share (``OMP_NUM_THREADS``)."""
    ranks, requested = _ranks_on_node(cfg), cfg.trainer.threads
    n = threads.apply(ranks, requested)
    if ranks > 1 or requested is not None:
        os.environ.setdefault("OMP_NUM_THREADS", str(n))  # Lightning's launcher and the rank processes read it
    wait = threads.waiting()
    log.info("torch threads: %d (%s CPUs available, %d rank(s) on this node; OpenMP waiting: %s, set by %s)", n,
             threads.available_cpus(), ranks, wait["policy"], wait["set_by"])


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
    phase, loggers, failed, scope = "config", [], True, contextlib.ExitStack()
    tested = None  # the test phase's checkpoint, once the fit is done
    try:
        check_settings(cfg)
        _set_threads(cfg)
        scope.enter_context(memory.budget(cfg.eval.max_memory_mb))  # every bulk scoring of the run keeps to it
        # checks the data settings; reads nothing yet. ALS takes the whole training set each epoch.
        full_batch = SOLVERS[cfg.model.solver].full_batch
        if full_batch and cfg.data.batch_size is not None:  # said, not silent: the solver reads whole epochs
            log.info("model.solver=%s takes the whole training set each epoch: data.batch_size=%s is not used",
                     cfg.model.solver, cfg.data.batch_size)
        datamodule = instantiate(cfg.data, **({"batch_size": None} if full_batch else {}))
        resume_from = rundir.prepare(cfg, out, set_aside=rank_zero)
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        wandb_setup.wandb_offline_unless_logged_in(cfg.get("logger"))
        wandb_setup.wandb_resume_id(cfg.get("logger"), out)
        loggers = _instantiate_all(cfg.get("logger"))
        history, clock = tracking.History(), tracking.RunClock()
        callbacks, bar = [*_instantiate_all(cfg.get("callbacks")), history, clock], True
        progress = tracking.resolve_progress(cfg.progress)
        if progress != "bar":  # no redraws: one line per epoch (epoch) or nothing (none)
            callbacks, bar = [c for c in callbacks if not isinstance(c, ProgressBar)], False
            callbacks += [tracking.EpochLines()] if progress == "epoch" else []
        trainer: L.Trainer = instantiate(_trainer_config(cfg), logger=loggers or False, callbacks=callbacks,
                                         plugins=[checkpoints.AtomicCheckpointIO()],
                                         enable_progress_bar=bar and cfg.trainer.get("enable_progress_bar", True))
        phase = "data"
        # the model is sized by the data: read and split first (downloads once: a file lock serializes ranks)
        datamodule.prepare_data()
        datamodule.setup("fit")
        facts, seen = datamodule.facts(), datamodule.seen()
        if rank_zero:  # what each user rated in training and validation: recommend() excludes it
            save_seen(out, seen, facts.item_counts.numpy())
        system = _build_model(cfg, datamodule, (datamodule.val_set, datamodule.test_set))
        if is_ranking_metric(cfg.optimized_metric):  # ranking on validation each epoch: what selects the model
            k = int(str(cfg.optimized_metric).rsplit("@", 1)[1])
            trainer.callbacks.append(evaluation.RankingValidation(datamodule.val_set, datamodule.seen("train"), (k,),
                                                                  cfg.eval.relevance_threshold,
                                                                  cfg.eval.max_memory_mb))
        refit = bool(cfg.refit)
        chosen = _read_choice(out) if refit else None  # a resumed refit: the first fit and its choice are done
        if refit:
            datamodule.with_validation_in_train()  # refuses a split without validation before any fitting
        phase = "fit"
        if chosen is None:
            _fit(cfg, trainer, datamodule, system, loggers, out, resume_from)
        if refit:
            if chosen is None:
                chosen = _choice(cfg, trainer, history, clock, out)
            phase = "refit"
            trainer, datamodule, system, clock = _refit(cfg, datamodule, chosen, out)
            facts = datamodule.facts()
        phase = "test"
        tested = str(out / "checkpoints" / "refit.ckpt") if refit else _test_checkpoint(cfg, trainer, out)
        if cfg.eval.ranking:  # handed the test set, seen items and popularity: logged with the test metrics
            ks = (cfg.eval.k,) if isinstance(cfg.eval.k, int) else tuple(cfg.eval.k)
            trainer.callbacks.append(evaluation.RankingMetrics(datamodule.test_set, seen, facts.item_counts, ks,
                                                               cfg.eval.relevance_threshold,
                                                               cfg.eval.max_memory_mb))
        if refit:
            metrics = _test_and_report_refit(cfg, trainer, datamodule, system, loggers, chosen, clock, out)
        else:
            metrics = _test_and_report(cfg, trainer, datamodule, system, loggers, history, clock, out)
        failed = False
        return metrics
    except rundir.RunDirectoryError:
        raise  # the directory belongs to another run: write nothing into it
    except BaseException as err:
        if rank_zero:
            cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err
            record = {"error": f"{type(cause).__name__}: {cause}"[:4000], "error_type": type(cause).__name__,
                      "message": str(cause)[:4000], "phase": phase}
            if phase == "test" and tested is not None:  # the fit is done and kept: evaluate it without refitting
                record.update({"test_checkpoint": tested, "evaluate": f"recsys evaluate {out}",
                               "kept": "the fit's checkpoints; recsys evaluate RUN (or recsys.load(RUN)) uses "
                                       "test_checkpoint"})
                log.error("the test phase failed after the fit; the fit is kept (%s). Evaluate it alone with: "
                          "recsys evaluate %s", tested, out)
            atomic_write_json(out / "failed.json", record)
        raise
    finally:
        scope.close()
        if wandb_setup.wandb_loggers(loggers):
            import wandb

            wandb.finish(exit_code=1 if failed else 0)


def _build_model(cfg: DictConfig, datamodule, asked: tuple) -> System:
    """The configured model for ``datamodule`` (the fit's or the refit's), built and handed its data through the
    contract: the training interactions, the sampled negatives its batches need, the pairs the run will ask about
    (``asked``: the splits scored after the fit); returned in the Lightning system that fits and tests it."""
    model = instantiate(cfg.model, data=datamodule.facts())
    model.attach_interactions(datamodule.interactions("train"))
    datamodule.sample_negatives(model.negatives_per_positive())  # pairwise models: negatives in the batches
    model.track(*(torch.cat([split[k] for split in asked]) for k in (0, 1)))
    return System(model)


def _fit(cfg: DictConfig, trainer: L.Trainer, datamodule, system: System, loggers: list, out: Path,
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
                "parameters": tracking.parameter_counts(system.model),
                "threads": {"torch": torch.get_num_threads(), "available_cpus": threads.available_cpus(),
                            "openmp_wait": threads.waiting()}}
    for lg in loggers:
        lg.log_hyperparams(run_info)
    if trainer.is_global_zero:
        atomic_write_json(out / "run_info.json", run_info)

    trainer.fit(system, datamodule=datamodule, ckpt_path=resume_from)


def _last_checkpoint(out: Path) -> Path | str:
    last = out / "checkpoints" / "last.ckpt"
    return last if last.exists() else "last"


def _test_checkpoint(cfg: DictConfig, trainer: L.Trainer, out: Path) -> str:
    """The weights the test phase uses (``test_ckpt``): the best checkpoint by ``optimized_metric``, else the
    last weights (``last.ckpt``)."""
    ckpt = trainer.checkpoint_callback
    if cfg.test_ckpt == "best" and ckpt is not None and ckpt.best_model_path:
        return str(ckpt.best_model_path)
    return str(_last_checkpoint(out))


def _test_and_report(cfg: DictConfig, trainer: L.Trainer, datamodule, system: System, loggers: list,
                     history: tracking.History, clock: tracking.RunClock, out: Path) -> dict:
    fit_seconds = clock.seconds  # every part of the run, resumed ones included
    ckpt = trainer.checkpoint_callback
    tested = _test_checkpoint(cfg, trainer, out)
    use_best = ckpt is not None and bool(ckpt.best_model_path) and tested == str(ckpt.best_model_path)
    start = time.perf_counter()
    results = trainer.test(system, datamodule=datamodule, ckpt_path=tested if use_best else None,
                           verbose=False)[0]
    test_seconds = time.perf_counter() - start

    epochs = trainer.current_epoch
    n_train = len(datamodule.train_set[0])
    metrics = {k: float(v) for k, v in results.items()}
    metrics.update(_best_validation(cfg.optimized_metric, history, ckpt, cfg.optimized_mode))
    metrics.update({
        "epochs": int(epochs),
        "fit_seconds": fit_seconds,
        "test_seconds": test_seconds,  # the test phase: loading the checkpoint, RMSE/MAE and the ranking metrics
        "train_ratings_per_second": n_train * epochs / fit_seconds if fit_seconds > 0 else 0.0,
        "num_train": n_train,
        "restarts": clock.restarts,
        "world_size": trainer.world_size,
        "test_checkpoint": tested,
    })
    _write_report(cfg, trainer, loggers, metrics, history.rows, out, epochs)
    return metrics


def _write_report(cfg: DictConfig, trainer: L.Trainer, loggers: list, metrics: dict, rows: list, out: Path,
                  epochs: int) -> None:
    """metrics.json, the learning curve, the W&B summary and the one line printed at the end (rank 0)."""
    if not trainer.is_global_zero:
        return
    atomic_write_json(out / "metrics.json", metrics)
    curve = tracking.save_learning_curve(rows, out / "learning_curve.png",
                                         title=f"{cfg.model._target_.rsplit('.', 1)[-1]} on {cfg.data.name}",
                                         metric=str(cfg.optimized_metric))
    for lg in wandb_setup.wandb_loggers(loggers):
        lg.experiment.summary.update(metrics)
        if curve is not None:
            lg.log_image(key="learning_curve", images=[str(curve)])
    shown = ["test/rmse", "test/mae", *(k for k in metrics if k.startswith("test/ndcg@")), cfg.optimized_metric]
    figures = " ".join(f"{k}={metrics[k]:.4f}" for k in dict.fromkeys(shown) if k in metrics)
    refit = f" refit_epochs={metrics['refit_epochs']}" if metrics.get("refit") else ""
    print(f"{figures} epochs={epochs}{refit} fit_seconds={metrics['fit_seconds']:.1f} -> {out / 'metrics.json'}")


# -- refit on train+val (refit=true) -------------------------------------------------------------------------------
CHOICE_FILE = "refit_choice.json"


def _read_choice(out: Path) -> dict | None:
    """The first fit's choice, written once it finished: a resumed refit run does not fit it again."""
    path = out / CHOICE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def _choice(cfg: DictConfig, trainer: L.Trainer, history: tracking.History, clock: tracking.RunClock,
            out: Path) -> dict:
    """What validation chose: the epoch count (gradient and ALS epochs, Gibbs samples, 1 for a closed form), the
    chosen epoch's validation metrics and the first fit's seconds; saved to refit_choice.json."""
    ckpt = trainer.checkpoint_callback
    validation = _best_validation(cfg.optimized_metric, history, ckpt, cfg.optimized_mode)
    rows = [r for r in history.rows if cfg.optimized_metric in r]
    if cfg.test_ckpt == "last" or not rows:
        epochs = max(int(trainer.current_epoch), 1)  # the last weights: every epoch trained
    else:
        pick = max if cfg.optimized_mode == "max" else min
        epochs = int(pick(rows, key=lambda r: r[cfg.optimized_metric])["epoch"]) + 1
    choice = {"epochs": epochs, "validation": validation, "first_fit_epochs": int(trainer.current_epoch),
              "history": history.rows,
              "first_fit_seconds": clock.seconds, "first_fit_checkpoint": str(ckpt.best_model_path if ckpt else "")}
    if trainer.is_global_zero:
        atomic_write_json(out / CHOICE_FILE, choice)
    log.info("refit: validation chose %d epoch(s) (%s=%.4f); fitting again on train+val", epochs,
             cfg.optimized_metric, validation.get(cfg.optimized_metric, float("nan")))
    return choice


def _refit(cfg: DictConfig, datamodule, chosen: dict, out: Path):
    """The same model and settings fitted again on train+val for the chosen epoch count, no validation; its last
    weights go to checkpoints/refit.ckpt (saved every epoch: a killed refit resumes from it)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    full = datamodule.with_validation_in_train()
    facts = full.facts()
    if rank_zero_only.rank == 0:  # seen items are unchanged; popularity now counts train+val
        save_seen(out, full.seen(), facts.item_counts.numpy())
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    system = _build_model(cfg, full, (full.test_set,))
    clock = tracking.RunClock()
    last = ModelCheckpoint(dirpath=out / "checkpoints", filename="refit", monitor=None, save_top_k=1,
                           enable_version_counter=False)
    trainer = instantiate(_trainer_config(cfg), logger=False, callbacks=[clock, last],
                          plugins=[checkpoints.AtomicCheckpointIO()], max_epochs=int(chosen["epochs"]),
                          min_epochs=None, limit_val_batches=0, num_sanity_val_steps=0, enable_progress_bar=False,
                          enable_model_summary=False)
    ckpt = out / "checkpoints" / "refit.ckpt"
    with warnings.catch_warnings():  # the run's checkpoints share the directory, as they should
        warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
        trainer.fit(system, datamodule=full, ckpt_path=ckpt if ckpt.exists() else None)
    return trainer, full, system, clock


def _test_and_report_refit(cfg: DictConfig, trainer: L.Trainer, datamodule, system: System, loggers: list,
                           chosen: dict,
                           clock: tracking.RunClock, out: Path) -> dict:
    """metrics.json of a refit run: ``test/*`` of the refit model, the validation choice beside them, seconds of
    both fits; ``test_checkpoint`` names checkpoints/refit.ckpt, which ``recsys.load`` serves."""
    results = trainer.test(system, datamodule=datamodule, verbose=False)[0]
    refit_seconds = clock.seconds
    n_train = len(datamodule.train_set[0])
    metrics = {k: float(v) for k, v in results.items()}
    metrics.update(chosen["validation"])
    metrics.update({
        "refit": True,
        "epochs": int(chosen["first_fit_epochs"]),
        "refit_epochs": int(chosen["epochs"]),
        "fit_seconds": chosen["first_fit_seconds"] + refit_seconds,
        "first_fit_seconds": chosen["first_fit_seconds"],
        "refit_seconds": refit_seconds,
        "train_ratings_per_second": n_train * int(chosen["epochs"]) / refit_seconds if refit_seconds > 0 else 0.0,
        "num_train": n_train,
        "restarts": clock.restarts,
        "world_size": trainer.world_size,
        "validation_checkpoint": chosen["first_fit_checkpoint"],
        "test_checkpoint": str(out / "checkpoints" / "refit.ckpt"),
    })
    for lg in loggers:  # the refit trainer logs nothing itself: its test metrics go to the run's loggers here
        lg.log_metrics({k: v for k, v in metrics.items() if k.startswith("test/")})
    _write_report(cfg, trainer, loggers, metrics, chosen.get("history", []), out, metrics["epochs"])
    return metrics
