"""DDP on CPU (2 gloo processes, as CI has no GPU) gives the answers of one process.

Each run goes through train.py, so Lightning's re-launch of the script under Hydra is exercised too.
"""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import synthetic_ratings, write_udata

ROOT = Path(__file__).resolve().parents[1]
# subprocesses: python -m pytest -m integration; one worker runs them all (module fixtures, CPU share)
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("ddp")]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_udata(tmp_path_factory.mktemp("data") / "u.data",
                       synthetic_ratings(num_users=300, num_items=200, density=0.3, seed=5))


def _run(tmp_path_factory, data_file, name, *overrides):
    run = tmp_path_factory.mktemp(name) / "run"
    res = subprocess.run(
        [sys.executable, "train.py", f"data.path={data_file}", f"hydra.run.dir={run}",
         "~callbacks.early_stopping", "callbacks.progress_bar.refresh_rate=0", *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return run, json.loads((run / "metrics.json").read_text())


ALS = ("model=pmf", "model.solver=als", "model.dim=8", "trainer.max_epochs=3", "data.batch_size=4096")
GRAD = ("model=mf", "trainer.max_epochs=4", "data.batch_size=1024")
AUTOREC = ("model=autorec", "model.hidden=32", "trainer.max_epochs=10", "data.batch_size=2048")
BPMF = ("model=bpmf", "model.dim=6", "model.burn_in=3", "trainer.max_epochs=8")
DDP = ("trainer=ddp_cpu", "trainer.devices=2")


@pytest.fixture(scope="module")
def als_runs(tmp_path_factory, data_file):
    return (_run(tmp_path_factory, data_file, "als1", *ALS, "trainer=cpu"),
            _run(tmp_path_factory, data_file, "als2", *ALS, *DDP))


@pytest.fixture(scope="module")
def grad_runs(tmp_path_factory, data_file):
    return (_run(tmp_path_factory, data_file, "grad1", *GRAD, "trainer=cpu"),
            _run(tmp_path_factory, data_file, "grad2", *GRAD, *DDP))


@pytest.fixture(scope="module")
def bpmf_runs(tmp_path_factory, data_file):
    return (_run(tmp_path_factory, data_file, "bpmf1", *BPMF, "trainer=cpu"),
            _run(tmp_path_factory, data_file, "bpmf2", *BPMF, *DDP))


def test_bpmf_chain_with_two_processes_equals_one(bpmf_runs):
    """Rows sharded over the ranks, draws keyed by (seed, sample, side, row): the chain of one process."""
    (one, m1), (two, m2) = bpmf_runs
    assert (m1["world_size"], m2["world_size"], m1["epochs"], m2["epochs"]) == (1, 2, 8, 8)
    assert abs(m1["test/rmse"] - m2["test/rmse"]) < 1e-5 and abs(m1["val/rmse"] - m2["val/rmse"]) < 1e-5
    a = torch.load(one / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(two / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for key in ("net.user.weight", "mean_net.item.weight", "pair_sums", "alpha", "hyper_lam"):
        assert torch.allclose(a[key].double(), b[key].double(), atol=1e-5, rtol=1e-5), key


def test_autorec_trains_under_ddp_with_whole_items_per_rank(tmp_path_factory, data_file):
    """data.batch_by=item under DDP: each rank takes whole items; both ranks end with the same weights. The
    regime sums every batch of an epoch into one Rprop step (several batches per epoch here)."""
    (one, m1), (two, m2) = (_run(tmp_path_factory, data_file, "ar1", *AUTOREC, "trainer=cpu"),
                            _run(tmp_path_factory, data_file, "ar2", *AUTOREC, *DDP))
    assert (m1["world_size"], m2["world_size"]) == (1, 2)
    assert m2["test/rmse"] < 1.2 and abs(m1["test/rmse"] - m2["test/rmse"]) < 0.1, (m1["test/rmse"], m2["test/rmse"])
    for run, metrics in ((one, m1), (two, m2)):
        checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        assert checkpoint["global_step"] == metrics["epochs"] == 10  # one optimizer step per epoch
        assert metrics["num_train"] > 2 * 2048  # ... over more than one batch per rank
    assert checkpoint["state_dict"]["codes"].abs().sum() > 0  # the items' codes were encoded and saved


def _factors(run):
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return state["net.user.weight"], state["net.item.weight"]


def test_als_with_two_processes_equals_one(als_runs):
    (one, m1), (two, m2) = als_runs
    assert (m1["world_size"], m2["world_size"]) == (1, 2)
    assert abs(m1["test/rmse"] - m2["test/rmse"]) < 1e-5
    # ranking metrics: users sharded over the ranks, sums all-reduced: each user counts once
    for key in ("test/ndcg@10", "test/recall@10", "test/mrr@10", "test/ndcg@10_popularity"):
        assert abs(m1[key] - m2[key]) < 1e-5, key
    for a, b in zip(_factors(one), _factors(two)):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)


def test_gradient_training_with_two_processes_matches_one(grad_runs):
    (_, m1), (_, m2) = grad_runs
    assert (m1["world_size"], m2["world_size"]) == (1, 2)
    assert abs(m1["test/rmse"] - m2["test/rmse"]) < 0.01, (m1["test/rmse"], m2["test/rmse"])


@pytest.mark.parametrize("which", ["grad_runs", "als_runs"])
def test_every_training_rating_is_seen_once_per_epoch(request, which):
    for run, metrics in request.getfixturevalue(which):
        log = pd.read_csv(next((run / "csv").glob("version_*/metrics.csv")))
        seen = log["train/ratings"].dropna()
        assert len(seen) == metrics["epochs"] and (seen == metrics["num_train"]).all()


def test_test_metrics_under_ddp_equal_a_direct_evaluation(grad_runs, data_file):
    from recsys.data import RatingsDataModule
    from recsys.models.mf import BiasedMF

    run, metrics = grad_runs[1]
    model = BiasedMF.load_from_checkpoint(metrics["test_checkpoint"], weights_only=True)
    dm = RatingsDataModule(path=str(data_file))
    dm.setup()
    users, items, ratings = dm.test_set
    with torch.no_grad():
        err = (model.predict(users, items) - ratings).double()
    assert abs(err.square().mean().sqrt().item() - metrics["test/rmse"]) < 1e-6
    assert abs(err.abs().mean().item() - metrics["test/mae"]) < 1e-6


@pytest.mark.parametrize("which", ["grad_runs", "als_runs"])
def test_one_metrics_json_and_one_set_of_checkpoints(request, which):
    run, metrics = request.getfixturevalue(which)[1]
    assert list(run.parent.rglob("metrics.json")) == [run / "metrics.json"]
    ckpts = sorted(p.relative_to(run).as_posix() for p in run.parent.rglob("*.ckpt"))
    assert ckpts == sorted(["checkpoints/last.ckpt", Path(metrics["test_checkpoint"]).relative_to(run).as_posix()])


RANKING = {
    # implicit ALS, matrix-free CG, rows sharded: the same factors as one process
    "ials": (("model=ials", "model.dim=8", "trainer.max_epochs=3"), 1e-5),
    # BPR, each rank its slice of every step's sampled negatives, refit on train+val under DDP too
    "bpr_refit": (("model=bpr", "model.dim=8", "trainer.max_epochs=3", "data.batch_size=1024", "refit=true"), 0.01),
}


@pytest.mark.parametrize("name", sorted(RANKING))
def test_ranking_models_and_refit_with_two_processes_match_one(tmp_path_factory, data_file, name):
    overrides, tolerance = RANKING[name]
    (_, m1), (_, m2) = (_run(tmp_path_factory, data_file, f"{name}1", *overrides, "trainer=cpu"),
                        _run(tmp_path_factory, data_file, f"{name}2", *overrides, *DDP))
    assert (m1["world_size"], m2["world_size"]) == (1, 2)
    assert m1["epochs"] == m2["epochs"] and m1.get("refit_epochs") == m2.get("refit_epochs")
    assert abs(m1["test/ndcg@10"] - m2["test/ndcg@10"]) < tolerance, (m1["test/ndcg@10"], m2["test/ndcg@10"])
    assert m1["test/ndcg@10"] > m1["test/ndcg@10_popularity"] - 0.05  # it learned something in 3 epochs
