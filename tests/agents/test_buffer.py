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
