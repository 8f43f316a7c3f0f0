"""The model contract: a model declares only its own hyperparameters, and a half-built model cannot exist."""

import pytest
import torch
from conftest import fake_facts

from recsys.models.base import Model
from recsys.models.nets import Bilinear
from recsys.solvers.gradient import Gradient
from recsys.system import System


class Dot(Model):
    """The smallest model a user could write: s = P_uᵀQ_i, squared error."""

    def __init__(self, dim: int = 3):
        super().__init__()
        self.net = Bilinear(self.data.num_users, self.data.num_items, dim, bias=False, init_std=0.1)

    def forward(self, users, items):
        return self.net(users, items)

    def objective(self, users, items, ratings):
        return (ratings - self.net(users, items)).square().mean()


def test_a_model_gets_its_data_facts_optimizer_and_solver_from_one_call():
    facts = fake_facts(4, 3, user_counts=torch.tensor([1, 0, 2, 5]))
    model = Dot(data=facts, optimizer={"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9}, dim=2)
    assert model.data is facts and model.net.user.weight.shape == (4, 2)
    assert dict(model.hparams) == {"data": facts.as_dict(), "solver": "gradient", "dim": 2,
                                   "optimizer": {"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9}}
    assert model.user_seen.tolist() == [True, False, True, True]
    opt = Gradient().configure_optimizers(model)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    # the class's default optimizer when none is given, kept as primitives
    assert Dot(data=facts).hparams.optimizer == Model.default_optimizer


def test_a_model_without_data_facts_cannot_be_built():
    with pytest.raises(TypeError, match=r"Dot needs data=...: the datamodule's DataFacts"):
        Dot(dim=2)


def test_a_model_missing_its_math_cannot_be_built():
    class NoForward(Model):
        def objective(self, users, items, ratings):
            return ratings.sum()

    with pytest.raises(TypeError, match="abstract method.*forward"):
        NoForward(data=fake_facts())
    with pytest.raises(TypeError, match="NoObjective declares solver 'gradient' but does not implement objective"):
        class NoObjective(Model):  # noqa: F841 - refused where it is defined
            def forward(self, users, items):
                return users.float()


@pytest.mark.parametrize("body,match", [
    # the declarations (task, solvers, training_input) and the hooks the declared solvers need
    ("    task = 'regression'\n", r"task='regression': declare one of \['rating', 'ranking'\]"),
    ("    solvers = ('gradient', 'newton')\n", "solvers=.*declare a tuple of one or more of"),
    ("    solvers = 'gradient'\n", "solvers='gradient': declare a tuple"),
    ("    training_input = 'triples'\n", "training_input='triples': declare one of"),
    ("    solvers = ('als',)\n", "declares solver 'als' but does not implement least_squares"),
    ("    solvers = ('closed_form',)\n", "declares solver 'closed_form' but does not implement fit_closed_form"),
    # the __init__ signature: explicit hyperparameters with defaults, none named as a shared argument
    ("    def __init__(self, **kw):\n        super().__init__()\n", "declare each hyperparameter explicitly"),
    ("    def __init__(self, dim: int):\n        super().__init__()\n", "give it a default"),
    ("    def __init__(self, optimizer: str = 'adam'):\n        super().__init__()\n",
     "are the shared arguments every model receives"),
])
def test_a_model_class_that_breaks_the_contract_is_refused_when_defined(body, match):
    with pytest.raises(TypeError, match=match):
        exec(f"class Bad(Dot):\n{body}", {"Dot": Dot})


def test_the_contract_refuses_an_undeclared_solver_with_one_message():
    class Ranked(Dot):
        task = "ranking"

    with pytest.raises(ValueError, match=r"model.solver='als': Ranked is fitted by model.solver=gradient only"):
        Ranked(data=fake_facts(), solver="als")
    assert Ranked(data=fake_facts()).hparams.solver == "gradient"  # the first declared solver is the default


def test_pairs_as_training_input_need_sampled_negatives():
    class Pairwise(Dot):
        training_input = "pairs"

    with pytest.raises(TypeError, match="Pairwise declares training_input='pairs' but negatives_per_positive"):
        Pairwise(data=fake_facts())


def test_regularizers_are_read_from_the_signature():
    from recsys import validation
    from recsys.validation import NonNegative, PositiveReg, Reg

    def settings(dim: int = 3, reg: Reg = 0.1, reg_bias: Reg | None = None, strong: PositiveReg = 1.0,
                 init_std: NonNegative = 0.1):
        pass

    assert validation.regularizers(settings) == ("reg", "reg_bias", "strong")
    with pytest.raises(ValueError, match="model.reg=-1: must be >= 0"):
        validation.check("model.reg", validation.hints(settings)["reg"], -1)


def test_hyperparameters_must_be_primitives():
    with pytest.raises(TypeError, match=r"model.dim=tensor\(3\): hyperparameters are numbers"):
        Dot(data=fake_facts(), dim=torch.tensor(3))


def test_the_base_system_cannot_be_initialized_outside_the_contract():
    with pytest.raises(TypeError, match="built by calling its class"):
        Model.__init__(object.__new__(Dot))


def test_models_and_solvers_never_reach_into_the_trainers_datamodule():
    """Training data reaches a model through the contract (setup_interactions), never trainer.datamodule."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "recsys"
    offenders = [f"{p.relative_to(root)}:{n}" for folder in ("models", "solvers") for p in (root / folder).glob("*.py")
                 for n, line in enumerate(p.read_text().splitlines(), 1) if ".datamodule" in line]
    assert not offenders, offenders


class Scaled(Dot):
    """A model whose forward adds a term a factor-table shortcut would miss: the defaults must still be exact."""

    def forward(self, users, items):
        return 2.0 * self.net(users, items) + 0.5 * users.float()


def test_every_optional_hook_has_a_default_that_is_correct_for_any_model():
    from recsys.data.interactions import Interactions

    facts = fake_facts(4, 3)
    model = Scaled(data=facts)
    model.attach_interactions(Interactions(torch.tensor([0, 1]), torch.tensor([2, 0]), torch.ones(2), 4, 3))
    model.track(torch.tensor([0]), torch.tensor([1]))
    model.refresh()
    users = torch.arange(4)
    pairs = model(users.repeat_interleave(3), torch.arange(3).repeat(4)).view(4, 3)
    torch.testing.assert_close(model.score_all_items(users), pairs)  # the generic path calls forward
    assert model.factor_tables() is None and model.least_squares() is None and model.chain() is None
    assert not model.has_closed_form_gradients() and System(model).automatic_optimization
    with pytest.raises(NotImplementedError, match="Scaled cannot fold in a user"):
        model.fold_in(torch.tensor([0]), torch.tensor([4.0]))
    with pytest.raises(NotImplementedError, match="Scaled has no factor tables"):
        model.add_user_row()


def test_user_histories_saved_before_they_kept_ratings_load_with_ones():
    """EASE and SVD++ checkpoints written before Histories kept ratings still load, every entry a 1 (binary X)."""
    from recsys.models.nets import Histories

    old = {"indptr": torch.tensor([0, 1, 1, 3]), "items": torch.tensor([2, 0, 1])}
    loaded = Histories(1)
    loaded.load_state_dict(old)
    assert torch.equal(loaded.items, old["items"]) and torch.equal(loaded.values, torch.ones(3))
    dense = loaded.dense(torch.tensor([0, 2]), 3, torch.float32, ratings=True)
    assert torch.equal(dense, torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]))


def test_the_math_imports_no_lightning_and_one_system_trains_every_model():
    """Models and solvers are plain modules (no Lightning, no torchmetrics import); the one LightningModule of the
    package is recsys.system.System, which delegates to the model it wraps."""
    import ast
    from pathlib import Path

    import lightning as L

    import recsys

    root = Path(recsys.__file__).parent
    for path in [*root.glob("models/*.py"), *root.glob("solvers/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in ("lightning", "torchmetrics") for n in names), f"{path} imports {names}"
    systems = [f"{p.relative_to(root).as_posix()}:{node.name}" for p in root.rglob("*.py")
               for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, ast.ClassDef)
               and any(ast.unparse(base).endswith("LightningModule") for base in node.bases)]
    assert systems == ["system.py:System"]
    facts = fake_facts(4, 3)
    model = Dot(data=facts)
    assert not isinstance(model, L.LightningModule)
    system = System(model)
    users, items = torch.tensor([0, 1]), torch.tensor([2, 0])
    torch.testing.assert_close(system(users, items), model(users, items))
    with pytest.raises(TypeError, match="is not a recsys Model"):
        System(torch.nn.Linear(1, 1))
