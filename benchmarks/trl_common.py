"""What the TRL comparisons (``trl_ppo.py``, ``trl_grpo.py``) and ``memory.py`` share: the
prompts, marlhf's fixed-prompt task without a stop token, the even-token reward, a timed
iteration, and the loop that measures each setting and records its failure.

No torch or marlhf import at module level: the TRL scripts import this file in ``.venv-bench``
before they know TRL imports.
"""

from __future__ import annotations

import copy
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
from common import RESULTS_DIR, stdlib_text, write_json
from interleave import SteppedTrainer, run_rounds, summarise

#: Tokens per prompt, and the in-process BPE's vocabulary.
PROMPT_LEN = 16
VOCAB = 4096


def stdlib_windows(
    tokenizer: Any,
    n: int,
    seed: int = 0,
    length: int = PROMPT_LEN,
    chars: int = 200_000,
    drop_special: bool = True,
) -> list[list[int]]:
    """``n`` seeded windows of ``length`` token ids of the standard library's source.

    :param tokenizer: a Hugging Face tokenizer.
    :param chars: how much source text to tokenize.
    :param drop_special: drop the tokenizer's special tokens from the text's ids first.
    """
    ids = tokenizer(stdlib_text(chars))["input_ids"]
    if drop_special:
        special = set(tokenizer.all_special_ids)
        ids = [t for t in ids if t not in special]
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(ids) - length, size=n)
    return [ids[s : s + length] for s in starts.tolist()]


def even_fraction_reward() -> Any:
    """marlhf's terminal reward: the fraction of even token ids in each response."""
    import torch

    from marlhf.envs.core.tasks import RewardBatch, RewardFunction

    class EvenFraction(RewardFunction):
        mode = "terminal"

        def __call__(self, batch: RewardBatch) -> torch.Tensor:
            even = (batch.response_ids % 2 == 0) & batch.response_mask
            return even.sum(dim=1).float() / batch.lengths.clamp(min=1).float()

    return EvenFraction()


def no_stop_codec(tokenizer: Any) -> Any:
    """The tokenizer's codec without an EOS, so every response lasts ``max_new_tokens`` (as
    with TRL's ``min_new_tokens`` or ``stop_token=None``)."""
    from marlhf.tokenization import HFCodec

    class NoStopCodec(HFCodec):
        @property
        def eos_token_id(self) -> int | None:
            return None

    return NoStopCodec(tokenizer)


def fixed_prompts_task(
    tokenizer: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    reward_fn: Any,
    name: str = "FixedPrompts",
) -> Any:
    """A task that samples ``prompts`` (token ids) with replacement, scored by ``reward_fn``.

    :param tokenizer: copied for the task's codec (:func:`no_stop_codec`).
    :param name: the task's name.
    """
    from marlhf.envs.core.tasks import Prompt, Task

    class FixedPrompts(Task):
        def __init__(self) -> None:
            self.name = name
            self.codec = no_stop_codec(copy.deepcopy(tokenizer))
            self.max_prompt_len = max(len(p) for p in prompts)
            self.max_new_tokens = max_new_tokens
            self.reward_fn = reward_fn
            self.optimal_return = float("nan")
            self.random_return = float("nan")

        def sample_prompts(self, rng: np.random.Generator, n: int) -> list[Prompt]:
            picks = rng.integers(0, len(prompts), size=n).tolist()
            return [Prompt(list(prompts[i])) for i in picks]

    return FixedPrompts()


def timed_iterations(algo: Any, tokens: int) -> Callable[[], float]:
    """A function that runs ``algo`` for one more rollout of ``tokens`` and returns its seconds."""

    def iteration() -> float:
        start = time.perf_counter()
        algo.learn(tokens, reset_num_timesteps=False)
        return time.perf_counter() - start

    return iteration


def against_trl(
    trl: SteppedTrainer,
    marlhf_sides: Callable[[], dict[str, Callable[[], float]]],
    rounds: int,
    warmup: int,
    name: str,
) -> dict[str, Any]:
    """Interleaved rounds of TRL's paused trainer and marlhf's sides, ratios over TRL's.

    :param marlhf_sides: builds the marlhf sides (name -> one timed iteration); TRL's trainer
        is closed even when building them fails.
    :param name: the benchmark's name in the progress lines.
    """
    try:
        sides = {"trl": trl.step, **marlhf_sides()}
        times = run_rounds(sides, rounds, warmup, progress=lambda m: print(f"{name}: {m}"))
    finally:
        trl.close()
    return summarise(times, "trl")


def measure_settings(
    out: dict[str, Any],
    settings: list[Any],
    measure: Callable[[Any], dict[str, Any]],
    figures: Callable[[Any, dict[str, Any]], tuple[dict[str, Any], list[Any]]],
) -> list[list[Any]]:
    """Measure each setting into ``out["settings"]``, keeping a failed one's error; set
    ``out["ratio"]`` (the first setting's that worked) or ``out["error"]``.

    :param settings: dataclass instances (recorded with ``asdict`` and :data:`PROMPT_LEN`).
    :param measure: one setting -> the interleaved summary (``sides``, ``ratios``, ...).
    :param figures: (setting, summary) -> the entry's headline figures (``ratio`` among them)
        and the printed table's row.
    :return: the table's rows, one per setting that worked.
    """
    out["settings"], rows = [], []
    for s in settings:
        entry: dict[str, Any] = {**asdict(s), "prompt_len": PROMPT_LEN}
        try:
            result = measure(s)
        except Exception as err:
            entry["error"] = f"{type(err).__name__}: {err}"
            entry["traceback"] = traceback.format_exc(limit=8)
            out["settings"].append(entry)
            print(entry["traceback"])
            continue
        entry.update(result)
        headline, row = figures(s, result)
        entry.update(headline)
        out["settings"].append(entry)
        rows.append(row)
    good = [e for e in out["settings"] if "ratio" in e]
    out["ratio"] = good[0]["ratio"] if good else None
    if not good:
        out["error"] = "every setting failed: " + "; ".join(e["error"] for e in out["settings"])
    return rows


def ratio_cell(r: dict[str, float]) -> str:
    """A per-round ratio: median (min-max)."""
    return f"{r['median']:.3f} ({r['min']:.2f}-{r['max']:.2f})"


def no_trl(out: dict[str, Any], out_name: str, error: str) -> dict[str, Any]:
    """Record that TRL could not be imported (and no ratio), write it, say so."""
    out.update({"ratio": None, "error": error})
    write_json(RESULTS_DIR / out_name, out)
    print(error)
    return out


def finish(out: dict[str, Any], out_name: str) -> None:
    """Stamp the threads and the closing load average, and write the results file."""
    import torch

    out["torch_threads"] = torch.get_num_threads()
    out["loadavg_end"] = list(os.getloadavg())
    write_json(RESULTS_DIR / out_name, out)
