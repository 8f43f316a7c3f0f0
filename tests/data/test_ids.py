"""Ids stay exactly as in the file: integer columns stay int64 (never float), anything else is text."""

import numpy as np
import pytest

from recsys.data import RatingsDataModule, load_ratings
from recsys.data.datasets import prepare
from recsys.data.readers import RatingsFormatError


def test_large_integer_ids_stay_distinct_int64(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text("user,item,rating\n9007199254740992,1,3\n9007199254740993,1,4\n9007199254740993,2,5\n")
    for _ in range(2):  # parsed, then from the parse cache
        df = load_ratings(path=path)
        assert str(df["user"].dtype) == "int64"
        assert df["user"].tolist() == [9007199254740992, 9007199254740993, 9007199254740993]
    assert prepare(path=path).duplicates_dropped == 0


def test_a_column_with_any_non_integer_token_is_text_for_every_row(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text("user,item,rating\n1,10,3\n1.0,10,4\n1e30,10,5\n1e+30,10,2\n007,10,1\n7,10,2\n")
    df = load_ratings(path=path)
    assert df["user"].tolist() == ["1", "1.0", "1e30", "1e+30", "007", "7"]  # six users, none merged
    assert df["item"].tolist() == [10] * 6
    data = prepare(path=path)
    assert data.duplicates_dropped == 0 and len(data.user_ids) == 6


def test_ids_keep_their_exact_form_in_the_datamodule(tmp_path):
    path = tmp_path / "r.csv"
    rows = [f"{9007199254740992 + u},{i},{1 + (u + i) % 5}" for u in range(30) for i in range(20)]
    path.write_text("user,item,rating\n" + "\n".join(rows) + "\n")
    dm = RatingsDataModule(path=str(path))
    dm.setup()
    assert dm.num_users == 30 and dm.user_map.to_ids([0]).tolist() == [9007199254740992]


def test_an_empty_id_names_its_line(tmp_path):
    path = tmp_path / "gap.csv"
    path.write_text("user,item,rating\n1,2,3\n,2,4\n")
    with pytest.raises(RatingsFormatError, match=r"gap.csv, line 3: missing user"):
        load_ratings(path=path)
    path.write_text("user\titem\trating\n1\t2\t3\n4\t\t4\n")
    with pytest.raises(RatingsFormatError, match=r"gap.csv, line 3: missing item"):
        load_ratings(path=path, sep="\t")


def test_checkpoints_hold_integer_ids_as_one_tensor_and_string_ids_as_a_list():
    """The data module saves its id maps with every checkpoint: integers as one int64 tensor (a list of 10⁵ ints
    costs a second to load with weights_only), strings as a list; either, and the lists older checkpoints hold,
    give the same map back."""
    import torch

    from recsys.data.datamodule import _saved_ids
    from recsys.data.datasets import IdMap

    ints = np.array([7, 3, 11], dtype=np.int32)
    saved = _saved_ids(ints)
    assert isinstance(saved, torch.Tensor) and saved.dtype == torch.int64 and saved.tolist() == [7, 3, 11]
    assert _saved_ids(np.array(["ann", "bob"])) == ["ann", "bob"]
    assert _saved_ids(np.array([2**63 + 5], dtype=np.uint64)) == [2**63 + 5]  # beyond int64: kept exact
    for ids in (saved, [7, 3, 11]):
        assert IdMap(ids).to_index([11, 7]).tolist() == [2, 0]
    assert IdMap(_saved_ids(np.array(["ann", "bob"]))).to_index(["bob"]).tolist() == [1]
