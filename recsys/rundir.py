"""Run directories: resume a run, refuse to mix two runs in one directory, or set the old one aside.

``resume=auto`` (default) resumes from ``checkpoints/last.ckpt`` when the directory's saved config
(``run_info.json``) agrees with this one on every key that changes the data, the split or the model;
``resume=never`` moves the old run's files to ``<run dir>/previous/<timestamp>/`` (nothing is deleted) and
starts afresh; ``resume=must`` fails when there is nothing to resume. A disagreement stops the run before
anything of ours is written to the directory, naming every differing key with both values.

Keys that may change on resume (they change how training goes on or is watched, not what is trained):
:data:`MAY_CHANGE`. Hydra itself rewrites ``.hydra/`` and appends to ``<job>.log`` before any code of ours
runs; ``run_info.json`` is the run's config of record.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

RESUME = ("auto", "never", "must")
#: dotted keys (a key or everything under it) that may differ between the parts of one run
MAY_CHANGE = ("trainer", "logger", "callbacks", "progress", "resume", "ckpt_path", "test_ckpt", "output_dir",
              "hparams_search", "data.root", "data.cache", "data.eval_batch_size")
#: what a run writes into its directory: moved aside by resume=never
RUN_FILES = ("run_info.json", "metrics.json", "failed.json", "learning_curve.png", "seen.npz", "checkpoints",
             "csv", "tensorboard", "wandb")


class RunDirectoryError(ValueError):
    """The run directory holds another run, or nothing to resume where resume=must asks for it."""


def _flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
        return out
    return {prefix.rstrip("."): node}


def _may_change(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in MAY_CHANGE)


def differences(saved: dict, current: dict) -> dict[str, tuple]:
    """Keys (dotted) that change the data, the split or the model, with (saved, current) values."""
    a, b = _flat(saved), _flat(current)
    missing = "<absent>"
    return {k: (a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))
            if not _may_change(k) and a.get(k, missing) != b.get(k, missing)}


def prepare(cfg: DictConfig, out: Path, set_aside: bool = True) -> str | None:
    """Check the run directory against ``cfg`` and return the checkpoint to resume from (or None).

    ``set_aside=False`` (DDP ranks other than 0) leaves moving an old run's files to rank 0.
    """
    mode = cfg.resume
    if mode not in RESUME:
        raise ValueError(f"resume={mode!r}: choose one of {list(RESUME)}")
    if cfg.get("ckpt_path"):
        return str(cfg.ckpt_path)
    last = out / "checkpoints" / "last.ckpt"
    info = out / "run_info.json"
    if mode == "never":
        if set_aside:
            _set_aside(out)
        return None
    if info.exists():
        saved = json.loads(info.read_text()).get("config", {})
        diff = differences(saved, OmegaConf.to_container(cfg, resolve=True))
        if diff:
            lines = "\n".join(f"  {k}: {old!r} (saved) -> {new!r} (now)" for k, (old, new) in diff.items())
            raise RunDirectoryError(
                f"{out} holds a run with other settings, which change the data, the split or the model:\n{lines}\n"
                f"Use another hydra.run.dir, or resume=never to move the old run's files to "
                f"{out / 'previous'}/<timestamp>/ and start afresh.")
    if last.exists():
        log.info("resuming from %s", last)
        return str(last)
    if mode == "must":
        raise RunDirectoryError(f"resume=must: {out} has no checkpoints/last.ckpt to resume from")
    return None


def _set_aside(out: Path) -> None:
    found = [out / name for name in RUN_FILES if (out / name).exists()]
    if not found:
        return
    dest = out / "previous" / time.strftime("%Y%m%d-%H%M%S")
    while dest.exists():  # two restarts within a second
        dest = dest.with_name(dest.name + "+")
    dest.mkdir(parents=True)
    for path in found:
        shutil.move(str(path), dest / path.name)
    log.info("resume=never: moved the previous run's files to %s", dest)
