"""refit=true: validation chooses the epoch count, the same model is fitted again on train+val and tested."""

import json

import pytest
import torch

from recsys.training import train


def _run_info(run):
    return json.loads((run / "run_info.json").read_text())


def test_refit_fits_again_on_train_and_validation_for_the_chosen_epochs(compose_cfg, tmp_path):
    import recsys
    from recsys.cli import evaluate

    run = tmp_path / "run"
    metrics = train(compose_cfg("model=mf", "trainer.max_epochs=6", "~callbacks.early_stopping", "refit=true"))
    choice = json.loads((run / "refit_choice.json").read_text())
    curve = [r["val/rmse"] for r in sorted(choice["history"], key=lambda r: r["epoch"]) if "val/rmse" in r]
    best = min(range(len(curve)), key=curve.__getitem__)
    assert metrics["refit"] is True and metrics["epochs"] == 6
    assert metrics["refit_epochs"] == best + 1  # the epoch count validation chose
    assert metrics["val/rmse"] == pytest.approx(curve[best], abs=1e-6)  # the choice is kept beside test/*
    assert metrics["fit_seconds"] == pytest.approx(metrics["first_fit_seconds"] + metrics["refit_seconds"])
    data = _run_info(run)["data"]
    assert metrics["num_train"] == data["num_train"] + data["num_val"]
    refit_ckpt = torch.load(run / "checkpoints" / "refit.ckpt", weights_only=True)
    assert refit_ckpt["epoch"] + 1 == metrics["refit_epochs"]  # it trained exactly that many epochs
    # recsys.load serves the refit model: fitted on train+val, and it reproduces the test metrics
    rec = recsys.load(run)
    assert rec.model.data.num_train == data["num_train"] + data["num_val"]
    assert metrics["test_checkpoint"].endswith("refit.ckpt")
    again = evaluate(rec, [])
    assert again["test/rmse"] == pytest.approx(metrics["test/rmse"], abs=1e-5)
    assert again["test/ndcg@10"] == pytest.approx(metrics["test/ndcg@10"], abs=1e-6)
    first = type(rec.model).load_from_checkpoint(metrics["validation_checkpoint"], weights_only=True)
    assert first.data.num_train == data["num_train"]  # the validation checkpoint is the first fit's


def test_a_closed_form_model_refits_once_and_a_killed_refit_run_resumes_without_the_first_fit(compose_cfg, tmp_path):
    run = tmp_path / "run"
    metrics = train(compose_cfg("model=ease", "refit=true"))
    assert metrics["refit_epochs"] == 1 and metrics["epochs"] == 1
    first_fit = run / "checkpoints" / "epoch000.ckpt"
    stamp = first_fit.stat().st_mtime_ns
    (run / "metrics.json").unlink()  # killed after the refit's checkpoint, before its test
    again = train(compose_cfg("model=ease", "refit=true"))
    assert first_fit.stat().st_mtime_ns == stamp  # the first fit was not run again
    assert again["test/ndcg@10"] == pytest.approx(metrics["test/ndcg@10"], abs=1e-7)
    assert again["val/ndcg@10"] == pytest.approx(metrics["val/ndcg@10"])

