"""Runs survive SIGKILL: started again with the same command they resume from the last finished epoch and
end exactly where an uninterrupted run ends; metrics.json and the history describe the whole run."""

import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest
import torch
from conftest import CONFIGS
from hydra import compose, initialize_config_dir

from recsys.training import train

ROOT = CONFIGS.parent
SETTINGS = {
    "gradient": ["model=mf", "model.dim=8", "data.batch_size=512", "trainer.max_epochs=6"],
    "als": ["model=pmf", "model.solver=als", "trainer.max_epochs=6"],
    "gibbs": ["model=bpmf", "model.dim=4", "model.burn_in=2", "trainer.max_epochs=6"],  # the very same chain
    # full-batch Rprop over several item batches: the killed epoch's partial sum is redone, Rprop's steps restored
    "rprop": ["model=autorec", "model.hidden=16", "data.batch_size=512", "trainer.max_epochs=6"],
}


def _overrides(udata, root, *extra):
    return [f"data.path={udata}", f"data.root={root}", "~callbacks.progress_bar", "+trainer.enable_progress_bar=false",
            "~callbacks.early_stopping", "logger=csv", *extra]


def _compose(run, overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=[f"output_dir={run}", *overrides])


@pytest.mark.integration  # starts processes
@pytest.mark.parametrize("solver", SETTINGS)
def test_a_killed_run_resumes_and_ends_like_an_uninterrupted_one(solver, udata, tmp_path):
    overrides = _overrides(udata, tmp_path / "cache", *SETTINGS[solver])
    reference = train(_compose(tmp_path / "reference", overrides))

    run = tmp_path / "killed"
    killer = ["+callbacks.killer._target_=killer.KillMidEpoch", "+callbacks.killer.epoch=3",
              "+callbacks.killer.batch=0", f"+callbacks.killer.marker={tmp_path / 'marker'}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "RECSYS_DATA": str(tmp_path / "cache")}
    res = subprocess.run([sys.executable, "train.py", f"hydra.run.dir={run}", *overrides, *killer], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert not (run / "metrics.json").exists()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2  # epochs 0-2 finished

    resumed = train(_compose(run, [*overrides, *killer]))  # the same command again (the killer fires once)
    assert resumed["test/rmse"] == pytest.approx(reference["test/rmse"], abs=1e-6)
    assert resumed["epochs"] == reference["epochs"] == 6
    assert (resumed["restarts"], reference["restarts"]) == (1, 0)
    assert 0 < resumed["fit_seconds"] and resumed["train_ratings_per_second"] == pytest.approx(
        resumed["num_train"] * 6 / resumed["fit_seconds"])
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["restarts"] == 1 and saved["epochs"] == 6
    # the CSV history covers every epoch, before and after the restart, each once
    log = pd.read_csv(run / "csv" / "version_0" / "metrics.csv")
    assert sorted(log.dropna(subset=["val/rmse"])["epoch"].tolist()) == list(range(6))


def test_last_checkpoint_is_written_every_epoch_and_the_curve_covers_every_epoch(compose_cfg, tmp_path, monkeypatch):
    from recsys import tracking

    drawn, draw = [], tracking.save_learning_curve
    monkeypatch.setattr(tracking, "save_learning_curve",
                        lambda rows, *a, **k: drawn.append(list(rows)) or draw(rows, *a, **k))
    # no regularization and a large learning rate overfit this small set: the best epoch is an early one
    metrics = train(compose_cfg("model.reg=0", "model.reg_bias=0", "model.optimizer.lr=0.05", "data.batch_size=64",
                                "trainer.max_epochs=6", "~callbacks.early_stopping"))
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    best = torch.load(metrics["test_checkpoint"], weights_only=True)
    assert last["epoch"] == 5 and best["epoch"] < 5
    rows = last["callbacks"]["History"]["rows"]
    assert [r["epoch"] for r in rows if "val/rmse" in r] == list(range(6))
    # the figure is drawn from every epoch's row, also after testing with the best checkpoint
    assert [r["epoch"] for r in drawn[0] if "val/rmse" in r] == list(range(6))
    assert (tmp_path / "run" / "learning_curve.png").exists()


@pytest.mark.parametrize("background", [True, False])
@pytest.mark.parametrize("max_overhead", [0.1, 1.0])
def test_slow_last_checkpoints_are_paced_and_the_ending_epoch_is_always_saved(compose_cfg, tmp_path, monkeypatch,
                                                                              max_overhead, background):
    """A last.ckpt that takes long to write is written as often as costs at most max_overhead of the time (here:
    after the first, only the epoch that ends the fit); max_overhead=1 writes every epoch; the best checkpoint
    is not paced. Written in the background or not, the same epochs are saved and the fit ends with the last one
    on disk."""
    import time

    import lightning as L

    from recsys.checkpoints import PacedCheckpoint

    monkeypatch.setattr(PacedCheckpoint, "ALWAYS_BELOW_S", 0.05)
    saves, save = [], L.pytorch.strategies.SingleDeviceStrategy.save_checkpoint

    def slow(strategy, checkpoint, filepath, *args, **kwargs):
        if str(filepath).endswith("last.ckpt"):
            time.sleep(0.3)  # 0.3 s at 10%: the next save waits 2.7 s, longer than the rest of this fit
            saves.append(checkpoint["epoch"])
        return save(strategy, checkpoint, filepath, *args, **kwargs)

    monkeypatch.setattr(L.pytorch.strategies.SingleDeviceStrategy, "save_checkpoint", slow)
    metrics = train(compose_cfg("trainer.max_epochs=5", "~callbacks.early_stopping",
                                f"callbacks.last_checkpoint.max_overhead={max_overhead}",
                                f"callbacks.last_checkpoint.background={background}"))
    assert saves == ([0, 4] if max_overhead < 1 else [0, 1, 2, 3, 4])
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 4
    assert metrics["epochs"] == 5 and os.path.exists(metrics["test_checkpoint"])


def test_a_background_write_holds_the_epoch_it_was_taken_at_while_training_moves_on(compose_cfg, tmp_path,
                                                                                    monkeypatch):
    """The background write is of a copy: what it writes is the weights and optimizer state at the end of its
    epoch, although the next epoch trains (and changes them) before it is written."""
    import threading

    import lightning as L

    from recsys.checkpoints import PacedCheckpoint

    at_end, written, live = {}, {}, {}
    moved_on, save = threading.Event(), L.pytorch.strategies.SingleDeviceStrategy.save_checkpoint

    class Watching(PacedCheckpoint):
        def _save_checkpoint(self, trainer, filepath):
            at_end[trainer.current_epoch] = {k: v.clone() for k, v in trainer.lightning_module.state_dict().items()}
            live["module"] = trainer.lightning_module
            super()._save_checkpoint(trainer, filepath)

        def on_train_batch_end(self, trainer, *args):
            super().on_train_batch_end(trainer, *args)
            if trainer.current_epoch == 1 and trainer.global_step % trainer.num_training_batches == 3:
                moved_on.set()  # three steps into epoch 1

    def held(strategy, checkpoint, filepath, *args, **kwargs):
        if str(filepath).endswith("last.ckpt") and checkpoint["epoch"] == 0:
            assert moved_on.wait(60)  # the first write starts only once training has moved on
            written.update({k: v.clone() for k, v in checkpoint["state_dict"].items()})
            live.update(now={k: v.clone() for k, v in live["module"].state_dict().items()})
        return save(strategy, checkpoint, filepath, *args, **kwargs)

    monkeypatch.setattr("recsys.checkpoints.PacedCheckpoint", Watching)
    monkeypatch.setattr(L.pytorch.strategies.SingleDeviceStrategy, "save_checkpoint", held)
    train(compose_cfg("trainer.max_epochs=3", "~callbacks.early_stopping", "data.batch_size=64",
                      "callbacks.last_checkpoint.max_overhead=1.0"))
    assert any(not torch.equal(live["now"][k], at_end[0][k]) for k in written)  # training did change the weights
    assert all(torch.equal(written[k], at_end[0][k]) for k in at_end[0])  # and epoch 0's were written
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2


def test_a_background_write_that_fails_fails_the_run(compose_cfg, monkeypatch):
    """An error in the writing thread is not lost: the run raises it (at the next epoch end or when training
    ends)."""
    import lightning as L

    save = L.pytorch.strategies.SingleDeviceStrategy.save_checkpoint

    def failing(strategy, checkpoint, filepath, *args, **kwargs):
        if str(filepath).endswith("last.ckpt"):
            raise OSError("disk full (test)")
        return save(strategy, checkpoint, filepath, *args, **kwargs)

    monkeypatch.setattr(L.pytorch.strategies.SingleDeviceStrategy, "save_checkpoint", failing)
    with pytest.raises(OSError, match="disk full"):
        train(compose_cfg("trainer.max_epochs=2", "~callbacks.early_stopping"))


def test_the_best_checkpoint_is_held_in_memory_and_written_with_last_ckpt_and_at_the_end(compose_cfg, tmp_path,
                                                                                        monkeypatch):
    """The best weights are copied when an epoch improves and written only when last.ckpt is written (which then
    records a best that is on disk) and when training ends; the file holds that epoch's weights, the files it
    replaced are gone."""
    import lightning as L

    from recsys.checkpoints import BestCheckpoint, PacedCheckpoint

    copies, written, last_records = {}, [], []
    take = BestCheckpoint._save_checkpoint

    def taking(self, trainer, filepath):
        copies[filepath] = {k: v.clone() for k, v in trainer.lightning_module.state_dict().items()}
        return take(self, trainer, filepath)

    strategy_save = L.pytorch.strategies.SingleDeviceStrategy.save_checkpoint

    def saving(strategy, checkpoint, filepath, *args, **kwargs):
        if str(filepath).endswith("last.ckpt"):  # the best it records, and whether that file is on disk
            best = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("BestCheckpoint"))
            last_records.append((checkpoint["epoch"], best["best_model_path"],
                                 os.path.exists(best["best_model_path"])))
        written.append(os.path.basename(filepath))
        return strategy_save(strategy, checkpoint, filepath, *args, **kwargs)

    monkeypatch.setattr(BestCheckpoint, "_save_checkpoint", taking)
    monkeypatch.setattr(L.pytorch.strategies.SingleDeviceStrategy, "save_checkpoint", saving)
    monkeypatch.setattr(PacedCheckpoint, "ALWAYS_BELOW_S", 0.0)  # pace last.ckpt: every save counts
    metrics = train(compose_cfg("trainer.max_epochs=6", "~callbacks.early_stopping", "data.batch_size=64",
                                "callbacks.last_checkpoint.max_overhead=0.0001"))  # last.ckpt: first and ending epoch
    assert [epoch for epoch, _, _ in last_records] == [0, 5]
    assert all(on_disk for _, _, on_disk in last_records)  # last.ckpt never records a best that is not on disk
    best_files = [name for name in written if name != "last.ckpt"]
    assert len(copies) == 6 > len(best_files) == 2  # six bests, two writes: with last.ckpt at 0, at the end
    best = metrics["test_checkpoint"]
    assert sorted(os.listdir(os.path.dirname(best))) == sorted(["last.ckpt", os.path.basename(best)])
    saved = torch.load(best, weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], copies[best][k]) for k in saved)  # that epoch's weights, not the last ones


def test_the_best_checkpoints_copy_detaches_every_tensor_and_keeps_plain_lists_whole():
    """The in-memory best is a snapshot: later steps change none of its tensors, whatever container holds them,
    and its lists are copies (a list of ids is copied whole, not walked entry by entry)."""
    from collections import OrderedDict, namedtuple

    from recsys.checkpoints import _snapshot

    Pair = namedtuple("Pair", "a b")
    ids = list(range(1000)) + ["x"]
    live = {"state_dict": OrderedDict(w=torch.ones(3)), "loops": {"pair": Pair(torch.zeros(2), 7)},
            "DataModule": {"user_ids": ids, "nested": [torch.ones(1), "s"]}, "epoch": 3}
    snap = _snapshot(live)
    for t in (live["state_dict"]["w"], live["loops"]["pair"].a, live["DataModule"]["nested"][0]):
        t.add_(5)
    ids.append(-1)
    assert torch.equal(snap["state_dict"]["w"], torch.ones(3)) and isinstance(snap["state_dict"], OrderedDict)
    assert isinstance(snap["loops"]["pair"], Pair) and torch.equal(snap["loops"]["pair"].a, torch.zeros(2))
    assert torch.equal(snap["DataModule"]["nested"][0], torch.ones(1)) and snap["DataModule"]["nested"][1] == "s"
    assert snap["DataModule"]["user_ids"] == list(range(1000)) + ["x"] and snap["epoch"] == 3
