"""Checkpoints: the paced, background ``last.ckpt`` (:class:`PacedCheckpoint`), the best by optimized_metric
(:class:`BestCheckpoint`), in-memory snapshots they copy, and atomic checkpoint files (:class:`AtomicCheckpointIO`).

configs/callbacks/default.yaml builds the two callbacks; training.py adds the checkpoint IO.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from recsys.io import atomic_file


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
