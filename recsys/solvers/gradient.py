"""Gradient training: the model's minibatch objective, minimized by a torch optimizer that the config names.

The optimizer is a config component, as in lightning-hydra-template::

    optimizer:
      _target_: torch.optim.Adam
      _partial_: true
      lr: 0.005

It reaches the model as a dict, a DictConfig or a ``functools.partial`` of the optimizer class and is
kept in the hyperparameters as primitives (``{"_target_": "torch.optim.Adam", "lr": 0.005}``), so a
checkpoint loads with ``weights_only=True``. Only optimizers under ``torch.optim`` or this project
(``recsys.``) are accepted: a checkpoint must not name arbitrary code to import.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping

import torch

from recsys.solvers.sparse import all_reduce_rows, densify, takes_sparse_gradients
from recsys.validation import Positive, check

ALLOWED = ("torch.optim.", "recsys.")


def _locate(target: str) -> type[torch.optim.Optimizer]:
    from hydra.utils import get_class

    if not isinstance(target, str) or not target.startswith(ALLOWED):
        raise ValueError(f"model.optimizer._target_={target!r}: name an optimizer under {' or '.join(ALLOWED)} "
                         "(e.g. torch.optim.Adam)")
    try:
        cls = get_class(target)
    except Exception as err:  # noqa: BLE001 - Hydra raises several kinds; all mean "not found"
        raise ValueError(f"model.optimizer._target_={target!r} cannot be imported: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(f"model.optimizer._target_={target!r} is not a torch.optim.Optimizer")
    return cls


def _name(cls) -> str:
    """The dotted name of a class, as users write it (``torch.optim.Adam``, not ``torch.optim.adam.Adam``)."""
    if getattr(torch.optim, getattr(cls, "__name__", ""), None) is cls:
        return f"torch.optim.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def optimizer_spec(optimizer) -> dict:
    """The optimizer setting as primitives, checked: its class exists and takes every argument given."""
    if isinstance(optimizer, functools.partial):
        spec = {"_target_": _name(optimizer.func), **optimizer.keywords}
    elif isinstance(optimizer, type):
        spec = {"_target_": _name(optimizer)}
    elif isinstance(optimizer, Mapping):
        from omegaconf import DictConfig, OmegaConf

        spec = OmegaConf.to_container(optimizer, resolve=True) if isinstance(optimizer, DictConfig) else dict(optimizer)
        spec.pop("_partial_", None)
        if "_target_" not in spec:
            raise ValueError(f"model.optimizer={spec}: needs a _target_ (e.g. torch.optim.Adam)")
    else:
        raise TypeError(f"model.optimizer={optimizer!r}: give a dict with _target_, or a partial of an optimizer class")
    if "lr" in spec:
        check("model.optimizer.lr", Positive, spec["lr"])
    cls = _locate(spec["_target_"])
    accepted = inspect.signature(cls.__init__).parameters
    unknown = [k for k in spec if k != "_target_" and k not in accepted]
    if unknown:
        raise ValueError(f"model.optimizer: {spec['_target_']} takes no argument {unknown}; it takes "
                         f"{[k for k in accepted if k not in ('self', 'params')]}")
    return spec


def build_optimizer(spec: Mapping, params) -> torch.optim.Optimizer:
    kwargs = {k: v for k, v in spec.items() if k != "_target_"}
    return _locate(spec["_target_"])(params, **kwargs)


class Gradient:
    """Fitting strategy: minibatch steps of the configured optimizer on ``model.objective``.

    Models that implement the contract's ``gradients(users, items, ratings)`` (the loss, with its gradient
    written into the parameters' ``.grad`` in closed form) take the fast path: manual optimization, no autograd
    graph, no host sync. Row-sparse gradients (:mod:`recsys.solvers.sparse`) go to optimizers that take them
    (``RowAdam``, mf's default) as they are and are made dense for the others; under DDP they are exchanged as
    rows, the dense ones in one all-reduce of the flattened gradients per step. Others use Lightning's automatic
    optimization of ``objective`` (autograd).
    """

    full_batch = False  # minibatches of data.batch_size

    def __init__(self) -> None:
        self._flat: torch.Tensor | None = None
        self._views: list[torch.Tensor] = []

    def automatic(self, model) -> bool:
        return not model.has_closed_form_gradients()

    def check(self, model) -> None:
        pass  # every model has an objective

    def configure_optimizers(self, model):
        return build_optimizer(model.hparams.optimizer, model.parameters())

    def training_step(self, system, batch, batch_idx: int) -> torch.Tensor:
        if system.automatic_optimization:
            return system.model.objective(*batch)
        return self.step(system.model, system.optimizers(), batch, system.trainer.world_size)

    def step(self, model, optimizer, batch, world_size: int = 1) -> torch.Tensor:
        """One step of the fast path: the closed-form gradients, averaged over ranks, made dense for an optimizer
        that takes only dense ones, then the optimizer's step (also what the speed benchmarks time)."""
        loss = model.gradients(*batch)
        # the optimizer's own parameter list: model.parameters() walks every submodule (metrics included) each step
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if world_size > 1:
            self.all_reduce(params, world_size)
        if not takes_sparse_gradients(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer):
            densify(params)
        optimizer.step()
        return loss

    def all_reduce(self, params: list[torch.Tensor], world_size: int) -> None:
        """Average the gradients over ranks: row-sparse ones exchange their rows (or go dense where that moves fewer
        bytes, :func:`recsys.solvers.sparse.all_reduce_rows`), the dense ones in one all-reduce."""
        self.all_reduce_mean(all_reduce_rows(params, world_size), world_size)

    def all_reduce_mean(self, params: list[torch.Tensor], world_size: int) -> None:
        """Average the gradients over ranks in one collective: the ``.grad`` tensors are views of one buffer."""
        import torch.distributed as dist

        params = [p for p in params if p.grad is not None]
        if not params:  # every gradient went as rows (all_reduce_rows): nothing dense to average
            return
        # (re)built when a .grad is not our view: the first step, or after anything set .grad anew (zero_grad)
        if len(params) != len(self._views) or any(p.grad is not v for p, v in zip(params, self._views)):
            self._flat = torch.cat([p.grad.reshape(-1) for p in params])
            self._views, offset = [], 0
            for p in params:
                p.grad = self._flat[offset:offset + p.numel()].view_as(p)
                self._views.append(p.grad)
                offset += p.numel()
        dist.all_reduce(self._flat)
        self._flat.div_(world_size)
