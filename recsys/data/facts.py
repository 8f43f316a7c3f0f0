"""What a model needs to know about its data, handed over once by the datamodule."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch


@dataclasses.dataclass(frozen=True)
class DataFacts:
    """Sizes, training mean and count, and rating scale of one split's training set.

    ``as_dict()`` (primitives) is what a model keeps in its hyperparameters. ``user_counts`` and
    ``item_counts`` (training ratings per row) travel along when the datamodule builds the facts, so a
    model knows which rows are cold; they are not hyperparameters (a checkpoint keeps the model's
    ``user_seen``/``item_seen`` buffers instead).
    """

    num_users: int
    num_items: int
    num_train: int
    global_mean: float
    rating_min: float = 1.0
    rating_max: float = 5.0
    rating_step: float = 1.0
    user_counts: torch.Tensor | None = dataclasses.field(default=None, repr=False, compare=False)
    item_counts: torch.Tensor | None = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.num_users < 1 or self.num_items < 1 or self.num_train < 1:
            raise ValueError(f"data facts: num_users={self.num_users}, num_items={self.num_items}, "
                             f"num_train={self.num_train} must all be positive")
        if not self.rating_min < self.rating_max or self.rating_step <= 0:
            raise ValueError(f"data facts: rating_min={self.rating_min} must be below rating_max={self.rating_max} "
                             f"and rating_step={self.rating_step} positive")
        for name, n in (("user_counts", self.num_users), ("item_counts", self.num_items)):
            counts = getattr(self, name)
            if counts is not None and counts.shape != (n,):
                raise ValueError(f"data facts: {name} has shape {tuple(counts.shape)}, expected ({n},)")

    @classmethod
    def coerce(cls, data: DataFacts | Mapping) -> DataFacts:
        """The facts from a DataFacts or from the dict a checkpoint's hyperparameters hold."""
        if isinstance(data, cls):
            return data
        if isinstance(data, Mapping):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = set(data) - known
            if unknown:
                raise ValueError(f"data facts: unknown keys {sorted(unknown)}; known: {sorted(known)}")
            return cls(**data)
        raise TypeError(f"data={data!r}: pass the datamodule's facts (RatingsDataModule.facts()) or their dict")

    def as_dict(self) -> dict:
        return {"num_users": int(self.num_users), "num_items": int(self.num_items), "num_train": int(self.num_train),
                "global_mean": float(self.global_mean), "rating_min": float(self.rating_min),
                "rating_max": float(self.rating_max), "rating_step": float(self.rating_step)}
