"""Rating data: sources (download, checksum, cache), readers, splits and the LightningDataModule."""

from recsys.data.datamodule import IdMap, RatingsDataModule
from recsys.data.datasets import load_ratings, load_titles
from recsys.data.splits import split_ratings

__all__ = ["IdMap", "RatingsDataModule", "load_ratings", "load_titles", "split_ratings"]
