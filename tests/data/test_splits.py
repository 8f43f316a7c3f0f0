import numpy as np
import pandas as pd
import pytest

from recsys.data import RatingsDataModule, split_ratings
from recsys.data.splits import split_indices


def test_random_split_is_a_seeded_partition():
    train, val, test = split_indices(1000, test_ratio=0.1, val_ratio=0.05, seed=3)
    assert (len(train), len(val), len(test)) == (850, 50, 100)
    joined = np.concatenate([train, val, test])
    assert len(np.unique(joined)) == 1000  # disjoint and covering
    again = split_indices(1000, test_ratio=0.1, val_ratio=0.05, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))
    other = split_indices(1000, test_ratio=0.1, val_ratio=0.05, seed=4)
    assert not np.array_equal(test, other[2])


def test_test_part_does_not_depend_on_val_ratio():
    # validation is carved from train: changing it must not move ratings into or out of test
    assert np.array_equal(split_indices(500, val_ratio=0.0, seed=1)[2], split_indices(500, val_ratio=0.2, seed=1)[2])


@pytest.mark.parametrize("test_ratio,val_ratio", [(1.0, 0.0), (-0.1, 0.0), (0.6, 0.5)])
def test_bad_ratios_are_rejected(test_ratio, val_ratio):
    with pytest.raises(ValueError, match="test_ratio"):
        split_indices(10, test_ratio=test_ratio, val_ratio=val_ratio)


def test_unknown_strategy_is_rejected():
    with pytest.raises(ValueError, match="unknown split strategy 'nope'"):
        split_indices(10, strategy="nope")


def test_public_split_equals_the_datamodule_split(udata):
    from recsys.data import load_ratings

    df = load_ratings(path=udata)
    train, val, test = split_ratings(df, test_ratio=0.1, val_ratio=0.05, seed=7)
    dm = RatingsDataModule(path=str(udata), test_ratio=0.1, val_ratio=0.05, split_seed=7)
    dm.setup()
    for part, tensors in zip((train, val, test), (dm.train_set, dm.val_set, dm.test_set)):
        users = dm.user_map.to_ids(tensors[0].numpy())
        items = dm.item_map.to_ids(tensors[1].numpy())
        got = pd.DataFrame({"user": users, "item": items, "rating": tensors[2].numpy()})
        pd.testing.assert_frame_equal(got, part[["user", "item", "rating"]], check_dtype=False)


@pytest.fixture
def ratings():
    rng = np.random.default_rng(0)
    n = 3000
    users = rng.integers(0, 120, n)
    return pd.DataFrame({"user": users, "item": rng.integers(0, 80, n), "rating": 3.0,
                         "timestamp": rng.integers(0, 500, n)})  # many ties on purpose


def _check_partition(parts, n):
    joined = np.concatenate(parts)
    assert len(joined) == n and len(np.unique(joined)) == n


@pytest.mark.parametrize("strategy", ["random", "user", "temporal", "leave_last"])
def test_every_strategy_partitions_deterministically(ratings, strategy):
    parts = split_indices(ratings, strategy, test_ratio=0.1, val_ratio=0.05, seed=3)
    _check_partition(parts, len(ratings))
    again = split_indices(ratings, strategy, test_ratio=0.1, val_ratio=0.05, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert len(parts[1]) > 0 and len(parts[2]) > 0


def test_user_split_keeps_a_training_rating_for_every_user(ratings):
    train, val, test = split_indices(ratings, "user", test_ratio=0.3, val_ratio=0.3, seed=1)
    counts = ratings["user"].value_counts()
    in_train = set(ratings["user"].iloc[train])
    assert all(u in in_train for u in counts[counts >= 2].index)
    per_user = ratings["user"].iloc[test].value_counts()
    assert abs(per_user.sum() / len(ratings) - 0.3) < 0.03  # stratified: about 30% of each user


def test_temporal_split_puts_test_after_val_after_train(ratings):
    train, val, test = split_indices(ratings, "temporal", test_ratio=0.1, val_ratio=0.1, seed=0)
    t = ratings["timestamp"].to_numpy()
    assert t[train].max() < t[val].min() and t[val].max() < t[test].min()
    assert abs(len(test) / len(ratings) - 0.1) < 0.02


def test_leave_last_takes_each_users_latest(ratings):
    train, val, test = split_indices(ratings, "leave_last", val_ratio=0.05, leave_last_n=2, seed=0)
    df = ratings.assign(part="train")
    df.loc[val, "part"], df.loc[test, "part"] = "val", "test"
    for _, g in df.groupby("user"):
        n_test = min(2, len(g) - 1)
        assert (g["part"] == "test").sum() == n_test
        if n_test:
            assert g.loc[g["part"] == "test", "timestamp"].min() >= g.loc[g["part"] != "test", "timestamp"].max()
        assert (g["part"] == "train").sum() >= 1


def test_k_folds_put_every_rating_in_exactly_one_test_fold(ratings):
    tests = []
    for f in range(5):
        train, val, test = split_indices(ratings, folds=5, fold=f, val_ratio=0.05, seed=9)
        _check_partition((train, val, test), len(ratings))
        tests.append(test)
    _check_partition(tests, len(ratings))


@pytest.mark.parametrize("kwargs,match", [
    (dict(folds=1), "data.folds=1"), (dict(folds=5, fold=5), "data.fold=5"),
    (dict(strategy="user", folds=5), "k-fold splits are random"),
])
def test_bad_fold_settings(ratings, kwargs, match):
    with pytest.raises(ValueError, match=match):
        split_indices(ratings, **kwargs)


def test_time_strategies_need_timestamps(ratings):
    with pytest.raises(ValueError, match="needs a timestamp"):
        split_indices(ratings.drop(columns="timestamp"), "temporal")
