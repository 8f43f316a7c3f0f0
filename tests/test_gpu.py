"""GPU checks, ready to run on a machine with CUDA: ``python -m pytest -m gpu``.

Every model and solver fits one short run on the device and gives the CPU run's result to a stated tolerance
(gradient, ALS, Gibbs, AutoRec, the ranking models); ``recommend`` answers on the device as on the CPU; a 2-GPU NCCL
DDP run equals one GPU (where two are present). The default test run leaves these out (``-m 'not gpu'`` in
pyproject's addopts). ``RECSYS_TEST_DEVICE=cpu python -m pytest -m gpu`` runs the same comparisons with the CPU
in place of the GPU, which checks the harness itself on a machine without one.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import synthetic_ratings, write_udata

ROOT = Path(__file__).resolve().parents[1]
DEVICE = os.environ.get("RECSYS_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu, pytest.mark.xdist_group("gpu")]

#: (overrides, metric, tolerance): each model's short run; the tolerance covers float32 reduction order on the GPU
#: (and, for Gibbs, draws made by the device's generator)
RUNS = {
    "mf-gradient": (("model=mf", "trainer.max_epochs=3"), "test/rmse", 2e-3),
    "mf-als": (("model=mf", "model.solver=als", "trainer.max_epochs=3"), "test/rmse", 2e-3),
    "pmf-gradient": (("model=pmf", "trainer.max_epochs=30"), "test/rmse", 2e-3),
    "baseline": (("model=baseline", "trainer.max_epochs=3"), "test/rmse", 2e-3),
    "svdpp": (("model=svdpp", "trainer.max_epochs=2"), "test/rmse", 2e-3),
    "autorec": (("model=autorec", "model.hidden=32", "trainer.max_epochs=5"), "test/rmse", 5e-3),
    "bpmf-gibbs": (("model=bpmf", "model.dim=6", "model.burn_in=3", "trainer.max_epochs=8"), "test/rmse", 2e-2),
    "ease": (("model=ease",), "test/ndcg@10", 2e-3),
    "ials": (("model=ials", "trainer.max_epochs=3"), "test/ndcg@10", 5e-3),
    "bpr": (("model=bpr", "trainer.max_epochs=2"), "test/ndcg@10", 1e-2),
}


def _device_ready() -> None:
    if DEVICE == "cuda":
        assert torch.cuda.is_available(), "python -m pytest -m gpu needs a CUDA device (RECSYS_TEST_DEVICE=cpu " \
                                          "checks the harness on the CPU)"


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_udata(tmp_path_factory.mktemp("data") / "u.data",
                       synthetic_ratings(num_users=300, num_items=200, density=0.3, seed=5))


def _run(run: Path, data_file: Path, *overrides: str) -> dict:
    res = subprocess.run(
        [sys.executable, "train.py", f"data.path={data_file}", f"hydra.run.dir={run}", "logger=none",
         "~callbacks.early_stopping", "callbacks.progress_bar.refresh_rate=0", *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return json.loads((run / "metrics.json").read_text())


def _on_device() -> tuple[str, ...]:
    return ("trainer=gpu",) if DEVICE == "cuda" else ("trainer=cpu",)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_each_model_and_solver_on_the_device_gives_the_cpu_result(tmp_path, data_file, name):
    _device_ready()
    overrides, metric, tolerance = RUNS[name]
    cpu = _run(tmp_path / "cpu", data_file, *overrides, "trainer=cpu")
    dev = _run(tmp_path / "dev", data_file, *overrides, *_on_device())
    assert abs(cpu[metric] - dev[metric]) <= tolerance, (name, metric, cpu[metric], dev[metric])
    assert cpu["epochs"] == dev["epochs"]


def test_recommend_on_the_device_answers_as_on_the_cpu(tmp_path, data_file):
    _device_ready()
    import recsys

    _run(tmp_path / "run", data_file, "model=mf", "trainer.max_epochs=3", "trainer=cpu")
    cpu = recsys.load(tmp_path / "run").recommend([1, 2, 3], n=10)
    dev = recsys.load(tmp_path / "run", device=DEVICE).recommend([1, 2, 3], n=10)
    assert dev["item"].tolist() == cpu["item"].tolist()
    assert dev["score"].to_numpy() == pytest.approx(cpu["score"].to_numpy(), abs=1e-4)


def test_two_gpus_with_nccl_equal_one(tmp_path, data_file):
    _device_ready()
    if DEVICE == "cuda":
        assert torch.cuda.device_count() >= 2, "the NCCL check needs two GPUs on the machine"
        ddp = ("trainer=ddp", "trainer.devices=2", "trainer.accelerator=gpu")
    else:
        ddp = ("trainer=ddp_cpu", "trainer.devices=2")
    one = _run(tmp_path / "one", data_file, "model=mf", "trainer.max_epochs=4", "data.batch_size=1024",
               *_on_device())
    two = _run(tmp_path / "two", data_file, "model=mf", "trainer.max_epochs=4", "data.batch_size=1024", *ddp)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert abs(one["test/rmse"] - two["test/rmse"]) < 0.01, (one["test/rmse"], two["test/rmse"])
