"""Run records: run metadata (git state, parameter counts, applied default files), per-epoch history, the CSV
logger, progress lines, the run clock and the learning-curve figure. Checkpoints live in :mod:`recsys.checkpoints`,
W&B set-up in :mod:`recsys.wandb_setup`."""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import lightning as L
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


def parameter_counts(model) -> dict:
    """Parameters of ``model`` (any ``nn.Module``): all, and those that train."""
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
