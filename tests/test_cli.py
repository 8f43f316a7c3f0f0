"""The command line: recsys predict | recommend | evaluate, and its one-line errors with exit code 2."""

import io
import json
import subprocess
import sys

import pandas as pd
import pytest

import recsys
from recsys.cli import main


@pytest.fixture
def run(model_run):
    return model_run("mf").dir  # the session's mf run (the commands only read it)


def test_predict_prints_the_ratings(run, capsys):
    assert main(["predict", str(run), "--user", "1", "--item", "2", "--item", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = recsys.load(run).predict(1, [2, 3])
    assert [float(line.split("\t")[2]) for line in lines] == pytest.approx(expected, abs=1e-4)
    assert [line.split("\t")[:2] for line in lines] == [["1", "2"], ["1", "3"]]


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_recommend_in_each_format(run, capsys, fmt):
    assert main(["recommend", str(run), "--user", "1", "-n", "3", "--format", fmt]) == 0
    out = capsys.readouterr().out
    expected = recsys.load(run).recommend(1, n=3)
    if fmt == "csv":
        got = pd.read_csv(io.StringIO(out))
    elif fmt == "json":
        got = pd.DataFrame(json.loads(out))
    else:
        got = pd.read_csv(io.StringIO(out), sep=r"\s+")
    assert got["item"].tolist() == expected["item"].tolist() and got["rank"].tolist() == [1, 2, 3]


def test_recommend_for_a_users_file_writes_csv(run, capsys, tmp_path):
    (tmp_path / "users.txt").write_text("user\n1\n2\n5\n")
    assert main(["recommend", str(run), "--users-file", str(tmp_path / "users.txt"), "-n", "4"]) == 0
    got = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(got.columns) == ["user", "item", "score", "rank"]
    assert got["user"].tolist() == [1] * 4 + [2] * 4 + [5] * 4


def test_evaluate_gives_the_numbers_of_metrics_json(run, capsys):
    assert main(["evaluate", str(run)]) == 0
    printed = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())
    saved = json.loads((run / "metrics.json").read_text())
    for key in ("test/rmse", "test/mae", "test/ndcg@10", "test/recall@10", "test/hit_rate@10", "test/mrr@10",
                "test/ndcg@10_popularity", "test/recall@10_popularity"):
        assert float(printed[key]) == pytest.approx(saved[key], abs=1e-4), key


def test_evaluate_on_another_ratings_file(run, capsys, tmp_path, udata):
    other = tmp_path / "other.csv"
    rows = pd.read_csv(udata, sep="\t", names=["user", "item", "rating", "timestamp"]).head(50)
    pd.concat([rows, pd.DataFrame({"user": [999], "item": [2], "rating": [4], "timestamp": [1]})]).to_csv(
        other, index=False)
    assert main(["evaluate", str(run), f"data.path={other}", "--k", "5"]) == 0
    printed = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())
    assert printed["ratings"] == "51" and printed["unknown_ratings"] == "1"
    assert 0 < float(printed["test/rmse"]) < 4 and "test/ndcg@5" in printed


@pytest.mark.parametrize("argv,message", [
    (["predict", "{tmp}/nowhere", "--user", "1", "--item", "2"], "does not exist"),
    (["predict", "{tmp}/junk.ckpt", "--user", "1", "--item", "2"], "is not a checkpoint of a recsys model"),
    (["predict", "{run}", "--user", "999", "--item", "2", "--strict"], "unknown user ids: [999]"),
    (["recommend", "{run}", "--user", "1", "-n", "0"], "-n 0: must be a positive integer"),
    (["evaluate", "{run}", "model.dim=3"], "only data.<key>=<value>"),
])
def test_errors_are_one_line_with_exit_code_2(run, tmp_path, capsys, argv, message):
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    code = main([a.format(tmp=tmp_path, run=run) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.integration
def test_console_script_and_module(run):
    for cmd in (["recsys"], [sys.executable, "-m", "recsys"]):
        res = subprocess.run([*cmd, "predict", str(run), "--user", "1", "--item", "2"], capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0 and res.stdout.startswith("1\t2\t"), res.stderr
        res = subprocess.run([*cmd, "recommend", str(run / "missing"), "--user", "1"], capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 2 and "error:" in res.stderr
