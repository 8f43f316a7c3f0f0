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
