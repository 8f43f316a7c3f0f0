"""RowAdam: Adam on the rows a batch touched, nothing else; selectable as the model's optimizer."""

import pytest
import torch
from conftest import fake_facts

from recsys.models.mf import BiasedMF
from recsys.solvers.gradient import Gradient
from recsys.solvers.sparse import RowAdam


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_with_every_row_touched_it_is_adam(weight_decay):
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(6, 3, dtype=torch.float64))
    bias = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
    b, bias_b = torch.nn.Parameter(a.detach().clone()), torch.nn.Parameter(bias.detach().clone())
    ours = RowAdam([a, bias], lr=0.05, weight_decay=weight_decay)
    ref = torch.optim.Adam([b, bias_b], lr=0.05, weight_decay=weight_decay)
    for step in range(5):
        target = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(100 + step))
        for (w, v, opt) in ((a, bias, ours), (b, bias_b, ref)):
            opt.zero_grad()
            ((w - target).square().sum() + v.square().sum()).backward()
            opt.step()
    assert torch.allclose(a, b, atol=1e-12) and torch.allclose(bias, bias_b, atol=1e-12)


def test_rows_a_batch_did_not_touch_stay_where_they_are():
    table = torch.nn.Embedding(5, 2)
    opt = RowAdam(table.parameters(), lr=0.1, weight_decay=0.5)
    for rows in ([0, 1], [0, 1], [2]):  # rows 0 and 1 build momentum, then only row 2 is in the batch
        before = table.weight.detach().clone()
        opt.zero_grad()
        table(torch.tensor(rows)).sum().backward()
        opt.step()
    moved = (table.weight != before).any(1).tolist()
    assert moved == [False, False, True, False, False]
    assert opt.state[table.weight]["steps"].tolist() == [2, 2, 1, 0, 0]


def test_a_model_trains_with_it_from_its_optimizer_setting():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    users, items = torch.randint(0, 20, (300,), generator=g), torch.randint(0, 15, (300,), generator=g)
    ratings = 3.0 + 0.5 * torch.randn(20, generator=g)[users] + 0.5 * torch.randn(15, generator=g)[items]
    model = BiasedMF(data=fake_facts(20, 15, 300, float(ratings.mean())), dim=4, reg=1e-4, reg_bias=1e-4,
                     optimizer={"_target_": "recsys.solvers.sparse.RowAdam", "lr": 0.05})
    opt = Gradient().configure_optimizers(model)
    assert isinstance(opt, RowAdam) and model.hparams.optimizer["_target_"] == "recsys.solvers.sparse.RowAdam"
    losses = []
    for batch in torch.arange(300).split(50) * 20:
        loss = model.objective(users[batch], items[batch], ratings[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="Invalid RowAdam setting: lr=-1"):
        RowAdam([torch.nn.Parameter(torch.zeros(2, 2))], lr=-1)


# -- row-sparse gradients (sparse COO, one entry per distinct row) -----------------------------------------------
from recsys.solvers.sparse import (  # noqa: E402
    RowAdagrad,
    RowIndex,
    densify,
    row_gradient,
    takes_sparse_gradients,
)


def _sparse_step(weight, index, grad):
    rows, inverse = RowIndex()(index, len(weight))
    row_gradient(weight, grad, rows, inverse)


@pytest.mark.parametrize("n,batch", [(10, 40), (5000, 40)])  # marks in a buffer, or a sort: the same answer
def test_row_index_gives_what_unique_gives(n, batch):
    finder = RowIndex()
    for seed in range(3):
        index = torch.randint(0, n, (batch,), generator=torch.Generator().manual_seed(seed))
        rows, inverse = finder(index, n)
        want_rows, want_inverse = torch.unique(index, return_inverse=True)
        assert torch.equal(rows, want_rows) and torch.equal(inverse, want_inverse)


def test_row_gradients_sum_repeats_and_name_only_the_batch_rows():
    weight = torch.nn.Parameter(torch.zeros(6, 2, dtype=torch.float64))
    _sparse_step(weight, torch.tensor([4, 1, 4]), torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
                                                                 dtype=torch.float64))
    assert weight.grad.is_sparse and weight.grad._indices()[0].tolist() == [1, 4]
    assert weight.grad.to_dense().tolist() == [[0, 0], [3, 4], [0, 0], [0, 0], [6, 8], [0, 0]]


def test_with_every_row_in_every_batch_sparse_row_adam_is_adam():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64))
    b = torch.nn.Parameter(a.detach().clone())
    ours, ref = RowAdam([a], lr=0.05, weight_decay=0.01), torch.optim.Adam([b], lr=0.05, weight_decay=0.01)
    for step in range(6):
        g = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
        perm = torch.randperm(5, generator=torch.Generator().manual_seed(50 + step))
        _sparse_step(a, perm, g[perm])
        b.grad = g.clone()
        ours.step()
        ref.step()
    assert torch.allclose(a, b, atol=1e-12)


def test_lazy_adam_moves_only_batch_rows_with_their_own_step_counts():
    """Row 0 is in batches 1, 2 and 3; row 1 only in batch 3: row 1's step is Adam's first step (bias-corrected
    with t = 1), written out by hand; rows never in a batch do not move."""
    weight = torch.nn.Parameter(torch.zeros(4, 1, dtype=torch.float64))
    opt = RowAdam([weight], lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    for rows, grads in (([0], [2.0]), ([0], [1.0]), ([0, 1], [-1.0, 3.0])):
        _sparse_step(weight, torch.tensor(rows), torch.tensor(grads, dtype=torch.float64).unsqueeze(1))
        opt.step()
    g = 3.0
    m, v = 0.1 * g, 0.001 * g * g
    first_step = -0.1 * (m / 0.1) / ((v / 0.001) ** 0.5 + 1e-8)
    assert weight[1, 0].item() == pytest.approx(first_step, rel=1e-12)
    assert weight[2:].abs().sum() == 0 and weight[0, 0] != 0
    assert opt.state[weight]["steps"].tolist() == [3, 1, 0, 0]


def test_dense_and_sparse_gradients_give_the_same_lazy_steps():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(8, 2, dtype=torch.float64))
    b = torch.nn.Parameter(a.detach().clone())
    opt_a, opt_b = RowAdam([a], lr=0.05), RowAdam([b], lr=0.05)
    for step in range(4):
        index = torch.randint(0, 8, (5,), generator=torch.Generator().manual_seed(step))
        grad = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(10 + step))
        _sparse_step(a, index, grad)
        b.grad = torch.zeros_like(b).index_add_(0, index, grad)
        opt_a.step()
        opt_b.step()
    assert torch.allclose(a, b, atol=1e-12)


def test_row_adagrad_is_the_row_wise_rule():
    weight = torch.nn.Parameter(torch.ones(3, 2, dtype=torch.float64))
    opt = RowAdagrad([weight], lr=0.5, eps=0.0)
    for grads in ([[1.0, 3.0]], [[2.0, 0.0]]):
        _sparse_step(weight, torch.tensor([1]), torch.tensor(grads, dtype=torch.float64))
        opt.step()
    acc1, acc2 = 5.0, 5.0 + 2.0  # mean of squares: (1 + 9) / 2, then + (4 + 0) / 2
    want = torch.tensor([1 - 0.5 * 1 / acc1 ** 0.5 - 0.5 * 2 / acc2 ** 0.5, 1 - 0.5 * 3 / acc1 ** 0.5],
                        dtype=torch.float64)
    assert torch.allclose(weight[1], want, atol=1e-12) and (weight[[0, 2]] == 1).all()


def test_optimizers_without_sparse_gradients_get_dense_ones():
    weight = torch.nn.Parameter(torch.zeros(4, 2))
    assert takes_sparse_gradients(RowAdam([weight])) and not takes_sparse_gradients(torch.optim.Adam([weight]))
    assert not takes_sparse_gradients(torch.optim.SGD([weight], lr=0.1, momentum=0.9))
    _sparse_step(weight, torch.tensor([2]), torch.ones(1, 2))
    densify([weight])
    assert not weight.grad.is_sparse and weight.grad.sum() == 2


def _ddp_rows_worker(rank, world, init, grads, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        small = torch.nn.Parameter(torch.zeros(4, 3))       # every rank touches most rows: dense all-reduce
        large = torch.nn.Parameter(torch.zeros(1000, 3))    # a few rows each: rows and values are exchanged
        alone = torch.nn.Parameter(torch.zeros(1000, 3))    # the only gradient, and it goes as rows
        for p, (index, values) in zip((small, large), grads[rank]):
            _sparse_step(p, index, values)
        _sparse_step(alone, *grads[rank][1])
        Gradient().all_reduce([small, large], world)  # what a training step does
        Gradient().all_reduce([alone], world)  # nothing left for the dense all-reduce
        if rank == 0:
            torch.save({"small": small.grad.to_dense(), "large": large.grad.to_dense(), "alone": alone.grad.to_dense(),
                        "dense": sum(not p.grad.is_sparse for p in (small, large)),
                        "sparse": large.grad.is_sparse and alone.grad.is_sparse}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.integration  # starts processes
def test_ddp_ranks_exchange_rows_or_all_reduce_and_get_the_mean(tmp_path):
    import torch.multiprocessing as mp

    g = torch.Generator().manual_seed(3)
    grads = [[(torch.tensor([0, 1, 3, 1]), torch.randn(4, 3, generator=g)),
              (torch.tensor([7, 500, 7]), torch.randn(3, 3, generator=g))],
             [(torch.tensor([2, 1, 0]), torch.randn(3, 3, generator=g)),
              (torch.tensor([500, 999]), torch.randn(2, 3, generator=g))]]
    want = {name: sum(torch.zeros(n, 3).index_add_(0, *grads[r][k]) for r in range(2)) / 2
            for k, (name, n) in enumerate((("small", 4), ("large", 1000)))}
    out = tmp_path / "rows.pt"
    mp.spawn(_ddp_rows_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", grads, out), nprocs=2)
    got = torch.load(out, weights_only=True)
    assert got["dense"] == 1 and got["sparse"]  # the small table went dense, the large one stayed rows
    assert torch.allclose(got["small"], want["small"], atol=1e-6)
    assert torch.allclose(got["large"], want["large"], atol=1e-6)
    assert torch.allclose(got["alone"], want["large"], atol=1e-6)
