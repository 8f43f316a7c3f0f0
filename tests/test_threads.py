"""Threads that behave when the cores are shared: passive OpenMP waiting, a thread count from the CPUs the process
may use, ``trainer.threads``."""

import json
import os
import subprocess
import sys

import pytest
import torch

from recsys import threads


def test_the_cgroup_quota_is_read_from_v2_or_v1_files(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_cpus(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpus(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpus(tmp_path) == 3.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cgroup_cpus(tmp_path) is None
    assert threads.cgroup_cpus(tmp_path / "nothing") is None


def test_the_cpus_available_are_the_affinity_bounded_by_the_quota_and_shared_among_ranks(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: None)
    assert threads.available_cpus() == 8
    assert (threads.threads_for(1), threads.threads_for(2), threads.threads_for(3), threads.threads_for(16)) == \
        (8, 4, 2, 1)
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: 2.5)  # a container allowed 2.5 CPUs of 8
    assert threads.available_cpus() == 3 and threads.threads_for(2) == 1
    assert threads.threads_for(2, requested=5) == 5  # trainer.threads wins


def test_apply_sets_torchs_threads_unless_the_user_fixed_them(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "available_cpus", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert threads.apply(2) == 1 and torch.get_num_threads() == 1
        assert threads.apply(1, requested=2) == 2 and torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        assert threads.apply(1) == 1  # the user's OMP_NUM_THREADS stands
    finally:
        torch.set_num_threads(before)


def test_trainer_threads_sets_the_runs_threads_and_run_info_records_them(compose_cfg, tmp_path, monkeypatch):
    from recsys.training import train

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        train(compose_cfg("trainer.threads=1", "trainer.max_epochs=1", "logger=none"))
        info = json.loads((tmp_path / "run" / "run_info.json").read_text())["threads"]
        assert info["torch"] == 1 and info["available_cpus"] >= 1 and info["openmp_wait"]["policy"]
    finally:
        torch.set_num_threads(before)
        os.environ.pop("OMP_NUM_THREADS", None)
    with pytest.raises(ValueError, match="trainer.threads=0"):
        train(compose_cfg("trainer.threads=0"))


@pytest.mark.integration  # starts interpreters: the policy is read when the OpenMP runtime loads
def test_import_recsys_makes_openmp_wait_passively_unless_the_user_chose():
    show = "import os, recsys.threads as t; print(os.environ.get('OMP_WAIT_POLICY'), t.waiting()['set_by'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}

    def run(code, **extra):
        return subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True,
                              check=True).stdout.split()

    assert run(f"import recsys, torch; {show}") == ["PASSIVE", "recsys"]
    assert run(f"import recsys; {show}", OMP_WAIT_POLICY="ACTIVE") == ["ACTIVE", "user"]
    assert run(f"import torch, recsys; {show}")[:2] == ["None", "runtime"]  # too late: the runtime already read it
    main = subprocess.run([sys.executable, "-m", "recsys", "--help"], env=env, capture_output=True, text=True)
    assert main.returncode == 0
