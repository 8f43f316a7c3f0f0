"""RowAdam: Adam on the rows a batch touched, nothing else; selectable as the model's optimizer."""

import pytest
import torch
from conftest import fake_facts

from recsys.models.mf import BiasedMF
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
    opt = model.configure_optimizers()
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
