"""The model table of docs/models.md, generated from what each model class declares.

    python -m recsys.models.catalogue            # print the tables
    python -m recsys.models.catalogue --write    # put them into docs/models.md and docs/adding-a-model.md

The model table has one row per ``configs/model/<name>.yaml``: the config name users type (``model=<name>``), the
first line of the class docstring, its ``task``, ``solvers`` (the first the default), ``training_input`` and the
hyperparameters its signature annotates as regularizers. The hook table is the contract's hooks
(:data:`HOOKS`) with each one's signature and the first paragraph of its docstring in
:class:`~recsys.models.base.RatingModel`, the one place they are written. A test keeps both pages equal to these,
so adding a model adds its row here, never a line in the README.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "model"
DOC = ROOT / "docs" / "models.md"
HOOK_DOC = ROOT / "docs" / "adding-a-model.md"
BEGIN, END = "<!-- model-table: python -m recsys.models.catalogue --write -->", "<!-- /model-table -->"
HOOK_BEGIN, HOOK_END = "<!-- hook-table: python -m recsys.models.catalogue --write -->", "<!-- /hook-table -->"
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

    from recsys.models.base import RatingModel

    rows = ["| hook | what it does, and its default |", "|---|---|"]
    for name in HOOKS:
        method = getattr(RatingModel, name)
        params = ", ".join(list(inspect.signature(method).parameters)[1:])
        text = " ".join((inspect.getdoc(method) or "").split("\n\n")[0].split())
        text = re.sub(r":(?:meth|class|mod|func|attr|data):`~?([^`]+)`", r"`\1`", text).replace("``", "`")
        abstract = " **Required.**" if getattr(method, "__isabstractmethod__", False) else ""
        text = text.replace("|", "\\|")
        rows.append(f"| `{name}({params})` | {text}{abstract} |")
    return "\n".join(rows) + "\n"


def documented(text: str, begin: str = BEGIN, end: str = END) -> str | None:
    """The table between the markers of a docs page's text (None without the markers)."""
    if begin not in text or end not in text:
        return None
    return text[text.index(begin) + len(begin):text.index(end)].strip("\n") + "\n"


def _write(doc: Path, begin: str, end: str, body: str) -> None:
    text = doc.read_text()
    if documented(text, begin, end) is None:
        raise SystemExit(f"{doc} has no {begin} ... {end} markers")
    head, tail = text[:text.index(begin) + len(begin)], text[text.index(end):]
    doc.write_text(f"{head}\n{body}{tail}")


def write() -> None:
    _write(DOC, BEGIN, END, table())
    _write(HOOK_DOC, HOOK_BEGIN, HOOK_END, hooks())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recsys.models.catalogue", description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the tables into their docs pages")
    args = parser.parse_args(argv)
    if args.write:
        write()
    else:
        sys.stdout.write(table() + "\n" + hooks())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
