"""The native CPU kernels (recsys/solvers/native.c): they build here, and a step through them is the torch path's
step (distinct rows, dot products, summed row gradients, lazy Adam) to float tolerance."""

import logging

import pytest
import torch
from conftest import fake_facts

from recsys.models.baseline import Baseline
from recsys.models.mf import BiasedMF
from recsys.solvers import native
from recsys.solvers.gradient import Gradient
from recsys.solvers.sparse import RowIndex


@pytest.fixture
def torch_path(monkeypatch):
    """The torch path: the kernels switched off as a user would (RECSYS_NATIVE=0)."""
    monkeypatch.setenv("RECSYS_NATIVE", "0")


def test_the_kernels_build_here():
    assert native.library() is not None, "native.c did not build (see the warning above)"
    assert native.serves((torch.zeros(2, 2),), (torch.zeros(2, dtype=torch.long),))
    assert not native.serves((torch.zeros(2, 2, dtype=torch.float64),))  # other dtypes take the torch path
    assert not native.serves((torch.zeros(2, 4)[:, ::2],))  # so do strided views


@pytest.mark.parametrize("n,batch", [(10, 40), (5000, 40), (200_000, 100), (64, 64), (65, 1)])
def test_the_bitmap_gives_what_unique_gives(n, batch):
    finder = RowIndex()
    for seed in range(3):
        index = torch.randint(0, n, (batch,), generator=torch.Generator().manual_seed(seed))
        index[0] = n - 1  # the last row: the bitmap's last word
        rows, inverse = finder(index, n)
        want_rows, want_inverse = torch.unique(index, return_inverse=True)
        assert torch.equal(rows, want_rows) and torch.equal(inverse, want_inverse)


def _data(num_users=300, num_items=500, n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    users = torch.randint(0, num_users, (n,), generator=g)
    items = (torch.rand(n, generator=g) ** 2 * num_items).long()  # skewed: repeated item rows in a batch
    ratings = torch.randint(1, 6, (n,), generator=g).float()
    return users, items, ratings


def _train(model_cls, steps, batch=512, **kwargs):
    users, items, ratings = _data()
    torch.manual_seed(0)
    kwargs = {"dim": 16, **kwargs} if model_cls is BiasedMF else kwargs
    model = model_cls(data=fake_facts(300, 500, len(ratings), float(ratings.mean())), **kwargs)
    solver, opt = Gradient(), Gradient().configure_optimizers(model)
    losses = []
    for step in range(steps):
        lo = step * batch % len(ratings)
        losses.append(float(solver.step(model, opt, (users[lo:lo + batch], items[lo:lo + batch],
                                                     ratings[lo:lo + batch]))))
    return model, opt, losses


def _state(model, opt):
    return {**{k: v.detach().clone() for k, v in model.state_dict().items()},
            **{f"{i}.{k}": v.clone() for i, s in enumerate(opt.state.values()) for k, v in s.items()}}


@pytest.mark.parametrize("model_cls,kwargs", [
    (BiasedMF, {"reg": 0.05, "reg_bias": 0.01}),
    (BiasedMF, {"reg": 0.0, "use_bias": False, "optimizer": {"_target_": "recsys.solvers.sparse.RowAdam",
                                                            "lr": 0.01, "weight_decay": 0.1}}),
    (Baseline, {"optimizer": {"_target_": "recsys.solvers.sparse.RowAdam", "lr": 0.01}}),  # bias tables only
])
def test_a_native_step_is_the_torch_step(model_cls, kwargs, monkeypatch):
    fast, fast_opt, fast_losses = _train(model_cls, 30, **kwargs)
    monkeypatch.setenv("RECSYS_NATIVE", "0")
    slow, slow_opt, slow_losses = _train(model_cls, 30, **kwargs)
    assert fast_losses == pytest.approx(slow_losses, rel=1e-5)
    a, b = _state(fast, fast_opt), _state(slow, slow_opt)
    assert a.keys() == b.keys() and len(fast_opt.state) == sum(p.numel() > 0 for p in fast.parameters())
    # weights, both moments and the per-row step counts, to 0.1% of each one's scale: Adam's normalized steps
    # magnify float rounding where a gradient is near zero; a missing term moves a weight by lr a step
    for key in (k for k in a if a[k].numel()):
        assert (a[key].float() - b[key].float()).abs().max() <= 1e-3 * b[key].float().abs().max() + 1e-9, key
    assert fast_losses[-1] < fast_losses[0]


def test_an_index_out_of_range_raises_instead_of_reading_past_the_table():
    model = BiasedMF(data=fake_facts(10, 8, 100, 3.0), dim=4)
    users, items = torch.tensor([1, 2, 10]), torch.tensor([0, 1, 2])
    with pytest.raises(IndexError, match="out of range at batch position 2"):
        model.gradients(users, items, torch.ones(3))
    with pytest.raises(IndexError, match="out of range"):
        RowIndex()(torch.tensor([3, -1]), 8)


def test_the_library_is_built_once_per_source_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_NATIVE_CACHE", str(tmp_path))
    path = native.build()
    assert path.parent == tmp_path and path.stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left beside it
    stamp = path.stat().st_mtime_ns
    assert native.build() == path and path.stat().st_mtime_ns == stamp  # found, not rebuilt


def test_where_openmp_cannot_be_built_the_serial_library_is_built_and_kept(tmp_path, monkeypatch):
    """A compiler without OpenMP (here: a flag it rejects) gives the serial build, found again next time: the
    OpenMP build is not retried at every start."""
    monkeypatch.setenv("RECSYS_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_openmp_flags", lambda: ("-fno-such-openmp-flag",))
    monkeypatch.setattr(native, "_state", {})
    path = native.build()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert native.threads() == 0  # loaded: serial
    monkeypatch.setattr(native.subprocess, "run", lambda *a, **k: pytest.fail("rebuilt"))
    assert native.build() == path


def test_without_a_compiler_the_torch_path_serves_with_one_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("RECSYS_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that fails
    monkeypatch.setenv("PATH", "/nonexistent")  # and no cc, gcc or clang to find
    monkeypatch.setattr(native, "_state", {})
    with caplog.at_level(logging.WARNING, logger="recsys.solvers.native"):
        assert native.library() is None and native.library() is None
    assert len(caplog.records) == 1 and "torch path" in caplog.records[0].getMessage()
    assert not native.serves((torch.zeros(2, 2),))
    _, _, losses = _train(BiasedMF, 5)  # and training goes on, on the torch path
    assert losses[-1] < losses[0]


def test_the_kernels_flush_denormals_inside_and_leave_the_callers_mode_alone():
    weight, grad = torch.full((3, 4), 1e-20), torch.full((3, 4), 1e-30)  # g² = 1e-60: below float32's denormals
    denormal = torch.tensor([1e-39])
    native.adam_rows(weight, torch.zeros(3, 2, 4), torch.zeros(3), torch.tensor([0, 2]), grad[:2], 0.1,
                     (0.9, 0.999), 1e-8, 0.0)
    assert (denormal * 1.0).item() != 0  # torch still computes with denormals: the mode was restored


def test_switched_off_it_is_not_loaded(torch_path):
    assert native.library() is None


@pytest.fixture
def threads():
    """Restores torch's (and so the kernels') thread count after a test that sets it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_kernels_run_on_torchs_threads_and_give_the_serial_result(threads):
    """Built with OpenMP (torch's runtime), the kernels split a batch over torch's threads; each thread owns whole
    rows, so row gradients and updates are the serial ones exactly, the sums of squares to float rounding."""
    if native._openmp_flags():
        torch.set_num_threads(1)
        assert native.threads() == 1
        torch.set_num_threads(3)
        assert native.threads() == 3
    g = torch.Generator().manual_seed(0)
    P, Q = torch.randn(700, 16, generator=g), torch.randn(900, 16, generator=g)
    users, items = torch.randint(0, 700, (3000,), generator=g), (torch.rand(3000, generator=g) ** 3 * 900).long()
    BU, BI = torch.randn(700, 1, generator=g), torch.randn(900, 1, generator=g)
    d = torch.randn(3000, generator=g)
    user_rows, item_rows = RowIndex()(users, 700), RowIndex()(items, 900)

    def run():
        score, sums = native.dot_rows(P, Q, users, items, (BU, BI))
        gu, gq, gbu, gbi = native.accumulate_rows(P, Q, users, items, d, 0.03, user_rows[1], item_rows[1],
                                                  len(user_rows[0]), len(item_rows[0]), (BU, BI), 0.02)
        W, M, S = Q.clone(), torch.rand(900, 2, 16, generator=torch.Generator().manual_seed(1)), torch.zeros(900)
        native.adam_rows(W, M, S, item_rows[0], gq, 0.01, (0.9, 0.999), 1e-8, 0.1)
        return score, sums, gu, gq, gbu, gbi, W, M, S

    torch.set_num_threads(1)
    serial = run()
    torch.set_num_threads(4)
    parallel = run()
    for name, a, b in zip(("score", "sums", "user rows", "item rows", "user bias rows", "item bias rows", "weights",
                           "moments", "steps"), serial, parallel):
        if isinstance(a, tuple):
            assert a == pytest.approx(b, rel=1e-9), name
        else:
            assert torch.equal(a, b), name
    # and they are the scores, the gradients and the sums of squares
    assert torch.allclose(parallel[0], (P[users] * Q[items]).sum(1) + BU[users, 0] + BI[items, 0], atol=1e-5)
    want_gu = torch.zeros_like(parallel[2]).index_add_(0, user_rows[1], d[:, None] * Q[items] + 0.03 * P[users])
    want_gbi = torch.zeros_like(parallel[5]).index_add_(0, item_rows[1], d[:, None] + 0.02 * BI[items])
    assert torch.allclose(parallel[2], want_gu, atol=1e-5) and torch.allclose(parallel[5], want_gbi, atol=1e-5)
    want_sums = [float(t.double().square().sum()) for t in (P[users], Q[items], BU[users], BI[items])]
    assert parallel[1] == pytest.approx(want_sums, rel=1e-6)


def test_row_gradients_start_from_zero_whatever_their_memory_held():
    """The kernel zeroes the gradient rows it owns (they come uninitialized): memory just freed with other values
    in it, which the allocator hands back, does not leak into the sums."""
    g = torch.Generator().manual_seed(3)
    P, Q = torch.randn(300, 8, generator=g), torch.randn(400, 8, generator=g)
    users, items = torch.randint(0, 300, (1000,), generator=g), torch.randint(0, 400, (1000,), generator=g)
    BU, BI, d = torch.randn(300, 1, generator=g), torch.randn(400, 1, generator=g), torch.randn(1000, generator=g)
    user_rows, item_rows = RowIndex()(users, 300), RowIndex()(items, 400)
    want = (torch.zeros(len(user_rows[0]), 8).index_add_(0, user_rows[1], d[:, None] * Q[items] + 0.1 * P[users]),
            torch.zeros(len(item_rows[0]), 8).index_add_(0, item_rows[1], d[:, None] * P[users] + 0.1 * Q[items]),
            torch.zeros(len(user_rows[0]), 1).index_add_(0, user_rows[1], d[:, None] + 0.2 * BU[users]),
            torch.zeros(len(item_rows[0]), 1).index_add_(0, item_rows[1], d[:, None] + 0.2 * BI[items]))
    for _ in range(3):
        junk = [torch.full(w.shape, 1e3) for w in want]  # freed below: the allocator's next blocks of these sizes
        del junk
        got = native.accumulate_rows(P, Q, users, items, d, 0.1, user_rows[1], item_rows[1], len(user_rows[0]),
                                     len(item_rows[0]), (BU, BI), 0.2)
        for name, a, b in zip(("user", "item", "user bias", "item bias"), got, want):
            assert torch.allclose(a, b, atol=1e-5), name


def test_tables_in_huge_pages_keep_their_values_and_train_as_the_torch_path(monkeypatch):
    big = native.huge_page_zeros((3000, 700))  # 8.4 MB: anonymous memory advised for huge pages
    assert big.shape == (3000, 700) and not big.any()
    big[-1, -1] = 5.0
    assert big.sum() == 5.0
    param = torch.nn.Parameter(torch.randn(3000, 700))
    values = param.detach().clone()
    native.on_huge_pages(param)
    assert torch.equal(param.detach(), values) and param.is_contiguous()
    monkeypatch.setattr(native, "HUGE_PAGES_FROM", 0)  # every table of the small model in huge pages
    fast, fast_opt, fast_losses = _train(BiasedMF, 20, reg=0.05)
    monkeypatch.setenv("RECSYS_NATIVE", "0")
    slow, slow_opt, slow_losses = _train(BiasedMF, 20, reg=0.05)
    assert fast_losses == pytest.approx(slow_losses, rel=1e-5)
    for key, want in slow.state_dict().items():
        assert torch.allclose(fast.state_dict()[key], want, atol=1e-5), key


def test_a_resumed_row_adam_continues_as_the_uninterrupted_one_with_its_tables_in_huge_pages(monkeypatch):
    """Loading RowAdam's state moves the tables and moments back into huge pages, keeping every value: the resumed
    optimizer takes the uninterrupted one's steps."""
    monkeypatch.setattr(native, "HUGE_PAGES_FROM", 0)
    users, items, ratings = _data()

    def steps(model, opt, lo, hi):
        for step in range(lo, hi):
            b = slice(step * 256 % len(ratings), step * 256 % len(ratings) + 256)
            Gradient().step(model, opt, (users[b], items[b], ratings[b]))

    def fresh():
        torch.manual_seed(0)
        model = BiasedMF(data=fake_facts(300, 500, len(ratings), float(ratings.mean())), dim=16, reg=0.05)
        return model, Gradient().configure_optimizers(model)

    whole, whole_opt = fresh()
    steps(whole, whole_opt, 0, 20)
    first, first_opt = fresh()
    steps(first, first_opt, 0, 10)
    saved_model, saved_opt = first.state_dict(), first_opt.state_dict()
    resumed, resumed_opt = fresh()
    resumed.load_state_dict(saved_model)
    resumed_opt.load_state_dict(saved_opt)
    moved = [s["moments"] for s in resumed_opt.state.values()]
    assert moved and all(torch.equal(a, b["moments"]) for a, b in zip(moved, saved_opt["state"].values()))
    steps(resumed, resumed_opt, 10, 20)
    for key, want in whole.state_dict().items():
        assert torch.allclose(resumed.state_dict()[key], want, atol=1e-6), key
