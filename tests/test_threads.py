"""The torch thread policy (marlhf.threads): who decides, in which order, and where it applies."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from marlhf import threads
from marlhf.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No thread variables; torch's count restored afterwards."""
    for name in (threads.ENV_VAR, "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_last_count", before)
    monkeypatch.setattr(threads, "_applied", False)
    yield
    torch.set_num_threads(before)


def test_the_order_of_who_decides(clean: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    assert threads.chosen_threads() == threads.DEFAULT_THREADS == 1  # 5. the default: one
    monkeypatch.setattr(threads, "DEFAULT_THREADS", 4)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    assert threads.chosen_threads() == 2  # never more than the cores
    monkeypatch.setattr(threads, "DEFAULT_THREADS", 1)
    torch.set_num_threads(threads._last_count + 1)
    assert threads.chosen_threads() is None  # 4. set in this process by the user
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.chosen_threads() is None  # 3. OMP_NUM_THREADS
    monkeypatch.setenv(threads.ENV_VAR, "torch")
    assert threads.chosen_threads() is None  # 2. torch's own setting
    monkeypatch.setenv(threads.ENV_VAR, "3")
    assert threads.chosen_threads() == 3  # 2. a count
    assert threads.chosen_threads(requested=5) == 5  # 1. the config


def test_apply_sets_once_and_keeps_a_later_user_choice(clean: None) -> None:
    os.environ[threads.ENV_VAR] = "3"
    try:
        assert threads.apply_thread_policy() == 3 == torch.get_num_threads()
        del os.environ[threads.ENV_VAR]
        torch.set_num_threads(2)  # the user's own call, after the policy
        assert threads.apply_thread_policy() == 2  # left alone
        assert threads.apply_thread_policy(requested=1) == 1  # a config count still applies
    finally:
        os.environ.pop(threads.ENV_VAR, None)


def test_a_bad_value_names_the_variable(clean: None, monkeypatch: pytest.MonkeyPatch) -> None:
    for text in ("zero", "0", "-2"):
        monkeypatch.setenv(threads.ENV_VAR, text)
        with pytest.raises(ValueError, match=r"MARLHF_NUM_THREADS=.*a thread count >= 1, or"):
            threads.chosen_threads()


def test_the_cli_refuses_a_bad_value_in_one_line(
    clean: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(threads.ENV_VAR, "many")
    assert main(["train", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("marlhf train: error: MARLHF_NUM_THREADS='many'") and err.count("\n") == 1


def test_an_applied_count_is_kept_by_later_calls_without_one(
    clean: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # compare applies threads_per_worker, then builds agents (which apply the policy again): the
    # agents must not replace the worker's count with the default (it moved the demo's numbers).
    monkeypatch.setattr(threads, "DEFAULT_THREADS", 2)
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    assert threads.apply_thread_policy(requested=1) == 1
    assert threads.apply_thread_policy() == 1 == torch.get_num_threads()


def test_building_an_agent_applies_the_policy(clean: None) -> None:
    from marlhf.algorithms import PPO
    from tests.agents.conftest import CueEnv, tiny_model

    os.environ[threads.ENV_VAR] = "3"
    try:
        env = CueEnv(4, 3)
        PPO(tiny_model(env.codec), env, seed=0, device="cpu")
        assert torch.get_num_threads() == 3
    finally:
        os.environ.pop(threads.ENV_VAR, None)


def _probe(code: str, **env: str) -> str:
    clean_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", threads.ENV_VAR)
    }
    clean_env.update(PYTHONPATH=str(ROOT), **env)
    out = subprocess.run(
        [sys.executable, "-c", code], env=clean_env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


@pytest.mark.slow  # four fresh interpreters importing torch and marlhf
def test_marlhf_first_sets_a_passive_wait_and_torch_first_gets_one_thread() -> None:
    report = "import marlhf.threads as t, os; print(t.passive_wait(), t.default_threads(), "
    report += "os.environ.get('OMP_WAIT_POLICY'))"
    cores = min(threads.DEFAULT_THREADS, threads.usable_cores())
    assert _probe("import marlhf; " + report) == f"True {cores} PASSIVE"
    assert _probe("import torch, marlhf; " + report) == "False 1 PASSIVE"  # too late for OpenMP
    assert _probe("import torch, marlhf; " + report, OMP_WAIT_POLICY="passive") == (
        f"True {cores} passive"  # set before the process started: OpenMP read it
    )
    assert _probe("import marlhf; " + report, MARLHF_NUM_THREADS="torch") == "False 1 None"
