"""A rating file from the wild, from settings alone to a trained run that answers in its own ids: Latin-1 ids
through the id maps, the checkpoint and the command line; the filters in run_info.json, ``recsys data`` printing
the same summary, and the resume guard keyed by the filters."""

import json

import pytest
from hydra import compose, initialize_config_dir

import recsys
from recsys.cli import main
from recsys.rundir import RunDirectoryError
from recsys.training import train
from tests.conftest import CONFIGS
from tests.data.test_filters import _rows, book_crossing

SETTINGS = ("data=ratings_file", "data.encoding=latin-1", "data.columns.user=User-ID", "data.columns.item=ISBN",
            "data.columns.rating=Book-Rating", "data.rating_min=1", "data.rating_max=10", "data.unrated_value=0",
            "data.filter.min_item_ratings=3")


@pytest.fixture
def books(tmp_path):
    return book_crossing(tmp_path / "books.csv", _rows(n_users=40, n_items=15))


def _cfg(tmp_path, books, *overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=[*SETTINGS, f"data.path={books}", f"output_dir={tmp_path / 'run'}",
                                           "~callbacks.progress_bar", "+trainer.enable_progress_bar=false",
                                           "~callbacks.early_stopping", "logger=none", *overrides])


def test_latin1_ids_round_trip_through_the_checkpoint_and_the_command_line(tmp_path, books, capsys):
    train(_cfg(tmp_path, books, "trainer.max_epochs=2"))
    run = tmp_path / "run"
    capsys.readouterr()
    rec = recsys.load(run)
    item = "Motörhead; vol 3"
    assert item in rec.items.ids.tolist() and "0105594º003" in rec.items.ids.tolist()
    assert main(["predict", str(run), "--user", "270000", "--item", item, "--item", "0105594º003", "--strict"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[1] for line in lines] == [item, "0105594º003"]
    assert [float(line.split("\t")[2]) for line in lines] == pytest.approx(
        rec.predict(270000, [item, "0105594º003"]), abs=1e-4)
    assert main(["recommend", str(run), "--user", "270000", "-n", "15", "--format", "json"]) == 0
    top = json.loads(capsys.readouterr().out)
    names = {row["item"] for row in (top if isinstance(top, list) else top["items"])}
    assert names and names <= set(rec.items.ids.tolist()) and any("ö" in n or "º" in n for n in names)


def test_run_info_records_the_filters_and_recsys_data_prints_the_same_summary(tmp_path, books, capsys):
    train(_cfg(tmp_path, books, "trainer.max_epochs=1"))
    capsys.readouterr()  # the run's own report
    data = json.loads((tmp_path / "run" / "run_info.json").read_text())["data"]
    assert [s["step"] for s in data["filters"]] == ["unrated", "k_core"]
    assert data["rows_read"] == len(_rows(n_users=40, n_items=15)) and data["unrated_value"] == 0
    summary = data["summary"]
    assert summary["ratings"] == data["num_train"] + data["num_val"] + data["num_test"]
    assert summary["dropped_by"]["unrated"] == data["filters"][0]["before"]["ratings"] - \
        data["filters"][0]["after"]["ratings"] > 0
    assert sum(c for _, c in summary["histogram"]) == summary["ratings"]
    assert summary["per_item"]["min"] >= 3  # the k-core's minimum holds

    overrides = [*SETTINGS, f"data.path={tmp_path / 'books.csv'}"]
    assert main(["data", *overrides, "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["summary"] == summary and printed["filters"] == data["filters"]
    assert main(["data", *overrides]) == 0
    text = capsys.readouterr().out
    assert f"rows read  {data['rows_read']:,}" in text and "data.unrated_value=0" in text and "cold test" in text
    assert main(["data", *overrides, "data.filter.min_user_ratings=1000"]) == 2
    assert "no ratings left after data.filter.min_user_ratings=1000" in capsys.readouterr().err


def test_the_resume_guard_is_keyed_by_the_filters(tmp_path, books):
    train(_cfg(tmp_path, books, "trainer.max_epochs=1"))
    with pytest.raises(RunDirectoryError, match=r"data.filter.min_item_ratings: 3 \(saved\) -> 4 \(now\)"):
        train(_cfg(tmp_path, books, "trainer.max_epochs=1", "data.filter.min_item_ratings=4"))
    with pytest.raises(RunDirectoryError, match=r"data.unrated_value: 0 \(saved\) -> 5 \(now\)"):
        train(_cfg(tmp_path, books, "trainer.max_epochs=1", "data.unrated_value=5"))


@pytest.mark.integration  # a process, as a user types it
def test_non_ascii_ids_on_the_command_line(tmp_path, books):
    import subprocess
    import sys

    train(_cfg(tmp_path, books, "trainer.max_epochs=1"))
    item = "Motörhead; vol 3"
    res = subprocess.run([sys.executable, "-m", "recsys", "predict", str(tmp_path / "run"), "--user", "270000",
                          "--item", item, "--strict"], capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    assert res.stdout.decode("utf-8").split("\t")[:2] == ["270000", item]
    res = subprocess.run([sys.executable, "-m", "recsys", "recommend", str(tmp_path / "run"), "--user", "270000",
                          "-n", "15", "--format", "csv"], capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(res.stdout.decode("utf-8"))))
    known = set(recsys.load(tmp_path / "run").items.ids.tolist())
    assert rows and all(r["item"] in known and not r["item"].isascii() for r in rows)  # every id is non-ASCII
