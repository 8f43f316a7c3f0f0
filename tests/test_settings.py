"""Every setting is checked before any data is read, with an error naming the key, the value and what is allowed."""

import json

import pytest
from hydra.errors import InstantiationException

from recsys.training import train

BAD = [
    ("data.batch_size=0", "data.batch_size=0: must be >= 1 or null"),
    ("data.batch_size=-5", "data.batch_size=-5: must be >= 1 or null"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0: must be one of [-1] or must be >= 1"),
    ("model.dim=0", "model.dim=0: must be >= 1"),
    ("model.dim=-3", "model.dim=-3: must be >= 1"),
    ("model.optimizer.lr=0", "model.optimizer.lr=0: must be > 0"),
    ("model.reg=-0.1", "model.reg=-0.1: must be >= 0"),
    (("model.solver=als", "model.reg=0"), "model.reg=0, model.reg_bias=0.01 with model.solver=als: ALS needs"),
    ("data.test_ratio=0", "data.test_ratio=0: must be > 0"),
    ("data.val_ratio=1.5", "data.val_ratio=1.5: must be < 1"),
    (("data.test_ratio=0.6", "data.val_ratio=0.5"), "must each lie in [0, 1) and sum to less than 1"),
    ("seed=abc", "seed='abc': must be an integer"),
    ("data.split_seed=1.5", "data.split_seed=1.5: must be an integer"),
    ("callbacks.early_stopping.patience=-1", "callbacks.early_stopping.patience=-1: must be >= 0"),
    ("model.solver=newton", "model.solver='newton': BiasedMF is fitted by model.solver=gradient or "
                            "model.solver=als only"),
    ("data.split=nope", "data.split='nope': must be one of ['random', 'user', 'temporal', 'leave_last']"),
    ("data.duplicates=first", "data.duplicates='first': must be one of ['last', 'error']"),
    ("resume=maybe", "resume='maybe': must be one of ['auto', 'never', 'must']"),
    ("progress=loud", "progress='loud': must be one of ['auto', 'bar', 'epoch', 'none']"),
    ("model.reg_scaling=both", "model.reg_scaling='both': must be one of ['row', 'frequency']"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[b[0] if isinstance(b[0], str) else b[0][1] for b in BAD])
def test_a_bad_setting_fails_before_any_data_is_read(compose_cfg, tmp_path, overrides, message):
    overrides = (overrides,) if isinstance(overrides, str) else overrides
    with pytest.raises((ValueError, InstantiationException)) as err:
        train(compose_cfg(*overrides))
    assert message in str(err.value)
    failed = json.loads((tmp_path / "run" / "failed.json").read_text())
    assert failed["phase"] == "config" and message in failed["message"]
    assert not list(tmp_path.rglob("parsed-*.npz")) and not (tmp_path / "run" / "run_info.json").exists()


def test_a_new_model_gets_its_checks_from_its_own_signature():
    from typing import Annotated

    from conftest import fake_facts

    from recsys.models.base import Model
    from recsys.validation import AtLeast, OneOf

    class Toy(Model):
        def __init__(self, width: Annotated[int, AtLeast(2)] = 2, kind: Annotated[str, OneOf("a", "b")] = "a"):
            super().__init__()

        def forward(self, users, items):
            return users.float()

        def objective(self, users, items, ratings):
            return ratings.mean()

    with pytest.raises(ValueError, match=r"model.width=1: must be >= 2"):
        Toy.check_settings({"width": 1})
    with pytest.raises(ValueError, match=r"model.kind='c': must be one of \['a', 'b'\]"):
        Toy(data=fake_facts(), kind="c")
    Toy.check_settings({"width": 3, "kind": "b", "solver": "gradient"})
