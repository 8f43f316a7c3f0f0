"""W&B set-up for a run (``logger=wandb``): offline unless logged in, one run id shared by a run's parts (kept in
``<run dir>/wandb/``), and the W&B loggers among a run's loggers."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


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
