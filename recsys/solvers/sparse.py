"""Row-sparse optimizers for embedding tables: only the rows a batch touched are updated.

A minibatch of ratings touches a few hundred user and item rows of tables with up to hundreds of
thousands of rows. Dense Adam moves every row at every step (its first moment keeps pushing rows the
batch never saw, and weight decay shrinks them); :class:`RowAdam` ("lazy Adam", as TensorFlow Addons'
LazyAdam) updates the moments and weights of the touched rows only, with per-row step counts for the
bias correction, so a row's trajectory depends only on the batches that contain it. Gradients stay dense
tensors (they all-reduce under DDP; sparse gradients do not on NCCL): a touched row is one with a
non-zero gradient. One-dimensional parameters are updated like torch's Adam.

    model.optimizer._target_=recsys.solvers.sparse.RowAdam model.optimizer.lr=0.005
"""

from __future__ import annotations

import torch


class RowAdam(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"Invalid RowAdam setting: lr={lr}, betas={betas}, eps={eps}, "
                             f"weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            (b1, b2), lr, eps, wd = group["betas"], group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
                    state["steps"] = torch.zeros(p.shape[0] if p.dim() > 1 else 1, device=p.device, dtype=p.dtype)
                grad = p.grad
                if p.dim() > 1:  # a table: rows with a non-zero gradient
                    rows = grad.flatten(1).ne(0).any(1).nonzero().squeeze(1)
                    weight, grad = p[rows], grad[rows]
                    m, v, steps = state["exp_avg"][rows], state["exp_avg_sq"][rows], state["steps"][rows] + 1
                else:
                    rows, weight, m, v, steps = None, p, state["exp_avg"], state["exp_avg_sq"], state["steps"] + 1
                if wd:
                    grad = grad + wd * weight
                m.mul_(b1).add_(grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                shape = (-1,) + (1,) * (weight.dim() - 1)
                correct1 = (1 - b1 ** steps).view(shape) if rows is not None else 1 - b1 ** steps
                correct2 = (1 - b2 ** steps).view(shape) if rows is not None else 1 - b2 ** steps
                update = lr * (m / correct1) / ((v / correct2).sqrt() + eps)
                if rows is None:
                    p.sub_(update)
                    state["steps"] = steps
                else:
                    p.index_add_(0, rows, -update)
                    state["exp_avg"][rows], state["exp_avg_sq"][rows], state["steps"][rows] = m, v, steps
        return loss
