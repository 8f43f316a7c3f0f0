"""Shared fixtures: small synthetic rating files in tmp dirs (MovieLens is never committed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

import recsys  # noqa: E402, F401 - before torch: OpenMP's threads then sleep at barriers (recsys.threads)

if os.environ.get("PYTEST_XDIST_WORKER"):  # one torch thread per worker: the workers share the cores
    import torch

    torch.set_num_threads(1)


def synthetic_ratings(num_users=60, num_items=40, density=0.5, rank=3, noise=0.3, seed=0) -> np.ndarray:
    """Rows (user, item, rating, timestamp) of a rank-``rank`` signal on the 1..5 scale, ids from 1."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(num_users, rank))
    v = rng.normal(size=(num_items, rank))
    bu, bi = rng.normal(0, 0.5, num_users), rng.normal(0, 0.5, num_items)
    mask = rng.random((num_users, num_items)) < density
    users, items = np.nonzero(mask)
    signal = 3.5 + bu[users] + bi[items] + 0.5 * (u[users] * v[items]).sum(1)
    ratings = np.clip(np.rint(signal + rng.normal(0, noise, len(users))), 1, 5)
    ts = 880_000_000 + rng.integers(0, 10**7, len(users))
    return np.stack([users + 1, items + 1, ratings, ts], axis=1).astype(np.int64)


def fake_facts(num_users=20, num_items=15, num_train=200, global_mean=3.0, **kw):
    """Data facts for building a model without data (as tests of lightning-hydra-template do)."""
    from recsys.data.facts import DataFacts

    return DataFacts(num_users=num_users, num_items=num_items, num_train=num_train, global_mean=global_mean, **kw)


def write_udata(path: Path, rows: np.ndarray) -> Path:
    path.write_text("".join("\t".join(map(str, r)) + "\n" for r in rows))
    return path


def model_configs() -> dict[str, Path]:
    """Every model config: adding configs/model/<name>.yaml enrols the model in every model test."""
    return {p.stem: p for p in sorted((CONFIGS / "model").glob("*.yaml"))}


class TrainedRun:
    """One model config fitted and tested by ``train()`` on the synthetic file: its config, metrics and run dir.
    Trained by the first test process that asks (under a file lock); the others read the finished run."""

    def __init__(self, root: Path, name: str):
        import json

        from recsys.io import file_lock

        root.mkdir(parents=True, exist_ok=True)
        self.data, self.dir = root / "u.data", root / "run"
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            self.cfg = compose("train", overrides=[
                f"data.path={self.data}", f"output_dir={self.dir}", f"data.root={root / 'cache'}",
                "~callbacks.progress_bar", "+trainer.enable_progress_bar=false", f"model={name}",
                "trainer.max_epochs=30", "data.batch_size=256"])
        with file_lock(root / "lock"):
            if (root / "done").exists():
                self.metrics = json.loads((self.dir / "metrics.json").read_text())
                return
            from recsys.training import train

            write_udata(self.data, synthetic_ratings())
            previous = os.environ.get("RECSYS_DATA")
            os.environ["RECSYS_DATA"] = str(root / "recsys-data")
            try:
                self.metrics = train(self.cfg)
            finally:
                os.environ.pop("RECSYS_DATA") if previous is None else os.environ.update(RECSYS_DATA=previous)
            (root / "done").touch()


@pytest.fixture(scope="session")
def model_run(tmp_path_factory):
    """``model_run(name)``: the run of model config ``name`` (30 epochs at most), trained once per test session
    (shared by the xdist workers: the parent of their base temp dirs) and read by every test that checks a
    finished run (metrics, checkpoints, ``recsys.load``): one fit per model, not one per test. Tests that change
    a run make their own."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    runs: dict[str, TrainedRun] = {}

    def get(name: str) -> TrainedRun:
        if name not in runs:
            runs[name] = TrainedRun(shared / f"model-run-{name}", name)
        return runs[name]

    return get


@pytest.fixture(autouse=True)
def _private_data_root(request, tmp_path, monkeypatch):
    """Parse caches and stamps of tmp files go to tmp, not ~/.cache/recsys (slow and preset real-data tests use it)."""
    if "slow" not in request.keywords and "presets" not in request.keywords:
        monkeypatch.setenv("RECSYS_DATA", str(tmp_path / "recsys-data"))


@pytest.fixture
def udata(tmp_path) -> Path:
    """A synthetic MovieLens-100K-format ratings file (u.data layout)."""
    return write_udata(tmp_path / "u.data", synthetic_ratings())


@pytest.fixture
def compose_cfg(tmp_path, udata):
    """Compose the training config as train.py would, on the synthetic file, writing under tmp."""

    def make(*overrides: str):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            return compose("train", overrides=[
                f"data.path={udata}", f"output_dir={tmp_path / 'run'}", "data.root=" + str(tmp_path / "cache"),
                "~callbacks.progress_bar", "+trainer.enable_progress_bar=false", *overrides])

    return make


def gloo_collectives(world: int):
    """(gather, reduce) over an initialized gloo group: all-gather as (world, *t.shape), and sum."""
    import torch
    import torch.distributed as dist

    def gather(t):
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.contiguous())
        return torch.stack(parts)

    def reduce(t):
        t = t.clone()
        dist.all_reduce(t)
        return t

    return gather, reduce
