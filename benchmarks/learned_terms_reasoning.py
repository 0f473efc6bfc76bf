"""The reasoning task of the learned-termination benchmark: short sums from reasoning-gym.

``ReasoningGym`` (``chain_sum``, two one-digit terms, ``answer_format="tag"``) scored by the
dataset's own verifier: the response must read ``<answer>N</answer>``, 14-15 BPE tokens of a
1024-token vocabulary and EOS, so the decisive tokens are the one or two digits in the middle of
a response and the format around them. A tiny GPT-2 trained from scratch never writes that, so
the policy is first fine-tuned on the task's reference solutions (:func:`sft_policy`, a plain
teacher-forced loop: a few hundred steps on this machine) and then trained by MA-PPO like the
other tasks. The task declares no decisive depth: its truth is Monte Carlo, with standard errors.
"""

from __future__ import annotations

from typing import Any

import torch

from marlhf.commands.sft_data import collate, task_examples
from marlhf.models import tiny_gpt2

ENV_ID = "marlhf/ReasoningGym-v0"
ENV_KWARGS: dict[str, Any] = {
    "answer_format": "tag",
    "size": 500,
    "dataset_kwargs": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
}
#: teacher-forced steps and rows per step of the fine-tuning before RL
SFT_STEPS = 300
SFT_BATCH = 32


def sft_policy(task: Any, seed: int, steps: int = SFT_STEPS) -> Any:
    """A tiny GPT-2 (2 layers, width 64; the benchmark's model) fine-tuned on ``task``'s
    reference solutions for ``steps`` Adam steps (loss on the solution tokens only).

    :param task: a task with ``solution(prompt)`` (what ``marlhf sft`` trains on).
    :param seed: the model's initial weights and the examples drawn.
    """
    model = tiny_gpt2(task.codec, n_layer=2, n_embd=64, n_head=4, seed=seed)
    examples = task_examples(task, steps * SFT_BATCH, seed)
    pad = int(task.codec.pad_token_id)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        rows = [e.row() for e in examples[step * SFT_BATCH : (step + 1) * SFT_BATCH]]
        batch = collate(rows, pad)
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model
