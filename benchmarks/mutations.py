"""Mutation check: break each model's own term in the source, run the model tests, list the tests that went red.

    python benchmarks/mutations.py        # prints a markdown row per mutation (docs/results.md, "Mutation table")
    python benchmarks/mutations.py ease   # only the mutations whose label matches the regular expression "ease"
    python benchmarks/mutations.py --first  # stop each run at its first failing test: caught or not, faster

Each mutation replaces one exact piece of source text, runs the tests, and restores the file (also on failure or
Ctrl-C). A mutation that no test catches is a gap in the tests: the last column is empty and the exit code is 1.
"""
# ruff: noqa: E501 - the mutations are source lines, quoted whole

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTATIONS = [
    ("svdpp: implicit sum zeroed", "recsys/models/svdpp.py",
     "return self.net.user(users) + _SparseProduct.apply(a, at, self.implicit.weight)[users]", "return self.net.user(users)"),
    ("svdpp: implicit term dropped from all_item_scores only", "recsys/models/svdpp.py",
     "score = self.user_vectors(users) @ self.net.item.weight.T", "score = self.net.user(users) @ self.net.item.weight.T"),
    ("svdpp: item bias dropped", "recsys/models/svdpp.py",
     "+ self.net.user_bias(users).squeeze(-1) \\\n            + self.net.item_bias(items).squeeze(-1)", "+ self.net.user_bias(users).squeeze(-1)"),
    ("mf/baseline/bpmf (Bilinear): user bias dropped", "recsys/models/nets.py",
     "score = score + self.user_bias(users).squeeze(-1) + self.item_bias(items).squeeze(-1)", "score = score + self.item_bias(items).squeeze(-1)"),
    ("mf: item bias dropped from all_items only", "recsys/models/nets.py",
     "score = score + self.user_bias(users) + self.item_bias.weight.T", "score = score + self.user_bias(users)"),
    ("pmf: centring by μ dropped", "recsys/models/pmf.py",
     "self.link = Centered(self.data.global_mean if center else 0.0)", "self.link = Centered(0.0)"),
    ("pmf_sigmoid: logistic link skipped", "recsys/models/nets.py",
     "return torch.sigmoid(self.offset + score)", "return self.offset + score"),
    ("autorec: hidden layer's nonlinearity skipped (dense path)", "recsys/models/autorec.py",
     "return torch.sigmoid(torch.addmm(self.encoder_bias, dense, weight))", "return torch.addmm(self.encoder_bias, dense, weight)"),
    ("autorec: hidden layer's nonlinearity skipped (gathered path)", "recsys/models/autorec.py",
     "return torch.sigmoid(self._add_inputs(z, rows, users, ratings) + self.encoder_bias)", "return self._add_inputs(z, rows, users, ratings) + self.encoder_bias"),
    ("bpmf: Gibbs draw frozen at the conditional mean", "recsys/solvers/gibbs.py",
     "            y += z[g.rows].unsqueeze(-1)", "            pass"),
    ("bpmf: running mean frozen at the first kept sample", "recsys/models/bpmf.py",
     "mean.lerp_(now, weight)", "mean.lerp_(now, 1.0 if int(self.kept) == 1 else 0.0)"),
    ("autorec: hidden layer skipped (prediction from the output bias alone)", "recsys/models/autorec.py",
     "return (self.decoder(users) * self.codes[items]).sum(1) + self.decoder_bias(users).squeeze(1)",
     "return self.decoder_bias(users).squeeze(1)"),
    ("svdpp: the N(u)^-½ normalization dropped", "recsys/models/svdpp.py",
     "values = torch.repeat_interleave(counts.clamp_min(1).to(self.implicit.weight.dtype).rsqrt(), counts)",
     "values = torch.repeat_interleave(torch.ones_like(counts, dtype=self.implicit.weight.dtype), counts)"),
    ("ease: λ dropped from the Gram matrix", "recsys/models/ease.py",
     "gram.diagonal().add_(float(self.reg))", "gram.diagonal().add_(1e-3)"),
    ("ease: diagonal constraint dropped (B = I − P·diag(1/diag P) kept with its diagonal)", "recsys/models/ease.py",
     "        b.diagonal().zero_()\n", "        pass\n"),
    ("ials: the shared Gram YᵀY dropped", "recsys/solvers/als.py",
     "                gram += shared\n", "                pass\n"),
    ("ials: confidence weights dropped (every observed entry weight 1)", "recsys/models/ials.py",
     "solve=self.als_solve, tol=0.0, weight=self.extra_confidence, all_pairs=True,",
     "solve=self.als_solve, tol=0.0, weight=None, all_pairs=True,"),
    ("bpmf: a side's draws not applied (rows keep the prior draw)", "recsys/solvers/gibbs.py",
     "        x[g.rows] = draw\n", "        pass\n"),
    ("bpr: item bias dropped from the score", "recsys/models/bpr.py",
     "return self.net(users, items) + self.item_bias(items).squeeze(-1)", "return self.net(users, items)"),
    ("bpr: the negative items' gradient dropped", "recsys/models/bpr.py",
     "torch.cat([g_sum, -g.reshape(-1)])", "torch.cat([g_sum, 0 * g.reshape(-1)])"),
    ("ials: the observed entries' correction dropped from the matrix-free CG", "recsys/solvers/als.py",
     "return v @ gram + diag_ridge * v + weighted @ feats", "return v @ gram + diag_ridge * v"),
    ("bpr: negatives sampled among all items (the user's positives not excluded)", "recsys/data/interactions.py",
     "return (r + before).clamp_(max=self.num_items - 1)", "return r.clamp_(max=self.num_items - 1)"),
    # the generic reference suite (every model, every mode): one-line changes a model's own tests missed before
    ("[ref] mf: use_global_mean=false ignored (μ always added)", "recsys/models/mf.py",
     "self.link = Centered(self.data.global_mean if use_global_mean else 0.0)", "self.link = Centered(self.data.global_mean)"),
    ("[ref] mf: item bias dropped from all_item_scores (nets.all_items)", "recsys/models/nets.py",
     "score = score + self.user_bias(users) + self.item_bias.weight.T", "score = score + self.user_bias(users) + 0 * self.item_bias.weight.T"),
    ("[ref] pmf_sigmoid: center=true's offset logit(t(μ)) ignored", "recsys/models/pmf_sigmoid.py",
     "math.log(t_mu / (1 - t_mu)) if center else 0.0)", "0.0)"),
    ("[ref] ease: values=rating ignored when scoring (X binary)", "recsys/models/item_item.py",
     "ratings=self.values == \"rating\")", "ratings=False)"),
    ("[ref] autorec: output bias dropped from all_item_scores", "recsys/models/autorec.py",
     "return torch.addmm(self.decoder_bias(users), self.decoder(users), self.codes.T)", "return self.decoder(users) @ self.codes.T"),
    ("[ref] bpr: item bias dropped from all_item_scores", "recsys/models/bpr.py",
     "return self.net.all_items(users) + self.item_bias.weight.T", "return self.net.all_items(users)"),
    ("[ref] svdpp: fold-in keeps the old N(u)", "recsys/models/svdpp.py",
     "        self.history.replace(row, items)\n        self.net.user.weight[row] = 0.0", "        self.net.user.weight[row] = 0.0"),
    ("[ref] bpmf: tracked pairs' sample averages ignored in all_item_scores", "recsys/models/bpmf.py",
     "        if int(self.kept) and len(self.pair_keys):  # the tracked pairs among them: their sample averages",
     "        if False:  # the tracked pairs among them: their sample averages"),
    ("[ref] ials: scores from the item factors' transpose (users scored by item rows)", "recsys/models/ials.py",
     "        return self.net(users, items)\n", "        return (self.net.item(users % self.data.num_items) * self.net.item(items)).sum(-1)\n"),
    ("[ref] baseline: μ dropped", "recsys/models/baseline.py",
     "        self.link = Centered(self.data.global_mean)", "        self.link = Centered(0.0)"),
    # every model's remaining terms, regularizers and modes (the contract issue's item 6)
    ("mf/pmf/bpr (Bilinear): factor product dropped", "recsys/models/nets.py",
     "score = (self.user(users) * self.item(items)).sum(-1)", "score = 0 * (self.user(users) * self.item(items)).sum(-1)"),
    ("[mode] mf: use_bias=false ignored (biases kept)", "recsys/models/mf.py",
     "dim, bias=use_bias, init_std=init_std)", "dim, bias=True, init_std=init_std)"),
    ("mf: λ_b ignored (λ for the biases too)", "recsys/models/mf.py",
     "self.reg, self.reg_bias = reg, reg if reg_bias is None else reg_bias", "self.reg, self.reg_bias = reg, reg"),
    ("[mode] pmf: center=false ignored (μ always added)", "recsys/models/pmf.py",
     "self.link = Centered(self.data.global_mean if center else 0.0)", "self.link = Centered(self.data.global_mean)"),
    ("pmf: λ_V ignored (λ_U for both sides)", "recsys/models/pmf.py",
     "self.lambdas, self.reg_scaling = (lambda_u, lambda_v), reg_scaling", "self.lambdas, self.reg_scaling = (lambda_u, lambda_u), reg_scaling"),
    ("pmf_sigmoid: the rating scale's minimum dropped (r̂ = (r_max − r_min)·g)", "recsys/models/nets.py",
     "        return self.low + self.span * mean", "        return self.span * mean"),
    ("svdpp: user bias dropped", "recsys/models/svdpp.py",
     "(self.user_vectors(users) * self.net.item(items)).sum(-1) + self.net.user_bias(users).squeeze(-1)",
     "(self.user_vectors(users) * self.net.item(items)).sum(-1) + 0 * self.net.user_bias(users).squeeze(-1)"),
    ("autorec: encoder bias μ dropped (dense path)", "recsys/models/autorec.py",
     "return torch.sigmoid(torch.addmm(self.encoder_bias, dense, weight))", "return torch.sigmoid(dense @ weight)"),
    ("[mode] ials: confidence=log computed as linear", "recsys/models/ials.py",
     "        if self.confidence == \"log\":", "        if False:"),
    ("ials: α ignored (confidence 1 + r)", "recsys/models/ials.py",
     "        return self.alpha * ratings + (1.0 - self.unobserved_weight)", "        return ratings + (1.0 - self.unobserved_weight)"),
    ("[mode] ease: values=rating ignored in the fit (Gram of a binary X)", "recsys/models/item_item.py",
     "entries = train.ratings.to(device=device, dtype=torch.float32) if self.values == \"rating\" else \\",
     "entries = train.ratings.to(device=device, dtype=torch.float32) if False else \\"),
    ("bpr: λ_b ignored (λ for the item bias too)", "recsys/models/bpr.py",
     "        self.reg, self.reg_bias = reg, reg if reg_bias is None else reg_bias\n        self.negatives",
     "        self.reg, self.reg_bias = reg, reg\n        self.negatives"),
    ("bpmf: noise precision α ignored in the conditionals (α = 1)", "recsys/solvers/gibbs.py",
     "float(chain.alpha), None if z is None else z.to(chain.mu.device))", "1.0, None if z is None else z.to(chain.mu.device))"),
    ("item-item (ease): a folded-in user's history ignored", "recsys/models/item_item.py",
     "        self.history.replace(row, items, ratings)\n", "        pass\n"),
]
HEADER = "| mutation | tests failed{} | caught by (the first four) |"
TESTS = ["tests/models", "tests/data/test_datamodule.py", "tests/test_recommender.py", "tests/test_als.py", "tests/test_evaluation.py"]


def main() -> int:
    first = "--first" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--first"]
    only = args[0] if args else ""  # e.g. python benchmarks/mutations.py "ease|\[mode\]"
    rows, lines = [], [HEADER.format(" (--first: the run stops at the first)" if first else ""), "|---|---|---|"]
    for label, rel, old, new in MUTATIONS:
        if not re.search(only, label):
            continue
        path = ROOT / rel
        src = path.read_text()
        if old not in src:
            raise SystemExit(f"{rel} no longer holds the text of mutation {label!r}: update benchmarks/mutations.py")
        path.write_text(src.replace(old, new))
        try:
            res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", *(["-x"] if first else []),
                                  *TESTS],
                                 cwd=ROOT, capture_output=True, text=True)
            failed = sorted(set(re.findall(r"^FAILED (\S+)", res.stdout, re.M)))
        finally:
            path.write_text(src)
        rows.append((label, failed))
        lines.append(f"| {label} | {len(failed)} | {'; '.join(f.split('::')[-1] for f in failed[:4])} |")
        print(lines[-1], flush=True)
    if not only:  # the whole table: benchmarks/results/mutations.md, which docs/results.md copies
        (ROOT / "benchmarks" / "results" / "mutations.md").write_text("\n".join(lines) + "\n")
    return 0 if all(failed for _, failed in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
