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
    ("1\t2\t3\t4\n1\t2\t3\n", 2, "missing or NaN timestamp"),
    ("1\t2\t3\t4\n1\t2\tnan\t4\n", 2, "missing or NaN rating"),
    ("1\t2\t3\t4\n1\t2\t\t4\n", 2, "missing or NaN rating"),
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
    with pytest.raises(RatingsFormatError, match="no rating column among"):
        read_ratings(p)


def _zip(path, member, text):
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, text)
    return path


def test_movielens_layouts_in_files_and_zips(tmp_path):
    dat = "1::1193::5::978300760\n1::661::3::978302109\n"
    csv = "userId,movieId,rating,timestamp\n1,296,5.0,1147880044\n1,306,3.5,1147868817\n"
    for path in (_zip(tmp_path / "ml-1m.zip", "ml-1m/ratings.dat", dat), tmp_path / "ratings.dat"):
        if path.suffix != ".zip":
            path.write_text(dat)
        df = read_ratings(path)
        assert df.values.tolist() == [[1, 1193, 5.0, 978300760], [1, 661, 3.0, 978302109]]
    df = read_ratings(_zip(tmp_path / "ml-25m.zip", "ml-25m/ratings.csv", csv), scale=(0.5, 5.0))
    assert df["rating"].tolist() == [5.0, 3.5] and df["item"].tolist() == [296, 306]


def test_csv_errors_count_the_header_line(tmp_path):
    p = tmp_path / "ratings.csv"
    p.write_text("userId,movieId,rating,timestamp\n1,2,3.5,4\n1,3,6.0,5\n")
    with pytest.raises(RatingsFormatError, match=r"ratings.csv, line 3: rating outside the scale"):
        read_ratings(p, scale=(0.5, 5.0))
    p.write_text("userId,movieId,rating,timestamp\n1,2,3.5,4\n1,3,4.0,5,6\n")
    with pytest.raises(RatingsFormatError, match=r"ratings.csv, line 3: 5 fields, expected 4"):
        read_ratings(p, scale=(0.5, 5.0))


def test_zip_without_a_ratings_member(tmp_path):
    path = _zip(tmp_path / "ml-1m.zip", "ml-1m/movies.dat", "1::Toy Story::Animation\n")
    with pytest.raises(RatingsFormatError, match=r"ml-1m.zip: zip has no ratings member"):
        read_ratings(path)
