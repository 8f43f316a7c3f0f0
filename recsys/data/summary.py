"""What a run would train on, before it trains: ``python -m recsys data data=... [data.*=...]``.

:func:`summarize` gives rows read, what the duplicates policy and each filter dropped, users/items/ratings, density,
the rating histogram, ratings per user and per item (min/median/max) and, for the chosen split, its sizes and the
users and items of validation and test that have no training rating (cold). Every run writes the same numbers to
``run_info.json`` (``data.summary``); :func:`render` prints them.
"""

from __future__ import annotations

import numpy as np

MAX_BARS = 24  # distinct rating values listed one by one; more (a continuous scale) are binned


def _spread(counts: np.ndarray) -> dict[str, float]:
    counts = counts[counts > 0]
    return {"min": int(counts.min()), "median": float(np.median(counts)), "max": int(counts.max())}


def histogram(ratings: np.ndarray, step: float, lo: float, unrated_value: float | None) -> list[list]:
    """``[[value, count], ...]``: one bar per rating value on the ``step`` grid from ``lo`` (one pass, no sort),
    ``MAX_BARS`` equal bins ``[[[a, b], count], ...]`` where the values are off the grid or too many; the unrated
    value, where set, as its own bar ``["unrated", count]``."""
    bars: list[list] = []
    if unrated_value is not None:
        unrated = ratings == unrated_value
        if unrated.any():
            bars.append(["unrated", int(unrated.sum())])
            ratings = ratings[~unrated]
    if len(ratings) == 0:
        return bars
    code = np.rint((ratings - np.float32(lo)) / np.float32(step))  # float32 like the ratings: no 8-byte copy
    if code.min() >= 0 and code.max() < MAX_BARS and \
            np.abs(np.float32(lo) + code * np.float32(step) - ratings).max() <= 1e-4 * max(1.0, abs(step)):
        counts = np.bincount(code.astype(np.int64))
        return bars + [[round(lo + k * step, 6), int(c)] for k, c in enumerate(counts) if c]
    counts, edges = np.histogram(ratings, bins=MAX_BARS)
    return bars + [[[float(a), float(b)], int(c)] for a, b, c in zip(edges[:-1], edges[1:], counts) if c]


def summarize(data, split_index: tuple[np.ndarray, ...], rating_step: float, rating_min: float,
              unrated_value: float | None = None) -> dict:
    """The summary of id-mapped, filtered :class:`~recsys.data.datasets.Ratings` and its split (``split_index``:
    the train, validation and test positions); see the module docstring. One pass over the arrays, no copies."""
    users, items, ratings = data.users, data.items, data.ratings
    n_users, n_items = len(data.user_ids), len(data.item_ids)
    out = {
        "rows_read": data.rows_read,
        "duplicates_dropped": data.duplicates_dropped,
        "dropped_by": {s["step"]: s["before"]["ratings"] - s["after"]["ratings"] for s in data.filters},
        "ratings": len(ratings), "users": n_users, "items": n_items,
        "density": len(ratings) / max(n_users * n_items, 1),
        "histogram": histogram(ratings, rating_step, rating_min, unrated_value),
        "per_user": _spread(np.bincount(users, minlength=n_users)),
        "per_item": _spread(np.bincount(items, minlength=n_items)),
        "split": {k: len(ix) for k, ix in zip(("train", "val", "test"), split_index)},
    }
    train = split_index[0]
    trained_u = np.bincount(users[train], minlength=n_users) > 0
    trained_i = np.bincount(items[train], minlength=n_items) > 0
    for name, ix in zip(("val", "test"), split_index[1:]):
        u, i = users[ix], items[ix]
        cold_u, cold_i = ~trained_u[u], ~trained_i[i]
        out[f"cold_in_{name}"] = {"users": int(np.count_nonzero(np.bincount(u[cold_u], minlength=1))),
                                  "items": int(np.count_nonzero(np.bincount(i[cold_i], minlength=1))),
                                  "ratings": int((cold_u | cold_i).sum())}
    return out


def _bar(count: int, most: int, width: int = 40) -> str:
    return "#" * max(1 if count else 0, round(width * count / most))


def render(summary: dict, describe: dict | None = None) -> str:
    """The summary as the text ``python -m recsys data`` prints."""
    s = summary
    lines = []
    if describe:
        lines.append(f"source     {describe['source']}  (encoding {describe.get('encoding') or 'n/a'})")
    lines.append(f"rows read  {s['rows_read']:,}")
    lines.append(f"duplicates {s['duplicates_dropped']:,} dropped (data.duplicates)")
    for step in (describe or {}).get("filters", []):
        lines.append(f"filter     {step['setting']}: {step['before']['ratings']:,} -> {step['after']['ratings']:,} "
                     f"ratings, {step['before']['users']:,} -> {step['after']['users']:,} users, "
                     f"{step['before']['items']:,} -> {step['after']['items']:,} items"
                     + (f" ({step['unrated']:,} unrated, kept {step['kept']})" if "kept" in step else ""))
    lines.append(f"kept       {s['ratings']:,} ratings of {s['users']:,} users and {s['items']:,} items, "
                 f"density {s['density']:.3%}")
    pu, pi = s["per_user"], s["per_item"]
    lines.append(f"per user   min {pu['min']:,}  median {pu['median']:g}  max {pu['max']:,}")
    lines.append(f"per item   min {pi['min']:,}  median {pi['median']:g}  max {pi['max']:,}")
    lines.append("ratings")
    most = max((c for _, c in s["histogram"]), default=1)
    for value, count in s["histogram"]:
        label = f"{value[0]:g}-{value[1]:g}" if isinstance(value, list) else (
            value if isinstance(value, str) else f"{value:g}")
        lines.append(f"  {label:>11} {count:>12,}  {_bar(count, most)}")
    sp = s["split"]
    lines.append(f"split      train {sp['train']:,}  val {sp['val']:,}  test {sp['test']:,}")
    for name in ("val", "test"):
        c = s[f"cold_in_{name}"]
        lines.append(f"cold {name:<5} {c['users']:,} users and {c['items']:,} items with no training rating "
                     f"({c['ratings']:,} of its ratings)")
    return "\n".join(lines)
