"""Experiment tracking: run metadata, per-epoch history, the learning-curve figure, W&B set-up."""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from recsys.io import atomic_file

log = logging.getLogger(__name__)

PROGRESS = ("auto", "bar", "epoch", "none")


def git_state(cwd: str | os.PathLike | None = None) -> dict:
    """The commit the code runs from and whether the work tree has uncommitted changes."""
    cwd = cwd or Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                    capture_output=True, text=True, timeout=10, check=True).stdout.strip())
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def parameter_counts(model: L.LightningModule) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


class History(L.Callback):
    """Per-epoch ``train/loss`` and validation metrics, whatever loggers are on (rank 0 reads them)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self._final = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # at the end, not the epoch's end: metrics logged by other callbacks' epoch-end hooks (val/ndcg@10) are in
        if trainer.sanity_checking:
            return
        row = {"epoch": trainer.current_epoch}
        row.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
        self.rows.append(row)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        if loss is None:
            return
        if self.rows and self.rows[-1]["epoch"] == trainer.current_epoch:
            self.rows[-1]["train/loss"] = float(loss)  # validation ran first within this epoch
        else:
            self.rows.append({"epoch": trainer.current_epoch, "train/loss": float(loss)})

    def state_dict(self) -> dict:  # a resumed run keeps its earlier epochs
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict) -> None:
        if self._final:
            return  # testing with the best checkpoint after fit: keep every epoch, not those up to the best
        self.rows = list(state_dict.get("rows", []))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._final = True


class _ResumableWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv when it starts; this one appends to it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):  # a resumed run: keep its rows and their columns
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))


class CSVLogger(_LightningCSVLogger):
    """Per-epoch metrics in ``<save_dir>/<name>/version_<v>/metrics.csv``, kept across resumes of a run."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _ResumableWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumableWriter(log_dir=self.log_dir)
        return self._experiment


def resolve_progress(mode: str, terminal: bool | None = None) -> str:
    """``auto`` is a progress bar on a terminal and one line per epoch elsewhere (SLURM, ``| tee``, CI)."""
    if mode != "auto":
        return mode
    return "bar" if (sys.stderr.isatty() if terminal is None else terminal) else "epoch"


class EpochLines(L.Callback):
    """One line per epoch (epoch, train/loss, val/rmse, val/ndcg@k where ranked, seconds) instead of redraws."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        shown = ("train/loss", "val/rmse", *sorted(k for k in m if k.startswith("val/ndcg@")))  # ranking validation
        parts += [f"{k} {float(m[k]):.4f}" for k in shown if k in m]
        log.info("%s  %.2f s", "  ".join(parts), time.perf_counter() - self._start)


class RunClock(L.Callback):
    """Fit time and restarts of a run over all its parts: both travel in every checkpoint.

    A resumed run starts from the time the checkpoint had when it was written, and counts one more restart;
    the time a killed part spent after its last checkpoint is lost with that part's epoch.
    """

    def __init__(self) -> None:
        self.before, self.restarts = 0.0, 0
        self._start: float | None = None
        self._stopped: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._stopped = time.perf_counter(), None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stopped = self.seconds

    @property
    def seconds(self) -> float:
        """Fit seconds of every part so far."""
        if self._stopped is not None:
            return self._stopped
        return self.before + (time.perf_counter() - self._start if self._start is not None else 0.0)

    def state_dict(self) -> dict:
        return {"fit_seconds": self.seconds, "restarts": self.restarts}

    def load_state_dict(self, state_dict: dict) -> None:
        if self._stopped is not None:
            return  # testing with a checkpoint after fit: the run's clock is final
        self.before, self.restarts = float(state_dict["fit_seconds"]), int(state_dict["restarts"]) + 1


def _mark_saved(trainer: L.Trainer, callback: ModelCheckpoint, filepath: str) -> None:
    """What Lightning's own ``_save_checkpoint`` records of a save (the step and file it was for), for the two
    callbacks below, which copy the checkpoint now and write it later."""
    callback._last_global_step_saved = trainer.global_step
    callback._last_checkpoint_saved = filepath


def _tell_loggers(trainer: L.Trainer, callback: ModelCheckpoint) -> None:
    """A checkpoint is on disk: the loggers hear of it, as Lightning's own save tells them (W&B's ``log_model``)."""
    if trainer.is_global_zero:
        from weakref import proxy

        for logger in trainer.loggers:
            logger.after_save_checkpoint(proxy(callback))


class PacedCheckpoint(ModelCheckpoint):
    """``last.ckpt`` at the end of an epoch, as often as costs at most ``max_overhead`` of the run's time, written
    while training goes on.

    A full checkpoint (weights and optimizer state: three times the tables under Adam) of a large model takes
    seconds to write, about as long as a fast epoch. After a save that took s seconds (s ≥ ``ALWAYS_BELOW_S``), the
    next waits until at least s·(1/max_overhead − 1) seconds of training have passed; the epoch that ends the fit
    (``max_epochs`` or early stopping) is always saved. A killed run resumes from the last save, redoing the epochs
    after it, and ends as an uninterrupted run does. ``max_overhead=1``: every epoch. Rank 0 decides for all ranks.

    ``background=True``: the checkpoint is copied in memory (into the previous copy's tensors: no new allocation
    after the first) and written by a second thread while the next epochs train; the file appears by an atomic
    rename only once complete, so a killed run finds the previous ``last.ckpt`` whole. One write is in flight at a
    time; its error, if any, is raised at the next epoch end. Training ends only after the last write is on disk.
    The pacing counts the copy and the whole write, as when writing in the foreground. Strategies other than
    single-device and DDP (whose saves are collective) write in the foreground.
    """

    ALWAYS_BELOW_S = 0.25  # saves quicker than this are made every epoch (small models: every epoch, as before)

    def __init__(self, *args, max_overhead: float = 0.1, background: bool = True, **kwargs):
        if not 0 < max_overhead <= 1:
            raise ValueError(f"callbacks.last_checkpoint.max_overhead={max_overhead}: a fraction in (0, 1]")
        super().__init__(*args, **kwargs)
        self.max_overhead, self.background = max_overhead, bool(background)
        self._saved_at: float | None = None  # when the last save ended
        self._save_seconds = 0.0
        self._writer = None  # ThreadPoolExecutor of one thread, made at the first background save
        self._writing = None  # (future of the write, seconds of the copy, the copy) of the save in flight
        self._spare = None  # the last written copy: the next copy goes into its tensors

    # Lightning saves in one of the two hooks (at the training epoch's end when validation runs every epoch):
    # only that one is paced, so the ranks agree once per epoch
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._should_save_on_train_epoch_end(trainer):
            self._paced(trainer, super().on_train_epoch_end, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._should_save_on_train_epoch_end(trainer):
            self._paced(trainer, super().on_validation_end, pl_module)

    def _paced(self, trainer: L.Trainer, save, pl_module: L.LightningModule) -> None:
        """Lightning's epoch-end save, unless it is too soon (decided once per epoch end, on rank 0). A write still
        in flight makes it too soon, except at the epoch that ends the fit and under ``max_overhead=1`` (which then
        waits for it)."""
        ending = trainer.should_stop or (trainer.max_epochs is not None and trainer.max_epochs >= 0
                                         and trainer.current_epoch + 1 >= trainer.max_epochs)
        self._collect(trainer, wait=False)
        wait = self._save_seconds * (1 / self.max_overhead - 1) if self._save_seconds >= self.ALWAYS_BELOW_S else 0.0
        early = not ending and self.max_overhead < 1 and (self._writing is not None or (
            self._saved_at is not None and time.perf_counter() - self._saved_at < wait))
        if not trainer.sanity_checking and bool(trainer.strategy.broadcast(early, src=0)):
            return
        save(trainer, pl_module)

    def _in_background(self, trainer: L.Trainer) -> bool:
        from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

        return self.background and type(trainer.strategy) in (SingleDeviceStrategy, DDPStrategy)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if not self._in_background(trainer):
            start = time.perf_counter()
            super()._save_checkpoint(trainer, filepath)
            self._saved_at = time.perf_counter()
            self._save_seconds = self._saved_at - start
            return
        self._collect(trainer, wait=True)  # one write in flight at a time
        start = time.perf_counter()
        _mark_saved(trainer, self, filepath)
        with trainer.profiler.profile("save_checkpoint"):
            checkpoint = trainer._checkpoint_connector.dump_checkpoint(self.save_weights_only)  # every rank's hooks
            if not trainer.is_global_zero:  # rank 0 writes: the others neither copy nor write
                return
            copy = _snapshot(checkpoint, self._spare)
        self._spare = None
        if self._writer is None:
            from concurrent.futures import ThreadPoolExecutor

            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="last-checkpoint")

        def write() -> float:
            began = time.perf_counter()
            trainer.strategy.save_checkpoint(copy, filepath)  # atomically (AtomicCheckpointIO); no collective
            return time.perf_counter() - began

        self._writing = (self._writer.submit(write), time.perf_counter() - start, copy)

    def _collect(self, trainer: L.Trainer, wait: bool) -> None:
        """The write in flight, once done (``wait``: waiting for it): its error raised, its time counted, the
        loggers told (as Lightning's own save tells them)."""
        if self._writing is None or not (wait or self._writing[0].done()):
            return
        future, copy_seconds, copy = self._writing
        self._writing = None
        write_seconds = future.result()  # raises the write's error
        self._saved_at, self._save_seconds, self._spare = time.perf_counter(), copy_seconds + write_seconds, copy
        _tell_loggers(trainer, self)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._collect(trainer, wait=True)  # the fit ends with its last checkpoint on disk

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._writing is not None:  # the write in flight finishes (a whole file); its own error is secondary
            with contextlib.suppress(Exception):
                self._writing[0].result()
            self._writing = None

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        self._collect(trainer, wait=True)
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
        self._spare = None


class BestCheckpoint(ModelCheckpoint):
    """The best checkpoint (what the test and ``recsys.load`` use), held in memory when an epoch improves on it and
    written when a full checkpoint (``last.ckpt``) is written and when training ends, before the test.

    Lightning's ``ModelCheckpoint`` writes the weights at every improving epoch: on a wide model (a 445k-row table,
    116 MB) that costs a fifth of a fast epoch, most epochs. Here an improvement costs one copy of the weights in
    memory. A full checkpoint records the best (its path and score) only after that file is on disk, and the file
    it replaces is removed only after the new one is written: at every moment a best file exists and the record
    names it. A killed run resumes from ``last.ckpt`` with the best recorded there, as an uninterrupted run had it
    at that epoch; what it found after that is found again.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pending: tuple[str, dict] | None = None  # (path, checkpoint) not yet written
        self._stale: list[str] = []  # replaced best files, removed once the pending one is written
        self._spare: dict | None = None  # the last written best: the next copy goes into its tensors
        self._trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._trainer = trainer

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(self.save_weights_only)
        # the weights move on with the next step: copied, into the previous best's tensors where they fit (no new
        # allocation of the tables' size each time)
        spare = self._pending[1] if self._pending else self._spare
        self._pending, self._spare = (filepath, _snapshot(checkpoint, spare)), None
        _mark_saved(trainer, self, filepath)

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        self._stale.append(filepath)

    def flush(self) -> None:
        """Write the pending best (all ranks call this together), then remove the files it replaced."""
        trainer = self._trainer
        if trainer is None:
            return
        if self._pending is not None:
            filepath, checkpoint = self._pending
            self._pending, self._spare = None, checkpoint
            with trainer.profiler.profile("save_best_checkpoint"):
                trainer.strategy.save_checkpoint(checkpoint, filepath)
                trainer.strategy.barrier("BestCheckpoint.flush")
            _tell_loggers(trainer, self)
        for path in self._stale:
            if path != self.best_model_path:
                trainer.strategy.remove_checkpoint(path)
        self._stale = []

    def state_dict(self) -> dict:
        self.flush()  # a checkpoint that records the best is being written: the best's file first
        return super().state_dict()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self.flush()


_PLAIN = frozenset((str, int, float, bool, bytes, type(None)))


def _snapshot(obj, into=None):
    """``obj`` with each tensor in it replaced by a detached copy and each container on the way rebuilt. A list or
    tuple of plain values (a data module's id list, 10⁵ entries) is copied whole, not walked entry by entry as
    ``apply_to_collection`` walks it (a second per checkpoint on the long-tail shape).

    ``into``: an earlier snapshot no longer needed; a tensor at the same place with the same shape, dtype and
    device receives the copy (no new allocation of the tables' size each time)."""
    if isinstance(obj, torch.Tensor):
        if (isinstance(into, torch.Tensor) and into.shape == obj.shape and into.dtype == obj.dtype
                and into.device == obj.device):
            return into.copy_(obj.detach())
        return obj.detach().clone()
    if isinstance(obj, Mapping):
        into = into if isinstance(into, Mapping) else {}
        items = {key: _snapshot(value, into.get(key)) for key, value in obj.items()}
        try:
            return type(obj)(items)
        except TypeError:  # a mapping that is not built from a dict
            return items
    if isinstance(obj, (list, tuple)):
        if all(type(x) in _PLAIN for x in obj):
            return list(obj) if isinstance(obj, list) else obj
        into = into if isinstance(into, (list, tuple)) and len(into) == len(obj) else (None,) * len(obj)
        items = [_snapshot(x, y) for x, y in zip(obj, into)]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    return obj


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written straight to a temporary file beside their path and renamed into place
    (:func:`recsys.io.atomic_file`): as atomic as Lightning's own save, without first serializing the whole
    checkpoint into memory (a second copy of every table, and a second pass over it)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_file(path) as out:
            torch.save(checkpoint, out)


def save_learning_curve(rows: list[dict], path: Path, title: str = "", metric: str = "val/rmse") -> Path | None:
    """Train loss and the validation ``metric`` (the run's optimized_metric) against epoch (the D2L chapter's
    plot), written atomically as PNG."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    drawn = 0
    for key, style in (("train/loss", "-"), (metric, "--")):
        pts = [(r["epoch"] + 1, r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts), style, label=key)
            drawn += 1
    ax.set_xlabel("epoch")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend()
    fig.tight_layout()
    with atomic_file(path) as out:
        fig.savefig(out, format="png")
    plt.close(fig)
    return path


def wandb_loggers(loggers) -> list:
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


def wandb_resume_id(logger_cfg, out: Path) -> None:
    """One W&B run per run directory: a resumed run continues the W&B run of its earlier parts.

    The id is kept in ``<run dir>/wandb/recsys-run-id`` (set aside with the rest by ``resume=never``).
    """
    if not logger_cfg or "wandb" not in logger_cfg or logger_cfg.wandb is None or logger_cfg.wandb.get("id"):
        return
    path = out / "wandb" / "recsys-run-id"
    if path.exists():
        run_id = path.read_text().strip()
    else:
        import uuid

        run_id = uuid.uuid4().hex[:12]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(run_id + "\n")
    logger_cfg.wandb.id = run_id


def wandb_offline_unless_logged_in(logger_cfg) -> None:
    """Never let wandb prompt: with no API key available, run offline (and say so)."""
    if not logger_cfg or "wandb" not in logger_cfg or logger_cfg.wandb is None:
        return
    if logger_cfg.wandb.get("offline") or os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return
    import wandb

    if not (os.environ.get("WANDB_API_KEY") or wandb.api.api_key):
        log.warning("wandb: not logged in; logging offline (wandb sync <dir> uploads it later)")
        os.environ["WANDB_MODE"] = "offline"


#: the config groups chosen by interpolation (``regime: ${model}``, ``data_defaults: ${data}_${model}``)
INTERPOLATED_GROUPS = ("regime", "data_defaults")


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def group_file_keys(config_dir: str | os.PathLike, group: str, choice: str) -> dict:
    """The keys ``configs/<group>/<choice>.yaml`` sets (its own ``defaults`` from the same group followed),
    as dotted keys with the values the file gives."""
    import yaml

    path = Path(config_dir) / group / f"{choice}.yaml"
    spec = yaml.safe_load(path.read_text()) or {}
    keys = {}
    for parent in spec.pop("defaults", None) or []:
        if isinstance(parent, str) and parent != "_self_":
            keys.update(group_file_keys(config_dir, group, parent))
    keys.update(_flatten(spec))
    return keys


def applied_defaults(choices: Mapping | None, config_dir: str | os.PathLike | None) -> dict:
    """Which interpolated default files applied and the keys each set: ``{"regime": {"file": "regime/pmf.yaml",
    "sets": {...}}, "data_defaults": None}`` (None: no such file for this data set and model). Empty without a
    Hydra runtime (a config composed in a test)."""
    if choices is None or config_dir is None:
        return {}
    out = {}
    for group in INTERPOLATED_GROUPS:
        choice = choices.get(group)
        file = Path(config_dir) / group / f"{choice}.yaml"
        out[group] = {"file": f"{group}/{choice}.yaml", "sets": group_file_keys(config_dir, group, choice)} \
            if choice and file.exists() else None
    return out


def hydra_choices() -> tuple[dict | None, str | None]:
    """(the run's config group choices, its primary config directory) from Hydra's runtime, if there is one."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None, None
    runtime = HydraConfig.get().runtime
    config_dir = next((s.path for s in runtime.config_sources if s.provider == "main" and s.schema == "file"), None)
    return dict(runtime.choices), config_dir
