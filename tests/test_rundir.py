"""Run directories (resume=auto|never|must, refusal of another run's directory), failed.json phases,
file permissions and strict JSON."""

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from recsys.rundir import RunDirectoryError
from recsys.training import train

QUICK = ("trainer.max_epochs=2", "~callbacks.early_stopping")


def _files(run):
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


def test_reusing_a_directory_with_other_model_or_data_settings_stops_before_writing(compose_cfg, tmp_path):
    run = tmp_path / "run"
    train(compose_cfg(*QUICK))
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    with pytest.raises(RunDirectoryError) as err:
        train(compose_cfg(*QUICK, "model.dim=8", "data.split_seed=3"))
    msg = str(err.value)
    assert "model.dim: 64 (saved) -> 8 (now)" in msg and "data.split_seed: 0 (saved) -> 3 (now)" in msg
    assert "hydra.run.dir" in msg and "resume=never" in msg and "data.shuffle_seed" not in msg
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before  # nothing written
    # keys that only change how training goes on may differ: this resumes
    again = train(compose_cfg("trainer.max_epochs=3", "~callbacks.early_stopping", "logger=none"))
    assert again["epochs"] == 3 and again["restarts"] == 1


def test_resume_never_sets_the_old_run_aside_and_starts_afresh(compose_cfg, tmp_path):
    run = tmp_path / "run"
    first = train(compose_cfg(*QUICK))
    second = train(compose_cfg(*QUICK, "model.dim=8", "resume=never"))
    (previous,) = list((run / "previous").iterdir())
    assert json.loads((previous / "metrics.json").read_text())["test/rmse"] == first["test/rmse"]
    assert (previous / "checkpoints" / "last.ckpt").exists() and (previous / "run_info.json").exists()
    assert second["restarts"] == 0 and second["epochs"] == 2
    assert json.loads((run / "run_info.json").read_text())["config"]["model"]["dim"] == 8


def test_resume_must_fails_without_a_checkpoint_and_auto_resumes(compose_cfg, tmp_path):
    with pytest.raises(RunDirectoryError, match="resume=must: .* has no checkpoints/last.ckpt"):
        train(compose_cfg(*QUICK, "resume=must"))
    assert not (tmp_path / "run" / "failed.json").exists()
    train(compose_cfg(*QUICK))
    assert train(compose_cfg("trainer.max_epochs=3", "~callbacks.early_stopping", "resume=must"))["restarts"] == 1


@pytest.mark.parametrize("overrides,phase,error_type", [
    (("trainer.accelerator=gpu",), "config", "ValueError"),
    (("data.path=/nonexistent/ratings.csv",), "data", "FileNotFoundError"),
    (("model.optimizer.lr=-1.0",), "config", "ValueError"),
    (("model.optimizer._target_=torch.optim.SGD", "+model.optimizer.momentum=-1.0"), "fit", "ValueError"),
])
def test_every_failure_writes_failed_json_with_its_phase(compose_cfg, tmp_path, overrides, phase, error_type):
    if overrides[0].startswith("trainer.accelerator") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")  # the no-GPU message needs a machine without one
    with pytest.raises((ValueError, FileNotFoundError)):
        train(compose_cfg(*QUICK, *overrides))
    failed = json.loads((tmp_path / "run" / "failed.json").read_text())
    assert (failed["phase"], failed["error_type"]) == (phase, error_type), failed
    assert failed["message"] and failed["error"].startswith(error_type)


def test_no_gpu_says_which_trainer_to_use(compose_cfg):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="no GPU was found .* use trainer=cpu, or trainer=ddp_cpu"):
        train(compose_cfg(*QUICK, "trainer=gpu"))


def test_files_get_the_permissions_the_umask_gives(compose_cfg, tmp_path):
    old = os.umask(0o022)
    try:
        train(compose_cfg(*QUICK))
    finally:
        os.umask(old)
    run = tmp_path / "run"
    for name in ("metrics.json", "run_info.json", "learning_curve.png", "checkpoints/last.ckpt"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o644, name
    caches = list((tmp_path / "recsys-data").rglob("parsed-*.npz")) + list((tmp_path / "cache").rglob("parsed-*.npz"))
    assert caches and all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in caches)


def test_json_files_never_hold_nan(tmp_path, caplog):
    from recsys.io import atomic_write_json

    atomic_write_json(tmp_path / "m.json", {"test/rmse": 0.9, "val/rmse": float("nan"), "x": [1.0, float("inf")]})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"test/rmse": 0.9, "x": [1.0, None]}
    assert "val/rmse=nan" in caplog.text and "x[1]=inf" in caplog.text


def test_the_parts_of_a_run_share_one_wandb_run_id(tmp_path, compose_cfg):
    from omegaconf import OmegaConf

    from recsys import rundir, wandb_setup

    run = tmp_path / "run"
    ids = []
    for _ in range(2):  # a run and its resumed part
        logger = OmegaConf.create({"wandb": {"id": None, "resume": "allow"}})
        wandb_setup.wandb_resume_id(logger, run)
        ids.append(logger.wandb.id)
    assert ids[0] == ids[1] and len(ids[0]) == 12
    rundir.prepare(compose_cfg("resume=never"), run)  # a fresh run: a new W&B run
    logger = OmegaConf.create({"wandb": {"id": None}})
    wandb_setup.wandb_resume_id(logger, run)
    assert logger.wandb.id != ids[0] and (run / "previous").exists()


def test_a_test_phase_failure_keeps_the_fit_and_recsys_evaluate_then_gives_its_metrics(compose_cfg, tmp_path,
                                                                                        monkeypatch, capsys):
    """The ml1m_autorec regression: the fit finished, the ranking metrics ran out of memory. The checkpoints stay,
    failed.json names the tested checkpoint and the command, and that command gives the metrics the run would
    have written (those of the same run without the failure)."""
    from recsys import evaluation
    from recsys.cli import main

    whole = train(compose_cfg(*QUICK, f"output_dir={tmp_path / 'whole'}"))

    def out_of_memory(self, trainer, pl_module):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 42596764000 bytes")

    monkeypatch.setattr(evaluation.RankingMetrics, "on_test_epoch_end", out_of_memory)
    with pytest.raises(RuntimeError, match="can't allocate memory"):
        train(compose_cfg(*QUICK))
    monkeypatch.undo()
    run = tmp_path / "run"
    failed = json.loads((run / "failed.json").read_text())
    assert failed["phase"] == "test" and failed["evaluate"] == f"recsys evaluate {run}"
    assert Path(failed["test_checkpoint"]).exists() and (run / "checkpoints" / "last.ckpt").exists()
    assert Path(failed["test_checkpoint"]).name == Path(whole["test_checkpoint"]).name  # the one a test would use
    assert not (run / "metrics.json").exists()
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    printed = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())
    for key in ("test/rmse", "test/mae", "test/ndcg@10", "test/recall@10"):
        assert float(printed[key]) == pytest.approx(whole[key], abs=1e-4), key
