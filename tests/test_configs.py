"""The configs as train.py composes them: each group holds its own keys, each default lives in one place."""

import copy
import functools
import inspect
import re
import subprocess
import sys

import pytest
import yaml
from conftest import CONFIGS, fake_facts, model_configs
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from recsys.models.base import SHARED, Model

ROOT = CONFIGS.parent
MODELS = model_configs()
DATA = sorted(p.stem for p in (CONFIGS / "data").glob("[!_]*.yaml"))


def composed(*overrides: str, hydra: bool = False):
    """train.yaml composed with ``overrides``; each distinct composition once per process (a copy each call)."""
    return copy.deepcopy(_composed(overrides, hydra))


@functools.cache
def _composed(overrides: tuple[str, ...], hydra: bool):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra)


@pytest.mark.parametrize("name", MODELS)
def test_model_config_keys_are_the_class_parameters_with_its_defaults(name):
    spec = yaml.safe_load(MODELS[name].read_text())
    cls = get_class(spec.pop("_target_"))
    # any module under recsys.models (recsys.load imports model classes only from there); its name is free
    assert issubclass(cls, Model) and cls.__module__.startswith("recsys.models.")
    params = {k: p.default for k, p in list(inspect.signature(cls.__init__).parameters.items())[1:]}
    steps = "gradient" in cls.solvers  # an optimizer block only where an optimizer steps the model
    assert set(spec) == set(params) | {"solver"} | ({"optimizer"} if steps else set()), \
        "model configs hold only the model's own keys, its solver and (fitted by gradient) its optimizer"
    # the YAML shows the class's defaults; they may not drift apart
    assert {k: spec[k] for k in params} == params
    assert spec["solver"] == cls.solvers[0], "the config's solver is the class's default (its first declared)"
    cls(data=fake_facts(), solver=spec["solver"])
    if steps:
        assert {k: v for k, v in spec["optimizer"].items() if k != "_partial_"} == cls.default_optimizer
        assert spec["optimizer"]["_partial_"] is True
    assert not MODELS[name].read_text().startswith("# @package"), "a model config is not a global package"


@pytest.mark.parametrize("name", MODELS)
def test_every_model_config_instantiates_with_fake_data_facts(name):
    cfg = composed(f"model={name}")
    model = instantiate(cfg.model, data=fake_facts())
    assert isinstance(model, Model) and set(SHARED) <= set(model.hparams)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_has_an_optuna_search_space_over_its_own_keys(name):
    cfg = composed("hparams_search=optuna", f"model={name}", hydra=True)
    space = dict(cfg.hydra.sweeper.params) if "params" in cfg.hydra.sweeper else {}
    assert space, f"add configs/hparams_search/space/optuna_{name}.yaml"
    for key in space:
        node, *path = key.split(".")
        assert node == "model" and path, key
        value = cfg.model
        for part in path:
            assert part in value, f"{key} is not a key of model={name}"
            value = value[part]


def test_the_pmf_models_run_full_batch_by_default_and_regimes_switch():
    for name in ("pmf", "pmf_sigmoid"):
        cfg = composed(f"model={name}")
        assert (cfg.data.batch_size, cfg.trainer.max_epochs, cfg.callbacks.early_stopping.patience) == (None, 800, 50)
    cfg = composed("model=pmf", "regime=minibatch")
    assert (cfg.data.batch_size, cfg.trainer.max_epochs, cfg.callbacks.early_stopping.patience) == (4096, 60, 5)
    cfg = composed("model=mf", "regime=full_batch")
    assert cfg.data.batch_size is None and cfg.model.dim == 64
    assert composed("model=mf").data.batch_size == 4096


@pytest.mark.parametrize("name", DATA)
def test_every_data_config_extends_the_base_and_names_its_data_set(name):
    text = (CONFIGS / "data" / f"{name}.yaml").read_text()
    assert "  - _ratings" in text
    cfg = composed(f"data={name}")
    assert cfg.data.name != "???" and cfg.data.rating_min < cfg.data.rating_max
    assert set(cfg.data) == set(composed().data), "every data config has the same keys"


def test_empty_search_space_is_refused_before_any_trial():
    from omegaconf import OmegaConf

    from recsys.sweeps import MissingSearchSpace, RequireSearchSpace

    cfg = composed("hparams_search=optuna", "model=mf", hydra=True)
    RequireSearchSpace().on_multirun_start(cfg)  # mf has its space: nothing to refuse
    cfg.hydra.sweeper.params = None
    OmegaConf.update(cfg, "hydra.runtime.choices.model", "newmodel")
    with pytest.raises(MissingSearchSpace, match="configs/hparams_search/space/optuna_newmodel.yaml"):
        RequireSearchSpace().on_multirun_start(cfg)
    cfg.hydra.overrides.task = ["model.reg=interval(0.01, 0.1)"]  # ranges given on the command line
    RequireSearchSpace().on_multirun_start(cfg)


@pytest.mark.integration
def test_optuna_on_a_model_without_a_search_space_fails_naming_the_file(tmp_path):
    extra = tmp_path / "configs" / "model"
    extra.mkdir(parents=True)
    (extra / "newmodel.yaml").write_text((CONFIGS / "model" / "baseline.yaml").read_text())
    res = subprocess.run(
        [sys.executable, "train.py", "-m", "hparams_search=optuna", "model=newmodel",
         f"hydra.searchpath=[file://{tmp_path / 'configs'}]", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "Add configs/hparams_search/space/optuna_newmodel.yaml" in res.stderr
    assert not list((tmp_path / "sweep").glob("*/metrics.json"))  # refused before any trial ran


def test_readme_layout_lists_every_module():
    """Every module but the models' own files, which the docs' generated model table lists instead."""
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    layout = layout[:layout.index("\n## ", 4)]
    model_files = {yaml.safe_load(p.read_text())["_target_"].rsplit(".", 1)[0] for p in MODELS.values()}
    for path in sorted((ROOT / "recsys").rglob("*.py")):
        rel = path.relative_to(ROOT)
        if path.name == "__init__.py" or ".".join(rel.with_suffix("").parts) in model_files:
            continue
        assert path.name in layout, f"README layout misses {rel}"
    for name in ("train.py", "configs/", "tests/", "benchmarks/"):
        assert name in layout
    assert "../" not in layout and "shared/" not in layout  # nothing outside the repository


def _readme_defaults():
    import re

    table = (ROOT / "docs" / "configuration.md").read_text()
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        key, default = cells[0].strip("`"), cells[1]
        if not default.startswith("`"):
            continue  # documentation only ("per model")
        for value, under in re.findall(r"`([^`]*)`(?:\s*\(([^)]*)\))?", default):
            yield key, yaml.safe_load(value), [o.strip() for o in under.split(",") if o.strip()]


def test_docs_configuration_table_gives_the_defaults_the_configs_hold(monkeypatch):
    from omegaconf import OmegaConf

    monkeypatch.delenv("RECSYS_DATA", raising=False)
    checked, configs = set(), {}
    for key, value, overrides in _readme_defaults():
        if tuple(overrides) not in configs:
            configs[tuple(overrides)] = composed(*overrides, hydra=True)
        cfg = configs[tuple(overrides)]
        groups = cfg.hydra.runtime.choices
        actual = groups.get(key) if "." not in key and key in groups else OmegaConf.select(cfg, key)
        assert actual == value, \
            f"docs/configuration.md says {key}={value!r} under {overrides or 'the defaults'}; configs: {actual!r}"
        checked.add(key)
    top = yaml.safe_load((CONFIGS / "train.yaml").read_text())
    keys = {f"{k}.{sub}" if isinstance(v, dict) else k for k, v in top.items() if k not in ("defaults", "output_dir")
            for sub in (v if isinstance(v, dict) else [None])}
    assert keys <= checked, f"docs/configuration.md misses {sorted(keys - checked)}"
    assert {"model.reg", "model.reg_bias", "data.batch_size", "trainer.max_epochs"} <= checked


def test_docs_results_tables_are_the_benchmarks_files_and_the_readme_quotes_their_rows():
    """docs/results.md holds benchmarks/results/*.md row for row; the README's headline rows are rows of them."""
    docs = (ROOT / "docs" / "results.md").read_text()
    files = sorted((ROOT / "benchmarks" / "results").glob("*.md"))
    assert {f.stem for f in files} >= {"ml100k", "ml1m", "scaling", "als_speed", "ranking_ml100k", "ranking_ml1m"}
    measured = set()
    for path in files:
        rows = [line for line in path.read_text().splitlines() if line.startswith("|")]
        assert rows, path
        missing = [row for row in rows if row not in docs]
        assert not missing, f"docs/results.md lacks {path.name}'s rows (copy the file's table): {missing[:2]}"
        measured.update(rows)
    readme = (ROOT / "README.md").read_text()
    results = readme[readme.index("## Results"):readme.index("## Adding a model")]
    quoted = [line for line in results.splitlines() if line.startswith("| ") and "±" in line]
    assert len(quoted) >= 10, "the README shows the best rows of each data set's table"
    stale = [row for row in quoted if row not in measured]
    assert not stale, f"README rows that no benchmarks/results file holds: {stale[:2]}"


def test_the_docs_tables_are_generated_from_the_classes_when_the_site_is_built():
    """docs/models.md and docs/adding-a-model.md hold markers the mkdocs hook (docs/hooks.py) fills from the code:
    a row per model config, a row per contract hook; adding a model edits no page."""
    from recsys.models import catalogue

    for page, marker in (("models.md", catalogue.MODEL_TABLE), ("adding-a-model.md", catalogue.HOOK_TABLE)):
        text = (ROOT / "docs" / page).read_text()
        assert marker in text, page
        assert marker not in catalogue.render(text)
    assert {e["name"] for e in catalogue.entries()} == set(MODELS)
    table = catalogue.table()
    assert all(f"| `{name}` |" in table for name in MODELS)
    assert all(f"| `{hook}(" in catalogue.hooks() for hook in catalogue.HOOKS)
    assert "docs/hooks.py" in (ROOT / "mkdocs.yml").read_text()


def test_readme_is_short_and_links_the_model_table():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    models = readme[readme.index("## Models"):readme.index("## Results")]
    assert "docs/models.md#the-models" in models  # the README links the table; adding a model never edits it
    docs = ROOT / "docs"
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).exists(), link
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    pages = {next(iter(item.values())) for item in nav}
    assert pages == {p.name for p in docs.glob("*.md")}, "every docs page is in mkdocs.yml's nav, and only those"


PRESETS = sorted((CONFIGS / "experiment").glob("ml*_*.yaml"))
SWEEP_EXPRESSION = re.compile(r"^(choice|range|interval|tag)\(")


def in_sweep(value, expression: str) -> bool:
    """Whether ``value`` lies in a Hydra sweep expression: choice(a,b,...), range(lo,hi[,step]) or
    interval(lo,hi), each possibly inside tag(...)."""
    inner = re.search(r"(choice|range|interval)\(([^()]*)\)", expression)
    kind, items = inner.group(1), [float(x) for x in inner.group(2).split(",")]
    if kind == "choice":
        return float(value) in items
    return items[0] <= float(value) < items[1] if kind == "range" else items[0] <= float(value) <= items[1]


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_presets_open_with_the_search_that_found_them_and_tune_only_its_space(path):
    """configs/experiment/<data>_<model>.yaml: found by hparams_search=optuna on val/rmse; its values lie in the
    model's search space or are the settings the search ran with, and the run composes with them."""
    data, model = path.stem.split("_", 1)
    text = path.read_text()
    search = f"python train.py -m hparams_search=optuna data={data} model={model}"
    header = text.split("defaults:")[0].splitlines()
    if not any(search in line for line in header):  # or chosen among listed runs: the chosen run's settings
        run = f"python train.py data={data} model={model}"
        runs = [line for line in header if run in line]
        chosen = [line for line in runs if "(chosen)" in line]
        assert len(runs) >= 2 and len(chosen) == 1, f"{path.name}: open with the search or the runs that chose it"
        settings = dict(arg.split("=", 1) for arg in chosen[0].split(run)[1].split("#")[0].split())
        cfg = composed(f"experiment={path.stem}")
        assert {k: str(OmegaConf.select(cfg, k)) for k in settings} == settings
        return
    command = next(line for line in header if search in line)
    args = dict(arg.strip("'\"").split("=", 1) for arg in command[command.index(search) + len(search):].split()
                if "=" in arg and arg.split("=")[0] not in ("logger", "progress", "eval.ranking")
                and not arg.startswith("hydra."))
    # a key given a sweep expression on the command line (choice(...), tag(log, interval(...))) was searched
    # over that range instead of the space file's; any other key is a setting the search ran with
    swept = {key for key, value in args.items() if SWEEP_EXPRESSION.match(value)}
    ran_with = {key: value for key, value in args.items() if key not in swept}
    cfg = composed(f"experiment={path.stem}")
    for key, value in ran_with.items():  # the preset keeps the settings its search ran with
        assert str(OmegaConf.select(cfg, key)) == value, key
    assert cfg.data.name == {"ml100k": "ml-100k", "ml1m": "ml-1m"}[data]
    assert cfg.model._target_ == yaml.safe_load((CONFIGS / "model" / f"{model}.yaml").read_text())["_target_"]
    space = yaml.safe_load((CONFIGS / "hparams_search" / "space" / f"optuna_{model}.yaml").read_text())
    tuned = yaml.safe_load(text)["model"]

    def keys(node, prefix="model"):
        for k, v in node.items():
            yield from keys(v, f"{prefix}.{k}") if isinstance(v, dict) else [f"{prefix}.{k}"]

    searched = set(space) | swept | set(ran_with)
    assert set(keys(tuned)) <= searched, "a preset sets only what its search tuned or ran with"
    for key in swept:  # a value found by a command-line range lies in it
        assert in_sweep(OmegaConf.select(cfg, key), args[key]), (key, args[key])
    model_cfg = instantiate(cfg.model, data=fake_facts())
    assert isinstance(model_cfg, Model)


@pytest.mark.parametrize("path", sorted((CONFIGS / "data_defaults").glob("*.yaml")), ids=lambda p: p.stem)
def test_data_defaults_apply_to_their_data_set_and_model_only(path):
    """configs/data_defaults/<data>_<model>.yaml sets its keys for that pair; the command line and a preset
    still win, ~data_defaults drops them, and the model's other data sets keep the model's own defaults."""
    data, model = path.stem.split("_", 1)
    keys = yaml.safe_load(path.read_text())
    flat = {f"{section}.{k}": v for section, node in keys.items() for k, v in node.items()}
    with_defaults = composed(f"data={data}", f"model={model}")
    dropped = composed(f"data={data}", f"model={model}", "~data_defaults")
    other = composed("data=ml100k" if data != "ml100k" else "data=ml1m", f"model={model}")
    for key, value in flat.items():
        assert OmegaConf.select(with_defaults, key) == value, key
        assert OmegaConf.select(dropped, key) == OmegaConf.select(other, key) != value, key
        assert OmegaConf.select(composed(f"data={data}", f"model={model}", f"{key}=7"), key) == 7, key


def test_every_preset_says_whether_it_refits():
    """Presets state refit: true (fit again on train+val once validation chose) or false, never by omission."""
    for path in sorted((CONFIGS / "experiment").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        assert isinstance(spec.get("refit"), bool), f"{path.name} does not say refit: true|false"


def test_no_default_of_the_configs_is_written_again_in_the_code():
    """A key the configs hold is read, never ``cfg.get(key, <default>)``: each default lives in its YAML only."""
    keys = set(yaml.safe_load((CONFIGS / "train.yaml").read_text())) | set(
        yaml.safe_load((CONFIGS / "trainer" / "default.yaml").read_text())) | set(
        yaml.safe_load((CONFIGS / "data" / "_ratings.yaml").read_text()))
    keys |= set(yaml.safe_load((CONFIGS / "train.yaml").read_text())["eval"])
    found = []
    for path in sorted((ROOT / "recsys").rglob("*.py")):
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            for key, default in re.findall(r"""\.get\(["'](\w+)["'],\s*([^)\s][^)]*)\)""", line):
                if key in keys and default.strip() != "None":
                    found.append(f"{path.relative_to(ROOT)}:{line_no}: .get({key!r}, {default})")
    assert not found, found
