"""The project's models and the peers, side by side on the project's own splits: test RMSE and fit seconds.

    pip install -e ".[bench]"      # scikit-surprise, cornac, implicit, lenskit, myfm (lenskit wants pandas 2: a venv)
    python benchmarks/peers.py --data ml100k --split-seeds 0,1,2
    python benchmarks/peers.py --data ml1m --split-seeds 0,1,2
    python benchmarks/peers.py --task ranking --data ml100k --split-seeds 0,1,2   # top-10: benchmarks/ranking.py

Every system is fit on the same ratings of each split (``data.split_seed``: 90/10 random, 5% of all
ratings carved from train for validation). The project's runs use validation for early stopping and
checkpoint choice as ``train.py`` does; the peers have no use for it, so validation is merged into their
training set. Each system predicts the same test ratings, clipped to the rating scale, with the global mean
(plus whatever bias is known) for users or items it has not seen.

The project's systems: each model's defaults, the data set's presets (``experiment=<data>_<model>``, where
configs/experiment has one) and blends of those runs (``recsys blend``, fitted on the validation split; its fit
time is the sum of its members'). ``--only TEXT`` runs the systems whose name contains TEXT (or any of
comma-separated texts: ``--only "recsys svdpp,SVD++"``) and prints them; with ``--update`` their rows replace (or
join) theirs in the existing results file, the other rows kept as they were measured.

Fit seconds: for the project, ``fit_seconds`` of metrics.json (the whole Lightning fit: every epoch's
training, validation and checkpoints); for a peer, its ``fit`` call. Writes ``benchmarks/results/<data>.md``
(test RMSE mean ± std over the seeds, fit seconds, and each system's fit time relative to the fastest
system at equal or better RMSE) and ``benchmarks/results/<data>.png`` (RMSE against fit seconds, log x).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = {"ml100k": "ml-100k", "ml1m": "ml-1m"}

#: the project's systems: a label and the train.py overrides (data and split seed are added)
OURS = {
    "recsys mf (defaults)": [],
    "recsys mf ALS": ["model.solver=als"],
    "recsys pmf": ["model=pmf"],
    "recsys pmf ALS": ["model=pmf", "model.solver=als"],
    "recsys pmf_sigmoid": ["model=pmf_sigmoid"],
    "recsys baseline ALS": ["model=baseline", "model.solver=als"],
    "recsys bpmf": ["model=bpmf"],
    "recsys autorec": ["model=autorec"],
    "recsys svdpp": ["model=svdpp"],
}
#: presets (configs/experiment/<data>_<model>.yaml, found by hparams_search=optuna on val/rmse), where present
PRESETS = ("mf", "pmf", "pmf_sigmoid", "bpmf", "autorec")
#: blends of the runs above (``recsys blend``: ridge on the validation split); fit time = the members' sum
BLENDS = {"recsys blend (bpmf, mf, autorec)": ("bpmf", "mf", "autorec")}


def ours(data: str) -> dict[str, list[str]]:
    """The project's systems for ``data``: the defaults above, then the data set's presets."""
    systems = dict(OURS)
    for model in PRESETS:
        if (ROOT / "configs" / "experiment" / f"{data}_{model}.yaml").exists():
            systems[f"recsys {model} (preset {data}_{model})"] = [f"experiment={data}_{model}"]
    return systems


def member(name: str, model: str) -> bool:
    """Whether the system ``name`` is a run of ``model`` (its preset when there is one, else its defaults)."""
    return name.split(" ")[1] == model


def matches(name: str, only: str | None) -> bool:
    """Whether ``--only`` (comma-separated texts) names the system ``name``."""
    return not only or any(text in name for text in only.split(","))


def selected(name: str, only: str | None) -> bool:
    """Whether ``--only`` selects a system of ours: by its name, or as a member of a selected blend."""
    if matches(name, only):
        return True
    return any(matches(blend, only) and any(member(name, m) for m in models) for blend, models in BLENDS.items())


def run_ours(overrides: list[str], data: str, seed: int, run: Path) -> tuple[float, float]:
    """(test RMSE, fit seconds) of one train.py run into ``run``, in a subprocess as a user runs it."""
    cmd = [sys.executable, str(ROOT / "train.py"), f"data={data}", f"data.split_seed={seed}", "logger=none",
           "progress=none", "eval.ranking=false", f"hydra.run.dir={run}", *overrides]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    metrics = json.loads((run / "metrics.json").read_text())
    return metrics["test/rmse"], metrics["fit_seconds"]


def run_blend(runs: dict[str, Path], fits: dict[str, float], models: tuple[str, ...], out: Path):
    """(test RMSE, summed fit seconds) of the blend of each model's best-named run (preset, else defaults)."""
    from recsys.blend import blend_runs

    chosen = []
    for model in models:
        names = [n for n in runs if member(n, model)]
        chosen.append(next((n for n in names if "preset" in n), names[0]))
    result = blend_runs([runs[n] for n in chosen], out)
    return result["test/rmse"], sum(fits[n] for n in chosen)


# -- peers: each takes (train users, items, ratings as numpy) and returns (predict(users, items), seconds) ----
Fit = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], float]]


def surprise_model(make) -> Fit:
    def fit(u, i, r):
        import pandas as pd
        from surprise import Dataset, Reader

        frame = pd.DataFrame({"u": u, "i": i, "r": r})
        trainset = Dataset.load_from_df(frame, Reader(rating_scale=(1, 5))).build_full_trainset()
        algo = make()
        start = time.perf_counter()
        algo.fit(trainset)
        seconds = time.perf_counter() - start
        return (lambda tu, ti: np.array([algo.predict(a, b, clip=False).est for a, b in zip(tu, ti)])), seconds
    return fit


def cornac_model(make) -> Fit:
    def fit(u, i, r):
        from cornac.data import Dataset

        data = Dataset.from_uir(list(zip(u.tolist(), i.tolist(), r.tolist())), seed=0)
        model = make()
        start = time.perf_counter()
        model.fit(data)
        seconds = time.perf_counter() - start
        mean = float(r.mean())

        def predict(tu, ti):
            out = np.full(len(tu), mean)
            for n, (a, b) in enumerate(zip(tu.tolist(), ti.tolist())):
                ua, ib = data.uid_map.get(a), data.iid_map.get(b)
                if ua is not None and ib is not None:
                    out[n] = float(np.asarray(model.score(ua, ib)).ravel()[0])
            return out
        return predict, seconds
    return fit


def lenskit_biased_mf(features: int = 50, epochs: int = 10) -> Fit:
    """LensKit's ALS BiasedMF (its defaults: 50 features, 10 epochs, regularization 0.1, damping 5)."""
    def fit(u, i, r):
        import pandas as pd
        from lenskit.als import BiasedMFScorer
        from lenskit.data import from_interactions_df

        ds = from_interactions_df(pd.DataFrame({"user": u, "item": i, "rating": r}), user_col="user",
                                  item_col="item", rating_col="rating")
        scorer = BiasedMFScorer(features=features, epochs=epochs)
        start = time.perf_counter()
        scorer.train(ds)
        seconds = time.perf_counter() - start

        def predict(tu, ti):  # bias model + embeddings, from the learned parameters
            unum = scorer.users.numbers(tu, missing="negative")
            inum = scorer.items.numbers(ti, missing="negative")
            bias = scorer.bias
            pred = np.full(len(tu), bias.global_bias, dtype=np.float64)
            ku, ki = unum >= 0, inum >= 0
            if bias.user_biases is not None:
                pred[ku] += bias.user_biases[unum[ku]]
            if bias.item_biases is not None:
                pred[ki] += bias.item_biases[inum[ki]]
            both = ku & ki
            pred[both] += (scorer.user_embeddings[unum[both]] * scorer.item_embeddings[inum[both]]).sum(1)
            return pred
        return predict, seconds
    return fit


def myfm_bpmf(rank: int = 10, samples: int = 300) -> Fit:
    """myFM's Gibbs-sampled factorization machine on user and item one-hot features: Bayesian MF with biases
    (one hyperprior group per side, as its MovieLens example), every sample kept (its default)."""
    def fit(u, i, r):
        import myfm
        from scipy import sparse

        users, items = np.unique(u), np.unique(i)

        def onehot(tu, ti):
            cols, rows, n = [], [], len(tu)
            for offset, known, ids in ((0, users, tu), (len(users), items, ti)):
                pos = np.searchsorted(known, ids).clip(max=len(known) - 1)
                hit = known[pos] == ids  # unknown ids: no column (global bias only, plus the other side)
                rows.append(np.arange(n)[hit])
                cols.append(pos[hit] + offset)
            rows, cols = np.concatenate(rows), np.concatenate(cols)
            return sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, len(users) + len(items)))

        x = onehot(u, i)
        model = myfm.MyFMRegressor(rank=rank, random_seed=0)
        start = time.perf_counter()
        model.fit(x, r.astype(np.float64), n_iter=samples, group_shapes=[len(users), len(items)])
        seconds = time.perf_counter() - start
        return (lambda tu, ti: model.predict(onehot(tu, ti))), seconds
    return fit


def lenskit_threads(threads: int) -> None:
    """LensKit's first fit limits torch and BLAS to one thread unless told otherwise: give it, and so torch
    after it, the same ``threads`` every system here uses."""
    try:
        from lenskit.parallel import initialize
    except ImportError:
        return
    initialize(threads=threads, backend_threads=threads)


def peers(data: str) -> dict[str, Callable[[], Fit]]:
    """The peers by name (the same for every data set), each built on call (its library imported only when it runs)."""

    def surprise(name: str, **kw):
        def make():
            import surprise as lib

            return surprise_model(lambda: getattr(lib, name)(**kw))
        return make

    def cornac(name: str):
        def make():
            import cornac.models as lib

            return cornac_model(lambda: getattr(lib, name)(seed=0, verbose=False))
        return make

    systems = {
        "Surprise Baseline": surprise("BaselineOnly", verbose=False),
        "Surprise SVD (default)": surprise("SVD", random_state=0),
        "Surprise SVD (tuned: k=100, 40 ep, reg 0.05, lr 0.007)": surprise(
            "SVD", n_factors=100, n_epochs=40, reg_all=0.05, lr_all=0.007, random_state=0),
        "cornac MF (default)": cornac("MF"),
        "cornac PMF (default)": cornac("PMF"),
        "LensKit ALS BiasedMF (k=50, 10 ep)": lenskit_biased_mf,
        "myFM BPMF (rank 10, 300 samples)": myfm_bpmf,
        "Surprise SVD++ (default)": surprise("SVDpp", random_state=0),  # ~11 s an epoch on ml-1m, 20 epochs
    }
    return systems


def split(data: str, seed: int):
    from recsys.data import RatingsDataModule

    dm = RatingsDataModule(name=DATA[data], split_seed=seed)
    dm.prepare_data()
    dm.setup()
    train = [np.concatenate([a.numpy(), b.numpy()]) for a, b in zip(dm.train_set, dm.val_set)]
    return train, [t.numpy() for t in dm.test_set]


def relative_times(rows: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Each system's fit time over the fastest fit among systems with equal or better RMSE."""
    return {name: fit / min(f for r, f in rows.values() if r <= rmse) for name, (rmse, fit) in rows.items()}


def previous(data: str) -> dict[str, tuple[float, float, float]]:
    """The rows of the existing results file: system -> (RMSE mean, RMSE std, fit seconds)."""
    path = RESULTS / f"{data}.md"
    rows = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        try:
            mean, std = (float(x) for x in cells[1].split("±"))
            rows[cells[0]] = (mean, std, float(cells[2]))
        except (IndexError, ValueError):
            continue  # the header, the rule, or prose
    return rows


def write(data: str, seeds: list[int], results: dict[str, list[tuple[float, float]]],
          kept: dict[str, tuple[float, float, float]] | None = None) -> Path:
    """The results table of ``results`` (per seed), plus ``kept`` rows (mean, std, fit) measured earlier."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    means = {n: (statistics.mean(r for r, _ in v), statistics.mean(f for _, f in v)) for n, v in results.items()}
    stds = {n: statistics.stdev([r for r, _ in v]) if len(v) > 1 else 0.0 for n, v in results.items()}
    for name, (mean, std, fit) in (kept or {}).items():
        if name not in means:
            means[name], stds[name] = (mean, fit), std
    rel = relative_times(means)
    lines = [f"# {DATA[data]}: test RMSE and fit time, split seeds {', '.join(map(str, seeds))}", "",
             f"`python benchmarks/peers.py --data {data} --split-seeds {','.join(map(str, seeds))}` "
             f"({os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d')}). Peers train on train + validation.", "",
             "| system | test RMSE (mean ± std) | fit s (mean) | fit time / fastest at ≤ its RMSE |",
             "|---|---|---|---|"]
    if kept:
        lines[2] += (f" Re-measured with `--only ... --update` for {', '.join(sorted(results))}; the other rows as "
                     "measured before.")
    for name in sorted(means, key=lambda n: means[n][0]):
        lines.append(f"| {name} | {means[name][0]:.4f} ± {stds[name]:.4f} | {means[name][1]:.2f} | {rel[name]:.1f}× |")
    md = RESULTS / f"{data}.md"
    md.write_text("\n".join(lines) + "\n")
    plot(data, means)
    return md


def plot(data: str, means: dict[str, tuple[float, float]]) -> None:
    from plots import accuracy_against_time

    accuracy_against_time(means, RESULTS / f"{data}.png", "test RMSE", f"{DATA[data]}: accuracy against fit time",
                          label=lambda name: name.split(" (")[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("rating", "ranking"), default="rating",
                        help="rating: test RMSE (this file's systems); ranking: top-10 NDCG/recall "
                             "(benchmarks/ranking.py)")
    parser.add_argument("--data", choices=sorted(DATA), default="ml100k")
    parser.add_argument("--split-seeds", default="0,1,2")
    parser.add_argument("--only", default=None,
                        help="run only systems whose name contains this text, or one of comma-separated texts "
                             "(nothing is written unless --update)")
    parser.add_argument("--update", action="store_true",
                        help="with --only: put the systems run into the existing results file, keeping its other rows")
    args = parser.parse_args()
    seeds = [int(s) for s in args.split_seeds.split(",")]
    if args.task == "ranking":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import ranking

        lenskit_threads(os.cpu_count() or 1)
        return ranking.main(args.data, seeds, args.only)
    os.environ.setdefault("TQDM_DISABLE", "1")  # myFM's progress bar
    lenskit_threads(os.cpu_count() or 1)
    results: dict[str, list[tuple[float, float]]] = {}

    def record(seed: int, name: str, rmse: float, seconds: float) -> None:
        results.setdefault(name, []).append((rmse, seconds))
        print(f"seed {seed} {name}: RMSE {rmse:.4f}, fit {seconds:.2f} s", flush=True)

    for seed in seeds:
        (u, i, r), (tu, ti, tr) = split(args.data, seed)
        with tempfile.TemporaryDirectory() as tmp:
            runs, fits = {}, {}
            for n, (name, overrides) in enumerate(ours(args.data).items()):
                if not selected(name, args.only):
                    continue
                runs[name] = Path(tmp) / f"run{n}"
                rmse, fits[name] = run_ours(overrides, args.data, seed, runs[name])
                record(seed, name, rmse, fits[name])
            for name, models in BLENDS.items():
                if not matches(name, args.only) or not all(any(member(n, m) for n in runs) for m in models):
                    continue
                record(seed, name, *run_blend(runs, fits, models, Path(tmp) / "blend"))
        for name, make in peers(args.data).items():
            if not matches(name, args.only):
                continue
            predict, seconds = make()(u, i, r)
            pred = np.clip(predict(tu, ti), 1.0, 5.0)
            record(seed, name, float(np.sqrt(np.mean((pred - tr) ** 2))), seconds)
    if args.only and not args.update:  # a subset: printed, the results files left as they are
        return
    print(write(args.data, seeds, results, previous(args.data) if args.update else {}).read_text())


if __name__ == "__main__":
    main()
