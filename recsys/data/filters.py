"""What a run keeps of the ratings it read: ``data.filter.*`` and ``data.unrated_value``.

Applied after reading (and after the duplicates policy) and before the split, in this order, each step only where
its setting is given:

1. ``data.filter.ratings=[lo, hi]``: keep ratings in the inclusive range; the rest are dropped and counted (not
   errors). Rows holding ``data.unrated_value`` are not ratings and are left to step 2.
2. ``data.unrated_value=v``: rows holding ``v`` mean "interacted, not rated" (Book-Crossing's 0). Explicit feedback
   (``data.feedback=explicit``, the rating models) drops them; implicit feedback (the ranking models) keeps them as
   interactions: they are training positives whatever ``data.positive_min`` says, and never relevant in the test.
3. ``data.filter.min_user_ratings`` / ``min_item_ratings``: a k-core, repeated until stable (each pass drops the
   users and items below their minimum; dropping them can push others below theirs).
4. ``data.filter.max_user_ratings``: drop every rating of a user with more (bots, shared accounts).
5. ``data.filter.since`` / ``until``: keep ratings with ``since <= timestamp <= until`` (Unix seconds, or a date
   such as ``2004-01-01`` read as UTC midnight); the file needs a timestamp column.

The declared scale (``data.rating_min``/``rating_max``; :func:`recsys.data.readers.check_scale`) then applies to
what remains: a rating outside it is an error naming the file and line. Each step records ratings, users and
items before and after it (``run_info.json`` ``data.filters``); a step that leaves nothing is an error naming its
setting. The filters are part of the parse cache key and, as every ``data.*`` key, of the resume guard.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping

import numpy as np
import pandas as pd


class EmptyAfterFilter(ValueError):
    """A filter left no ratings."""


def _count(value, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"data.filter.{key}={value!r}: a whole number >= 1, or null")
    return int(value)


def _time(value, key: str) -> float | None:
    """Unix seconds of ``value``: a number as given, a date (or date and time) as UTC."""
    if value is None:
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    try:
        stamp = pd.Timestamp(str(value))
    except ValueError:
        raise ValueError(f"data.filter.{key}={value!r}: Unix seconds or a date such as 2004-01-01") from None
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp
    return float(stamp.timestamp())


@dataclasses.dataclass(frozen=True)
class Filters:
    """The ``data.filter`` block; see the module docstring. Every setting null: keep everything."""

    ratings: tuple[float, float] | None = None
    min_user_ratings: int | None = None
    min_item_ratings: int | None = None
    max_user_ratings: int | None = None
    since: float | None = None
    until: float | None = None

    def __post_init__(self) -> None:
        if self.ratings is not None:
            pair = list(self.ratings)
            if len(pair) != 2 or not all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in pair) \
                    or pair[0] > pair[1]:
                raise ValueError(f"data.filter.ratings={pair}: [lo, hi], two numbers with lo <= hi (inclusive)")
            object.__setattr__(self, "ratings", (float(pair[0]), float(pair[1])))
        for key in ("min_user_ratings", "min_item_ratings", "max_user_ratings"):
            object.__setattr__(self, key, _count(getattr(self, key), key))
        for key in ("since", "until"):
            object.__setattr__(self, key, _time(getattr(self, key), key))
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ValueError(f"data.filter.since={self.since} is after data.filter.until={self.until}")
        if self.min_user_ratings and self.max_user_ratings and self.min_user_ratings > self.max_user_ratings:
            raise ValueError(f"data.filter.min_user_ratings={self.min_user_ratings} > data.filter.max_user_ratings="
                             f"{self.max_user_ratings}: no user could stay")

    @classmethod
    def of(cls, block: Mapping | Filters | None) -> Filters:
        """From the ``data.filter`` mapping (Hydra's DictConfig or a dict); unknown keys are errors."""
        if isinstance(block, Filters):
            return block
        block = dict(block or {})
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(block) - set(known))
        if unknown:
            raise ValueError(f"data.filter has unknown settings {unknown}; known: {known}")
        return cls(**{k: (list(v) if k == "ratings" and v is not None else v) for k, v in block.items()})

    def settings(self) -> dict:
        """The block as plain JSON values (the parse-cache key, ``run_info.json``)."""
        out = dataclasses.asdict(self)
        out["ratings"] = list(self.ratings) if self.ratings is not None else None
        return out


def _sizes(users: np.ndarray, items: np.ndarray, rows: np.ndarray | None) -> dict[str, int]:
    u, i = (users, items) if rows is None else (users[rows], items[rows])
    return {"ratings": len(u), "users": int(np.count_nonzero(np.bincount(u))) if len(u) else 0,
            "items": int(np.count_nonzero(np.bincount(i))) if len(i) else 0}


class _Steps:
    """The rows kept so far (positions in the arrays read; None: all) and the record of each step."""

    def __init__(self, users: np.ndarray, items: np.ndarray, source: str):
        self.users, self.items, self.source = users, items, source
        self.rows: np.ndarray | None = None
        self.size = _sizes(users, items, None)
        self.record: list[dict] = []

    def take(self, column: np.ndarray) -> np.ndarray:
        return column if self.rows is None else column[self.rows]

    def keep(self, mask: np.ndarray, step: str, setting: str, **extra) -> None:
        """Keep the rows where ``mask`` (over the rows kept so far) holds; record and check the step."""
        before = self.size
        if not mask.all():
            self.rows = np.flatnonzero(mask) if self.rows is None else self.rows[mask]
            self.size = _sizes(self.users, self.items, self.rows)
        self.record.append({"step": step, "setting": setting, "before": before, "after": self.size, **extra})
        if self.size["ratings"] == 0:
            raise EmptyAfterFilter(
                f"{self.source}: no ratings left after {setting} (before it: {before['ratings']:,} ratings of "
                f"{before['users']:,} users and {before['items']:,} items); loosen or remove it")


def apply(users: np.ndarray, items: np.ndarray, ratings: np.ndarray, timestamps: np.ndarray | None,
          filters: Filters, unrated_value: float | None, keep_unrated: bool, source: str
          ) -> tuple[np.ndarray | None, list[dict]]:
    """The rows that pass every step (None: all) and each step's record; see the module docstring."""
    steps = _Steps(users, items, source)
    unrated = None if unrated_value is None else float(unrated_value)
    if filters.ratings is not None:
        lo, hi = filters.ratings
        r = steps.take(ratings)
        inside = (r >= lo) & (r <= hi)
        if unrated is not None:
            inside |= r == unrated
        steps.keep(inside, "ratings", f"data.filter.ratings=[{lo:g}, {hi:g}]")
    if unrated is not None:
        setting = f"data.unrated_value={unrated:g}"
        if keep_unrated:
            steps.keep(np.ones(steps.size["ratings"], dtype=bool), "unrated", setting,
                       unrated=int(np.count_nonzero(steps.take(ratings) == unrated)),
                       kept="as interactions (data.feedback=implicit)")
        else:
            steps.keep(steps.take(ratings) != unrated, "unrated", setting + " (dropped: data.feedback=explicit)")
    if filters.min_user_ratings or filters.min_item_ratings:
        _k_core(steps, filters)
    if filters.max_user_ratings:
        u = steps.take(users)
        steps.keep(np.bincount(u)[u] <= filters.max_user_ratings, "max_user_ratings",
                   f"data.filter.max_user_ratings={filters.max_user_ratings}")
    for key in ("since", "until"):
        bound = getattr(filters, key)
        if bound is None:
            continue
        if timestamps is None:
            raise ValueError(f"{source}: data.filter.{key} keeps ratings by time, and the file has no timestamp "
                             "column (name it with data.columns.timestamp=<column>)")
        t = steps.take(timestamps).astype(np.float64)
        when = pd.Timestamp(bound, unit="s").isoformat()
        steps.keep(t >= bound if key == "since" else t <= bound, key, f"data.filter.{key}={bound:.0f} ({when} UTC)")
    return steps.rows, steps.record


def _k_core(steps: _Steps, filters: Filters) -> None:
    """Drop users with fewer than ``min_user_ratings`` and items with fewer than ``min_item_ratings`` ratings, again
    and again until every user and item left has its minimum (a k-core)."""
    min_user, min_item = filters.min_user_ratings or 1, filters.min_item_ratings or 1
    before, kept, passes = steps.size, np.arange(steps.size["ratings"]), 0
    u_all, i_all = steps.take(steps.users), steps.take(steps.items)
    while len(kept):
        u, i = u_all[kept], i_all[kept]
        ok = (np.bincount(u)[u] >= min_user) & (np.bincount(i)[i] >= min_item)
        if ok.all():
            break
        kept, passes = kept[ok], passes + 1  # a pass that dropped something: counts fall, check again
    mask = np.zeros(before["ratings"], dtype=bool)
    mask[kept] = True
    setting = " ".join(f"data.filter.{k}={getattr(filters, k)}" for k in ("min_user_ratings", "min_item_ratings")
                       if getattr(filters, k) is not None)
    steps.keep(mask, "k_core", f"{setting} (k-core, stable after {passes} dropping passes)", passes=passes)
