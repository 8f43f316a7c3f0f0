"""Slow: the real MovieLens 100K (GroupLens, else the package-index mirror), default configs.

Run with ``pytest -m slow`` (.ci/run does, after the default suite). Thresholds are the issue's
"must reach" figures on the 90/10 random split.
"""


import pytest

from recsys.data import load_ratings, split_ratings
from recsys.data.sources import data_root
from recsys.training import train

pytestmark = pytest.mark.slow


def test_ml100k_loads_with_original_ids(tmp_path):
    df = load_ratings("ml-100k")
    assert len(df) == 100_000 and df["user"].nunique() == 943 and df["item"].nunique() == 1682
    assert df.iloc[0][["user", "item", "rating"]].tolist() == [196, 242, 3.0]
    train_df, val_df, test_df = split_ratings(df, test_ratio=0.1, val_ratio=0.05, seed=0)
    assert (len(train_df), len(val_df), len(test_df)) == (85_000, 5_000, 10_000)


def test_ml100k_parse_cache_equals_a_direct_read(tmp_path):
    import pandas as pd

    from recsys.data.datasets import prepare
    from recsys.data.sources import fetch

    src = fetch("ml-100k")
    if src.suffix == ".inter":  # the package-index mirror
        raw = pd.read_csv(src, sep="\t")
    else:  # GroupLens' zip
        import zipfile

        with zipfile.ZipFile(src) as zf:
            raw = pd.read_csv(zf.open("ml-100k/u.data"), sep="\t", header=None)
    raw.columns = ["user", "item", "rating", "timestamp"]
    fresh = prepare("ml-100k", cache=False).frame()
    prepare("ml-100k")  # writes or refreshes the cache
    cached = prepare("ml-100k").frame()
    for got in (fresh, cached):
        pd.testing.assert_frame_equal(got, raw.astype({"rating": "float32"}), check_dtype=False)


@pytest.mark.parametrize("model,limit", [("mf", 0.915), ("pmf", 0.93), ("pmf_sigmoid", 0.93)])
def test_default_models_reach_the_target_rmse(compose_cfg, model, limit):
    root = data_root()
    cfg = compose_cfg(f"model={model}", "data.path=null", f"data.root={root}")
    metrics = train(cfg)
    assert metrics["test/rmse"] <= limit, metrics


def test_ml1m_loads_from_grouplens_or_the_package_index_mirror():
    df = load_ratings("ml-1m")
    assert len(df) == 1_000_209 and df["user"].nunique() == 6040 and df["item"].nunique() == 3706
    assert df["rating"].mean() == pytest.approx(3.581564, abs=1e-6)
