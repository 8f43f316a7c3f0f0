"""data.filter.* and data.unrated_value (recsys.data.filters): applied after reading, before the split, in the
documented order; each step recorded; part of the parse-cache key; the scale checked on what remains."""

import json

import numpy as np
import pytest

from recsys.data import RatingsDataModule
from recsys.data.datasets import prepare
from recsys.data.filters import EmptyAfterFilter, Filters
from recsys.data.readers import RatingsFormatError

#: Book-Crossing-like: ';', every field quoted, hyphenated header, CRLF, Latin-1 item ids, 0 = "seen, not rated"
HEADER = '"User-ID";"ISBN";"Book-Rating"\r\n'
ROLES = {"user": "User-ID", "item": "ISBN", "rating": "Book-Rating"}


def book_crossing(path, rows, encoding="latin-1"):
    path.write_bytes((HEADER + "".join(f'"{u}";"{i}";"{r}"\r\n' for u, i, r in rows)).encode(encoding))
    return path


def _rows(n_users=30, n_items=12, seed=0):
    """Every user rates most items on 1..10 or leaves a 0; item ids carry Latin-1 letters and a quoted ';'."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for i in range(n_items):
            if rng.random() < 0.7:
                rows.append((f"27{u:04d}", f"Motörhead; vol {i}" if i % 3 == 0 else f"0{i}5594º003",
                             int(rng.integers(0, 11))))
    return rows


def _read(path, **kw):
    return prepare(path=path, columns=ROLES, encoding="latin-1", **kw)


def test_unrated_zeros_are_dropped_for_explicit_feedback_and_kept_as_interactions_for_implicit(tmp_path):
    rows = _rows()
    zeros = sum(r == 0 for *_, r in rows)
    assert zeros > 10
    path = book_crossing(tmp_path / "books.csv", rows)
    common = dict(path=str(path), columns=ROLES, encoding="latin-1", rating_min=1, rating_max=10, unrated_value=0)
    explicit = RatingsDataModule(**common)
    explicit.setup()
    sizes = sum(len(s[0]) for s in (explicit.train_set, explicit.val_set, explicit.test_set))
    assert sizes == len(rows) - zeros
    assert all((s[2] >= 1).all() for s in (explicit.train_set, explicit.val_set, explicit.test_set))
    (step,) = explicit.describe()["filters"]
    assert step["step"] == "unrated" and step["before"]["ratings"] == len(rows) and \
        step["after"]["ratings"] == len(rows) - zeros

    implicit = RatingsDataModule(**common, feedback="implicit", positive_min=8)
    implicit.setup()
    train = implicit.train_set
    positives = implicit.fit_set
    want = int(((train[2] >= 8) | (train[2] == 0)).sum())  # an unrated interaction is a positive
    assert len(positives[0]) == want and (positives[2] == 0).sum() == (train[2] == 0).sum() > 0
    assert sum(len(s[0]) for s in (implicit.train_set, implicit.val_set, implicit.test_set)) == len(rows)
    # without data.unrated_value the zeros are ratings outside the declared scale: an error naming the line
    with pytest.raises(RatingsFormatError, match=r"books.csv, line \d+: rating outside the scale \[1, 10\]: 0 .*"
                                                 r"data.unrated_value"):
        _read(path, scale=(1, 10))


def test_non_ascii_ids_survive_filters_and_cache_exactly(tmp_path):
    path = book_crossing(tmp_path / "books.csv", _rows())
    for _ in range(2):  # parsed, then from the cache
        data = _read(path, scale=(1, 10), unrated_value=0)
        assert "Motörhead; vol 0" in data.item_ids.tolist() and "025594º003" in data.item_ids.tolist()


def test_rating_range_drops_and_counts_then_the_scale_applies_to_what_remains(tmp_path):
    rows = [("u1", "a", 1), ("u1", "b", 5), ("u2", "a", 9), ("u2", "c", 3), ("u3", "b", 7)]
    path = book_crossing(tmp_path / "r.csv", rows)
    data = _read(path, scale=(2, 8), filters={"ratings": [3, 7]})
    assert sorted(data.ratings.tolist()) == [3, 5, 7]
    (step,) = data.filters
    assert step["before"] == {"ratings": 5, "users": 3, "items": 3} and step["after"]["ratings"] == 3
    assert data.user_ids.tolist() == ["u1", "u2", "u3"] and data.item_ids.tolist() == ["b", "c"]  # a: no rating left
    # a range wider than the scale leaves an out-of-scale rating: an error naming its line (header is line 1)
    with pytest.raises(RatingsFormatError, match=r"r.csv, line 4: rating outside the scale \[2, 8\]: 9"):
        _read(path, scale=(2, 8), filters={"ratings": [2, 10]})


def test_ids_left_without_a_rating_leave_the_id_maps(tmp_path):
    rows = [("u1", "a", 4), ("u2", "b", 9), ("u2", "c", 4), ("u3", "c", 5)]
    data = _read(book_crossing(tmp_path / "r.csv", rows), scale=(1, 10), filters={"ratings": [1, 5]})
    assert data.user_ids.tolist() == ["u1", "u2", "u3"] and data.item_ids.tolist() == ["a", "c"]
    assert data.items.max() == 1 and data.frame()["item"].tolist() == ["a", "c", "c"]


def test_k_core_repeats_until_stable(tmp_path):
    """Pass 1 drops i0 (one rating), which leaves u0 with one (pass 2), which leaves i1 with one (pass 3): a single
    pass would keep u0 and i1."""
    core = [(u, i, 5) for u in ("c1", "c2", "c3") for i in ("A", "B", "C")]
    rows = [("u0", "i0", 5), ("u0", "i1", 5), ("c1", "i1", 5), *core]
    data = _read(book_crossing(tmp_path / "r.csv", rows), scale=(1, 10),
                 filters={"min_user_ratings": 2, "min_item_ratings": 2})
    assert sorted(map(tuple, data.frame()[["user", "item"]].to_numpy().tolist())) == sorted((u, i) for u, i, _ in core)
    (step,) = data.filters
    assert step["step"] == "k_core" and step["passes"] == 3 and "data.filter.min_user_ratings=2" in step["setting"]
    assert step["before"] == {"ratings": 12, "users": 4, "items": 5} and \
        step["after"] == {"ratings": 9, "users": 3, "items": 3}
    assert (np.bincount(data.users) >= 2).all() and (np.bincount(data.items) >= 2).all()


def test_filters_run_in_the_documented_order_and_each_is_recorded(tmp_path):
    rows = [(f"u{u}", f"i{i}", 1 + (u + i) % 10) for u in range(6) for i in range(8)]
    rows += [("bot", f"i{i}", 5) for i in range(8)] * 1 + [("bot", f"x{i}", 5) for i in range(20)]
    path = tmp_path / "t.csv"
    stamps = 1_000_000_000 + np.arange(len(rows)) * 86_400  # one rating a day from 2001-09-09
    path.write_text("user,item,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for (u, i, r), t in
                                                            zip(rows, stamps)))
    data = prepare(path=path, scale=(1, 10), filters={
        "ratings": [2, 10], "min_user_ratings": 3, "min_item_ratings": 2, "max_user_ratings": 10,
        "since": "2001-09-20", "until": int(stamps[40])}, unrated_value=None)
    assert [s["step"] for s in data.filters] == ["ratings", "k_core", "max_user_ratings", "since", "until"]
    for a, b in zip(data.filters[:-1], data.filters[1:]):
        assert a["after"] == b["before"]
    assert "bot" not in data.user_ids.tolist()
    kept = data.timestamps
    assert kept.min() >= 1_000_944_000 and kept.max() <= stamps[40]  # 2001-09-20T00:00Z, and until inclusive
    assert data.rows_read == len(rows)
    book_crossing(tmp_path / "b.csv", rows[:5])
    with pytest.raises(ValueError, match=r"data.filter.since keeps ratings by time, and the file has no timestamp"):
        _read(tmp_path / "b.csv", scale=(1, 10), filters={"since": 0})


def test_a_filter_that_leaves_nothing_is_named(tmp_path):
    path = book_crossing(tmp_path / "r.csv", [("u1", "a", 4), ("u2", "b", 6)])
    with pytest.raises(EmptyAfterFilter, match=r"r.csv: no ratings left after data.filter.min_user_ratings=2 .*"
                                               r"before it: 2 ratings of 2 users and 2 items"):
        _read(path, scale=(1, 10), filters={"min_user_ratings": 2})


@pytest.mark.parametrize("block,message", [
    ({"ratings": [5, 1]}, r"data.filter.ratings=\[5, 1\]: \[lo, hi\]"),
    ({"min_user_ratings": 0}, "data.filter.min_user_ratings=0: a whole number >= 1"),
    ({"since": "yesterday-ish"}, "data.filter.since='yesterday-ish': Unix seconds or a date"),
    ({"since": 10, "until": 5}, "data.filter.since=10.0 is after data.filter.until=5.0"),
    ({"min_users": 3}, r"data.filter has unknown settings \['min_users'\]"),
])
def test_bad_filter_settings_are_named(block, message):
    with pytest.raises(ValueError, match=message):
        Filters.of(block)


def test_the_parse_cache_is_keyed_by_the_filters_and_the_unrated_value(tmp_path):
    path = book_crossing(tmp_path / "books.csv", _rows())
    folder = tmp_path / "recsys-data" / "files"
    a = _read(path, scale=(1, 10), unrated_value=0)
    b = _read(path, scale=(1, 10), unrated_value=0, filters={"min_user_ratings": 5})
    c = _read(path, scale=(1, 10), unrated_value=0, keep_unrated=True)
    assert len(list(folder.glob("parsed-*.npz"))) == 3
    assert len(b) < len(a) < len(c)
    again = _read(path, scale=(1, 10), unrated_value=0, filters={"min_user_ratings": 5})  # from its cache
    assert len(list(folder.glob("parsed-*.npz"))) == 3
    assert again.filters == b.filters and again.rows_read == b.rows_read == len(_rows())
    assert json.dumps(again.filters)  # plain JSON for run_info.json
