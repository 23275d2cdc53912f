"""gator.runtime: the OpenMP wait policy is chosen from the load, only when the user has not chosen."""

import os
import subprocess
import sys

from gator import runtime


def test_policy_follows_the_load(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delitem(sys.modules, "torch")  # pretend torch is not imported yet
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(runtime, "busy_cores", lambda seconds=0.1: 0.2)
    assert runtime.choose_omp_wait_policy() == "ACTIVE" == os.environ["OMP_WAIT_POLICY"]
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setattr(runtime, "busy_cores", lambda seconds=0.1: 1.0)
    assert runtime.choose_omp_wait_policy() == "PASSIVE" == os.environ["OMP_WAIT_POLICY"]


def test_a_users_choice_and_a_late_call_change_nothing(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    assert runtime.choose_omp_wait_policy() == "passive"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert "torch" in sys.modules  # the test session imported it: too late to set the variable
    assert runtime.choose_omp_wait_policy().startswith("default")
    assert "OMP_WAIT_POLICY" not in os.environ


def test_busy_cores_is_a_fraction_of_the_machine():
    busy = runtime.busy_cores(0.05)
    assert 0.0 <= busy <= (os.cpu_count() or 1) + 1e-9


def test_the_gator_command_sets_it_before_torch_loads():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = ("import os, sys; from gator.cli import main; main(['info', 'tiny-gatorgpt']); "
            "print('policy', os.environ['OMP_WAIT_POLICY'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] in ("policy ACTIVE", "policy PASSIVE")
