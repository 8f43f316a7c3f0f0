"""Tracking: W&B offline runs, CSV/TensorBoard per-epoch logs, the learning curve, multiruns + report."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from recsys.training import train

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.integration  # W&B starts its service process
@pytest.mark.xdist_group("wandb")  # one W&B run at a time: its service process is shared
def test_wandb_offline_run_holds_config_summary_and_learning_curve(compose_cfg, tmp_path, monkeypatch):
    """What W&B documents: the run's ``config`` and ``summary`` (read from the run as it finishes) and the offline
    run directory that ``wandb sync`` uploads (its ``run-*.wandb`` file and ``files/media``); never W&B's internal
    record format, which changes between releases."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    seen, finish = {}, wandb.finish

    def finishing(*args, **kwargs):  # the run's public config and summary, as it ends
        if wandb.run is not None:
            seen["config"] = dict(wandb.run.config)
            seen["summary"] = {k: wandb.run.summary[k] for k in wandb.run.summary.keys()}
        return finish(*args, **kwargs)

    monkeypatch.setattr(wandb, "finish", finishing)
    metrics = train(compose_cfg("logger=wandb", "trainer.max_epochs=3", "~callbacks.early_stopping"))
    config, summary = seen["config"], seen["summary"]
    assert config["config"]["optimized_metric"] == "val/rmse"
    assert len(config["data"]["source_sha256"]) == 64
    assert config["data"]["split_seed"] == 0 and "commit" in config["git"]
    assert config["parameters"]["total"] > 0
    assert summary["test/rmse"] == pytest.approx(metrics["test/rmse"])
    assert {"train/loss", "val/rmse", "val/mae"} <= set(summary)  # logged every epoch: the last values
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))  # what `wandb sync` uploads
    images = list(runs[0].glob("files/media/images/learning_curve*.png"))
    assert images and images[0].read_bytes().startswith(PNG)


def test_csv_and_tensorboard_hold_per_epoch_metrics(compose_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(compose_cfg("logger=[csv,tensorboard]", "trainer.max_epochs=3", "~callbacks.early_stopping"))
    csv = pd.read_csv(next((tmp_path / "run" / "csv").glob("version_*/metrics.csv")))
    assert csv["val/rmse"].notna().sum() == 3 and csv["train/loss"].notna().sum() == 3
    events = EventAccumulator(str(next((tmp_path / "run" / "tensorboard").glob("version_*"))))
    events.Reload()
    for tag in ("train/loss", "val/rmse", "val/mae"):
        assert len(events.Scalars(tag)) == 3


def test_every_run_saves_a_valid_learning_curve(compose_cfg, tmp_path):
    import matplotlib.image

    train(compose_cfg("logger=none", "trainer.max_epochs=3"))
    png = tmp_path / "run" / "learning_curve.png"
    assert png.read_bytes().startswith(PNG)
    height, width, _ = matplotlib.image.imread(png).shape
    assert height > 100 and width > 100
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["data"]["num_train"] > 0 and info["config"]["model"]["_target_"] == "recsys.models.mf.BiasedMF"


@pytest.mark.integration
def test_multirun_goes_on_past_a_failing_job_and_report_lists_it(udata, tmp_path):
    sweep = tmp_path / "multirun"
    res = subprocess.run(
        [sys.executable, "train.py", "-m", "model=mf,pmf", "model.optimizer.lr=0.01,-1.0", f"data.path={udata}",
         "trainer.max_epochs=2", "logger=none", "callbacks.progress_bar.refresh_rate=0",
         f"hydra.sweep.dir={sweep}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode != 0  # Hydra reports the failure at the end ...
    done = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    failed = sorted(p.parent.name for p in sweep.glob("*/failed.json"))
    assert len(done) == 2 and len(failed) == 2  # ... after every job has run
    rep = subprocess.run([sys.executable, "-m", "recsys.report", str(sweep)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert rep.returncode == 0, rep.stderr
    assert "| model=mf" in rep.stdout and "| model=pmf" in rep.stdout
    assert "Failed jobs:" in rep.stdout and "model.optimizer.lr=-1.0: must be > 0" in rep.stdout
    table = pd.read_csv(sweep / "report.csv")
    assert len(table) == 2 and list(table["val/rmse"]) == sorted(table["val/rmse"])
    assert (sweep / "report.md").read_text().startswith("| configuration |")


def _report(sweep: Path) -> str:
    rep = subprocess.run([sys.executable, "-m", "recsys.report", str(sweep)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert rep.returncode == 0, rep.stderr
    return rep.stdout


@pytest.mark.integration
def test_two_job_ddp_multirun_and_report(udata, tmp_path):
    sweep = tmp_path / "multirun"
    res = subprocess.run(
        [sys.executable, "train.py", "-m", "model=mf,pmf", "trainer=ddp_cpu", "trainer.devices=2",
         f"data.path={udata}", "trainer.max_epochs=2", "logger=none", "callbacks.progress_bar.refresh_rate=0",
         f"hydra.sweep.dir={sweep}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted(sweep.glob("*/metrics.json"))
    assert len(jobs) == 2 and all(json.loads(j.read_text())["world_size"] == 2 for j in jobs)
    assert len(list(sweep.rglob("metrics.json"))) == 2  # one per job, not one per rank
    out = _report(sweep)
    assert "| model=mf" in out and "| model=pmf" in out and "Failed" not in out


@pytest.mark.integration
def test_two_trial_optuna_sweep_and_report(udata, tmp_path):
    sweep = tmp_path / "optuna"
    res = subprocess.run(
        [sys.executable, "train.py", "-m", "hparams_search=optuna", "model=pmf", "hydra.sweeper.n_trials=2",
         "hydra.sweeper.sampler.n_startup_trials=2", f"data.path={udata}", "trainer.max_epochs=3",
         "logger=none", "callbacks.progress_bar.refresh_rate=0", f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    trials = [json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")]
    assert len(trials) == 2
    best = yaml_load(sweep / "optimization_results.yaml")
    assert set(best["best_params"]) == {"model.dim", "model.optimizer.lr", "model.lambda_u", "model.lambda_v"}
    assert best["best_value"] == pytest.approx(min(t["val/rmse"] for t in trials))
    out = _report(sweep)
    assert out.count("| model.") == 2  # one row per trial configuration


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


@pytest.mark.integration  # W&B starts its service process
@pytest.mark.xdist_group("wandb")
def test_a_failing_run_still_finishes_its_wandb_run(compose_cfg, tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    # passes every check before the run, fails when torch builds the optimizer: after W&B has started
    with pytest.raises(ValueError, match="Invalid momentum value"):
        train(compose_cfg("logger=wandb", "model.optimizer._target_=torch.optim.SGD", "+model.optimizer.momentum=-1.0"))
    assert wandb.run is None  # finished, so the next job of a sweep starts a fresh run
    failed = json.loads((tmp_path / "run" / "failed.json").read_text())
    assert "Invalid momentum value" in failed["error"] and failed["phase"] == "fit"


def test_report_aggregates_seeds_into_mean_and_std(tmp_path):
    from recsys.report import collect, summarize, to_markdown

    for job, (model, seed, rmse) in enumerate([("mf", 0, 0.90), ("mf", 1, 0.92), ("pmf", 0, 0.95),
                                               ("pmf", 1, 0.97)]):
        d = tmp_path / str(job)
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(f"- model={model}\n- data.split_seed={seed}\n")
        (d / "metrics.json").write_text(json.dumps({"test/rmse": rmse, "val/rmse": rmse + 0.01,
                                                    "test/ndcg@10": rmse / 10}))
    table = summarize(collect(tmp_path)[0])
    assert table["test/ndcg@10"].tolist() == pytest.approx([0.091, 0.096])  # ranking metrics are reported too
    markdown = to_markdown(table)
    assert "test/ndcg@10" in markdown.splitlines()[0] and "std std" not in markdown
    assert list(table["config"]) == ["model=mf", "model=pmf"]  # sorted by val/rmse
    assert table["test/rmse"].tolist() == pytest.approx([0.91, 0.96])
    assert table["test/rmse std"].tolist() == pytest.approx([0.01414, 0.01414], abs=1e-4)
    assert table["runs"].tolist() == [2, 2]


def test_progress_epoch_logs_one_line_per_epoch_and_no_bar(compose_cfg, caplog):
    import logging

    from recsys.tracking import resolve_progress

    assert resolve_progress("auto", terminal=False) == "epoch" and resolve_progress("auto", terminal=True) == "bar"
    with caplog.at_level(logging.INFO, logger="recsys.tracking"):
        train(compose_cfg("progress=epoch", "trainer.max_epochs=3", "~callbacks.early_stopping", "logger=none"))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert all("train/loss" in line and "val/rmse" in line and line.endswith(" s") for line in lines)


@pytest.mark.integration
def test_piped_stderr_gets_epoch_lines_not_redraws(udata, tmp_path):
    res = subprocess.run([sys.executable, "train.py", f"data.path={udata}", "trainer.max_epochs=2", "logger=none",
                          f"hydra.run.dir={tmp_path / 'run'}", f"data.root={tmp_path / 'cache'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "\r" not in res.stderr and "it/s" not in res.stderr  # no progress-bar redraws
    assert "epoch 1/2" in res.stdout + res.stderr and "epoch 2/2" in res.stdout + res.stderr
