"""The same code on CUDA (skipped without a GPU): envs, terminations and GAE agree with the CPU,
MAPPO(ngram:1) reproduces PPO, bf16 autocast trains, a CUDA checkpoint loads on the CPU.

Run on a GPU machine with ``pytest -m cuda``. ``MARLHF_TEST_DEVICE=cpu pytest -m cuda`` runs
them on the CPU instead (a check of the tests themselves, not of CUDA).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import pytest
import torch

from marlhf.algorithms import MAPPO, PPO
from marlhf.credit.advantages import compute_gae
from marlhf.envs import BatchedTokenEnv
from marlhf.options import available_terminations, compute_starts, make_termination
from tests.agents.conftest import CueEnv, tiny_model
from tests.extras import spec_param
from tests.options.strategies import DEFAULT_SPECS, EXTRA_SPECS, RaggedBatch

DEVICE = os.environ.get("MARLHF_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"
    ),
]

TOY_TASKS = ["DelayedChoice", "Reverse", "ReverseDense", "ExprTarget"]


def _params(algo: Any) -> list[torch.Tensor]:
    return [p.detach().clone() for p in algo.policy.trainable_parameters()]


@pytest.mark.parametrize("bf16", [False, True])
def test_mappo_runs_on_cuda(bf16: bool) -> None:
    env = CueEnv(4, 4, device=DEVICE)
    env.reward_override = 0.5  # a non-zero score, so the losses have a gradient
    algo = MAPPO(
        tiny_model(env.codec), env, termination="ngram:2", bf16=bf16, seed=0, device="auto"
    )
    assert algo.device.type == DEVICE
    before = _params(algo)
    algo.learn(16)
    assert algo.rollout_buffer is not None
    assert algo.rollout_buffer.advantages.device.type == DEVICE
    after = list(algo.policy.trainable_parameters())
    assert any(not torch.equal(p, q) for p, q in zip(before, after, strict=True))
    assert torch.isfinite(torch.tensor(algo.train_stats["train/value_loss"]))


@pytest.mark.parametrize("task", TOY_TASKS)
def test_env_on_cuda_matches_cpu(task: str) -> None:
    envs = [BatchedTokenEnv(task, num_envs=8, device=d, seed=0) for d in ("cpu", DEVICE)]
    (obs_c, _), (obs_g, _) = (e.reset(seed=0) for e in envs)
    allowed = np.flatnonzero(envs[0].action_masks()[0])
    rng = np.random.default_rng(0)
    for _ in range(envs[0].max_new_tokens):
        for key in obs_c:
            assert torch.equal(obs_c[key], obs_g[key].cpu()), key
        if envs[0].all_done:
            break
        actions = torch.as_tensor(rng.choice(allowed, size=8))
        out_c = envs[0].step(actions)
        out_g = envs[1].step(actions.to(DEVICE))
        assert out_g[1].device.type == DEVICE
        for a, b in zip(out_c[1:4], out_g[1:4], strict=True):
            assert torch.equal(a, b.cpu())
        obs_c, obs_g = out_c[0], out_g[0]
    assert envs[1].all_done


def _specs() -> list[Any]:
    specs = [DEFAULT_SPECS.get(n, n) for n in available_terminations()] + EXTRA_SPECS
    return [spec_param(s) for s in specs]


@pytest.mark.parametrize("spec", _specs())
def test_terminations_on_cuda_match_cpu(spec: str) -> None:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 23, (6, 12), generator=gen)
    lengths = torch.tensor([12, 7, 1, 0, 9, 12])
    mask = torch.arange(12)[None] < lengths[:, None]
    ids = ids.masked_fill(~mask, 0)
    values = torch.randn(6, 12, generator=gen)
    term = make_termination(spec)
    cpu = compute_starts(term, RaggedBatch(ids, mask, values, 7).build(term))
    cuda_batch = RaggedBatch(ids.to(DEVICE), mask.to(DEVICE), values.to(DEVICE), 7).build(term)
    starts = compute_starts(make_termination(spec), cuda_batch)
    assert starts.device.type == DEVICE
    assert torch.equal(cpu, starts.cpu())


@pytest.mark.parametrize("reward_agg", ["sum", "mean"])
def test_gae_on_cuda_matches_cpu(reward_agg: str) -> None:
    gen = torch.Generator().manual_seed(1)
    rewards, values = torch.randn(5, 16, generator=gen), torch.randn(5, 16, generator=gen)
    mask = torch.arange(16)[None] < torch.tensor([16, 9, 3, 1, 12])[:, None]
    starts = (torch.rand(5, 16, generator=gen) < 0.3) & mask
    starts[:, 0] = True
    kw: dict[str, Any] = {"gamma": 0.99, "gae_lambda": 0.9, "reward_agg": reward_agg}
    cpu = compute_gae(rewards, values, mask, starts, **kw)
    gpu = compute_gae(
        rewards.to(DEVICE), values.to(DEVICE), mask.to(DEVICE), starts.to(DEVICE), **kw
    )
    torch.testing.assert_close(gpu.advantages.cpu(), cpu.advantages, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gpu.returns.cpu(), cpu.returns, rtol=1e-5, atol=1e-6)


def test_mappo_ngram1_equals_ppo_on_cuda() -> None:
    kw: dict[str, Any] = {"n_epochs": 2, "batch_size": 2, "seed": 3, "device": DEVICE}
    algos = []
    extras: list[tuple[type[PPO], dict[str, Any]]] = [
        (PPO, {}),
        (MAPPO, {"termination": "ngram:1"}),
    ]
    for cls, extra in extras:
        env = CueEnv(4, 4, device=DEVICE)
        env.reward_override = 0.5
        algos.append(cls(tiny_model(env.codec), env, **kw, **extra).learn(17))
    a, b = (algo.rollout_buffer for algo in algos)
    assert a is not None and b is not None
    assert torch.equal(a.response_ids, b.response_ids)
    assert torch.equal(a.advantages, b.advantages) and torch.equal(a.returns, b.returns)
    for p, q in zip(_params(algos[0]), _params(algos[1]), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_bf16_llama_architecture_trains_finite() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    env = CueEnv(4, 6, device=DEVICE)
    env.reward_override = 0.5
    config = LlamaConfig(
        vocab_size=env.codec.vocab_size, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=64, pad_token_id=env.codec.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    algo = MAPPO(LlamaForCausalLM(config), env, termination="ngram:3", bf16=True, seed=0)
    before = _params(algo)
    algo.learn(48)
    for key in ("train/policy_loss", "train/value_loss", "train/approx_kl"):
        assert np.isfinite(algo.train_stats[key]), key
    after = _params(algo)
    assert all(p.dtype == torch.float32 for p in after)  # autocast, float32 master weights
    assert any(not torch.equal(p, q) for p, q in zip(before, after, strict=True))


def test_cuda_checkpoint_loads_and_trains_on_cpu(tmp_path) -> None:
    env = CueEnv(4, 4, device=DEVICE, eos=False)
    env.reward_override = 0.5
    algo = MAPPO(tiny_model(env.codec), env, termination="ngram:2", seed=0, device=DEVICE)
    algo.learn(16)
    algo.save(tmp_path / "ckpt")
    with warnings.catch_warnings():  # a CUDA RNG state cannot be restored on the CPU
        warnings.simplefilter("ignore")
        loaded = MAPPO.load(tmp_path / "ckpt", env=CueEnv(4, 4, eos=False), device="cpu")
    assert loaded.device.type == "cpu"
    for p, q in zip(_params(algo), _params(loaded), strict=True):
        assert q.device.type == "cpu" and torch.equal(p.cpu(), q)
    loaded.learn(16, reset_num_timesteps=False)
    assert loaded.num_timesteps == 32
    assert np.isfinite(loaded.train_stats["train/value_loss"])


@pytest.mark.parametrize("task", [*TOY_TASKS, "CueEnv"])
def test_batched_env_contract_holds_on_cuda(task: str) -> None:
    from marlhf.envs.core.contract import check_batched_env

    env: Any = (
        CueEnv(num_envs=4, max_new_tokens=5, device=DEVICE)
        if task == "CueEnv"
        else BatchedTokenEnv(task, num_envs=4, device=DEVICE)
    )
    check_batched_env(env, seed=0)
