"""End to end: the configs as train.py composes them, on synthetic ratings."""

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class

from recsys.training import train

ROOT = Path(__file__).resolve().parents[1]
MODELS = sorted(p.stem for p in (ROOT / "configs" / "model").glob("*.yaml"))
KEYS = {"test/rmse", "test/mae", "val/rmse", "epochs", "fit_seconds", "train_ratings_per_second"}


def test_model_configs_are_discovered():
    assert {"mf", "pmf", "pmf_sigmoid", "baseline"} <= set(MODELS)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_runs_end_to_end(model_run, model):
    run = model_run(model)
    saved = json.loads((run.dir / "metrics.json").read_text())
    assert saved == pytest.approx(run.metrics) and {"epochs", "fit_seconds", "test/ndcg@10"} <= saved.keys()
    if get_class(run.cfg.model._target_).task == "rating":
        assert KEYS <= saved.keys() and 0 < saved["test/rmse"] < 4 and 0 < saved["test/mae"] <= saved["test/rmse"]
    else:  # a ranking model predicts no rating: no RMSE to report
        assert not {k for k in saved if "rmse" in k or "mae" in k}, saved


@pytest.mark.parametrize("model", MODELS)
def test_training_learns_and_checkpoints_load(model_run, model):
    run = model_run(model)
    cfg, metrics = run.cfg, run.metrics
    assert metrics["epochs"] >= 1 and metrics["train_ratings_per_second"] > 0
    if "@" in cfg.optimized_metric:  # a ranking model: it ranks better than popularity
        assert metrics["test/ndcg@10"] > metrics["test/ndcg@10_popularity"], metrics
    else:  # better than predicting the training mean on this low-rank synthetic set
        assert metrics["test/rmse"] < 1.0, metrics
    ckpt = Path(metrics["test_checkpoint"])
    assert ckpt.exists() and (run.dir / "checkpoints" / "last.ckpt").exists()
    loaded = get_class(cfg.model._target_).load_from_checkpoint(ckpt, weights_only=True)
    # the id maps travel with the checkpoint, in original ids
    state = torch.load(ckpt, weights_only=True)
    ids = state["RatingsDataModule"]["user_ids"]  # integer ids: one tensor, not a list of 10⁵ Python ints
    assert isinstance(ids, torch.Tensor) and sorted(ids.tolist()) == list(range(1, 61))
    assert loaded.data.num_users == 60 and loaded.hparams.data["num_users"] == 60
    u, i = torch.tensor([0, 1]), torch.tensor([0, 1])
    assert torch.allclose(loaded.predict(u, i), loaded.predict(u, i).clamp(1, 5))


def test_resume_from_last_checkpoint(compose_cfg, caplog):
    first = train(compose_cfg("trainer.max_epochs=2", "~callbacks.early_stopping"))
    assert first["epochs"] == 2
    with caplog.at_level(logging.INFO, logger="recsys.rundir"):
        second = train(compose_cfg("trainer.max_epochs=4", "~callbacks.early_stopping"))
    assert "resuming from" in caplog.text
    assert second["epochs"] == 4


def test_batch_size_must_divide_by_world_size(udata):
    from recsys.data import RatingsDataModule

    dm = RatingsDataModule(path=str(udata), batch_size=1001)
    dm.setup()

    class FakeTrainer:
        world_size = 2

    dm.trainer = FakeTrainer()
    with pytest.raises(ValueError, match="data.batch_size=1001 is global and must divide by the world size 2"):
        dm.train_dataloader()


def test_d2l_experiment_holds_the_chapter_settings(compose_cfg):
    cfg = compose_cfg("experiment=d2l_mf")
    assert (cfg.model.dim, cfg.model.optimizer.lr, cfg.model.optimizer.weight_decay, cfg.model.reg) == \
        (30, 0.002, 1e-5, 0.0)
    assert cfg.model.use_global_mean is False and cfg.trainer.max_epochs == 20 and cfg.data.batch_size == 512
    assert cfg.data.test_ratio == 0.1


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "train.py", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.integration
def test_cli_writes_metrics_json_in_the_run_dir(udata, tmp_path):
    run = tmp_path / "cli"
    res = _cli("model=pmf", f"data.path={udata}", "trainer.max_epochs=3", f"hydra.run.dir={run}",
               f"data.root={tmp_path / 'cache'}")
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert KEYS <= metrics.keys() and math.isfinite(metrics["test/rmse"]) and metrics["epochs"] == 3
    assert "test/rmse=" in res.stdout
    assert list((run / "checkpoints").glob("*.ckpt"))
    # the defaults chosen by interpolation are logged and recorded: pmf's regime (full batch), no data_defaults
    applied = json.loads((run / "run_info.json").read_text())["applied_defaults"]
    assert applied["regime"]["file"] == "regime/pmf.yaml" and applied["data_defaults"] is None
    assert applied["regime"]["sets"]["data.batch_size"] is None
    assert "regime: configs/regime/pmf.yaml set data.batch_size=None" in res.stdout + res.stderr


@pytest.mark.integration
@pytest.mark.parametrize("group,choices", [("model", MODELS), ("data", ["ml100k"])])
def test_cli_unknown_name_lists_the_choices(tmp_path, group, choices):
    res = _cli(f"{group}=nope", f"hydra.run.dir={tmp_path}")
    assert res.returncode != 0
    assert f"{group}/nope" in res.stderr and all(c in res.stderr for c in choices)


def test_own_parquet_file_with_a_column_mapping_trains(compose_cfg, udata, tmp_path):
    import pandas as pd

    df = pd.read_csv(udata, sep="\t", names=["who", "what", "stars", "when"])
    df["stars"] = df["stars"] * 2  # a 2..10 scale, declared below
    path = tmp_path / "mine.parquet"
    df.to_parquet(path)
    cfg = compose_cfg("data=ratings_file", f"data.path={path}", "data.columns.user=who",
                      "data.columns.item=what", "data.columns.rating=stars", "data.columns.timestamp=when",
                      "data.rating_min=1", "data.rating_max=10", "data.split=temporal", "trainer.max_epochs=3")
    metrics = train(cfg)
    assert 0 < metrics["test/rmse"] < 4
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())["data"]
    assert info["source"] == str(path) and info["rating_scale"] == [1.0, 10.0, 1.0]
    assert info["num_train"] + info["num_val"] + info["num_test"] == len(df) and info["duplicates_dropped"] == 0


def test_synthetic_data_set_trains(compose_cfg, tmp_path):
    metrics = train(compose_cfg("data=synthetic", "data.path=null", "data.num_ratings=20_000",
                                "data.generator.seed=3", "trainer.max_epochs=3"))
    assert 0 < metrics["test/rmse"] < 2
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())["data"]
    assert info["num_train"] + info["num_val"] + info["num_test"] == 20_000
    assert info["source"].startswith("synthetic:") and '"seed": 3' in info["source"]


def test_ratings_file_needs_a_path(compose_cfg):
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    with pytest.raises(InstantiationException, match="ratings_file. is not one recsys can download .* data.path="):
        instantiate(compose_cfg("data=ratings_file", "data.path=null").data)


def test_optimized_metric_is_reported_and_returned(compose_cfg, tmp_path):
    metrics = train(compose_cfg("optimized_metric=val/mae", "trainer.max_epochs=3"))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["val/mae"] == pytest.approx(metrics["val/mae"]) and 0 < saved["val/mae"] < saved["val/rmse"]
    import pandas as pd

    log = pd.read_csv(next((tmp_path / "run" / "csv").glob("version_*/metrics.csv")))
    assert saved["val/mae"] == pytest.approx(log["val/mae"].min())  # the best epoch by val/mae


def test_applied_defaults_name_each_interpolated_file_and_the_keys_it_sets():
    from conftest import CONFIGS

    from recsys.tracking import applied_defaults

    applied = applied_defaults({"regime": "pmf", "data_defaults": "ml1m_mf"}, CONFIGS)
    assert applied["regime"] == {"file": "regime/pmf.yaml", "sets": {  # through its defaults: full_batch
        "data.batch_size": None, "trainer.max_epochs": 800, "callbacks.early_stopping.patience": 50}}
    assert applied["data_defaults"]["file"] == "data_defaults/ml1m_mf.yaml"
    assert applied["data_defaults"]["sets"]["model.reg"] == 0.05
    none = applied_defaults({"regime": "mf", "data_defaults": "ml100k_mf"}, CONFIGS)
    assert none == {"regime": None, "data_defaults": None}  # no such files: nothing set
    assert applied_defaults(None, None) == {}
