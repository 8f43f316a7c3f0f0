"""The data sets recsys knows by name, and :func:`load_ratings`, the one way to read them."""

from __future__ import annotations

import os

import pandas as pd

from recsys.data.readers import read_ratings
from recsys.data.sources import DEFAULT_ROOT, ROUTES, fetch


def source_path(name: str, root: str | os.PathLike = DEFAULT_ROOT,
                path: str | os.PathLike | None = None):
    """The local file holding data set ``name``: ``path`` if given, else the verified cached download."""
    if path is not None:
        return path
    if name not in ROUTES:
        raise KeyError(f"unknown data set {name!r}; known: {sorted(ROUTES)} (or pass path=...)")
    return fetch(name, root)


def load_ratings(name: str = "ml-100k", root: str | os.PathLike = DEFAULT_ROOT,
                 path: str | os.PathLike | None = None,
                 scale: tuple[float, float] | None = (1, 5)) -> pd.DataFrame:
    """Ratings of data set ``name`` as a DataFrame ``[user, item, rating, timestamp]`` (original ids).

    Downloads and verifies the data set into ``root`` on first use. ``path`` reads a local file
    instead (``u.data``, ``ml-100k.zip`` or a RecBole ``.inter`` file). Ratings outside ``scale`` are
    an error naming the file and line.
    """
    return read_ratings(source_path(name, root, path), scale)
