"""Rating files from the wild: encodings, quoting and line ends, read by one set of rules (recsys.data.readers)."""

import pytest

from recsys.data.readers import RatingsFormatError, read_ratings

#: Book-Crossing-like: semicolons, every field quoted, hyphenated header names, CRLF, Latin-1 bytes in item ids
BOOKS = ('"User-ID";"ISBN";"Book-Rating"\r\n"276725";"034545104X";"5"\r\n"276726";"015594\xba003";"7"\r\n'
         '"276727";"Mot\xf6rhead; live";"9"\r\n')
ROLES = {"user": "User-ID", "item": "ISBN", "rating": "Book-Rating"}


def _write(tmp_path, text: str, encoding: str, name: str = "books.csv"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def test_a_file_that_does_not_decode_names_the_line_the_byte_and_the_setting(tmp_path):
    path = _write(tmp_path, BOOKS, "latin-1")
    with pytest.raises(RatingsFormatError, match=rf"{path.name}, line 3: byte 0xba \(column 17\) is not utf-8 text; "
                                                 r"set data.encoding=latin-1 or data.encoding=cp1252"):
        read_ratings(path, (0, 10), columns=ROLES)


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252"])
def test_declared_encodings_keep_non_ascii_ids_exactly(tmp_path, encoding):
    path = _write(tmp_path, BOOKS, "latin-1")
    df = read_ratings(path, (0, 10), columns=ROLES, encoding=encoding)
    assert df["item"].tolist() == ["034545104X", "015594º003", "Motörhead; live"]  # a quoted separator stays
    assert df["user"].tolist() == [276725, 276726, 276727] and df["rating"].tolist() == [5.0, 7.0, 9.0]
    assert df.attrs["encoding"] in ("iso8859-1", "cp1252")  # what it read with is recorded


def test_auto_detects_an_encoding_that_decodes_the_file_and_records_it(tmp_path):
    """Detection guesses from the bytes (a three-line file is ambiguous between Latin alphabets): whatever it
    picks decodes every line, is recorded, and reads 'ö' (0xf6 in each candidate) exactly."""
    path = _write(tmp_path, BOOKS * 1, "latin-1")
    df = read_ratings(path, (0, 10), columns=ROLES, encoding="auto")
    assert len(df) == 3 and df["item"][2] == "Motörhead; live" and df.attrs["encoding"] not in (None, "utf-8")


def test_bom_cr_line_ends_quoted_numbers_trailing_separator_and_blank_lines(tmp_path):
    text = '\ufeffuser,item,rating,\r"1","a,b","4",\r"2","c","3.5",\r\r\r'
    df = read_ratings(_write(tmp_path, text, "utf-8"), (1, 5))
    assert df["user"].tolist() == [1, 2] and df["item"].tolist() == ["a,b", "c"] and df["rating"].tolist() == [4, 3.5]


def test_both_parsers_share_the_quoting_rules_so_errors_name_the_line(tmp_path):
    """A quoted number out of scale: the fast reader and the line-finding one agree it is the number 0."""
    text = '"u";"i";"r"\n"1";"x";"5"\n"2";"y";"0"\n'
    with pytest.raises(RatingsFormatError, match=r"line 3: rating outside the scale \[1(\.0)?, 10(\.0)?\]: .*0"):
        read_ratings(_write(tmp_path, text, "utf-8"), (1, 10), columns={"user": "u", "item": "i", "rating": "r"})
    bad = '"u";"i";"r"\n"1";"x";"5"\n"2";"y";"five"\n'
    with pytest.raises(RatingsFormatError, match=r"line 3: non-numeric rating 'five'"):
        read_ratings(_write(tmp_path, bad, "utf-8", "bad.csv"), (1, 10), columns={"user": "u", "item": "i",
                                                                                 "rating": "r"})


def test_quote_none_keeps_quote_characters_in_ids_and_unknown_encodings_are_named(tmp_path):
    path = _write(tmp_path, 'user\titem\trating\n1\t"x\t4\n', "utf-8", "q.tsv")
    assert read_ratings(path, (1, 5), quote="none")["item"].tolist() == ['"x']
    with pytest.raises(ValueError, match="data.encoding='klingon' is not a text encoding"):
        read_ratings(path, (1, 5), encoding="klingon")


def test_header_names_are_matched_without_case_or_separators(tmp_path):
    """Book-Crossing's header needs no data.columns: User-ID is user_id, ISBN an item, the one *-Rating the rating."""
    path = _write(tmp_path, BOOKS, "latin-1")
    df = read_ratings(path, (0, 10), encoding="latin-1")
    assert df["user"].tolist() == [276725, 276726, 276727] and df["rating"].tolist() == [5.0, 7.0, 9.0]
    two = '"u";"i";"Book-Rating";"Old-Rating"\n"1";"a";"5";"4"\n'
    with pytest.raises(RatingsFormatError, match=r"no rating column among .* data.columns.rating=<column>"):
        read_ratings(_write(tmp_path, two, "utf-8", "two.csv"), (0, 10), columns={"user": "u", "item": "i"})


def test_timestamps_may_be_iso_dates_and_are_read_as_unix_seconds(tmp_path):
    text = "user,item,rating,date\n1,a,4,2013-06-11\n2,b,5,2014-01-02T10:00:00Z\n3,c,3,2015-05-05 10:00:00+02:00\n"
    df = read_ratings(_write(tmp_path, text, "utf-8"), (1, 5))
    assert df["timestamp"].tolist() == [1370908800, 1388656800, 1430812800]
    bad = "user,item,rating,date\n1,a,4,2013-06-11\n2,b,5,yesterday\n"
    with pytest.raises(RatingsFormatError, match=r"line 3: timestamp that is neither a number \(Unix seconds\) nor "
                                                 r"an ISO 8601 date 'yesterday'"):
        read_ratings(_write(tmp_path, bad, "utf-8", "bad.csv"), (1, 5))
