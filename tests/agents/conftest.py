"""A tiny batched text env with BatchedTokenEnv's contract, so agent tests do not depend on the
task zoo: the prompt is a cue symbol; the first response token should name the cue's partner;
the score (1 or 0) arrives on each row's last real token. EOS ends an episode early."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from marlhf.tokenization import SymbolCodec

SYMBOLS = ["a", "b", "c", "d", "x", "y"]
PARTNER = {"a": "c", "b": "d"}


class CueEnv:
    """``num_envs`` rows; prompts of 1-2 tokens left-padded to ``P = 2``; horizon ``N``."""

    def __init__(
        self, num_envs: int = 4, max_new_tokens: int = 4, device: str = "cpu", eos: bool = True
    ) -> None:
        self.codec = SymbolCodec(SYMBOLS, eos="<eos>" if eos else None)
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.max_prompt_len = 2
        self.max_new_tokens = max_new_tokens
        self.seq_len = self.max_prompt_len + max_new_tokens
        self.np_random = np.random.default_rng()
        self.reward_override: float | None = None

    def reset(self, seed: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        if seed is not None:
            self.np_random = np.random.default_rng(seed)
        b, p, n = self.num_envs, self.max_prompt_len, self.max_new_tokens
        cues = self.np_random.integers(0, 2, size=b)
        lengths = self.np_random.integers(1, 3, size=b)
        ids = torch.zeros(b, p + n, dtype=torch.long)
        mask = torch.zeros(b, p + n, dtype=torch.long)
        for row in range(b):
            cue = self.codec.encode("ab"[cues[row]])[0]
            filler = self.codec.encode("x")[0]
            prompt = [filler, cue][-int(lengths[row]) :]
            ids[row, p + n - len(prompt) :] = torch.tensor(prompt)
            mask[row, p + n - len(prompt) :] = 1
        self.cues = cues
        self.done = torch.zeros(b, dtype=torch.bool)
        self.response_ids = torch.zeros(b, n, dtype=torch.long)
        self.response_mask = torch.zeros(b, n, dtype=torch.bool)
        self.lengths = torch.zeros(b, dtype=torch.long)
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}, {}

    def step(self, actions: torch.Tensor) -> tuple[Any, ...]:
        if bool(self.done.all()):
            raise RuntimeError("step after every row finished")
        actions = actions.cpu()
        active = ~self.done
        rows = active.nonzero().flatten()
        self.response_ids[rows, self.lengths[rows]] = actions[rows]
        self.response_mask[rows, self.lengths[rows]] = True
        self.lengths += active.long()
        eos = self.codec.eos_token_id
        terminated = active & (actions == eos) if eos is not None else torch.zeros_like(active)
        truncated = active & ~terminated & (self.lengths >= self.max_new_tokens)
        finished = terminated | truncated
        rewards = torch.zeros(self.num_envs)
        for row in finished.nonzero().flatten().tolist():
            want = self.codec.encode(PARTNER["ab"[self.cues[row]]])[0]
            rewards[row] = float(int(self.response_ids[row, 0]) == want)
            if self.reward_override is not None:
                rewards[row] = self.reward_override
        self.done = self.done | finished
        obs = {"input_ids": torch.zeros(1), "attention_mask": torch.zeros(1)}
        dev = self.device
        return obs, rewards.to(dev), terminated.to(dev), truncated.to(dev), {"active": active}


@pytest.fixture
def cue_env() -> CueEnv:
    return CueEnv(num_envs=4, max_new_tokens=4)


def tiny_model(codec: Any, n_layer: int = 1, n_embd: int = 32, seed: int = 0) -> Any:
    from marlhf.models import tiny_gpt2

    return tiny_gpt2(codec, n_layer=n_layer, n_embd=n_embd, n_head=2, n_positions=64, seed=seed)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine two
    spinning OpenMP threads per process made an update ~100x slower than one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
