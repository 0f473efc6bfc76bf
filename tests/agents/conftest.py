"""A tiny batched text env with BatchedTokenEnv's contract, so agent tests do not depend on the
task zoo: the prompt is a cue symbol; the first response token should name the cue's partner;
the score (1 or 0) arrives on each row's last real token. EOS ends an episode early.

Written independently of :class:`~marlhf.envs.BatchedTokenEnv` (Python loops over rows), it
passes the same :func:`~marlhf.envs.core.contract.check_batched_env`
(tests/envs/test_contract.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from marlhf.envs.core.tasks import Prompt
from marlhf.tokenization import SymbolCodec

SYMBOLS = ["a", "b", "c", "d", "x", "y"]
PARTNER = {"a": "c", "b": "d"}


class CueEnv:
    """``num_envs`` rows; prompts of 1-2 tokens left-padded to ``P = 2``; horizon ``N``.

    Reset options as BatchedTokenEnv's: ``group_size``, ``prompts``, ``prefixes``.
    """

    reward_mode = "terminal"

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
        self.done = torch.ones(num_envs, dtype=torch.bool)

    @property
    def all_done(self) -> bool:
        return bool(self.done.all())

    @property
    def any_done(self) -> bool:
        return bool(self.done.any())

    def _sample(self, count: int) -> list[Prompt]:
        cues = self.np_random.integers(0, 2, size=count)
        lengths = self.np_random.integers(1, 3, size=count)
        filler = self.codec.encode("x")[0]
        out = []
        for cue, n in zip(cues.tolist(), lengths.tolist(), strict=True):
            ids = [filler, self.codec.encode("ab"[cue])[0]][-n:]
            out.append(Prompt(ids, {"cue": "ab"[cue]}))
        return out

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        if seed is not None:
            self.np_random = np.random.default_rng(seed)
        options = options or {}
        b, p, n = self.num_envs, self.max_prompt_len, self.max_new_tokens
        k = options.get("group_size", 1)
        if not isinstance(k, int) or k < 1 or b % k:
            raise ValueError(f"CueEnv: group_size={k!r} must be an int >= 1 dividing {b}")
        prompts = options["prompts"] if "prompts" in options else self._sample(b // k)
        prefixes = [list(q) for q in options.get("prefixes", [[]] * (b // k))]
        if len(prompts) != b // k or len(prefixes) != b // k:
            raise ValueError(f"CueEnv: prompts and prefixes need {b // k} entries each")
        if any(len(q) >= n or self.codec.eos_token_id in q for q in prefixes):
            raise ValueError(f"CueEnv: prefixes must be shorter than {n} tokens, without EOS")
        self.prompts = [pr for pr in prompts for _ in range(k)]
        self.response_ids = torch.zeros(b, n, dtype=torch.long)
        self.lengths = torch.zeros(b, dtype=torch.long)
        self.ids = torch.zeros(b, p + n, dtype=torch.long)
        self.mask = torch.zeros(b, p + n, dtype=torch.long)
        for row in range(b):
            prefix = prefixes[row // k]
            tokens = list(self.prompts[row].ids) + prefix
            self.ids[row, p + n - len(tokens) :] = torch.tensor(tokens)
            self.mask[row, p + n - len(tokens) :] = 1
            self.response_ids[row, : len(prefix)] = torch.tensor(prefix, dtype=torch.long)
            self.lengths[row] = len(prefix)
        self.done = torch.zeros(b, dtype=torch.bool)
        info: dict[str, Any] = {"prompts": self.prompts}
        if "group_size" in options:
            info["group_ids"] = torch.arange(b, device=self.device) // k
        return self._obs(), info

    def _obs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids.to(self.device), "attention_mask": self.mask.to(self.device)}

    def step(self, actions: torch.Tensor) -> tuple[Any, ...]:
        if bool(self.done.all()):
            raise RuntimeError("step after every row finished")
        actions = actions.cpu()
        active = ~self.done
        eos = self.codec.eos_token_id
        rewards = torch.zeros(self.num_envs)
        terminated = torch.zeros(self.num_envs, dtype=torch.bool)
        truncated = torch.zeros(self.num_envs, dtype=torch.bool)
        for row in active.nonzero().flatten().tolist():
            token = int(actions[row])
            self.response_ids[row, self.lengths[row]] = token
            self.lengths[row] += 1
            self.ids[row] = torch.cat([self.ids[row, 1:], actions[row : row + 1]])
            self.mask[row] = torch.cat([self.mask[row, 1:], torch.ones(1, dtype=torch.long)])
            terminated[row] = eos is not None and token == eos
            truncated[row] = not terminated[row] and int(self.lengths[row]) >= self.max_new_tokens
            if terminated[row] or truncated[row]:
                want = self.codec.encode(PARTNER[self.prompts[row].metadata["cue"]])[0]
                rewards[row] = float(int(self.response_ids[row, 0]) == want)
                if self.reward_override is not None:
                    rewards[row] = self.reward_override
        self.done = self.done | terminated | truncated
        dev = self.device
        return (
            self._obs(),
            rewards.to(dev),
            terminated.to(dev),
            truncated.to(dev),
            {"active": active.to(dev)},
        )


@pytest.fixture
def cue_env() -> CueEnv:
    return CueEnv(num_envs=4, max_new_tokens=4)


def tiny_model(codec: Any, n_layer: int = 1, n_embd: int = 32, seed: int = 0) -> Any:
    from marlhf.models import tiny_gpt2

    return tiny_gpt2(codec, n_layer=n_layer, n_embd=n_embd, n_head=2, n_positions=64, seed=seed)


def tiny_llama_for(codec: Any, seed: int = 0, **config: Any) -> Any:
    """A 2-block Llama for ``codec`` (SmolLM2's architecture: rotary positions, grouped KV
    heads); ``config``: more ``LlamaConfig`` fields (``tie_word_embeddings``...)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    settings = {
        "vocab_size": codec.vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
    }
    return LlamaForCausalLM(LlamaConfig(**{**settings, **config}))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine two
    spinning OpenMP threads per process made an update ~100x slower than one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextlib.contextmanager
def gradients_at_clipping() -> Iterator[list[list[torch.Tensor]]]:
    """Each optimizer step's gradients as the update clips them: accumulated over micro-batches
    and summed over ranks, not yet clipped (clipping and Adam would hide a wrong scale of the
    gradients from the parameters). Patches ``torch.nn.utils.clip_grad_norm_`` inside."""
    clip = torch.nn.utils.clip_grad_norm_
    grads: list[list[torch.Tensor]] = []

    def recording(params: Any, *args: Any, **kwargs: Any) -> Any:
        params = list(params)
        grads.append([p.grad.clone() for p in params if p.grad is not None])
        return clip(params, *args, **kwargs)

    torch.nn.utils.clip_grad_norm_ = recording  # type: ignore[assignment]
    try:
        yield grads
    finally:
        torch.nn.utils.clip_grad_norm_ = clip


def assert_same_gradients(
    got: list[list[torch.Tensor]], want: list[list[torch.Tensor]], rtol: float
) -> None:
    """Two updates' :func:`gradients_at_clipping`, step by step (at least one step)."""
    assert len(got) == len(want) > 0
    for step, (mine, theirs) in enumerate(zip(got, want, strict=True)):
        for g, w in zip(mine, theirs, strict=True):
            torch.testing.assert_close(g, w, atol=1e-6, rtol=rtol, msg=f"step {step}")
