"""Experiment tracking: run metadata, per-epoch history, the learning-curve figure, W&B set-up."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import lightning as L

from recsys.io import atomic_file

log = logging.getLogger(__name__)


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

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
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
        self.rows = list(state_dict.get("rows", []))


def save_learning_curve(rows: list[dict], path: Path, title: str = "") -> Path | None:
    """Train loss and validation RMSE against epoch (the D2L chapter's plot), written atomically as PNG."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    for key, style in (("train/loss", "-"), ("val/rmse", "--")):
        pts = [(r["epoch"] + 1, r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts), style, label=key)
    ax.set_xlabel("epoch")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_file(path) as out:
        fig.savefig(out, format="png")
    plt.close(fig)
    return path


def wandb_loggers(loggers) -> list:
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


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
