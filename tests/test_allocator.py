"""The C allocator policy (marlhf.allocator): who decides, that glibc's threshold really is fixed,
and that building an agent applies it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from marlhf import allocator

# Loads marlhf/allocator.py on its own (no torch: a fraction of a second), optionally applies the
# policy, then raises glibc's dynamic threshold by freeing a 4 MiB mapped block and asks where a
# 1 MiB block goes: a memory map of its own (hblks + 1) only if the threshold stayed fixed.
_PROBE = """
import ctypes, importlib.util, json, sys
spec = importlib.util.spec_from_file_location("allocator_probe", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
modes = {"apply": mod.MIN_PARAMETERS, "small": mod.MIN_PARAMETERS - 1}
applied = mod.apply_allocator_policy(modes[sys.argv[2]]) if sys.argv[2] in modes else None
libc.free(libc.malloc(4 << 20))
before = libc.mallinfo2().hblks
block = libc.malloc(1 << 20)
mapped = libc.mallinfo2().hblks - before
libc.free(block)
print(json.dumps({"mapped": mapped, "applied": applied}))
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (allocator.ENV_VAR, "GLIBC_TUNABLES", *allocator.GLIBC_MALLOC_VARS):
        monkeypatch.delenv(name, raising=False)


def test_who_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    big, small = allocator.MIN_PARAMETERS, allocator.MIN_PARAMETERS - 1
    assert allocator.chosen_threshold(big) == allocator.DEFAULT_THRESHOLD == 128 * 1024  # 3.
    assert allocator.chosen_threshold(small) is None  # 3. a small model: glibc's own
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    assert allocator.chosen_threshold(big) is None  # 2. glibc's tunable
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.rtld.nns=2")
    assert allocator.chosen_threshold(big) == allocator.DEFAULT_THRESHOLD  # (not a malloc one)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "262144")
    assert allocator.chosen_threshold(big) is None  # 2. glibc's variable
    monkeypatch.setenv(allocator.ENV_VAR, "1048576")
    assert allocator.chosen_threshold(big) == 1 << 20  # 1. marlhf's variable wins
    assert allocator.chosen_threshold(small) == 1 << 20  # (at any size)
    monkeypatch.setenv(allocator.ENV_VAR, "glibc")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    assert allocator.chosen_threshold(big) is None  # 1. glibc's own threshold asked for


@pytest.mark.parametrize("text", ["0", "-5", "big", str(allocator.MAX_THRESHOLD + 1)])
def test_bad_variable_names_it_and_the_valid_values(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.setenv(allocator.ENV_VAR, text)
    with pytest.raises(ValueError, match=r"MARLHF_MMAP_THRESHOLD=.*from 1 to 33554432.*'glibc'"):
        allocator.apply_allocator_policy(allocator.MIN_PARAMETERS)


def _probe(mode: str, env: dict[str, str]) -> dict[str, int | None]:
    path = Path(allocator.__file__)
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path), mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)


def test_the_policy_fixes_glibcs_threshold() -> None:
    """In a fresh process: without the policy, a freed 4 MiB block raises glibc's threshold and
    a 1 MiB block comes from the heap; with it, the 1 MiB block gets a map of its own. With
    ``MARLHF_MMAP_THRESHOLD=glibc`` the policy leaves glibc alone."""
    if allocator.glibc() is None or not hasattr(allocator.glibc(), "mallinfo2"):
        pytest.skip("needs glibc 2.33 or later (mallinfo2); other C libraries are left alone")
    env = {"PATH": "/usr/bin:/bin"}
    assert _probe("none", env) == {"mapped": 0, "applied": None}
    assert _probe("apply", env) == {"mapped": 1, "applied": allocator.DEFAULT_THRESHOLD}
    assert _probe("small", env) == {"mapped": 0, "applied": None}  # a small model: left alone
    kept = _probe("apply", {**env, allocator.ENV_VAR: "glibc"})
    assert kept == {"mapped": 0, "applied": None}
    bigger = _probe("apply", {**env, allocator.ENV_VAR: str(2 << 20)})  # 1 MiB < 2 MiB
    assert bigger == {"mapped": 0, "applied": 2 << 20}


def test_building_an_agent_applies_the_policy_with_its_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from marlhf.algorithms import PPO, base
    from marlhf.envs import BatchedTokenEnv
    from tests.agents.conftest import tiny_llama_for

    calls: list[int] = []
    monkeypatch.setattr(base, "apply_allocator_policy", calls.append)
    env = BatchedTokenEnv("DelayedChoice", num_envs=2, seed=0, horizon=2)
    model = PPO(tiny_llama_for(env.codec, seed=0), env, seed=0)
    assert calls == [sum(p.numel() for p in model.policy.parameters())]
    assert allocator.chosen_threshold(calls[0]) is None  # a toy model: glibc's own threshold
