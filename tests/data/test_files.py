"""Any ratings file (CSV/TSV/Parquet/.inter, data.columns), the duplicates policy and the parsed cache."""

import logging

import numpy as np
import pandas as pd
import pytest

from recsys.data import datasets, load_ratings
from recsys.data.datasets import Ratings, prepare
from recsys.data.readers import RatingsFormatError, read_ratings

FRAME = pd.DataFrame({"uid": ["ann", "bob", "ann", "cy"], "sku": ["x1", "x1", "y2", "y2"],
                      "stars": [7.0, 3.0, 10.0, 1.0], "when": [5, 6, 7, 8]})


def _expected(df=FRAME):
    return df.rename(columns={"uid": "user", "sku": "item", "stars": "rating", "when": "timestamp"})


@pytest.mark.parametrize("suffix,write", [
    (".csv", lambda df, p: df.to_csv(p, index=False)),
    (".tsv", lambda df, p: df.to_csv(p, index=False, sep="\t")),
    (".txt", lambda df, p: df.to_csv(p, index=False, sep=";")),   # separator sniffed
    (".parquet", lambda df, p: df.to_parquet(p, index=False)),
])
def test_formats_with_a_column_mapping(tmp_path, suffix, write):
    path = tmp_path / f"mine{suffix}"
    write(FRAME, path)
    cols = {"user": "uid", "item": "sku", "rating": "stars", "timestamp": "when"}
    df = read_ratings(path, scale=(1, 10), columns=cols)
    pd.testing.assert_frame_equal(df, _expected(), check_dtype=False)


def test_usual_names_are_found_without_a_mapping(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("extra,UserId,movie_id,Rating,Timestamp\nq,1,10,4,100\nq,2,10,3.5,101\n")
    df = read_ratings(path, scale=(0.5, 5))
    assert df.values.tolist() == [[1, 10, 4.0, 100], [2, 10, 3.5, 101]]


def test_headerless_file_by_position(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("100,4,1,10\n101,3,2,10\n")  # timestamp, rating, user, item
    df = read_ratings(path, columns={"user": 2, "item": 3, "rating": 1, "timestamp": 0})
    assert df.values.tolist() == [[1, 10, 4.0, 100], [2, 10, 3.0, 101]]


@pytest.mark.parametrize("columns,match", [
    ({"user": "nobody"}, r"data.columns.user='nobody' is not a column of the file; its columns are"),
    ({"item": "sku", "rating": 9}, r"data.columns.rating=9 but the file has 4 columns"),
    ({"score": "x"}, r"unknown roles \['score'\]"),
    ({"user": "uid", "item": "uid"}, "two roles map to the same column"),
])
def test_bad_column_mappings_name_the_file_and_the_columns(tmp_path, columns, match):
    path = tmp_path / "mine.csv"
    FRAME.to_csv(path, index=False)
    with pytest.raises(ValueError, match=match):
        read_ratings(path, scale=(1, 10), columns={"rating": "stars", **columns})


def test_missing_role_says_how_to_name_it(tmp_path):
    path = tmp_path / "mine.csv"
    FRAME.rename(columns={"uid": "who"}).to_csv(path, index=False)
    with pytest.raises(RatingsFormatError, match=r"mine.csv: no user column .* data.columns.user=<column>"):
        read_ratings(path, scale=(1, 10), columns={"item": "sku", "rating": "stars"})


def test_parquet_errors_count_rows(tmp_path):
    path = tmp_path / "r.parquet"
    FRAME.assign(stars=[7.0, np.nan, 3.0, 1.0]).to_parquet(path)
    with pytest.raises(RatingsFormatError, match=r"r.parquet, row 2: missing or NaN rating"):
        read_ratings(path, scale=(1, 10), columns={"user": "uid", "item": "sku", "rating": "stars"})
    path.write_text("not parquet")
    with pytest.raises(RatingsFormatError, match="not a readable Parquet file"):
        read_ratings(path)


def test_malformed_line_is_named(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("userId,movieId,rating\n1,2,3\nbroken line without separators\n1,3,4\n")
    with pytest.raises(RatingsFormatError, match=r"r.csv, line 3"):
        read_ratings(path)


DUPES = "1\t10\t4\t300\n1\t11\t2\t100\n1\t10\t5\t200\n2\t10\t1\t100\n1\t10\t3\t250\n"


def test_duplicates_keep_the_latest_and_are_counted(tmp_path, caplog):
    path = tmp_path / "u.data"
    path.write_text(DUPES)
    with caplog.at_level(logging.WARNING):
        data = prepare(path=path)
    assert data.duplicates_dropped == 2 and "dropped 2 duplicate" in caplog.text
    df = data.frame().sort_values(["user", "item"]).values.tolist()
    assert df == [[1, 10, 4.0, 300], [1, 11, 2.0, 100], [2, 10, 1.0, 100]]  # t=300 is the latest of (1, 10)


def test_duplicates_without_timestamps_keep_the_last_line(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user,item,rating\n1,10,4\n1,10,2\n2,10,5\n")
    assert load_ratings(path=path).values.tolist() == [[1, 10, 2.0], [2, 10, 5.0]]


def test_duplicates_error_names_both_lines(tmp_path):
    path = tmp_path / "u.data"
    path.write_text(DUPES)
    with pytest.raises(RatingsFormatError, match=r"u.data, line 3: duplicate \(user, item\) pair \(1, 10\), "
                                                 r"first rated on line 1"):
        prepare(path=path, duplicates="error")
    with pytest.raises(ValueError, match="data.duplicates='first'"):
        prepare(path=path, duplicates="first")


def test_second_load_reads_no_source_file(tmp_path, monkeypatch):
    path = tmp_path / "mine.csv"
    FRAME.to_csv(path, index=False)
    kw = dict(path=path, scale=(1, 10), columns={"user": "uid", "item": "sku", "rating": "stars", "timestamp": "when"})
    first = prepare(**kw)
    cached = list((tmp_path / "recsys-data" / "files").glob("parsed-*.npz"))
    assert len(cached) == 1

    def refuse(*a, **k):
        raise AssertionError("the source file was read")

    monkeypatch.setattr(datasets, "read_ratings", refuse)
    monkeypatch.setattr("recsys.data.sources.digests", refuse)
    second = prepare(**kw)
    for field in ("users", "items", "ratings", "timestamps", "user_ids", "item_ids"):
        assert np.array_equal(getattr(first, field), getattr(second, field)), field
    assert second.source_sha256 == first.source_sha256
    assert second.frame().values.tolist() == _expected().values.tolist()
    with pytest.raises(AssertionError, match="was read"):  # other settings: another cache entry
        prepare(**{**kw, "scale": (0, 10)})


def test_changed_source_is_parsed_again(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("1\t2\t3\t4\n")
    assert load_ratings(path=path)["rating"].tolist() == [3.0]
    path.write_text("1\t2\t5\t4\n1\t3\t4\t4\n")
    assert load_ratings(path=path)["rating"].tolist() == [5.0, 4.0]


def test_unreadable_cache_is_rebuilt(tmp_path, caplog):
    path = tmp_path / "u.data"
    path.write_text("1\t2\t3\t4\n")
    load_ratings(path=path)
    (cached,) = (tmp_path / "recsys-data" / "files").glob("parsed-*.npz")
    cached.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        assert load_ratings(path=path)["rating"].tolist() == [3.0]
    assert "unreadable" in caplog.text
    Ratings.load(cached)  # rewritten whole


@pytest.mark.parametrize("body", ["", "1\t2\t3\t4\n1\t2\tbad\t4\n", "1\t2\t3\t4\n1\t2\t3\t4\t5\n"])
def test_bad_input_leaves_no_cache_file(tmp_path, body):
    path = tmp_path / "u.data"
    path.write_text(body)
    with pytest.raises(RatingsFormatError):
        load_ratings(path=path)
    left = [p.name for p in (tmp_path / "recsys-data" / "files").iterdir() if not p.name.startswith(".parsed.lock")]
    assert left == []


def test_killed_cache_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "u.data"
    path.write_text("1\t2\t3\t4\n")

    def die(out, **arrays):
        out.write(b"PK\x03\x04 half")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", die)
    with pytest.raises(KeyboardInterrupt):
        load_ratings(path=path)
    assert [p.name for p in (tmp_path / "recsys-data" / "files").iterdir()] == [".parsed.lock"]


def test_string_ids_survive_the_cache(tmp_path):
    path = tmp_path / "mine.csv"
    FRAME.to_csv(path, index=False)
    kw = dict(path=path, scale=(1, 10), columns={"user": "uid", "item": "sku", "rating": "stars"})
    assert prepare(**kw).frame()["user"].tolist() == prepare(**kw).frame()["user"].tolist() == \
        ["ann", "bob", "ann", "cy"]


def test_synthetic_is_cached_by_its_settings(tmp_path, monkeypatch):
    from recsys.data import synthetic

    a = prepare("synthetic", num_ratings=3000, generator={"seed": 1})
    monkeypatch.setattr(synthetic, "generate_ratings", lambda **k: pytest.fail("generated again"))
    b = prepare("synthetic", num_ratings=3000, generator={"seed": 1})
    assert np.array_equal(a.ratings, b.ratings) and len(b) == 3000
    with pytest.raises(pytest.fail.Exception):
        prepare("synthetic", num_ratings=3000, generator={"seed": 2})
    with pytest.raises(ValueError, match=r"data.generator has unknown settings \['sed'\]"):
        prepare("synthetic", num_ratings=3000, generator={"sed": 2})
