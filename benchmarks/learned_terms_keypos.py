"""KeyPosition, the learned-termination benchmark's own task: the decisive response position is
given by the prompt, so it varies from prompt to prompt. Importing this module registers it
(``marlhf/KeyPosition-v0``).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from marlhf.envs.builtin.toy import ToyTask
from marlhf.envs.core.registration import register_task
from marlhf.envs.core.tasks import Prompt, RewardBatch, RewardFunction, RewardMode
from marlhf.tokenization import SymbolCodec


class _KeyPositionReward(RewardFunction):
    mode: ClassVar[RewardMode] = "terminal"

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        dev = batch.response_ids.device
        pos = torch.tensor([int(p.metadata["pos"]) for p in batch.prompts], device=dev)
        want = torch.tensor([int(p.metadata["target_id"]) for p in batch.prompts], device=dev)
        got = batch.response_ids.gather(1, pos[:, None]).squeeze(1)
        real = batch.response_mask.gather(1, pos[:, None]).squeeze(1)
        return ((got == want) & real).float()


class KeyPositionTask(ToyTask):
    """The prompt is a position digit ``p`` and a cue letter; the reward (at the horizon) is 1
    when response token ``p`` is the cue's partner letter. The decisive position varies from
    prompt to prompt; the tokens after it are filler (true advantage 0), and those before it
    matter only through the policy's odds at ``p``.

    :param horizon: response tokens (default 32).
    :param positions: ``p`` is uniform in ``0 .. positions - 1`` (default 6; the exact truth
        enumerates ``2 ** positions`` continuations per prompt).
    """

    def __init__(self, horizon: int = 32, positions: int = 6) -> None:
        self.name = "KeyPosition"
        self.positions = positions
        self.codec = SymbolCodec([str(d) for d in range(positions)] + ["A", "B", "a", "b"])
        self.max_prompt_len = 2
        self.max_new_tokens = horizon
        self.reward_fn = _KeyPositionReward()
        self.optimal_return = 1.0
        self.random_return = 0.5
        self.decisive_tokens = positions
        self._partner = {"A": "b", "B": "a"}

    def sample_prompts(self, rng: np.random.Generator, n: int) -> list[Prompt]:
        out = []
        for p, c in zip(
            rng.integers(0, self.positions, n).tolist(), rng.integers(0, 2, n).tolist(), strict=True
        ):
            cue = "AB"[c]
            text = f"{p}{cue}"
            target = self.codec.tokens.index(self._partner[cue])
            out.append(Prompt(self.codec.encode(text), {"pos": p, "target_id": target}, text=text))
        return out

    def action_mask(self) -> np.ndarray:
        return self._mask_of(["a", "b"], eos=False)


register_task("KeyPosition", KeyPositionTask)
