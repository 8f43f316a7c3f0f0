"""Top-N ranking, side by side: the project's ranking and rating models and the peers on the project's own splits,
every system scored by the project's one evaluator (``recsys.evaluation.ranking_metrics``).

    python benchmarks/peers.py --task ranking --data ml100k --split-seeds 0,1,2
    python benchmarks/peers.py --task ranking --data ml1m --split-seeds 0,1,2

The protocol is the README's: 90/10 random split, 5% of all ratings carved from train for validation; relevant =
test rating ≥ 4; every item ranked except the user's training and validation items; NDCG@10 and Recall@10.

Peers (popularity, EASE, PureSVD, implicit's ALS and BPR, cornac BPR, LensKit ImplicitMF) train on positive
interactions (every rating, as 1), except PureSVD (a truncated SVD of the rating values). Each is tuned on
validation: every setting of its grid is fitted on train and ranks the validation split (training items left out);
the best by validation NDCG@10 is fitted again on train + validation and tested. Its fit seconds are that last
fit's. The project's systems run ``train.py`` with ``refit=true`` (the epoch count chosen on validation, then the
fit on train + validation); their fit seconds are ``fit_seconds`` of metrics.json: both fits, with validation every
epoch, a column gives the refit's alone. The rating models run with their defaults (no refit).

LensKit needs pandas < 3: it runs in the interpreter ``RECSYS_LENSKIT_PYTHON`` names (a venv with lenskit), in a
subprocess that fits and writes the score matrix; without one its row is skipped and says so.

Writes ``benchmarks/results/ranking_<data>.md`` (NDCG@10 and Recall@10 mean ± std over the seeds, fit seconds, the
chosen settings) and ``benchmarks/results/ranking_<data>.png`` (NDCG@10 against fit seconds, log x).
"""

from __future__ import annotations

import itertools
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
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing it
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
DATA = {"ml100k": "ml-100k", "ml1m": "ml-1m"}
K = 10

#: the project's systems: label -> train.py overrides ({data} is replaced); refit=true for the ranking models
OURS = {
    "recsys ease (preset)": ["experiment={data}_ease", "refit=true"],
    "recsys ials (preset)": ["experiment={data}_ials", "refit=true"],
    "recsys bpr (preset)": ["experiment={data}_bpr", "refit=true"],
    "recsys ease (defaults)": ["model=ease", "refit=true"],
    "recsys ials (defaults)": ["model=ials", "refit=true"],
    "recsys bpr (defaults)": ["model=bpr", "refit=true"],
    "recsys mf (rating model, defaults)": ["model=mf"],
    "recsys bpmf (rating model, defaults)": ["model=bpmf"],
}
#: blends of the runs above, fitted on validation (``recsys blend``: ranking members' scores, weights by val NDCG)
BLENDS = {"recsys blend (ease, ials preset runs)": ("recsys ease (preset)", "recsys ials (preset)")}


class Split:
    """One split seed's data as the project's datamodule cuts it (indices, not original ids)."""

    def __init__(self, data: str, seed: int):
        from recsys.data import RatingsDataModule

        dm = RatingsDataModule(name=DATA[data], split_seed=seed)
        dm.prepare_data()
        dm.setup()
        self.n_users, self.n_items = dm.num_users, dm.num_items
        self.train = [t.numpy() for t in dm.train_set]
        self.val = [t.numpy() for t in dm.val_set]
        self.full = [np.concatenate([a, b]) for a, b in zip(self.train, self.val)]
        self.val_set, self.test_set = dm.val_set, dm.test_set
        self.seen_train, self.seen_full = dm.seen("train"), dm.seen("val")

    def score(self, scores: np.ndarray, stage: str) -> dict[str, float]:
        """NDCG@10 and Recall@10 of a users × items score matrix on validation (fitted on train) or test."""
        from recsys.evaluation import ranking_metrics

        triples, seen = (self.val_set, self.seen_train) if stage == "val" else (self.test_set, self.seen_full)
        table = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))
        m = ranking_metrics(lambda users: table[users.cpu()], triples, seen, None, self.n_items, (K,), 4.0,
                            torch.device("cpu"), stage=stage)
        return {"ndcg": m[f"{stage}/ndcg@{K}"], "recall": m[f"{stage}/recall@{K}"]}


def _csr(users, items, values, shape):
    from scipy import sparse

    m = sparse.csr_matrix((values.astype(np.float32), (users, items)), shape=shape)
    m.sum_duplicates()
    return m


# -- peers: fit(users, items, ratings, split, **setting) -> (users × items scores, fit seconds) -------------------
def popularity(u, i, r, s: Split):
    start = time.perf_counter()
    counts = np.bincount(i, minlength=s.n_items).astype(np.float32)
    return np.broadcast_to(counts, (s.n_users, s.n_items)), time.perf_counter() - start


def pure_svd(u, i, r, s: Split, k: int):
    """PureSVD (Cremonesi et al. 2010) on the rating values: scores R·V·Vᵀ from the top-k right singular vectors."""
    from scipy.sparse.linalg import svds

    x = _csr(u, i, r, (s.n_users, s.n_items))
    start = time.perf_counter()
    _, _, vt = svds(x, k=k, random_state=0)
    seconds = time.perf_counter() - start
    return np.asarray(x @ vt.T) @ vt, seconds


def cornac_ease(u, i, r, s: Split, lamb: float):
    import cornac.models

    return _cornac(cornac.models.EASE(lamb=lamb, verbose=False, seed=0), u, i, s)


def cornac_bpr(u, i, r, s: Split, k: int, max_iter: int, learning_rate: float, lambda_reg: float):
    import cornac.models

    model = cornac.models.BPR(k=k, max_iter=max_iter, learning_rate=learning_rate, lambda_reg=lambda_reg, seed=0,
                              verbose=False)
    return _cornac(model, u, i, s)


def _cornac(model, u, i, s: Split):
    from cornac.data import Dataset

    data = Dataset.from_uir(list(zip(u.tolist(), i.tolist(), np.ones(len(u)).tolist())), seed=0)
    start = time.perf_counter()
    model.fit(data)
    seconds = time.perf_counter() - start
    uid = np.array([data.uid_map.get(x, -1) for x in range(s.n_users)])
    iid = np.array([data.iid_map.get(x, -1) for x in range(s.n_items)])
    scores = np.full((s.n_users, s.n_items), -1e9, dtype=np.float32)
    known_u, known_i = np.flatnonzero(uid >= 0), np.flatnonzero(iid >= 0)
    for row in known_u:  # one call per user: cornac's own scoring
        scores[row, known_i] = np.asarray(model.score(int(uid[row]))).ravel()[iid[known_i]]
    return scores, seconds


def implicit_als(u, i, r, s: Split, factors: int, regularization: float, alpha: float):
    from implicit.cpu.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=alpha, iterations=15,
                                    random_state=0, num_threads=os.cpu_count() or 1)
    return _implicit(model, u, i, s)


def implicit_bpr(u, i, r, s: Split, factors: int, learning_rate: float, regularization: float):
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    model = BayesianPersonalizedRanking(factors=factors, learning_rate=learning_rate, regularization=regularization,
                                        iterations=100, random_state=0, num_threads=os.cpu_count() or 1)
    return _implicit(model, u, i, s)


def _implicit(model, u, i, s: Split):
    x = _csr(u, i, np.ones(len(u)), (s.n_users, s.n_items))
    x.data[:] = 1.0
    start = time.perf_counter()
    model.fit(x, show_progress=False)
    seconds = time.perf_counter() - start
    return np.asarray(model.user_factors) @ np.asarray(model.item_factors).T, seconds


LENSKIT_WORKER = r"""
import sys, time, json, numpy as np, pandas as pd
from lenskit.als import ImplicitMFScorer
from lenskit.data import from_interactions_df
from lenskit.parallel import initialize
arrays, setting = np.load(sys.argv[1]), json.loads(sys.argv[2])
n_users, n_items = int(arrays["shape"][0]), int(arrays["shape"][1])
initialize(threads=int(setting.pop("threads")), backend_threads=int(setting.pop("backend_threads")))
ds = from_interactions_df(pd.DataFrame({"user": arrays["u"], "item": arrays["i"]}), user_col="user", item_col="item")
scorer = ImplicitMFScorer(**setting)
start = time.perf_counter(); scorer.train(ds); seconds = time.perf_counter() - start
unum = scorer.users.numbers(np.arange(n_users), missing="negative")
inum = scorer.items.numbers(np.arange(n_items), missing="negative")
scores = np.full((n_users, n_items), -1e9, dtype=np.float32)
ku, ki = np.flatnonzero(unum >= 0), np.flatnonzero(inum >= 0)
scores[np.ix_(ku, ki)] = np.asarray(scorer.user_embeddings)[unum[ku]] @ np.asarray(scorer.item_embeddings)[inum[ki]].T
np.save(sys.argv[3], scores); print(seconds)
"""


def lenskit_implicit_mf(u, i, r, s: Split, features: int, reg: float, weight: float):
    python = os.environ.get("RECSYS_LENSKIT_PYTHON")
    if not python:
        raise RuntimeError("set RECSYS_LENSKIT_PYTHON to a Python with lenskit (it needs pandas < 3)")
    threads = os.cpu_count() or 1
    setting = {"features": features, "reg": reg, "weight": weight, "epochs": 20, "rng": 0,
               "threads": threads, "backend_threads": threads}
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "in.npz", u=u, i=i, shape=np.array([s.n_users, s.n_items]))
        res = subprocess.run([python, "-c", LENSKIT_WORKER, str(Path(tmp) / "in.npz"), json.dumps(setting),
                              str(Path(tmp) / "scores.npy")], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"lenskit worker failed:\n{res.stderr[-2000:]}")
        return np.load(Path(tmp) / "scores.npy"), float(res.stdout.strip().splitlines()[-1])


def grid(**axes) -> list[dict]:
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def peers(data: str) -> dict[str, tuple[Callable, list[dict]]]:
    """Each peer with its validation grid (wider λ on ml-1m, where the matrix is denser)."""
    big = data == "ml1m"
    return {
        "popularity": (popularity, [{}]),
        "EASE (cornac)": (cornac_ease, grid(lamb=[200.0, 500.0, 1000.0, 2000.0] if big else [100.0, 200.0, 350.0,
                                                                                             500.0])),
        "PureSVD on ratings (scipy)": (pure_svd, grid(k=[20, 50, 100] if big else [10, 20, 30, 50])),
        "implicit ALS": (implicit_als, grid(factors=[64, 128], regularization=[1.0, 10.0, 50.0],
                                            alpha=[1.0, 5.0])),
        "implicit BPR": (implicit_bpr, grid(factors=[128] if big else [64, 128], learning_rate=[0.01, 0.05],
                                            regularization=[0.001, 0.01])),
        # on ml-1m a fit takes ~50 s: lr 0.001 (its default) was far behind on split 0 (NDCG@10 0.138 vs 0.247)
        "cornac BPR": (cornac_bpr, grid(k=[64], max_iter=[200], learning_rate=[0.01, 0.03] if big else [0.001, 0.01],
                                        lambda_reg=[0.01] if big else [0.001, 0.01])),
        "LensKit ImplicitMF": (lenskit_implicit_mf, grid(features=[50, 100], reg=[0.1, 10.0], weight=[1.0, 5.0, 40.0])),
    }


def tune_and_test(fit: Callable, settings: list[dict], s: Split) -> dict:
    """The best setting by validation NDCG@10 (fitted on train), fitted again on train + val and tested."""
    best, best_val = settings[0], -1.0
    if len(settings) > 1:
        for setting in settings:
            scores, _ = fit(*s.train, s, **setting)
            val = s.score(scores, "val")["ndcg"]
            if val > best_val:
                best, best_val = setting, val
    scores, seconds = fit(*s.full, s, **best)
    return {**s.score(scores, "test"), "fit": seconds, "setting": best, "val": best_val}


def run_ours(label: str, overrides: list[str], data: str, seed: int, run: Path) -> dict:
    cmd = [sys.executable, str(ROOT / "train.py"), f"data={data}", f"data.split_seed={seed}", "logger=none",
           "progress=none", f"hydra.run.dir={run}", *(o.format(data=data) for o in overrides)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    m = json.loads((run / "metrics.json").read_text())
    return {"ndcg": m[f"test/ndcg@{K}"], "recall": m[f"test/recall@{K}"], "fit": m["fit_seconds"],
            "refit": m.get("refit_seconds"), "val": m.get(f"val/ndcg@{K}")}


def run_blend(runs: list[Path], out: Path) -> dict:
    from recsys.blend import blend_runs

    m = blend_runs(runs, out)
    return {"ndcg": m[f"test/ndcg@{K}"], "recall": m[f"test/recall@{K}"], "fit": m["fit_seconds"],
            "val": m.get(f"val/ndcg@{K}")}


def write(data: str, seeds: list[int], results: dict[str, list[dict]]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)

    def stat(rows, key):
        values = [r[key] for r in rows]
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    lines = [f"# {DATA[data]}: top-10 ranking, split seeds {', '.join(map(str, seeds))}", "",
             f"`python benchmarks/peers.py --task ranking --data {data} --split-seeds {','.join(map(str, seeds))}` "
             f"({os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d')}). Relevant: test rating ≥ 4; every item ranked "
             "but the user's train + validation items; one evaluator for all. Peers: tuned on validation, refit on "
             "train + validation (fit s: the refit). recsys: `refit=true` (fit s: both fits, with validation each "
             "epoch; refit s: the second alone); rating models: defaults, no refit.", "",
             "| system | NDCG@10 (mean ± std) | Recall@10 (mean ± std) | fit s (mean) | refit s "
             "| chosen on validation |",
             "|---|---|---|---|---|---|"]
    order = sorted(results, key=lambda n: -stat(results[n], "ndcg")[0])
    for name in order:
        rows = results[name]
        (nd, nd_s), (rc, rc_s) = stat(rows, "ndcg"), stat(rows, "recall")
        fit = statistics.mean(r["fit"] for r in rows)
        refit = [r["refit"] for r in rows if r.get("refit") is not None]
        chosen = "; ".join(dict.fromkeys(json.dumps(r["setting"]) for r in rows if r.get("setting")))
        lines.append(f"| {name} | {nd:.4f} ± {nd_s:.4f} | {rc:.4f} ± {rc_s:.4f} | {fit:.2f} | "
                     f"{f'{statistics.mean(refit):.2f}' if refit else ''} | {chosen.replace('|', '/')} |")
    md = RESULTS / f"ranking_{data}.md"
    md.write_text("\n".join(lines) + "\n")
    plot(data, {n: (stat(results[n], "ndcg")[0], statistics.mean(r["fit"] for r in results[n])) for n in results})
    return md


def plot(data: str, means: dict[str, tuple[float, float]]) -> None:
    from plots import accuracy_against_time

    accuracy_against_time(means, RESULTS / f"ranking_{data}.png", "test NDCG@10",
                          f"{DATA[data]}: top-10 ranking against fit time")


def main(data: str, seeds: list[int], only: str | None = None) -> None:
    def wanted(name: str) -> bool:
        return not only or any(text in name for text in only.split(","))

    results: dict[str, list[dict]] = {}

    def record(seed: int, name: str, row: dict) -> None:
        results.setdefault(name, []).append(row)
        extra = f" setting {row['setting']}" if row.get("setting") else ""
        print(f"seed {seed} {name}: NDCG@10 {row['ndcg']:.4f} recall@10 {row['recall']:.4f} "
              f"fit {row['fit']:.2f} s{extra}", flush=True)

    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            runs = {}
            for n, (name, overrides) in enumerate(OURS.items()):
                preset = overrides[0].split("=")[1].format(data=data)
                if "(preset)" in name and not (ROOT / "configs" / "experiment" / f"{preset}.yaml").exists():
                    continue
                if wanted(name) or any(wanted(b) and name in members for b, members in BLENDS.items()):
                    runs[name] = Path(tmp) / f"run{n}"
                    record(seed, name, run_ours(name, overrides, data, seed, runs[name]))
            for name, members in BLENDS.items():
                if wanted(name) and all(m in runs for m in members):
                    record(seed, name, run_blend([runs[m] for m in members], Path(tmp) / "blend"))
        s = Split(data, seed)
        for name, (fit, settings) in peers(data).items():
            if not wanted(name):
                continue
            try:
                record(seed, name, tune_and_test(fit, settings, s))
            except (ImportError, RuntimeError) as err:
                print(f"seed {seed} {name}: skipped ({str(err).splitlines()[0]})", flush=True)
    if only:
        return
    print(write(data, seeds, results).read_text())
