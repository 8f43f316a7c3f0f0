import numpy as np
import pytest

from recsys.data.synthetic import generate_ratings


def test_synthetic_ratings_are_movielens_like_and_seeded():
    df = generate_ratings(60_000, seed=3)
    assert len(df) == 60_000 and not df[["user", "item"]].duplicated().any()
    assert set(np.unique(df["rating"])) <= {1.0, 2.0, 3.0, 4.0, 5.0} and df["rating"].nunique() == 5
    counts = df["user"].value_counts()
    assert counts.iloc[: len(counts) // 10].sum() > 0.2 * len(df)  # skewed: uniform users would give 10%
    assert df["timestamp"].is_monotonic_increasing
    assert generate_ratings(60_000, seed=3).equals(df)
    assert not generate_ratings(60_000, seed=4).equals(df)


def test_synthetic_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="too dense"):
        generate_ratings(1000, num_users=10, num_items=10)
    with pytest.raises(ValueError, match="must be positive"):
        generate_ratings(0)
