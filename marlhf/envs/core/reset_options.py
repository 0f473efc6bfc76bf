"""Checks of the reset options of :meth:`~marlhf.envs.BatchedTokenEnv.reset` (group, prompt and
prefix resets); each error names the option, the value and what would be valid."""

from __future__ import annotations

import numpy as np
import torch

from marlhf.envs.core.tasks import Prompt

#: The options ``BatchedTokenEnv.reset`` reads.
RESET_OPTIONS = ("group_size", "prompts", "prefixes")


def group_size(value: object, num_envs: int, where: str) -> int:
    """``value`` as a group size ``K``: an int >= 1 dividing ``num_envs``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{where}: reset option group_size={value!r} must be an int >= 1")
    if num_envs % value:
        divisors = [d for d in range(1, num_envs + 1) if num_envs % d == 0]
        raise ValueError(
            f"{where}: reset option group_size={value} does not divide num_envs={num_envs}; "
            f"valid: {divisors}"
        )
    return int(value)


def check_prefixes(
    prefixes: object,
    count: int,
    vocab_size: int,
    max_new_tokens: int,
    eos_token_id: int | None,
    where: str,
) -> list[list[int]]:
    """``prefixes`` as ``count`` lists of token ids, each a response that can still go on:
    ``0..max_new_tokens - 1`` ids in ``[0, vocab_size)``, no EOS."""
    where = f"{where}: reset option prefixes"
    if isinstance(prefixes, (str, bytes)) or not isinstance(
        prefixes, (list, tuple, np.ndarray, torch.Tensor)
    ):
        raise TypeError(f"{where} must be a list of token-id sequences, got {prefixes!r:.60}")
    if len(prefixes) != count:
        raise ValueError(f"{where}: {len(prefixes)} entries; expected {count} (one a prompt)")
    out = []
    for i, q in enumerate(prefixes):
        try:
            ids = torch.as_tensor(q).reshape(-1).tolist() if len(q) else []
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{where}[{i}] is not a sequence of token ids: {q!r:.60}") from err
        if not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab_size for t in ids
        ):
            raise ValueError(f"{where}[{i}]: token ids must be ints in [0, {vocab_size})")
        if len(ids) >= max_new_tokens:
            raise ValueError(
                f"{where}[{i}]: {len(ids)} tokens; valid lengths are 0..{max_new_tokens - 1} "
                "(max_new_tokens - 1: one token left to take)"
            )
        if eos_token_id is not None and eos_token_id in ids:
            raise ValueError(f"{where}[{i}] holds EOS (id {eos_token_id}): that response has ended")
        out.append(ids)
    return out


def check_prompts(
    prompts: object, count: int, max_prompt_len: int, vocab_size: int, where: str
) -> list[Prompt]:
    """``prompts`` (given or sampled) as a list of ``count``
    :class:`~marlhf.envs.core.tasks.Prompt`, each of ``1..max_prompt_len`` token ids in ``[0,
    vocab_size)``."""
    if not isinstance(prompts, (list, tuple)) or len(prompts) != count:
        got = len(prompts) if isinstance(prompts, (list, tuple)) else type(prompts).__name__
        raise ValueError(f"{where}: expected a list of {count} Prompts, got {got}")
    for i, p in enumerate(prompts):
        if not isinstance(p, Prompt):
            raise TypeError(f"{where}: prompt {i} is {type(p).__name__}, not Prompt")
        n = len(p.ids)
        if not 1 <= n <= max_prompt_len:
            raise ValueError(
                f"{where}: prompt {i} has {n} tokens (Prompt.ids); valid lengths "
                f"are 1..{max_prompt_len} (the task's max_prompt_len)"
            )
        bad = [t for t in p.ids if not (isinstance(t, (int, np.integer)) and 0 <= t < vocab_size)]
        if bad:
            raise ValueError(
                f"{where}: prompt {i} holds token ids {bad[:5]} (Prompt.ids); valid "
                f"ids are ints in [0, {vocab_size})"
            )
    return list(prompts)
