"""Rollouts as data: save/load round trip, offline re-segmentation, bad files."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

from marlhf.algorithms import PPO
from marlhf.checkpoint.rollout_io import Rollouts, collect, resegment
from marlhf.envs import BatchedTokenEnv
from marlhf.models import tiny_gpt2
from marlhf.options import SegmentationBatch, compute_starts, make_termination


@pytest.fixture(scope="module")
def algo():
    env = gym.make_vec(
        "marlhf/CreditSum-v0",
        num_envs=8,
        horizon=6,
        num_symbols=2,
        num_decisions=2,
        vectorization_mode="vector_entry_point",
    )
    assert isinstance(env, BatchedTokenEnv)
    model = tiny_gpt2(env.codec, n_layer=1, n_embd=16, n_head=2, n_positions=16, seed=0)
    return PPO(model, env, batch_size=4, kl_coef=0.05, seed=0, mask_actions=True)


def test_round_trip_keeps_every_field(algo, tmp_path) -> None:
    rollouts = collect(algo)
    buf = algo.rollout_buffer
    assert torch.equal(rollouts.response_ids, buf.response_ids)
    assert rollouts.advantages is not None
    assert torch.equal(rollouts.advantages, buf.advantages)
    assert rollouts.info["task"] == "CreditSum" and rollouts.info["kl_coef"] == 0.05
    path = rollouts.save(tmp_path / "sub" / "r.safetensors")
    back = Rollouts.load(path)
    for name in (
        "prompt_ids",
        "prompt_mask",
        "response_ids",
        "response_mask",
        "logprobs",
        "ref_logprobs",
        "task_rewards",
        "rewards",
        "values",
        "starts",
        "advantages",
    ):
        assert torch.equal(getattr(back, name), getattr(rollouts, name)), name
    assert back.group_ids is None
    assert [p.ids for p in back.prompts] == [p.ids for p in rollouts.prompts]
    assert [p.metadata for p in back.prompts] == [p.metadata for p in rollouts.prompts]
    assert back.info == rollouts.info
    assert not list(tmp_path.glob("sub/*.tmp"))


def test_group_ids_round_trip(algo, tmp_path) -> None:
    rollouts = collect(algo)
    rollouts.group_ids = torch.arange(rollouts.num_rows) // 2
    back = Rollouts.load(rollouts.save(tmp_path / "g.safetensors"))
    assert back.group_ids is not None
    assert torch.equal(back.group_ids, rollouts.group_ids)


def test_resegment_offline_equals_the_termination_online(algo) -> None:
    rollouts = collect(algo)
    starts = resegment(rollouts, "ngram:4")
    batch = SegmentationBatch.build(rollouts.response_ids, rollouts.response_mask)
    expected = compute_starts(make_termination("ngram:4"), batch, isolate_last=True)
    assert torch.equal(starts, expected)
    assert starts[:, [0, 4, 5]].all() and not starts[:, [1, 2, 3]].any()
    assert torch.equal(resegment(rollouts, None), rollouts.response_mask)
    # a rule that reads log-probs gets the saved ones
    low = resegment(rollouts, "perplexity")
    assert low.shape == starts.shape and bool(low[:, 0].all())


def test_bad_input_is_named(algo, tmp_path) -> None:
    rollouts = collect(algo)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Rollouts.load(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="marlhf_rollouts"):
        Rollouts.load(tmp_path / "other.safetensors")
    fields = {k: getattr(rollouts, k) for k in rollouts.__dataclass_fields__}
    assert rollouts.values is not None
    with pytest.raises(ValueError, match=r"values is torch\.float32"):
        Rollouts(**{**fields, "values": rollouts.values[:, :2]})
    with pytest.raises(ValueError, match="prompts"):
        Rollouts(**{**fields, "prompts": rollouts.prompts[:1]})
    with pytest.raises(ValueError, match="not JSON"):
        Rollouts(**{**fields, "info": {"x": object()}}).save(tmp_path / "bad.safetensors")
    fresh = PPO(algo.policy, algo.env, batch_size=4, seed=0)
    with pytest.raises(ValueError, match="no collected rollout"):
        Rollouts.from_algorithm(fresh)


def test_check_env_names_the_task_of_the_rollouts_and_the_task_asked_for(algo, tmp_path) -> None:
    back = Rollouts.load(collect(algo).save(tmp_path / "r.safetensors"))
    assert back.info["env"]["env_id"] == "marlhf/CreditSum-v0"
    back.check_env(algo.env, "r.safetensors")  # the task it was collected on: no error
    longer = gym.make_vec(
        "marlhf/CreditSum-v0",
        num_envs=8,
        horizon=8,
        num_symbols=2,
        num_decisions=2,
        vectorization_mode="vector_entry_point",
    )
    with pytest.raises(ValueError, match=r"\(differs in task_kwargs\): do this$") as err:
        back.check_env(longer, "r.safetensors", hint="do this")
    assert "'horizon': 6" in str(err.value) and "'horizon': 8" in str(err.value)
    other = gym.make_vec(
        "marlhf/DelayedChoice-v0", num_envs=8, vectorization_mode="vector_entry_point"
    )
    with pytest.raises(ValueError, match=r"r.safetensors holds episodes of marlhf/CreditSum-v0"):
        back.check_env(other, "r.safetensors")
    # A file written before the env was recorded: compared by the task's name alone.
    back.info = {k: v for k, v in back.info.items() if k != "env"}
    back.check_env(longer, "old.safetensors")
    with pytest.raises(ValueError, match=r"old.safetensors holds episodes of task 'CreditSum'"):
        back.check_env(other, "old.safetensors")
