"""Row-sparse gradients and optimizers for embedding tables: a step touches only the rows of its batch.

A minibatch of ratings touches a few thousand user and item rows of tables with up to hundreds of thousands
of rows. Dense Adam moves every row at every step: its cost grows with the tables, so an epoch costs
∝ ratings × rows / batch. Here a step's cost depends on its batch only:

- **Gradients** of the tables come as sparse COO tensors with one entry per *distinct* row of the batch
  (:class:`RowIndex` finds them, :func:`row_gradient` writes them as coalesced sparse COO
  tensors), as ``nn.Embedding(sparse=True)`` gives them. Models with closed-form gradients write them so
  (:meth:`recsys.models.nets.Bilinear.gradients`).
- **Optimizers** that take them update those rows only, with index operations (``index_select``/``index_add_``/
  ``index_copy_``), never a pass over the table:

  - :class:`RowAdam` ("lazy Adam", as TensorFlow Addons' LazyAdam and torch's ``SparseAdam``, but with a *per-row*
    step count for the bias correction): for each row r in the batch, with g its summed gradient and t_r its
    own step count, m_r ← β₁m_r + (1−β₁)g, v_r ← β₂v_r + (1−β₂)g², t_r ← t_r + 1,
    w_r ← w_r − lr·(m_r/(1−β₁^t_r)) / (√(v_r/(1−β₂^t_r)) + ε). Rows not in the batch keep weights, moments and
    count: a row's trajectory depends only on the batches that contain it. Weight decay (L2, added to g) applies to
    the batch's rows. With every row in every batch it is torch's Adam exactly (tested).
  - :class:`RowAdagrad` (row-wise Adagrad, as FBGEMM's exact_rowwise_adagrad): one accumulator per row,
    a_r ← a_r + mean_j g_rj², w_r ← w_r − lr·g_r/(√a_r + ε).

  A dense gradient (autograd on a model's ``objective``) is taken too: its rows with a non-zero gradient are the
  batch's rows, so the semantics are the same whichever way a model writes its gradient.
  On CPU the float32 tables take :mod:`recsys.solvers.native`'s kernels (RowAdam's update and Bilinear's
  gradients in one pass over the rows each); elsewhere these torch index operations.
- :func:`takes_sparse_gradients` names the optimizers that take sparse gradients; for any other (torch's Adam)
  the gradient solver makes them dense first, the old cost and the old semantics.
- Under DDP (:func:`all_reduce_rows`) ranks exchange their rows and values (an all-gather) and sum them, or
  all-reduce the dense gradient where that moves fewer bytes; every rank then applies the same update.

    model.optimizer._target_=recsys.solvers.sparse.RowAdam model.optimizer.lr=0.005     (model=mf's default)
"""

from __future__ import annotations

import torch

from recsys.solvers import native


class RowIndex:
    """The distinct rows of a batch's indices into a table of ``n`` rows (sorted) and each index's position among
    them, as ``torch.unique(index, return_inverse=True)`` gives them, at a cost that does not grow with the table:
    a sort where the table is large beside the batch (n > 32·batch), else marks in a kept buffer of n flags and
    a scan of them (O(batch + n) with n ≤ 32·batch; on CPU 10× faster than the sort at ml-1m's shape). On CPU
    with the native kernels, marks in a bitmap of n bits (O(batch + n/64), for n ≤ 1024·batch)."""

    def __init__(self) -> None:
        self._mark: torch.Tensor | None = None  # n flags and positions (torch path)
        self._pos: torch.Tensor | None = None
        self._bits: torch.Tensor | None = None  # ⌈n/64⌉ words and n slots (native path)
        self._slot: torch.Tensor | None = None

    def __call__(self, index: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if n <= 1024 * len(index) and native.serves(indices=(index,)):  # a bitmap of n bits, scanned once: no sort
            if self._slot is None or len(self._slot) != n:
                self._bits = torch.zeros((n + 63) // 64, dtype=torch.int64)
                self._slot = torch.empty(n, dtype=torch.long)
            return native.unique_rows(index, n, self._bits, self._slot)
        if n > 32 * len(index):
            return torch.unique(index, return_inverse=True)
        if self._mark is None or len(self._mark) != n or self._mark.device != index.device:
            self._mark = torch.zeros(n, dtype=torch.bool, device=index.device)
            self._pos = torch.empty(n, dtype=torch.long, device=index.device)
        self._mark.index_fill_(0, index, True)
        rows = self._mark.nonzero().squeeze(1)
        self._mark.index_fill_(0, rows, False)  # cleared where set: the buffer is all False again
        self._pos.index_copy_(0, rows, torch.arange(len(rows), device=index.device))
        return rows, self._pos.index_select(0, index)


def row_gradient(weight: torch.Tensor, grad: torch.Tensor, rows: torch.Tensor, inverse: torch.Tensor) -> None:
    """Set ``weight.grad`` to the row-sparse gradient where row ``rows[inverse[b]]`` receives ``grad[b]`` (summed
    over repeats): a coalesced sparse COO tensor with one entry per distinct row (``RowIndex`` gives ``rows`` and
    ``inverse``)."""
    set_row_gradient(weight, rows, grad.new_zeros((len(rows), *grad.shape[1:])).index_add_(0, inverse, grad))


def set_row_gradient(weight: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
    """Set ``weight.grad`` to the coalesced sparse COO gradient with ``values[j]`` at row ``rows[j]`` (``rows``
    distinct and sorted, as ``RowIndex`` gives them)."""
    weight.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), values, weight.shape, is_coalesced=True,
                                          check_invariants=False)


def _rows_of(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, their gradients) of a sparse or dense gradient; a dense one's rows are those with a non-zero entry."""
    if grad.is_sparse:
        grad = grad if grad.is_coalesced() else grad.coalesce()
        return grad._indices()[0], grad._values()
    rows = grad.reshape(len(grad), -1).ne(0).any(1).nonzero().squeeze(1)
    return rows, grad.index_select(0, rows)


class _RowOptimizer(torch.optim.Optimizer):
    """Shared loop: each parameter's touched rows, handed to :meth:`update` with its state; 1-D and 0-D parameters
    are one row (every entry updated each step)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.dim() < 2:  # a vector or scalar: one row
                    grad = p.grad.to_dense() if p.grad.is_sparse else p.grad
                    self.update(p.view(1, -1), grad.reshape(1, -1), torch.zeros(1, dtype=torch.long,
                                                                                device=p.device), group, p)
                    continue
                rows, grad = _rows_of(p.grad)
                if len(rows):
                    self.update(p, grad, rows, group, p)
        return loss

    def update(self, weight: torch.Tensor, grad: torch.Tensor, rows: torch.Tensor, group: dict,
               key: torch.Tensor) -> None:
        raise NotImplementedError


class RowAdam(_RowOptimizer):
    """Lazy Adam with per-row step counts; see the module docstring."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"Invalid RowAdam setting: lr={lr}, betas={betas}, eps={eps}, "
                             f"weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @staticmethod
    def _native_table(param: torch.Tensor, *states: torch.Tensor) -> bool:
        """A table the kernels update: it and its moments live in huge pages (fewer TLB misses a row)."""
        return param.dim() >= 2 and native.serves((param, *states))

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for param, state in self.state.items():  # resumed: back in huge pages, as a fresh run's
            if "moments" in state and self._native_table(param, state["moments"]):
                native.on_huge_pages(param)
                state["moments"] = native.in_huge_pages(state["moments"])

    def update(self, weight, grad, rows, group, key):
        state = self.state[key]
        if not state:  # m and v side by side: one gather and one scatter of a row's moments per step
            shape = (len(weight), 2, *weight.shape[1:])
            if self._native_table(key):  # (a vector comes as a one-row view: not a table)
                native.on_huge_pages(key)
                state["moments"] = native.huge_page_zeros(shape, weight.dtype)
            else:
                state["moments"] = torch.zeros(shape, device=weight.device, dtype=weight.dtype)
            state["steps"] = torch.zeros(len(weight), device=weight.device, dtype=weight.dtype)
        (b1, b2), lr, eps, wd = group["betas"], group["lr"], group["eps"], group["weight_decay"]
        moments, steps = state["moments"], state["steps"]
        if native.serves((weight, moments, steps, grad), (rows,)):
            native.adam_rows(weight, moments, steps, rows, grad, lr, (b1, b2), eps, wd)  # the same update, one pass
            return
        if wd:
            grad = grad.add(weight.index_select(0, rows), alpha=wd)
        mv = moments.index_select(0, rows)
        m, v = mv[:, 0], mv[:, 1]
        m.lerp_(grad, 1 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        t = steps.index_select(0, rows).add_(1)
        shape = (-1,) + (1,) * (weight.dim() - 1)
        step_size = torch.pow(b1, t).sub_(1).reciprocal_().mul_(lr).view(shape)  # −lr / (1 − β₁ᵗ)
        denom = v.div(torch.pow(b2, t).neg_().add_(1).view(shape)).sqrt_().add_(eps)
        weight.index_add_(0, rows, m.mul(step_size).div_(denom))
        moments.index_copy_(0, rows, mv)
        steps.index_copy_(0, rows, t)


class RowAdagrad(_RowOptimizer):
    """Row-wise Adagrad: one accumulator of mean squared gradients per row; see the module docstring."""

    def __init__(self, params, lr: float = 0.05, eps: float = 1e-8, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0):
        if lr < 0 or eps < 0 or weight_decay < 0 or initial_accumulator_value < 0:
            raise ValueError(f"Invalid RowAdagrad setting: lr={lr}, eps={eps}, weight_decay={weight_decay}, "
                             f"initial_accumulator_value={initial_accumulator_value}")
        super().__init__(params, {"lr": lr, "eps": eps, "weight_decay": weight_decay,
                                  "initial_accumulator_value": initial_accumulator_value})

    def update(self, weight, grad, rows, group, key):
        state = self.state[key]
        if not state:
            state["sum"] = torch.full((len(weight),), group["initial_accumulator_value"], device=weight.device,
                                      dtype=weight.dtype)
        if group["weight_decay"]:
            grad = grad.add(weight.index_select(0, rows), alpha=group["weight_decay"])
        flat = grad.reshape(len(rows), -1)
        acc = state["sum"].index_select(0, rows).add_(flat.square().mean(1))
        state["sum"].index_copy_(0, rows, acc)
        scale = acc.sqrt_().add_(group["eps"]).reciprocal_().mul_(-group["lr"])
        weight.index_add_(0, rows, grad * scale.view((-1,) + (1,) * (grad.dim() - 1)))


#: optimizers that take sparse (row) gradients; the gradient solver densifies them for any other
SPARSE_OPTIMIZERS = (RowAdam, RowAdagrad, torch.optim.SparseAdam, torch.optim.Adagrad, torch.optim.SGD)


def takes_sparse_gradients(optimizer: torch.optim.Optimizer) -> bool:
    if isinstance(optimizer, torch.optim.SGD):  # SGD takes sparse gradients without momentum or weight decay
        return all(not g.get("momentum") and not g.get("weight_decay") for g in optimizer.param_groups)
    if isinstance(optimizer, torch.optim.Adagrad):
        return all(not g.get("weight_decay") for g in optimizer.param_groups)
    return isinstance(optimizer, SPARSE_OPTIMIZERS)


def densify(params) -> None:
    """Make every sparse ``.grad`` dense (for optimizers that take only dense gradients)."""
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            p.grad = p.grad.to_dense()


def all_reduce_rows(params, world_size: int) -> list[torch.Tensor]:
    """Average sparse gradients over ranks: an all-gather of each rank's rows and values, summed by row, where
    that moves fewer bytes than a dense all-reduce of the table; else the gradient is made dense and all-reduced
    with the dense ones. Returns the parameters whose gradient is (now) dense, for the caller's dense all-reduce."""
    import torch.distributed as dist

    dense = []
    for p in params:
        if p.grad is None:
            continue
        if not p.grad.is_sparse:
            dense.append(p)
            continue
        rows, values = _rows_of(p.grad)
        count = torch.tensor([len(rows)], device=rows.device)
        counts = [torch.zeros_like(count) for _ in range(world_size)]
        dist.all_gather(counts, count)
        most = int(torch.stack(counts).max())
        width = values[0].numel() if len(values) else p[0].numel()
        if world_size * most * (width + 1) >= p.numel():  # the dense all-reduce moves fewer bytes
            p.grad = p.grad.to_dense()
            dense.append(p)
            continue
        pad_rows = torch.cat([rows, rows.new_full((most - len(rows),), -1)])
        pad_values = torch.cat([values, values.new_zeros((most - len(rows), *values.shape[1:]))])
        all_rows = [torch.empty_like(pad_rows) for _ in range(world_size)]
        all_values = [torch.empty_like(pad_values) for _ in range(world_size)]
        dist.all_gather(all_rows, pad_rows)
        dist.all_gather(all_values, pad_values)
        rows, values = torch.cat(all_rows), torch.cat(all_values)
        real = rows >= 0
        row_gradient(p, values[real].div_(world_size), *torch.unique(rows[real], return_inverse=True))
    return dense
