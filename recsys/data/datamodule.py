"""LightningDataModule over in-memory rating tensors.

Batches are slices of a permuted index tensor — one gather per batch, never per-sample ``__getitem__``
plus collate. Under DDP every global batch is cut into ``world_size`` disjoint pieces, so each rank
takes ``batch_size / world_size`` ratings a step, all ranks take the same number of steps, and every
training rating is seen exactly once per epoch in total. Evaluation sets are cut into contiguous,
disjoint shards (no padding, no duplicates), so metrics synced across ranks count each rating once.
``batch_by=item|user`` batches whole items or users instead (:class:`GroupBatches`: I-AutoRec, SVD++).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from typing import Annotated

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from recsys import validation
from recsys.data.datasets import DUPLICATES, SPLIT_PARTS, IdMap, Source, prepare_split
from recsys.data.facts import DataFacts
from recsys.data.interactions import Interactions, Seen
from recsys.data.readers import FORMATS
from recsys.data.sources import fetch
from recsys.data.splits import STRATEGIES, check_ratios
from recsys.validation import AtLeast, Fraction, OneOf, Positive, Size

FEEDBACK = ("explicit", "implicit")  # data.feedback: train on ratings, or on positive interactions

# Batches are produced in the main process by slicing tensors; worker processes would only add IPC.
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
warnings.filterwarnings("ignore", message=r".*IterableDataset` has `__len__` defined.*")
warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")


class GroupBatches(IterableDataset):
    """Training batches of whole rows: every training rating of an item (``by="item"``) or of a user
    (``by="user"``) comes in the same batch — I-AutoRec encodes an item from all its ratings, SVD++ sums a
    user's history once per batch. Each epoch shuffles the rows (seeded by ``seed`` and the epoch) and cuts
    them into a fixed number of batches of ``rows_per_batch`` rows, about ``batch_size`` ratings each; under
    DDP each rank takes a contiguous share of each batch's rows (never part of a row).
    """

    def __init__(self, tensors: tuple[torch.Tensor, ...], batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, epoch_fn: Callable[[], int] | None = None, by: str = "item"):
        self.seed, self.rank, self.world_size, self.epoch_fn = seed, rank, world_size, epoch_fn
        self._epochs = 0
        keys = tensors[{"user": 0, "item": 1}[by]]
        order = torch.argsort(keys, stable=True)
        self.tensors = tuple(t[order] for t in tensors)  # sorted by row: each row's ratings contiguous
        counts = torch.bincount(keys.cpu())
        self.active = torch.nonzero(counts).squeeze(1)  # rows with training ratings
        self.counts = counts[self.active]
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        n_rows, n = len(self.active), len(keys)
        self.rows_per_batch = max(world_size, min(n_rows, -(-batch_size * n_rows // max(n, 1))))
        bounds = list(range(0, n_rows, self.rows_per_batch)) + [n_rows]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < world_size:  # too few rows for every rank: merge
            del bounds[-2]
        self.bounds = bounds

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        epoch = self.epoch_fn() if self.epoch_fn else self._epochs
        self._epochs += 1
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.active), generator=gen)
        lengths, starts = self.counts[perm], self.starts[perm]
        ends = torch.cumsum(lengths, 0)
        # the permuted rows' rating positions, one gather per epoch: batches are slices of it
        offsets = torch.arange(int(ends[-1])) - (ends - lengths).repeat_interleave(lengths)
        index = (starts.repeat_interleave(lengths) + offsets).to(self.tensors[0].device)
        shuffled = tuple(t.index_select(0, index) for t in self.tensors)
        ends = ends.tolist()
        for lo, hi in zip(self.bounds[:-1], self.bounds[1:]):
            mine = torch.arange(lo, hi).tensor_split(self.world_size)[self.rank]  # this rank's rows
            a = ends[int(mine[0]) - 1] if int(mine[0]) > 0 else 0
            b = ends[int(mine[-1])]
            yield tuple(t[a:b] for t in shuffled)


class RatingBatches(IterableDataset):
    """Yields ``(users, items, ratings)`` batches by slicing; see the module docstring for DDP.

    ``batch_size`` is the global batch when shuffling (cut into ``world_size`` pieces) and the
    per-rank batch when evaluating. ``negatives(users, generator)`` (training only) draws each rating's sampled
    negative items once per epoch, with the epoch's generator after the shuffle: batches are then
    ``(users, items, ratings, negatives)``, and a rank's slice of them is the slice an uninterrupted
    single-process run would draw (keyed by the seed and the epoch; ranks draw disjoint work).
    """

    def __init__(self, tensors: tuple[torch.Tensor, ...], batch_size: int, shuffle: bool,
                 seed: int = 0, rank: int = 0, world_size: int = 1,
                 epoch_fn: Callable[[], int] | None = None,
                 negatives: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None):
        self.tensors, self.batch_size, self.shuffle = tensors, batch_size, shuffle
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch_fn = epoch_fn
        self.negatives = negatives
        self._epochs = 0

    def _bounds(self, n: int, step: int) -> list[int]:
        bounds = list(range(0, n, step)) + [n]
        # a last piece too small to give every rank a rating is merged into the one before
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < self.world_size:
            del bounds[-2]
        return bounds

    def __len__(self) -> int:
        n = len(self.tensors[0])
        if self.shuffle:
            return len(self._bounds(n, self.batch_size)) - 1
        shard = n * (self.rank + 1) // self.world_size - n * self.rank // self.world_size
        return -(-shard // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        n = len(self.tensors[0])
        if self.shuffle:
            epoch = self.epoch_fn() if self.epoch_fn else self._epochs
            self._epochs += 1
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.shuffle and self.batch_size >= n:  # one batch: its order changes nothing, skip the gather
            tensors = self.tensors
            if self.negatives is not None:
                tensors = (*tensors, self.negatives(tensors[0], gen))
            yield tuple(t.tensor_split(self.world_size)[self.rank] for t in tensors)
        elif self.shuffle:
            # int32 where it fits: the same permutation and generator state as int64, drawn in half the time
            dtype = torch.int32 if n < 2**31 else torch.int64
            perm = torch.randperm(n, generator=gen, dtype=dtype).to(self.tensors[0].device)
            bounds = self._bounds(n, self.batch_size)
            if self.negatives is None and self.world_size > 1:
                # this rank's piece of each global batch, gathered once: a rank copies 1/world of the ratings
                pieces = [perm[lo:hi].tensor_split(self.world_size)[self.rank]
                          for lo, hi in zip(bounds[:-1], bounds[1:])]
                ends = torch.tensor([len(p) for p in pieces]).cumsum(0).tolist()
                bounds, perm = [0, *ends], torch.cat(pieces)
                del pieces
            # one gather per epoch (index_select: 1.5× faster than t[perm] on CPU); batches are views of it
            shuffled = tuple(t.index_select(0, perm) for t in self.tensors)
            if self.negatives is not None:  # one draw per epoch, after the shuffle, from the epoch's generator
                shuffled = (*shuffled, self.negatives(shuffled[0], gen))
            gathered = len(perm) < n  # the rank's pieces only
            del perm  # the epoch holds its shuffled copy, not the permutation too
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                yield tuple(t[lo:hi] if gathered else t[lo:hi].tensor_split(self.world_size)[self.rank]
                            for t in shuffled)
        else:
            lo, hi = n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size
            for s in range(lo, hi, self.batch_size):
                yield tuple(t[s:min(s + self.batch_size, hi)] for t in self.tensors)


class RatingsDataModule(L.LightningDataModule):
    """Ratings of one data set, id-mapped and split; see :func:`recsys.data.split_ratings`.

    ``batch_size`` is global: under DDP each rank takes ``batch_size / world_size`` a step; ``None``
    (or 0) takes the whole training set each step (full-batch gradient). ``batch_by=item`` (``user``): each training
    batch holds every training rating of its items (users), about ``batch_size`` ratings (:class:`GroupBatches`).
    ``val_ratio`` and ``test_ratio`` are fractions of all ratings; validation is carved from train.
    ``feedback=implicit``: a model trains on positive interactions: every training rating, or those
    ``>= positive_min`` where it is set (the ratings are kept, for models that weight by them); validation, test,
    seen items and the test protocol are those of ``explicit``, so ranking and rating models meet the same users
    and items.
    ``name``, ``path``, ``root``, the scale, ``format``, ``columns``, ``sep``, ``encoding``, ``quote``, ``duplicates``,
    ``num_ratings``, ``generator`` and ``cache`` are the reading settings: kept flat for the command
    line (``data.path=...``), gathered into one :class:`~recsys.data.datasets.Source` handed to the reader.
    """

    def __init__(self, name: str = "ml-100k", path: str | None = None, root: str | None = None,
                 rating_min: float = 1.0, rating_max: float = 5.0, rating_step: Positive = 1.0,
                 format: Annotated[str, OneOf(*FORMATS)] | None = None, columns: dict | None = None,
                 sep: str | None = None, duplicates: Annotated[str, OneOf(*DUPLICATES)] = "last",
                 num_ratings: Size | None = None, generator: dict | None = None, cache: bool = True,
                 split: Annotated[str, OneOf(*STRATEGIES)] = "random",
                 test_ratio: Fraction = 0.1, val_ratio: Fraction = 0.05, split_seed: int = 0,
                 leave_last_n: Size = 1, folds: Annotated[int, AtLeast(2)] | None = None,
                 fold: Annotated[int, AtLeast(0)] = 0,
                 batch_size: Size | None = 4096, eval_batch_size: Size = 65536, shuffle_seed: int = 0,
                 batch_by: Annotated[str, OneOf("rating", "item", "user")] = "rating",
                 feedback: Annotated[str, OneOf(*FEEDBACK)] = "explicit", positive_min: float | None = None,
                 encoding: str = "utf-8", quote: str | None = '"', filter: dict | None = None,
                 unrated_value: float | None = None):
        # every setting checked before any work: types and ranges from this signature (recsys.validation)
        settings = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        validation.check_arguments(RatingsDataModule.__init__, settings, "data.")
        check_ratios(0.0 if folds else test_ratio, val_ratio)
        if positive_min is not None and feedback != "implicit":
            raise ValueError(f"data.positive_min={positive_min} selects positives of implicit feedback: set "
                             "data.feedback=implicit too, or leave data.positive_min null")
        super().__init__()
        if rating_min >= rating_max:
            raise ValueError(f"data.rating_min={rating_min}, data.rating_max={rating_max}: need min < max")
        # floats, as the models hold them: Lightning refuses to merge hparams that differ in type
        rating_min, rating_max, rating_step = float(rating_min), float(rating_max), float(rating_step)
        # the reading settings as one block (checked here, before any work); handed to the reader in setup
        self.source = Source(name, root, path, (rating_min, rating_max), format, columns, sep, duplicates,
                             num_ratings, generator, cache, encoding, quote, filter, unrated_value,
                             keep_unrated=feedback == "implicit")
        columns, generator = self.source.columns, self.source.generator  # plain dicts in hparams and checkpoints
        filter = self.source.filters.settings()
        self.save_hyperparameters()
        self._ready = False

    # -- lifecycle --------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.source.path is None and not self.source.synthetic:
            fetch(self.source.name, self.source.root)

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        hp = self.hparams
        unrated = hp.unrated_value if hp.feedback == "implicit" else None
        split = {"strategy": hp.split, "test_ratio": hp.test_ratio, "val_ratio": hp.val_ratio, "seed": hp.split_seed,
                 "leave_last_n": hp.leave_last_n, "folds": hp.folds, "fold": hp.fold}
        # the split arrays are memory-mapped from the split cache: DDP ranks on a node share one copy
        data = prepare_split(self.source, split, {"rating_step": hp.rating_step, "rating_min": hp.rating_min,
                                                  "unrated_value": unrated})
        record = data.record
        self.source_file, self.source_sha256 = record["source"], record["source_sha256"]
        self.duplicates_dropped, self.rows_read = record["duplicates_dropped"], record["rows_read"]
        self.encoding = record["encoding"]  # what the text was read with (data.encoding=auto: what it detected)
        self.filter_steps = record["filters"]
        self.user_map, self.item_map = IdMap(data.user_ids), IdMap(data.item_ids)
        self.train_set, self.val_set, self.test_set = (
            tuple(torch.from_numpy(c) for c in data.parts[name]) for name in SPLIT_PARTS)
        sizes = dict(zip(("train", "validation", "test"), (len(data.parts[name][0]) for name in SPLIT_PARTS)))
        empty = [k for k, n in sizes.items() if n == 0 and not (k == "validation" and hp.val_ratio == 0)]
        if empty:
            raise ValueError(f"{self.source_file}: {sum(sizes.values())} ratings split by data.split={hp.split} into "
                             f"{sizes}: the {' and '.join(empty)} set is empty; use more ratings or larger ratios")
        self.summary = data.summary
        del data
        if hp.feedback == "implicit" and len(self.fit_set[0]) == 0:
            raise ValueError(f"{self.source_file}: data.positive_min={hp.positive_min} leaves no positive training "
                             f"interaction (ratings lie in [{hp.rating_min}, {hp.rating_max}]); lower it or set null")
        self._seen = {}
        self._negatives = 0
        self.refit = False  # True on with_validation_in_train()'s copy: validation merged into training
        self._ready = True

    # -- facts the models need (handed to the model once) ------------------------------------------
    @property
    def num_users(self) -> int:
        return len(self.user_map)

    @property
    def num_items(self) -> int:
        return len(self.item_map)

    def describe(self) -> dict:
        """What a run should record about its data: name, source file and checksum, split settings."""
        hp = self.hparams
        return {"name": hp.name, "source": str(self.source_file), "source_sha256": self.source_sha256,
                "rows_read": self.rows_read, "duplicates_dropped": self.duplicates_dropped,
                "filters": self.filter_steps, "unrated_value": hp.unrated_value, "encoding": self.encoding,
                "rating_scale": [hp.rating_min, hp.rating_max, hp.rating_step],
                "split": hp.split, "split_seed": hp.split_seed, "test_ratio": hp.test_ratio,
                "val_ratio": hp.val_ratio, "leave_last_n": hp.leave_last_n, "folds": hp.folds, "fold": hp.fold,
                "feedback": hp.feedback, "positive_min": hp.positive_min, "num_fit": len(self.fit_set[0]),
                "num_users": self.num_users, "num_items": self.num_items,
                "num_train": len(self.train_set[0]), "num_val": len(self.val_set[0]),
                "num_test": len(self.test_set[0]), "validation_in_train": self.refit, "summary": self.summary}

    def facts(self) -> DataFacts:
        """What a model needs to know: sizes, training mean and count, rating scale, rows seen in training."""
        users, items, ratings = self.train_set
        return DataFacts(num_users=self.num_users, num_items=self.num_items, num_train=len(ratings),
                         global_mean=float(ratings.double().mean()), rating_min=self.hparams.rating_min,
                         rating_max=self.hparams.rating_max, rating_step=self.hparams.rating_step,
                         user_counts=torch.bincount(users, minlength=self.num_users),
                         item_counts=torch.bincount(items, minlength=self.num_items))

    def seen(self, through: str = "val") -> Seen:
        """Each user's training and validation items (what the test ranking leaves out; ``through="train"``: the
        training items, what validation ranking leaves out), built once per setup and shared by the ranking
        evaluation, ``seen.npz`` and the Recommender."""
        if through not in ("train", "val"):
            raise ValueError(f"through={through!r}: 'train' or 'val'")
        if through not in self._seen:
            sets = [self.train_set] if through == "train" else [self.train_set, self.val_set]
            self._seen[through] = Seen.of(torch.cat([s[0] for s in sets]).numpy(),
                                          torch.cat([s[1] for s in sets]).numpy(), self.num_users)
        return self._seen[through]

    @property
    def fit_set(self) -> tuple[torch.Tensor, ...]:
        """What models train on: the training ratings, or under ``feedback=implicit`` its positives."""
        hp = self.hparams
        if hp.feedback == "implicit" and hp.positive_min is not None:
            keep = self.train_set[2] >= hp.positive_min
            if hp.unrated_value is not None:  # "interacted, not rated": an interaction, whatever its value
                keep |= self.train_set[2] == hp.unrated_value
            return tuple(t[keep] for t in self.train_set)
        return self.train_set

    def interactions(self, split: str = "train") -> Interactions:
        """One split's ratings as :class:`Interactions`: what a model receives through the contract (``train``:
        the training set a model fits, positives only under ``feedback=implicit`` with ``positive_min``)."""
        sets = {"train": self.fit_set, "val": self.val_set, "test": self.test_set}
        if split not in sets:
            raise ValueError(f"split={split!r}: one of {sorted(sets)}")
        return Interactions(*sets[split], self.num_users, self.num_items)

    def with_validation_in_train(self) -> RatingsDataModule:
        """This data with the validation ratings moved into training and no validation split: what ``refit=true``
        fits again on. The test split, the seen items (training + validation) and the id maps are unchanged."""
        if not self._ready:
            raise RuntimeError("with_validation_in_train: call setup() first")
        if len(self.val_set[0]) == 0:
            raise ValueError("refit=true fits again on train+val after choosing on validation, and this split has no "
                             "validation ratings (data.val_ratio=0): set data.val_ratio > 0")
        merged = copy.copy(self)
        merged.train_set = tuple(torch.cat([a, b]) for a, b in zip(self.train_set, self.val_set))
        merged.val_set = tuple(t[:0] for t in self.val_set)
        seen = self.seen("val")
        merged._seen = {"train": seen, "val": seen}
        merged.refit = True
        merged.trainer = None
        return merged

    def sample_negatives(self, per_positive: int) -> None:
        """Training batches carry ``per_positive`` negative items per rating, drawn uniformly among the items its
        user has not interacted with (in the training interactions), anew each epoch (pairwise models such as
        BPR ask for them: ``Model.negatives_per_positive``). 0: none."""
        if per_positive and self.hparams.batch_by != "rating":
            raise ValueError(f"data.batch_by={self.hparams.batch_by}: sampled negatives come with batches of "
                             "ratings; use data.batch_by=rating")
        self._negatives = int(per_positive)

    # -- loaders --------------------------------------------------------------------------------
    def _loader(self, tensors, batch_size: int, shuffle: bool, by: str = "rating", negatives=None) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if trainer is not None and trainer.strategy.root_device.type == "cuda":
            # the ratings live on the GPU (ML-25M is ~300 MB): batches are slices there, no copies
            tensors = tuple(t.to(trainer.strategy.root_device) for t in tensors)
        epoch_fn = (lambda: trainer.current_epoch) if trainer is not None else None
        seed = self.hparams.shuffle_seed
        ds = GroupBatches(tensors, batch_size, seed, rank, world, epoch_fn, by) if by != "rating" else \
            RatingBatches(tensors, batch_size, shuffle, seed, rank, world, epoch_fn, negatives)
        return DataLoader(ds, batch_size=None, num_workers=0)

    def train_dataloader(self) -> DataLoader:
        batch, world = self.hparams.batch_size, self.trainer.world_size if self.trainer is not None else 1
        if batch and batch % world:
            raise ValueError(f"data.batch_size={batch} is global and must divide by the world size {world}")
        # batch_by=item|user: whole items (I-AutoRec) or whole users per batch
        fit, negatives = self.fit_set, None
        if self._negatives:
            train, k = self.interactions("train"), self._negatives
            negatives = lambda users, gen: train.sample_negatives(users, k, gen)  # noqa: E731
        return self._loader(fit, batch or len(fit[0]), True, self.hparams.batch_by, negatives)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.hparams.eval_batch_size, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.hparams.eval_batch_size, False)

    # -- id maps travel with checkpoints --------------------------------------------------------
    def state_dict(self) -> dict:
        # integer ids as one tensor (a list of 10⁵ ints costs a second to load with weights_only); others as a list
        return {"user_ids": _saved_ids(self.user_map.ids), "item_ids": _saved_ids(self.item_map.ids)}

    def load_state_dict(self, state: dict) -> None:
        self.user_map, self.item_map = IdMap(state["user_ids"]), IdMap(state["item_ids"])


def _saved_ids(ids: np.ndarray) -> torch.Tensor | list:
    """Ids as a checkpoint holds them: integers as an int64 tensor, others (strings) as a list."""
    fits = ids.dtype.kind == "i" or (ids.dtype.kind == "u" and (not len(ids) or ids.max() <= np.iinfo(np.int64).max))
    if fits:
        return torch.from_numpy(ids.astype(np.int64, copy=True))
    return ids.tolist()
