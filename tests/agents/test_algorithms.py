"""PPO and MAPPO: one code path, determinism, save/load/resume, validation, NaN guards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from unittest.mock import Mock

import numpy as np
import pytest
import torch

from marlhf.algorithms import MAPPO, PPO, CausalLMActorCritic
from marlhf.algorithms.base import LMOnPolicyAlgorithm
from marlhf.algorithms.buffer import LMRolloutBuffer
from tests.agents.conftest import CueEnv, tiny_model

B, N = 4, 4
KW: dict[str, Any] = {
    "learning_rate": 3e-3,
    "n_epochs": 2,
    "batch_size": 2,
    "seed": 3,
    "device": "cpu",
}


def _buffer(algo: LMOnPolicyAlgorithm) -> LMRolloutBuffer:
    """The rollout buffer of an algorithm that has one (every algorithm with an env does)."""
    assert algo.rollout_buffer is not None
    return algo.rollout_buffer


def _params(algo: LMOnPolicyAlgorithm) -> list[torch.Tensor]:
    return [p.detach().clone() for p in algo.policy.trainable_parameters()]


def _make(cls: type[LMOnPolicyAlgorithm] = PPO, eos: bool = False, **kwargs: Any) -> Any:
    env = CueEnv(B, N, eos=eos)
    return cls(tiny_model(env.codec), env, **{**KW, **kwargs})


def test_mappo_ngram1_equals_ppo() -> None:
    ppo = _make(PPO, eos=True, normalize_advantage=True)
    mappo = _make(MAPPO, eos=True, normalize_advantage=True, termination="ngram:1")
    for algo in (ppo, mappo):
        algo.env.reward_override = 0.5  # a non-zero score, so every loss term is non-zero
        algo.learn(B * N + 1)  # at least two rollouts: the second has a non-zero KL
    a, b = ppo.rollout_buffer, mappo.rollout_buffer
    assert torch.equal(a.starts, b.starts) and torch.equal(a.response_mask, b.response_mask)
    assert torch.equal(a.advantages, b.advantages)
    assert torch.equal(a.returns, b.returns)
    for key in ("train/policy_loss", "train/value_loss", "train/entropy", "train/approx_kl"):
        assert ppo.train_stats[key] == mappo.train_stats[key], key
    assert ppo.train_stats["train/value_loss"] > 0 and ppo.rollout_stats["rollout/kl_ref"] != 0
    for p, q in zip(_params(ppo), _params(mappo), strict=True):
        assert torch.equal(p, q)


def test_mappo_segments_differ_from_ppo() -> None:
    ppo, mappo = _make(PPO), _make(MAPPO, termination="ngram:2", isolate_last=False)
    ppo.learn(1)
    mappo.learn(1)
    assert mappo.rollout_buffer.starts[:, 1::2].sum() == 0
    assert not torch.equal(ppo.rollout_buffer.advantages, mappo.rollout_buffer.advantages)
    assert mappo.rollout_stats["credit/macro_len_mean"] == 2.0


def test_first_epoch_ratio_is_exactly_one() -> None:
    algo = _make(PPO, n_epochs=1, batch_size=B, normalize_advantage=False)
    algo.learn(1)
    assert algo.train_stats["train/approx_kl"] == 0.0
    assert algo.train_stats["train/clip_fraction"] == 0.0


def test_same_seed_same_result_other_seed_differs() -> None:
    runs = [_make(PPO, seed=s).learn(2 * B * N) for s in (5, 5, 6)]
    p0, p1, p2 = (_params(r) for r in runs)
    assert all(torch.equal(x, y) for x, y in zip(p0, p1, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(p0, p2, strict=True))
    assert runs[0].num_timesteps == 2 * B * N


@pytest.mark.parametrize("task", ["Reverse", "DelayedChoice"])
def test_num_timesteps_counts_the_real_tokens_of_a_batched_env(task: str) -> None:
    # BatchedTokenEnv tells the rollout on the host while no row has finished (no device sync
    # for the count then); Reverse rows end early at EOS, DelayedChoice rows all at the horizon.
    from marlhf.envs import BatchedTokenEnv

    env = BatchedTokenEnv(task, num_envs=8, seed=0)
    algo = PPO(tiny_model(env.codec), env, n_epochs=1, batch_size=8, seed=0, device="cpu")
    algo.learn(1)
    lengths = _buffer(algo).response_mask.sum(1)
    assert algo.num_timesteps == int(lengths.sum())
    assert bool((lengths < env.max_new_tokens).any()) is (task == "Reverse")


def test_save_load_predictions_and_resume_equal_uninterrupted(tmp_path) -> None:
    # An adaptive KL controller, so its state must travel through the checkpoint too.
    kw: dict[str, Any] = {"termination": "ngram:2", "kl_target": 0.01, "kl_horizon": 10}
    straight = _make(MAPPO, **kw).learn(2 * B * N)

    first = _make(MAPPO, **kw).learn(B * N)
    assert first.kl_ctl.value != 0.05
    first.save(tmp_path / "ckpt")
    assert (tmp_path / "ckpt.zip").is_file()
    assert (tmp_path / "ckpt_weights" / "policy" / "model.safetensors").is_file()
    env = CueEnv(B, N, eos=False)
    resumed = MAPPO.load(tmp_path / "ckpt", env=env, device="cpu")
    assert resumed.num_timesteps == B * N and resumed.termination is not None
    obs, _ = CueEnv(B, N, eos=False).reset(seed=11)
    a, _ = first.predict(obs)
    b, _ = resumed.predict(obs)
    assert torch.equal(a, b)
    resumed.learn(B * N, reset_num_timesteps=False)
    assert resumed.num_timesteps == straight.num_timesteps == 2 * B * N
    for p, q in zip(_params(straight), _params(resumed), strict=True):
        assert torch.equal(p, q)
    assert torch.equal(_buffer(straight).response_ids, _buffer(resumed).response_ids)
    assert straight.kl_ctl.value == resumed.kl_ctl.value


def test_a_schedule_over_a_budget_learned_in_several_calls_resumes_like_one_call(
    tmp_path,
) -> None:
    # Warm-up then linear decay over 3 iterations. One learn() call spans the schedule; learned
    # one iteration a call (as the run runner does between checkpoints), each call would run it
    # to its end (learning rate 0 at every update) unless schedule_timesteps names the budget,
    # which a checkpoint carries.
    kw: dict[str, Any] = {"lr_schedule": "linear", "warmup_fraction": 0.25}
    budget = 3 * B * N
    straight = _make(PPO, **kw).learn(budget)
    split = _make(PPO, **kw)
    assert split.schedule_timesteps is None  # SB3's behaviour unless set
    split.schedule_timesteps = budget
    split.learn(B * N)
    split.save(tmp_path / "ckpt")
    resumed = PPO.load(tmp_path / "ckpt", env=CueEnv(B, N, eos=False), device="cpu")
    assert resumed.schedule_timesteps == budget
    seen = [split.train_stats["train/learning_rate"]]
    for _ in range(2):
        resumed.learn(B * N, reset_num_timesteps=False)
        seen.append(resumed.train_stats["train/learning_rate"])
    assert seen[0] > 0 and len(set(seen)) == 3  # (warm-up, then decay; none stuck at 0)
    for p, q in zip(_params(straight), _params(resumed), strict=True):
        assert torch.equal(p, q)


def test_predict_with_numpy_and_state() -> None:
    algo = _make(PPO)
    obs, _ = CueEnv(B, N).reset(seed=0)
    np_obs = {k: v.numpy() for k, v in obs.items()}
    actions, state = algo.predict(np_obs, deterministic=True)
    assert isinstance(actions, np.ndarray) and actions.shape == (B,)
    _, state = algo.predict(np_obs, state=state, deterministic=True)
    fresh, _ = algo.predict(np_obs, state=state, episode_start=np.ones(B, bool), deterministic=True)
    assert np.array_equal(fresh, actions)


def test_preset_fills_and_explicit_kwargs_override() -> None:
    # A preset fixes the knobs that define its method and suggests the rest; an explicit value
    # overrides a suggestion, and combining the preset with a knob it fixes is an error.
    algo = _make(MAPPO, preset="ma-rlhf-official", learning_rate=3e-4)
    assert (
        algo.config.credit.reward_agg == "mean"
        and algo.config.credit.reward_clip == 2.5
        and algo.config.sampling.top_k == 50
    )
    assert algo.config.loss.normalize_advantage is False and algo.config.kl.kl_coef == 0.05
    assert algo.config.sampling.temperature == 0.8 and algo.termination is not None
    assert algo.config.optim.learning_rate == 3e-4 and algo.config.sampling.score_temperature == 1.0
    assert (
        algo.config.optim.n_epochs == 2
        and algo.config.optim.weight_decay == 0.1
        and algo.config.optim.lr_schedule == "linear"
    )
    with pytest.raises(ValueError, match=r"preset='ma-rlhf-official' fixes temperature=0\.8"):
        _make(MAPPO, preset="ma-rlhf-official", temperature=0.5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"learning_rate": 0.0}, "learning_rate=0.0"),
        ({"learning_rate": -1e-3}, "learning_rate"),
        ({"clip_range": 0}, "clip_range=0"),
        ({"batch_size": 3}, "batch_size=3 cannot split"),
        ({"termination": "nosuch:3"}, "unknown termination 'nosuch'"),
        ({"reward_agg": "max"}, "reward_agg='max'"),
        ({"preset": "nosuch"}, "preset='nosuch'"),
    ],
)
def test_bad_hyperparameters_raise(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _make(PPO, **kwargs)


def test_env_vocabulary_and_pad_token_checked() -> None:
    env = CueEnv(B, N)
    with pytest.raises(ValueError, match="vocabulary size"):
        PPO(tiny_model(env.codec.vocab_size - 1), env, device="cpu")

    class NoPad:
        vocab_size, pad_token_id, eos_token_id = env.codec.vocab_size, None, None

    env.codec = NoPad()  # type: ignore[assignment]
    with pytest.raises(ValueError, match="pad token"):
        PPO(tiny_model(8), env, device="cpu")
    with pytest.raises(ValueError, match="MAPPO: termination=None"):
        _make(MAPPO, termination=None)


def test_nan_reward_stops_before_update() -> None:
    algo = _make(PPO)
    algo.env.reward_override = float("nan")
    before = _params(algo)
    with pytest.raises(FloatingPointError, match="task reward"):
        algo.learn(1)
    assert all(torch.equal(p, q) for p, q in zip(before, _params(algo), strict=True))


def test_nan_value_stops_before_update(monkeypatch: pytest.MonkeyPatch) -> None:
    algo = _make(PPO)
    head = algo.policy.value_head
    monkeypatch.setattr(head, "forward", lambda x: torch.full((*x.shape[:-1], 1), float("nan")))
    before = _params(algo)
    with pytest.raises(FloatingPointError, match="value head"):
        algo.learn(1)
    assert all(torch.equal(p, q) for p, q in zip(before, _params(algo), strict=True))


def test_nan_loss_stops_before_optimizer_step(monkeypatch: pytest.MonkeyPatch) -> None:
    algo = _make(PPO)
    import marlhf.algorithms.updater as updater_module

    real = updater_module.value_loss
    monkeypatch.setattr(updater_module, "value_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    before = _params(algo)
    with pytest.raises(FloatingPointError, match="value loss"):
        algo.learn(1)
    assert all(torch.equal(p, q) for p, q in zip(before, _params(algo), strict=True))


def test_policy_from_actor_critic_and_path(tmp_path) -> None:
    env = CueEnv(B, N)
    model = tiny_model(env.codec)
    model.save_pretrained(str(tmp_path / "lm"))
    from_path = PPO(str(tmp_path / "lm"), env, device="cpu", seed=0)
    wrapped = PPO(CausalLMActorCritic(model), env, device="cpu", seed=0)
    obs, _ = env.reset(seed=0)
    assert torch.equal(from_path.predict(obs)[0], wrapped.predict(obs)[0])


def test_nan_from_a_task_reward_function_is_caught_by_the_env() -> None:
    from marlhf.envs import BatchedTokenEnv, DelayedChoiceTask, RewardFunction

    class NaNReward(RewardFunction):
        mode = "terminal"

        def __call__(self, batch: Any) -> torch.Tensor:
            return torch.full((batch.response_ids.shape[0],), float("nan"))

    task = DelayedChoiceTask(horizon=3)
    task.reward_fn = NaNReward()
    env = BatchedTokenEnv(task, num_envs=2, seed=0)
    algo = PPO(tiny_model(env.codec), env, learning_rate=1e-2, seed=0, device="cpu")
    before = _params(algo)
    with pytest.raises(ValueError, match=r"(?i)reward"):
        algo.learn(1)
    assert all(torch.equal(p, q) for p, q in zip(before, _params(algo), strict=True))


def test_policy_without_reference_trains_with_zero_kl() -> None:
    env = CueEnv(B, N)
    policy = CausalLMActorCritic(tiny_model(env.codec), reference=None)
    algo = PPO(policy, env, learning_rate=1e-2, seed=0, device="cpu").learn(2 * B * N)
    assert algo.rollout_stats["rollout/kl_ref"] == 0.0


def test_resume_with_the_real_env_continues_its_prompt_stream(tmp_path) -> None:
    from marlhf.envs import BatchedTokenEnv

    def env() -> Any:
        return BatchedTokenEnv("DelayedChoice", num_envs=8, seed=0, horizon=3)

    def make() -> Any:
        e = env()
        return MAPPO(tiny_model(e.codec), e, termination="ngram:2", seed=1, device="cpu", **LR)

    LR: dict[str, Any] = {"learning_rate": 1e-2}
    straight = make().learn(3 * 8 * 3)
    first = make().learn(8 * 3)
    first.save(tmp_path / "ck")
    resumed = MAPPO.load(tmp_path / "ck", env=env(), device="cpu")
    resumed.learn(2 * 8 * 3, reset_num_timesteps=False)
    assert torch.equal(_buffer(straight).prompt_ids, _buffer(resumed).prompt_ids)
    for p, q in zip(_params(straight), _params(resumed), strict=True):
        assert torch.equal(p, q)


def test_mask_actions_samples_and_scores_only_allowed_tokens() -> None:
    from marlhf.envs import BatchedTokenEnv

    env = BatchedTokenEnv("DelayedChoice", num_envs=8, seed=0, horizon=4)
    algo = PPO(
        tiny_model(env.codec), env, mask_actions=True, n_epochs=1, seed=0, device="cpu"
    ).learn(1)
    buf = _buffer(algo)
    allowed = torch.as_tensor(env.task.action_mask())
    assert bool(allowed[buf.response_ids[buf.response_mask]].all())
    assert algo.train_stats["train/approx_kl"] == 0.0  # old and new log-probs use the same mask
    # The masked distribution puts all its mass on the allowed tokens: log-probs are higher.
    plain = PPO(
        tiny_model(env.codec), BatchedTokenEnv("DelayedChoice", 8, seed=0, horizon=4), device="cpu"
    )
    logp, _, _ = plain.policy.evaluate_actions(buf.input_ids, buf.attention_mask, buf.response_mask)
    assert bool((buf.logprobs[buf.response_mask] > logp[buf.response_mask]).all())
    with pytest.raises(ValueError, match="has no action_masks"):
        PPO(tiny_model(8), CueEnv(B, N), mask_actions=True, device="cpu")
    with pytest.raises(ValueError, match="mask_actions=1 must be True or False"):
        PPO(tiny_model(8), CueEnv(B, N), mask_actions=1, device="cpu")


@pytest.fixture
def every_k() -> Iterator[type]:
    """A fresh, unregistered custom termination class (``EveryK(k)``); the registry is restored
    afterwards."""
    from marlhf.options import Termination
    from marlhf.options import registry as registry_module

    class EveryK(Termination):
        def __init__(self, k: int = 2) -> None:
            super().__init__()
            self.k = k

        def starts(self, batch: Any) -> torch.Tensor:
            out = torch.zeros_like(batch.mask)
            out[:, :: self.k] = True
            return out & batch.mask

    saved = dict(registry_module._REGISTRY)
    try:
        yield EveryK
    finally:
        registry_module._REGISTRY.clear()
        registry_module._REGISTRY.update(saved)


def test_a_directly_built_custom_termination_saves_and_loads_with_its_arguments(
    tmp_path, every_k
) -> None:
    from marlhf.options import register_termination

    with pytest.raises(ValueError, match="register it with @register_termination"):
        _make(MAPPO, termination=every_k(3)).save(tmp_path / "unregistered")
    assert not (tmp_path / "unregistered.zip").exists()  # nothing written:
    assert not (tmp_path / "unregistered_weights").exists()  # not the weights either
    register_termination("every_k_save_test")(every_k)
    algo = _make(MAPPO, termination=every_k(3)).learn(B * N)
    algo.save(tmp_path / "ckpt")
    loaded = MAPPO.load(tmp_path / "ckpt", env=CueEnv(B, N, eos=False), device="cpu")
    assert isinstance(loaded.termination, every_k) and loaded.termination.k == 3


def test_save_refuses_a_spec_that_would_load_other_arguments(
    tmp_path, monkeypatch, every_k
) -> None:
    from marlhf.options import base as base_module
    from marlhf.options import register_termination
    from marlhf.options import registry as registry_module

    register_termination("every_k_args_test")(every_k)
    algo = _make(MAPPO, termination=every_k(3))
    # checkpoints store a rule as data; the spec is the fallback when its arguments are not data
    monkeypatch.setattr(
        registry_module, "termination_config", Mock(side_effect=ValueError("not plain data"))
    )
    # a spec writer that loses the value: the rebuilt rule would run with k=4, not 3
    monkeypatch.setattr(base_module, "_spec_value", lambda owner, key, v: "4")
    with pytest.raises(ValueError, match=r"arguments \{'k': 3\} would load back as"):
        algo.save(tmp_path / "lossy")
    assert not (tmp_path / "lossy.zip").exists()
    assert not (tmp_path / "lossy_weights").exists()
