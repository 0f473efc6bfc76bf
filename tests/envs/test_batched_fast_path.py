"""BatchedTokenEnv's step while every row is active: the response caught up from the window,
per-step results made once per episode, and the range check a trusted caller skips."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from marlhf.envs import BatchedTokenEnv
from marlhf.envs.core import action_checks
from marlhf.envs.core.action_checks import check_action_range
from marlhf.envs.multiturn.env import MultiTurnTokenEnv
from marlhf.envs.multiturn.tasks.guess_number import GuessTheNumberTask

pytestmark = pytest.mark.usefixtures("one_thread")

#: (task, its keywords, prefixes of the reset: None, or two equal ones, or ragged ones).
CASES = [
    ("DelayedChoice", {"horizon": 6}, None),  # no EOS: the fast path to the horizon
    ("Reverse", {}, None),  # EOS: leaves the fast path when a row ends early
    ("ReverseDense", {}, None),  # dense rewards: the response is read every step
    ("DelayedChoice", {"horizon": 6}, [[2, 3], [3, 2]]),  # prefixes as long: fast path
    ("DelayedChoice", {"horizon": 6}, [[2], [3, 2, 3]]),  # ragged: the masked path throughout
]


def _env(task: str, kwargs: dict[str, Any]) -> BatchedTokenEnv:
    return BatchedTokenEnv(task, num_envs=4, seed=3, **kwargs)


def _reset(env: BatchedTokenEnv, prefixes: list[list[int]] | None) -> Any:
    if prefixes is None:
        return env.reset(seed=5)
    prompts = env.task.sample_prompts(np.random.default_rng(0), 2)
    return env.reset(seed=5, options={"group_size": 2, "prompts": prompts, "prefixes": prefixes})


def _trace(
    env: BatchedTokenEnv,
    prefixes: list[list[int]] | None,
    *,
    masked: bool,
    read_every_step: bool,
    avoid_eos: bool = False,
) -> list[Any]:
    """Everything an episode shows, with random in-vocabulary actions (seeded). ``masked``
    forces the masked step (``_advance``, one write a step) from the first step on;
    ``avoid_eos`` never samples EOS, so every row of an EOS task runs to the horizon."""
    gen = torch.Generator().manual_seed(0)
    obs, _ = _reset(env, prefixes)
    if masked:
        env._ragged = True  # the flag that keeps step() on the masked path
    out: list[Any] = [obs["input_ids"].clone(), obs["attention_mask"].clone()]
    held = env.response_ids  # a reference kept through the episode
    while not env.all_done:
        allowed = env.action_masks()
        if avoid_eos:
            allowed[:, env.eos_token_id] = False
        actions = torch.multinomial(allowed.float(), 1, generator=gen)[:, 0]
        obs, rewards, terminated, truncated, info = env.step(actions)
        out += [obs["input_ids"].clone(), obs["attention_mask"].clone(), rewards.clone()]
        out += [terminated.clone(), truncated.clone(), info["active"].clone()]
        if read_every_step:
            out += [env.response_ids.clone(), env.response_mask.clone(), env.lengths.clone()]
    out += [info["response_text"], info["episode_return"], held.clone()]
    out += [env.response_ids.clone(), env.response_mask.clone(), env.lengths.clone()]
    return out


def _equal(a: list[Any], b: list[Any]) -> bool:
    if len(a) != len(b):
        return False
    return all(
        torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
        for x, y in zip(a, b, strict=True)
    )


def test_the_masked_step_after_unread_fast_steps_writes_them_first() -> None:
    # Fast steps leave their tokens in the window; a masked step that follows (here forced
    # mid-episode, as a finishing row or a reward that reads nothing would lead to) moves the
    # window, so it must write them before it does.
    def episode(switch_at: int | None) -> list[torch.Tensor]:
        env = _env("DelayedChoice", {"horizon": 6})
        env.reset(seed=5)
        gen = torch.Generator().manual_seed(0)
        for step in range(6):
            if step == switch_at:
                env._ragged = True  # the masked path from here on
            env.step(torch.multinomial(env.action_masks().float(), 1, generator=gen)[:, 0])
        return [env.response_ids.clone(), env.response_mask.clone(), env.lengths.clone()]

    reference = episode(switch_at=0)
    assert _equal(episode(switch_at=3), reference)


@pytest.mark.parametrize(("task", "kwargs", "prefixes"), CASES)
def test_the_fast_step_equals_one_write_a_step(
    task: str, kwargs: dict[str, Any], prefixes: list[list[int]] | None
) -> None:
    # The masked step writes the response, its mask and the lengths every step; the fast one
    # leaves them in the window until read. Whether read every step or only at the end, and
    # through a tensor held from the reset on, the episodes are the same to the bit.
    reference = _trace(_env(task, kwargs), prefixes, masked=True, read_every_step=True)
    fast_read = _trace(_env(task, kwargs), prefixes, masked=False, read_every_step=True)
    assert _equal(fast_read, reference)
    fast = _trace(_env(task, kwargs), prefixes, masked=False, read_every_step=False)
    masked = _trace(_env(task, kwargs), prefixes, masked=True, read_every_step=False)
    assert _equal(fast, masked)
    assert _equal(fast[-6:], reference[-6:])  # the final text, return and response


def test_an_eos_task_reaching_the_horizon_on_the_fast_path_equals_the_masked_step() -> None:
    # An EOS task whose rows all stay active to the horizon (EOS never sampled): the fast step
    # flags every row truncated on the last step, as the masked step does. (In the Reverse case
    # above some row always ends early, so the fast path never reaches the horizon there.)
    reference = _trace(_env("Reverse", {}), None, masked=True, read_every_step=True, avoid_eos=True)
    fast = _trace(_env("Reverse", {}), None, masked=False, read_every_step=True, avoid_eos=True)
    assert _equal(fast, reference)
    env = _env("Reverse", {})
    assert env.eos_token_id is not None
    _trace(env, None, masked=False, read_every_step=False, avoid_eos=True)
    assert env.lengths.eq(env.max_new_tokens).all()  # every row ran to the horizon
    last_step = reference[-15:-6]  # [ids, mask, rewards, terminated, truncated, active, ...]
    assert last_step[4].all() and not last_step[3].any()


def test_a_reset_mid_episode_leaves_a_held_response_complete() -> None:
    env = _env("DelayedChoice", {"horizon": 6})
    env.reset(seed=0)
    held = env.response_ids
    for token in (2, 3, 2):
        env.step(torch.full((4,), token))
    env.reset(seed=1)  # the steps the fast path had not written go to the old tensor first
    assert held[:, :3].tolist() == [[2, 3, 2]] * 4
    assert env.lengths.tolist() == [0] * 4 and env.response_mask.sum() == 0


def test_each_step_returns_its_own_tensors() -> None:
    # The fast step's rewards and flags are rows of blocks made at the reset: a caller that
    # writes into one step's tensors changes neither another step's nor the env's state.
    env = _env("DelayedChoice", {"horizon": 4})
    env.reset(seed=0)
    _, r0, term0, trunc0, info0 = env.step(torch.full((4,), 2))
    r0.add_(5.0)
    term0.fill_(True)
    info0["active"].fill_(False)
    assert not trunc0.any()
    _, r1, term1, trunc1, info1 = env.step(torch.full((4,), 2))
    assert not r1.any() and not term1.any() and not trunc1.any() and info1["active"].all()
    assert len({t.data_ptr() for t in (r0, r1, term0, trunc0, term1, trunc1)}) == 6
    env.step(torch.full((4,), 2))
    *_, trunc3, info3 = env.step(torch.full((4,), 2))
    assert env.all_done and trunc3.all() and env.lengths.tolist() == [4] * 4
    assert torch.equal(info3["episode_return"], env.episode_return)


def _spy_range_checks(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    calls: list[torch.Tensor] = []
    real = action_checks.check_action_range

    def spy(actions: torch.Tensor, vocab_size: int, where: Any) -> None:
        calls.append(actions)
        real(actions, vocab_size, where)

    monkeypatch.setattr(action_checks, "check_action_range", spy)
    return calls


def test_trusted_actions_skip_the_range_check_inside_the_block_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _spy_range_checks(monkeypatch)
    env = _env("Reverse", {})
    env.reset(seed=0)
    env.step(torch.full((4,), 2))
    assert len(calls) == 1 and env.validate_actions
    with env.trusted_actions():
        assert not env.validate_actions
        env.step(torch.full((4,), 2))
        with pytest.raises(ValueError, match=r"shape \(3,\); expected \(4,\)"):  # still checked
            env.step(torch.full((3,), 2))
    assert len(calls) == 1 and env.validate_actions
    with pytest.raises(RuntimeError, match="boom"), env.trusted_actions():
        raise RuntimeError("boom")
    assert env.validate_actions  # restored after an error in the block
    # A user stepping by hand gets the clear error again, before any state changes.
    lengths = env.lengths.clone()
    with pytest.raises(ValueError, match=rf"outside the vocabulary.*0\.\.{env.vocab_size - 1}"):
        env.step(torch.tensor([2, env.vocab_size, 2, 2]))
    assert torch.equal(env.lengths, lengths) and len(calls) == 2


def test_the_multiturn_env_honours_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy_range_checks(monkeypatch)
    env = MultiTurnTokenEnv(GuessTheNumberTask(max_turn_tokens=3), num_envs=2, seed=0)
    env.reset(seed=0)
    token = torch.full((2,), int(env.codec.encode("1")[0]))
    with env.trusted_actions():
        env.step(token)
    assert calls == []
    env.step(token)
    assert len(calls) == 1


def test_a_rollout_range_check_names_row_and_column() -> None:
    ids = torch.tensor([[1, 2, 3], [4, 9, 0]])
    check_action_range(ids, 9 + 1, lambda: "rollout")  # all in range: no error
    with pytest.raises(
        ValueError, match=r"rollout: token ids \[9\] at \(row, column\) \[\[1, 1\]\]"
    ):
        check_action_range(ids, 9, lambda: "rollout")
    with pytest.raises(ValueError, match=r"valid token ids are 0\.\.8"):
        check_action_range(torch.tensor([[-1]]), 9, lambda: "rollout")
