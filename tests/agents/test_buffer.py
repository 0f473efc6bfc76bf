"""LMRolloutBuffer: step-by-step filling and minibatches over whole episodes."""

from __future__ import annotations

import pytest
import torch

from marlhf.algorithms.buffer import LMRolloutBuffer


def _filled() -> LMRolloutBuffer:
    buf = LMRolloutBuffer(num_envs=4, prompt_len=2, max_new_tokens=3, device=torch.device("cpu"))
    ids = torch.tensor([[0, 0, 0, 5], [0, 0, 6, 7], [0, 0, 0, 8], [0, 0, 9, 9]])
    buf.set_prompts(ids, (ids != 0).long())
    done = torch.zeros(4, dtype=torch.bool)
    for t in range(3):
        actions = torch.arange(4) + 10 * (t + 1)
        buf.add(actions, torch.full((4,), float(t)), ~done)
        done = done | (torch.arange(4) == t)  # row t finishes at step t
    return buf


def test_add_masks_finished_rows_and_keeps_prefix_masks() -> None:
    buf = _filled()
    assert buf.lengths.tolist() == [1, 2, 3, 3]
    assert buf.response_ids[0].tolist() == [10, 0, 0]
    assert buf.task_rewards[1].tolist() == [0.0, 1.0, 0.0]
    assert buf.prompt_ids[1].tolist() == [6, 7] and buf.prompt_mask[0].tolist() == [0, 1]
    with pytest.raises(ValueError, match="max_new_tokens=3"):
        buf.add(torch.zeros(4, dtype=torch.long), torch.zeros(4), torch.ones(4, dtype=torch.bool))


def test_minibatches_cover_every_row_once_and_are_seeded() -> None:
    buf = _filled()
    buf.advantages = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    batches = list(buf.get(2, torch.Generator().manual_seed(0)))
    assert len(batches) == 2 and all(b.response_ids.shape == (2, 3) for b in batches)
    rows = sorted(int(b.advantages[i, 0]) // 3 for b in batches for i in range(2))
    assert rows == [0, 1, 2, 3]
    again = list(buf.get(2, torch.Generator().manual_seed(0)))
    assert all(torch.equal(a.advantages, b.advantages) for a, b in zip(batches, again, strict=True))
    # Fields stay aligned row by row.
    for b in batches:
        assert torch.equal(b.response_mask, b.response_ids != 0)


@pytest.mark.parametrize("size", [0, 3, 5])
def test_batch_size_must_divide_rows(size: int) -> None:
    with pytest.raises(ValueError, match=f"batch_size={size}"):
        next(_filled().get(size))


def _steps_into(buf: LMRolloutBuffer, masks: list[torch.Tensor | None], first: int = 0) -> None:
    for t, active in enumerate(masks, start=first):
        rewards = torch.arange(4, dtype=torch.float64) * 0.1 + t  # cast to float32 when written
        buf.add(torch.arange(4) + 10 * (t + 1), rewards, active)


def test_all_active_steps_are_written_on_read_as_one_write_a_step() -> None:
    # add(active=None) keeps the step and writes a run of them at the next read of the
    # response, its mask or the task rewards (or before a masked step): the same values as a
    # write a step (the masked form with every row active writes each step at once).
    every = torch.ones(4, dtype=torch.bool)
    last = torch.tensor([True, False, True, True])
    reference = LMRolloutBuffer(
        num_envs=4, prompt_len=2, max_new_tokens=5, device=torch.device("cpu")
    )
    _steps_into(reference, [every, every, every, last])
    lazy = LMRolloutBuffer(num_envs=4, prompt_len=2, max_new_tokens=5, device=torch.device("cpu"))
    held = lazy.response_ids  # a tensor read before the steps gets them in place
    _steps_into(lazy, [None, None])
    assert lazy.pos == 2 and lazy.credit_mask[:, :2].all()  # a read writes the pending steps
    _steps_into(lazy, [None, last], first=2)
    for name in ("response_ids", "response_mask", "task_rewards", "credit_mask", "lengths"):
        assert torch.equal(getattr(lazy, name), getattr(reference, name)), name
    assert torch.equal(held, reference.response_ids)
    assert lazy.task_rewards.dtype == torch.float32 and lazy.credit_mask is lazy.response_mask
    lazy.reset()
    assert not lazy.response_mask.any() and not lazy.task_rewards.any()


def test_a_reset_drops_the_steps_not_written_yet() -> None:
    buf = LMRolloutBuffer(num_envs=2, prompt_len=1, max_new_tokens=3, device=torch.device("cpu"))
    buf.add(torch.tensor([5, 6]), torch.ones(2), None)
    buf.reset()
    assert buf.pos == 0 and not buf.response_ids.any() and not buf.response_mask.any()
