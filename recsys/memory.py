"""The scoring memory budget (``eval.max_memory_mb``) and how much of it a call takes, measured.

Scoring in bulk (the ranking metrics, ``recommend``, ``recsys evaluate``, blends) works in blocks sized so that
the block's *whole* working memory stays within the budget, not only its output: a model whose ``forward``
holds a hidden layer per pair (I-AutoRec: ~2 kB a pair) needs blocks a few hundred times smaller than its
score matrix alone suggests. Nothing is declared by hand: :func:`peak_bytes` runs a call under a dispatch mode
that adds up the bytes of every tensor the call's operators allocate and subtracts them as they are freed, so
its peak is the call's working memory on any device. :func:`per_unit_bytes` bounds it as ``per_unit · n`` from two
probe calls, and :func:`units_within` turns that into a block size.

The budget itself is a context (:func:`budget`): the evaluation and the recommender set it from
``eval.max_memory_mb``/``max_memory_mb``, and a model's default pairwise paths (``Model.score``,
``all_item_scores``) read it (:func:`budget_bytes`), so no method signature carries it.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from collections.abc import Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

MAX_MEMORY_MB = 512.0  # the library default; runs pass eval.max_memory_mb (configs/train.yaml)
_BUDGET: contextvars.ContextVar[float] = contextvars.ContextVar("recsys_scoring_budget_mb", default=MAX_MEMORY_MB)


@contextlib.contextmanager
def budget(max_memory_mb: float | None) -> Iterator[None]:
    """Scoring inside the block keeps its working memory within ``max_memory_mb`` (None: leave it as it is)."""
    if max_memory_mb is None:
        yield
        return
    if not max_memory_mb > 0:
        raise ValueError(f"max_memory_mb={max_memory_mb!r}: must be a positive number of MB")
    token = _BUDGET.set(float(max_memory_mb))
    try:
        yield
    finally:
        _BUDGET.reset(token)


def budget_bytes() -> int:
    """The current scoring budget in bytes."""
    return int(_BUDGET.get() * 2**20)


class _Peak(TorchDispatchMode):
    """Live bytes of the storages the operators inside allocate (outputs that are views or in-place results share
    an input's storage and add nothing); ``peak`` is their maximum."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._owned: set[int] = set()

    def _freed(self, key: int, size: int) -> None:
        self.live -= size
        self._owned.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {s.data_ptr() for a in tree_leaves((args, kwargs)) for s in _storages(a)}
        for storage in (s for t in tree_leaves(out) for s in _storages(t)):
            key, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or key in inputs or key in self._owned:
                continue
            self._owned.add(key)
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._freed, key, size)  # torch keeps a storage's Python object as long as it
        return out                                              # lives, so this runs when its memory is freed


def _storages(t) -> list:
    """The storages holding a tensor's data: its own, or a sparse tensor's index and value tensors'."""
    if not isinstance(t, torch.Tensor):
        return []
    if t.layout == torch.strided:
        return [t.untyped_storage()]
    if t.layout == torch.sparse_coo:
        parts = (t._indices(), t._values())
    elif t.layout in (torch.sparse_csr, torch.sparse_bsr):
        parts = (t.crow_indices(), t.col_indices(), t.values())
    elif t.layout in (torch.sparse_csc, torch.sparse_bsc):
        parts = (t.ccol_indices(), t.row_indices(), t.values())
    else:
        return []
    return [p.untyped_storage() for p in parts]


def peak_bytes(fn: Callable, *args, **kwargs) -> tuple[object, int]:
    """``(fn(*args, **kwargs), the peak bytes its tensor operators held at once)``."""
    with _Peak() as mode:
        result = fn(*args, **kwargs)
    return result, mode.peak


def per_unit_bytes(measure: Callable[[int], int], small: int, limit: int) -> float:
    """Bytes a unit that bound a call of ``n`` units (n at least the second probe) whose peak is ``measure(n)``.
    A warm-up call (a first call may build and cache derived state, e.g. a sparse history matrix), then ``small``
    units, then as many as the first probe says fit an eighth of the budget (between 2·small and ``limit``), so no
    probe itself overruns the budget. The bound is the larger of the slope between the two probes and the second
    probe's average: a fixed part counts as if it grew with n (conservative, never below the measured)."""
    measure(small)
    a = measure(small)
    large = max(2 * small, min(limit, units_within(max(a, 1) / small) // 8))
    b = measure(large)
    slope = max((b - a) / (large - small), 0.0)
    return max(slope, b / large)  # for n ≥ large: fixed + slope·n ≤ n·b/large


def units_within(per_unit: float, limit: int | None = None, share: float = 1.0) -> int:
    """How many units of ``per_unit`` bytes fit in ``share`` of the current budget (at least 1; at most ``limit``)."""
    n = int(budget_bytes() * share // per_unit) if per_unit > 0 else (limit or 1 << 62)
    n = max(1, n)
    return min(n, limit) if limit is not None else n
