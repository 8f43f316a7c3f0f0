"""A callback that SIGKILLs its own process mid-epoch, once per marker file: the crash a resume must survive."""

import os
import signal
from pathlib import Path

import lightning as L


class KillMidEpoch(L.Callback):
    def __init__(self, epoch: int, batch: int, marker: str):
        self.epoch, self.batch, self.marker = epoch, batch, Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch and not self.marker.exists():
            self.marker.write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)
