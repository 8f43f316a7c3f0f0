"""Readers for rating files: MovieLens ``u.data`` (also inside ``ml-100k.zip``) and RecBole ``.inter``.

Every reader returns a DataFrame with columns ``user, item, rating, timestamp`` holding the original
ids, and rejects bad rows with an error that names the file, the line and the value.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ["user", "item", "rating", "timestamp"]


class RatingsFormatError(ValueError):
    """A ratings file holds a row that cannot be used."""


def _bad(source: str, line: int, what: str, value) -> RatingsFormatError:
    return RatingsFormatError(f"{source}, line {line}: {what} {value!r}")


def validate(df: pd.DataFrame, source: str, first_line: int = 1,
             scale: tuple[float, float] | None = None) -> pd.DataFrame:
    """Coerce ``rating``/``timestamp`` to numbers and check the scale; fail on the first bad row.

    ``first_line`` is the file line number of ``df``'s first row (2 after a header).
    """
    if len(df) == 0:
        raise RatingsFormatError(f"{source}: no ratings in file")
    for col in ("rating", "timestamp"):
        if col not in df:
            continue
        raw = df[col]
        num = pd.to_numeric(raw, errors="coerce")
        bad = num.isna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            what = f"missing {col} (too few fields?)" if pd.isna(raw.iloc[row]) else f"non-numeric {col}"
            raise _bad(source, first_line + row, what, raw.iloc[row])
        df[col] = num
    if scale is not None:
        lo, hi = scale
        r = df["rating"].to_numpy()
        out = (r < lo) | (r > hi)
        if out.any():
            row = int(np.flatnonzero(out)[0])
            raise _bad(source, first_line + row, f"rating outside the scale [{lo}, {hi}]:", r[row])
    for col in ("user", "item"):
        miss = df[col].isna().to_numpy()
        if miss.any():
            raise _bad(source, first_line + int(np.flatnonzero(miss)[0]), f"missing {col}", None)
    df["rating"] = df["rating"].astype(np.float32)
    return df.reset_index(drop=True)


def _read_table(handle, source: str, sep: str, header: bool, names: list[str]) -> pd.DataFrame:
    try:
        return pd.read_csv(handle, sep=sep, header=0 if header else None, names=names,
                           index_col=False, engine="c")
    except pd.errors.ParserError as err:
        raise RatingsFormatError(f"{source}: {err}") from None
    except pd.errors.EmptyDataError:
        raise RatingsFormatError(f"{source}: file is empty") from None


# MovieLens layouts by file name: separator, header, and the columns in file order
LAYOUTS = {
    "u.data": ("\t", False),          # ml-100k: user item rating timestamp
    "ratings.dat": ("::", False),      # ml-1m, ml-10m: UserID::MovieID::Rating::Timestamp
    "ratings.csv": (",", True),        # ml-20m/25m/32m/latest: userId,movieId,rating,timestamp
}


def _open_member(path: Path) -> tuple[bytes, str, str]:
    """The bytes of the ratings file inside a MovieLens zip, its display name and its layout key."""
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            base = name.rsplit("/", 1)[-1]
            if base in LAYOUTS:
                return zf.read(name), f"{path}:{name}", base
    raise RatingsFormatError(f"{path}: zip has no ratings member (one of {sorted(LAYOUTS)})")


def read_movielens(path: str | Path, scale: tuple[float, float] | None = (1, 5)) -> pd.DataFrame:
    """A MovieLens ratings file (``u.data``, ``ratings.dat``, ``ratings.csv``) or the zip holding it."""
    path = Path(path)
    if path.suffix == ".zip":
        data, source, layout = _open_member(path)
    else:
        layout = path.name if path.name in LAYOUTS else "u.data"  # a renamed u.data-style file
        data, source = path.read_bytes(), str(path)
    sep, header = LAYOUTS[layout]
    if sep == "::":  # the C parser takes one-character separators: swap in a tab (fast, vectorized)
        data, sep = data.replace(b"::", b"\t"), "\t"
    df = _read_table(io.BytesIO(data), source, sep, header, COLUMNS)
    return validate(df, source, 2 if header else 1, scale)


def read_inter(path: str | Path, scale: tuple[float, float] | None = (1, 5)) -> pd.DataFrame:
    """RecBole atomic ``.inter`` file: tab-separated, header of ``name:type`` fields."""
    path = Path(path)
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
    names = [h.split(":")[0] for h in header]
    rename = {"user_id": "user", "item_id": "item", "rating": "rating", "timestamp": "timestamp"}
    missing = [k for k in ("user_id", "item_id", "rating") if k not in names]
    if missing:
        raise RatingsFormatError(f"{path}, line 1: header {header} lacks fields {missing}")
    df = _read_table(path, str(path), "\t", True, names)
    df = df[[c for c in rename if c in df]].rename(columns=rename)
    return validate(df, str(path), 2, scale)


def read_ratings(path: str | Path, scale: tuple[float, float] | None = (1, 5)) -> pd.DataFrame:
    """Pick the reader by file name: ``*.inter`` is RecBole; otherwise a MovieLens file or zip."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"ratings file {path} does not exist")
    if path.suffix == ".inter":
        return read_inter(path, scale)
    return read_movielens(path, scale)
