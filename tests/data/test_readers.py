import pytest

from recsys.data import load_ratings
from recsys.data.readers import RatingsFormatError, read_ratings


def test_udata_keeps_original_ids(tmp_path):
    p = tmp_path / "u.data"
    p.write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    df = read_ratings(p)
    assert list(df.columns) == ["user", "item", "rating", "timestamp"]
    assert df["user"].tolist() == [196, 186] and df["item"].tolist() == [242, 302]
    assert df["rating"].tolist() == [3.0, 3.0]


def test_recbole_inter_file(tmp_path):
    p = tmp_path / "x.inter"
    p.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949\n")
    df = load_ratings(path=p)
    assert df.iloc[0].tolist() == [196, 242, 3.0, 881250949]


@pytest.mark.parametrize("body,line,what", [
    ("1\t2\t3\t4\n1\t2\tfive\t4\n", 2, "non-numeric rating 'five'"),
    ("1\t2\t3\t4\n1\t2\t3\t4\n1\t2\t9\t4\n", 3, "rating outside the scale"),
    ("1\t2\t0\t4\n", 1, "rating outside the scale"),
    ("1\t2\t3\t4\n1\t2\t3\n", 2, "missing timestamp"),
])
def test_bad_rows_name_file_line_and_value(tmp_path, body, line, what):
    p = tmp_path / "u.data"
    p.write_text(body)
    with pytest.raises(RatingsFormatError) as err:
        read_ratings(p)
    assert f"{p}, line {line}" in str(err.value) and what in str(err.value)


def test_wrong_column_count_names_the_line(tmp_path):
    p = tmp_path / "u.data"
    p.write_text("1\t2\t3\t4\n1\t2\t3\t4\t5\n")
    with pytest.raises(RatingsFormatError, match=r"u.data.*line 2"):
        read_ratings(p)


def test_empty_and_missing_files(tmp_path):
    p = tmp_path / "u.data"
    p.write_text("")
    with pytest.raises(RatingsFormatError, match="empty"):
        read_ratings(p)
    with pytest.raises(FileNotFoundError, match="nope.data"):
        read_ratings(tmp_path / "nope.data")


def test_inter_without_rating_field(tmp_path):
    p = tmp_path / "x.inter"
    p.write_text("user_id:token\titem_id:token\n1\t2\n")
    with pytest.raises(RatingsFormatError, match="lacks fields \\['rating'\\]"):
        read_ratings(p)
