"""Every preset (configs/experiment/*.yaml) end to end on its own data set: fit, test phase, metrics.json.

``python -m pytest -m presets`` (.ci/run runs it on every CI run). A preset that fits but dies in its test phase
(the ml1m_autorec regression: 42.6 GB asked by the ranking metrics) fails here. Each run is cut to
``EPOCHS`` epochs (gradient and ALS epochs, Gibbs samples, a burn-in of one sample) so the whole path stays a few
seconds of fitting: the data set, the model's size, the refit, the test phase and its ranking evaluation are the
preset's own. Real data: MovieLens from GroupLens or the package-index mirrors, cached in ~/.cache/recsys.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONFIGS
from hydra import compose, initialize_config_dir

pytestmark = pytest.mark.presets

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
EPOCHS = 3


def shortened(name: str) -> list[str]:
    """The overrides that cut preset ``name`` to EPOCHS epochs and nothing else."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={name}"])
    out = [f"trainer.max_epochs={min(EPOCHS, int(cfg.trainer.max_epochs))}"]
    if "burn_in" in cfg.model:  # a sampler: average from its second sample on, so the running means are used
        out.append("model.burn_in=1")
    return out


@pytest.mark.parametrize("name", PRESETS)
def test_preset_runs_its_whole_path(name, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "train.py", f"experiment={name}", *shortened(name), f"output_dir={run}", "logger=none",
           "progress=none", f"hydra.run.dir={run}"]
    env = {k: v for k, v in os.environ.items() if k != "RECSYS_DATA"}  # the real data cache
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, (" ".join(cmd), done.stderr[-4000:])
    assert not (run / "failed.json").exists(), (run / "failed.json").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/ndcg@10"] >= 0 and "test/ndcg@10_popularity" in metrics, metrics
    assert Path(metrics["test_checkpoint"]).exists()
    if not metrics.get("refit"):
        assert metrics["epochs"] >= 1
