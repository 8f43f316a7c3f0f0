"""Write a rating file from the wild: shaped and dressed like the Book-Crossing dump, for trying the data layer
(encodings, quoting, filters, ``recsys data``) and the long-tail benchmarks on a file nobody hand-cleaned.

Semicolon-separated, every field in double quotes, the header ``"User-ID";"ISBN";"Book-Rating"``, CRLF line ends,
Latin-1 bytes in some ISBN-like item ids (``º``, ``ö``; some ids hold a quoted ``;``), a 0-10 scale where 0 means
"interacted, not rated" (about 62% of the rows, as in the dump), blank lines at the end; 105k users × 340k items
with power-law degrees (recsys.data.synthetic's generator underneath).

    python benchmarks/wild_file.py /tmp/books.csv                       # 1.15M rows, the dump's shape
    python benchmarks/wild_file.py /tmp/small.csv --num-ratings 50000 --num-users 4000 --num-items 9000
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from recsys.data.synthetic import generate_ratings


def write(path: Path, num_ratings: int = 1_150_000, num_users: int = 105_000, num_items: int = 340_000,
          unrated: float = 0.62, seed: int = 0) -> Path:
    df = generate_ratings(num_ratings, num_users, num_items, seed=seed)
    rng = np.random.default_rng(seed + 1)
    ratings = df["rating"].to_numpy().astype(np.int64) * 2 - rng.integers(0, 2, len(df))  # 1..5 -> 1..10
    ratings[rng.random(len(df)) < unrated] = 0
    digits = rng.integers(0, 10**9, num_items)
    isbn = np.array([f"{d:09d}X" for d in digits], dtype=object)
    odd = rng.random(num_items)
    isbn[odd < 0.02] = [f"{d:06d}º{d % 997:03d}" for d in digits[odd < 0.02]]  # Latin-1 0xba inside an id
    isbn[(odd >= 0.02) & (odd < 0.025)] = [f"Motörhead; {d}" for d in digits[(odd >= 0.02) & (odd < 0.025)]]
    users = 276_725 + df["user"].to_numpy()
    out = df.assign(user=users, item=isbn[df["item"].to_numpy()], rating=ratings)[["user", "item", "rating"]]
    out.columns = ["User-ID", "ISBN", "Book-Rating"]
    out.to_csv(path, sep=";", quoting=csv.QUOTE_ALL, lineterminator="\r\n", encoding="latin-1", index=False)
    with open(path, "ab") as f:
        f.write(b"\r\n\r\n")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path", type=Path)
    p.add_argument("--num-ratings", type=int, default=1_150_000)
    p.add_argument("--num-users", type=int, default=105_000)
    p.add_argument("--num-items", type=int, default=340_000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    write(a.path, a.num_ratings, a.num_users, a.num_items, seed=a.seed)
    print(f"wrote {a.path} ({a.path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
