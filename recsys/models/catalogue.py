"""The model table of docs/models.md, generated from what each model class declares.

    python -m recsys.models.catalogue            # print the tables

The docs site puts them into docs/models.md and docs/adding-a-model.md when it is built (``mkdocs build`` or
``serve``: docs/hooks.py calls :func:`render` on every page), so no committed file holds a copy that could go
stale and adding a model edits no page.

The model table has one row per ``configs/model/<name>.yaml``: the config name users type (``model=<name>``), the
first line of the class docstring, its ``task``, ``solvers`` (the first the default), ``training_input`` and the
hyperparameters its signature annotates as regularizers. The hook table is the contract's hooks
(:data:`HOOKS`) with each one's signature and the first paragraph of its docstring in
:class:`~recsys.models.base.Model`, the one place they are written,
so adding a model adds its row here, never a line in the README or the docs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "model"
MODEL_TABLE = "<!-- model-table: generated from the model classes when the site is built -->"
HOOK_TABLE = "<!-- hook-table: generated from Model's docstrings when the site is built -->"
#: the contract's hooks, in the order a model author meets them
HOOKS = ("forward", "objective", "setup_interactions", "fit_closed_form", "track", "refresh", "gradients",
         "negatives_per_positive", "least_squares", "chain", "record", "fallback", "all_item_scores",
         "ranking_factors", "factor_tables", "item_similarity", "fold_in", "add_user_row", "predict",
         "register_data_buffer")


def entries(configs: Path = CONFIGS) -> list[dict]:
    """Each model config's class and declarations, by config name."""
    from hydra.utils import get_class

    from recsys import validation

    out = []
    for path in sorted(configs.glob("*.yaml")):
        cls = get_class(yaml.safe_load(path.read_text())["_target_"])
        summary = (cls.__doc__ or "").strip().splitlines()
        out.append({"name": path.stem, "class": f"{cls.__module__}.{cls.__name__}",
                    "what": summary[0] if summary else "", "task": cls.task, "solvers": cls.solvers,
                    "training_input": cls.training_input,
                    "regularizers": validation.regularizers(cls.__init__)})
    return out


def table(configs: Path = CONFIGS) -> str:
    """The markdown table of :func:`entries`."""
    rows = ["| model | what | task | solvers (default first) | trains on | regularizers |",
            "|---|---|---|---|---|---|"]
    for e in entries(configs):
        what = e["what"].replace("|", "\\|")
        regs = ", ".join(f"`{r}`" for r in e["regularizers"]) or "—"
        inputs = {"ratings": "ratings", "pairs": "positives + sampled negatives"}[e["training_input"]]
        rows.append(f"| `{e['name']}` | {what} | {e['task']} | {', '.join(e['solvers'])} | {inputs} | {regs} |")
    return "\n".join(rows) + "\n"


def hooks() -> str:
    """The markdown table of the contract's hooks, from their signatures and docstrings."""
    import inspect
    import re

    from recsys.models.base import Model

    rows = ["| hook | what it does, and its default |", "|---|---|"]
    for name in HOOKS:
        method = getattr(Model, name)
        params = ", ".join(list(inspect.signature(method).parameters)[1:])
        text = " ".join((inspect.getdoc(method) or "").split("\n\n")[0].split())
        text = re.sub(r":(?:meth|class|mod|func|attr|data):`~?([^`]+)`", r"`\1`", text).replace("``", "`")
        abstract = " **Required.**" if getattr(method, "__isabstractmethod__", False) else ""
        text = text.replace("|", "\\|")
        rows.append(f"| `{name}({params})` | {text}{abstract} |")
    return "\n".join(rows) + "\n"


def render(markdown: str) -> str:
    """A docs page with its table markers replaced by the generated tables (docs/hooks.py, at build time)."""
    if MODEL_TABLE in markdown:
        markdown = markdown.replace(MODEL_TABLE, table())
    if HOOK_TABLE in markdown:
        markdown = markdown.replace(HOOK_TABLE, hooks())
    return markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recsys.models.catalogue", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    sys.stdout.write(table() + "\n" + hooks())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
