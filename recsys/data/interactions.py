"""Interactions: the training data a model receives through the contract (``Model.setup_interactions``).

User and item indices, ratings, and compressed-row (CSR) views by user and by item, computed once on first
use. A model that needs a user's history (SVD++'s N(u)), an item's ratings (AutoRec's codes) or the whole
matrix (EASE) reads it from here; whatever it derives for scoring it keeps in its own saved state, so a loaded
model scores without the data.

:class:`Seen` is the user → items table of the test protocol (each user's training and validation items):
built once by the datamodule and shared by the ranking evaluation, ``seen.npz`` and the Recommender.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch


@dataclasses.dataclass(frozen=True)
class CSR:
    """Rows as compressed sparse rows: row r's entries are ``indices[indptr[r]:indptr[r + 1]]`` (sorted), with
    ``values`` (the ratings) in the same order."""

    indptr: torch.Tensor  # (n_rows + 1,) int64
    indices: torch.Tensor  # (nnz,) int64, column ids sorted within each row
    values: torch.Tensor  # (nnz,) ratings

    @property
    def counts(self) -> torch.Tensor:
        return self.indptr[1:] - self.indptr[:-1]


def csr_entries(indptr: torch.Tensor, indices: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(position in ``rows``, column) of every entry of the CSR rows ``rows``: one gather, no loop over rows."""
    lo = indptr[rows]
    counts = indptr[rows + 1] - lo
    total = int(counts.sum())
    which = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), counts, output_size=total)
    starts = torch.repeat_interleave(lo - (torch.cumsum(counts, 0) - counts), counts, output_size=total)
    return which, indices[starts + torch.arange(total, device=rows.device)]


def csr(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, n_rows: int) -> CSR:
    """(rows, cols, values) triples as a :class:`CSR` by row, columns sorted within each row."""
    rows, cols = rows.long(), cols.long()
    order = torch.argsort(rows * (int(cols.max()) + 1 if len(cols) else 1) + cols)
    indptr = torch.zeros(n_rows + 1, dtype=torch.long, device=rows.device)
    torch.cumsum(torch.bincount(rows, minlength=n_rows), 0, out=indptr[1:])
    return CSR(indptr, cols[order], values[order])


@dataclasses.dataclass(frozen=True, eq=False)
class Interactions:
    """One split's (user, item, rating) triples over ``num_users`` × ``num_items`` (indices, not original ids)."""

    users: torch.Tensor
    items: torch.Tensor
    ratings: torch.Tensor
    num_users: int
    num_items: int

    def __post_init__(self) -> None:
        n = len(self.users)
        if len(self.items) != n or len(self.ratings) != n:
            raise ValueError(f"interactions: {n} users, {len(self.items)} items, {len(self.ratings)} ratings; "
                             "give one of each per interaction")
        for name, idx, size in (("user", self.users, self.num_users), ("item", self.items, self.num_items)):
            if n and (int(idx.min()) < 0 or int(idx.max()) >= size):
                raise ValueError(f"interactions: {name} indices must lie in [0, {size}), got "
                                 f"[{int(idx.min())}, {int(idx.max())}]")

    def __len__(self) -> int:
        return len(self.ratings)

    def triples(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.users, self.items, self.ratings

    @functools.cached_property
    def by_user(self) -> CSR:
        """Each user's items and ratings (N(u) with its ratings)."""
        return csr(self.users, self.items, self.ratings, self.num_users)

    @functools.cached_property
    def by_item(self) -> CSR:
        """Each item's users and ratings."""
        return csr(self.items, self.users, self.ratings, self.num_items)

    @functools.cached_property
    def _complement(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What maps a rank r among a user's non-interacted items to the item: each user's distinct items s_0 <
        s_1 < ... as keys user·(n_items + 1) + s_k − k (non-decreasing), the rows' starts and their counts."""
        keys = torch.unique(self.users.long() * self.num_items + self.items.long())  # sorted, distinct pairs
        users, items = keys // self.num_items, keys % self.num_items
        counts = torch.bincount(users, minlength=self.num_users)
        starts = torch.cumsum(counts, 0) - counts
        k = torch.arange(len(keys)) - starts[users]
        return users * (self.num_items + 1) + items - k, starts, counts

    def sample_negatives(self, users: torch.Tensor, per_user: int, generator: torch.Generator) -> torch.Tensor:
        """(len(users), per_user) items drawn uniformly among the items each user has not interacted with (BPR's
        negatives), exactly and without rejection: a uniform rank r among the user's m non-interacted items maps
        to the item r + #{k : s_k − k ≤ r} (s_k the user's items in order), one binary search per draw. A user who
        has interacted with every item gets item 0. Deterministic given the generator's state: a run keyed by
        (seed, epoch) draws the same negatives resumed or not, on any rank."""
        keys, starts, counts = self._complement
        rows = users.cpu().long()
        free = (self.num_items - counts[rows]).clamp_(min=1).unsqueeze(1)
        r = (torch.rand((len(rows), per_user), generator=generator, dtype=torch.float64) * free).long()
        r = torch.minimum(r, free - 1)
        base = (rows * (self.num_items + 1)).unsqueeze(1)
        before = torch.searchsorted(keys, base + r, right=True) - starts[rows].unsqueeze(1)
        return (r + before).clamp_(max=self.num_items - 1).to(users.device)


@dataclasses.dataclass(frozen=True)
class Seen:
    """Each user's training and validation items as CSR arrays ``(indptr, items)``, items sorted per user: what
    ranking leaves out of a user's candidates."""

    indptr: np.ndarray
    items: np.ndarray

    @classmethod
    def of(cls, users: np.ndarray, items: np.ndarray, num_users: int) -> Seen:
        table = csr(torch.as_tensor(users), torch.as_tensor(items), torch.empty(len(users)), num_users)
        return cls(table.indptr.numpy(), table.indices.numpy().astype(np.int32))

    def entries(self, rows: torch.Tensor, only: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(position in ``rows``, item) of every seen pair of the users ``rows``, on their device; ``only`` (a flag
        per row) keeps the flagged rows' pairs (rows not flagged may be any index, e.g. an unknown user's)."""
        rows_cpu = rows.cpu() if only is None else rows.cpu().clamp(0, len(self.indptr) - 2)
        # the seen items as they are (int32, no copy): only the rows' entries are widened, not every user's
        which, cols = csr_entries(torch.as_tensor(self.indptr), torch.as_tensor(self.items), rows_cpu)
        cols = cols.long()
        if only is not None:
            keep = only.cpu()[which]
            which, cols = which[keep], cols[keep]
        return which.to(rows.device), cols.to(rows.device)

    def heaviest_first(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows`` ordered by how many items each has seen, most first (ties by row): the chunk whose work is
        largest, which a memory probe measures (rows past the table count as none seen)."""
        counts = torch.as_tensor(np.diff(self.indptr))
        inside = rows.cpu().clamp(0, len(counts) - 1)
        seen = torch.where(rows.cpu() < len(counts), counts[inside], 0)
        return rows[torch.sort(seen, descending=True, stable=True).indices.to(rows.device)]

    def exclude(self, scores: torch.Tensor, rows: torch.Tensor, only: torch.Tensor | None = None) -> torch.Tensor:
        """``scores`` (len(rows) × items) with each row's seen items set to -inf, in place (see :meth:`entries`)."""
        return scores.index_put_(self.entries(rows, only), scores.new_tensor(float("-inf")))

    def mask(self, rows: torch.Tensor, num_items: int) -> torch.Tensor:
        """(len(rows), num_items) True where the row's user has seen the item."""
        mask = torch.zeros(len(rows), num_items, dtype=torch.bool, device=rows.device)
        mask[self.entries(rows)] = True
        return mask

    def with_row(self, row: int, items: np.ndarray) -> Seen:
        """A copy where user ``row`` (possibly one past the last) has seen exactly ``items``."""
        indptr = self.indptr if row < len(self.indptr) - 1 else np.append(self.indptr, self.indptr[-1])
        mine = np.unique(np.asarray(items)).astype(np.int32)
        seen = np.concatenate([self.items[:indptr[row]], mine, self.items[indptr[row + 1]:]])
        counts = np.diff(indptr)
        counts[row] = len(mine)
        return Seen(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), seen)
