"""Seconds per GRPO iteration: marlhf's GRPO against TRL's ``GRPOTrainer``, interleaved.

Both sides run in this one process (the benchmark venv ``.venv-bench``: TRL next to an editable
marlhf, the same torch and transformers), one iteration of each per round
(:mod:`interleave`), on:

- the same policy: ``tiny_gpt2`` for an in-process byte-level BPE (4096 tokens), seeded (TRL
  loads it, and its reference, from a saved copy); the reference is a frozen copy on both
  sides;
- the same prompts: seeded windows of the standard library's source, as text (TRL tokenizes
  them; marlhf takes the same tokenizer's ids of the same text);
- the same reward, computed on the completion's token ids: the fraction of even token ids;
- the same group (``group`` completions per prompt, ``batch`` completions per iteration),
  response length (``min_new_tokens`` keeps TRL's completions from stopping early; marlhf's codec
  has no stop token), the k3 KL in the loss (``beta``), the token-mean loss (TRL's ``dapo``),
  per-group std scaling, clip 0.2, ``n_epochs`` (TRL's ``num_iterations``) passes over one
  minibatch, temperature 1, no top-k/top-p, learning rate 1e-5.

An iteration: generation, scoring (reference log-probs; the old log-probs when not exactly
on-policy), rewards, advantages, the update. marlhf's ``marlhf_scored`` side is the same agent
with ``skip_on_policy_scoring=False`` (it runs the no-grad policy forward before the update, as
marlhf did before it skipped it).

Run: ``.venv-bench/bin/python benchmarks/trl_grpo.py [--full] [--batch 64 --out FILE]``;
writes ``benchmarks/results/trl_grpo.json`` (or ``FILE``). When TRL cannot be imported, the
JSON says why and holds no ratio.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_stamp, print_table
from interleave import SteppedTrainer
from trl_common import (
    VOCAB,
    against_trl,
    even_fraction_reward,
    finish,
    fixed_prompts_task,
    measure_settings,
    no_trl,
    ratio_cell,
    stdlib_windows,
    timed_iterations,
)


@dataclass(frozen=True)
class Setting:
    """One measured configuration (the same on both sides).

    :param batch: completions per iteration (TRL: ``per_device_train_batch_size``).
    :param group: completions per prompt (TRL: ``num_generations``).
    :param response_length: new tokens per completion.
    :param n_epochs: passes over each rollout (TRL: ``num_iterations``).
    :param beta: the k3 KL coefficient in the loss.
    :param n_layer: transformer blocks of the policy.
    :param n_embd: hidden width of the policy.
    """

    batch: int = 32
    group: int = 4
    response_length: int = 32
    n_epochs: int = 1
    beta: float = 0.04
    n_layer: int = 2
    n_embd: int = 128


def prompt_texts(tokenizer: Any, n: int, seed: int = 0) -> list[str]:
    """``n`` prompts: seeded windows of :data:`PROMPT_LEN` tokens of stdlib source, decoded."""
    return [tokenizer.decode(ids) for ids in stdlib_windows(tokenizer, n, seed)]


def even_fraction(completion_ids: list[list[int]], **_: Any) -> list[float]:
    """TRL's reward function: the fraction of even token ids in each completion."""
    return [sum(t % 2 == 0 for t in ids) / max(len(ids), 1) for ids in completion_ids]


def trl_side(tokenizer: Any, texts: list[str], s: Setting, steps: int) -> SteppedTrainer:
    """TRL's ``GRPOTrainer`` for ``steps`` iterations, paused after each."""

    def run(callback: Any) -> None:
        import torch
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer

        from marlhf.models import tiny_gpt2

        torch.set_num_threads(1)
        tok = copy.deepcopy(tokenizer)
        tok.padding_side = "left"
        torch.manual_seed(0)
        policy = tiny_gpt2(tok, n_layer=s.n_layer, n_embd=s.n_embd, n_positions=256, seed=0)
        with tempfile.TemporaryDirectory() as tmp:
            # TRL builds its reference from the policy's path (it loads both from it).
            policy.save_pretrained(f"{tmp}/policy")
            config = GRPOConfig(
                output_dir=tmp,
                per_device_train_batch_size=s.batch,
                gradient_accumulation_steps=1,
                steps_per_generation=1,
                num_generations=s.group,
                num_iterations=s.n_epochs,
                max_completion_length=s.response_length,
                generation_kwargs={"min_new_tokens": s.response_length},
                beta=s.beta,
                loss_type="dapo",
                scale_rewards="group",
                epsilon=0.2,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                learning_rate=1e-5,
                max_steps=steps,
                disable_dropout=True,
                report_to="none",
                save_strategy="no",
                logging_steps=10**6,
                log_completions=False,
                disable_tqdm=True,
                use_cpu=True,
                seed=0,
            )
            trainer = GRPOTrainer(
                model=f"{tmp}/policy",
                reward_funcs=even_fraction,
                args=config,
                train_dataset=Dataset.from_dict({"prompt": texts}),
                processing_class=tok,
                callbacks=[callback],
            )
            trainer.train()

    return SteppedTrainer(run)


def marlhf_side(tokenizer: Any, texts: list[str], s: Setting, skip: bool) -> Any:
    """marlhf's GRPO agent; returns a function that runs one iteration and times it."""
    import torch

    from marlhf.algorithms import PPO
    from marlhf.envs.core.batched import BatchedTokenEnv
    from marlhf.models import tiny_gpt2

    prompt_ids = [tokenizer(t)["input_ids"] for t in texts]
    task = fixed_prompts_task(tokenizer, prompt_ids, s.response_length, even_fraction_reward())
    torch.manual_seed(0)
    env = BatchedTokenEnv(task, num_envs=s.batch, seed=0)
    policy = tiny_gpt2(tokenizer, n_layer=s.n_layer, n_embd=s.n_embd, n_positions=256, seed=0)
    algo = PPO(
        policy,
        env,
        preset="grpo",
        group_size=s.group,
        kl_coef=s.beta,
        n_epochs=s.n_epochs,
        batch_size=None,
        learning_rate=1e-5,
        clip_range=0.2,
        temperature=1.0,
        seed=0,
        device="cpu",
    )
    algo.skip_on_policy_scoring = skip
    return timed_iterations(algo, s.batch * s.response_length)


def measure(tokenizer: Any, texts: list[str], s: Setting, warmup: int, rounds: int) -> Any:
    """Interleaved rounds of TRL, marlhf and marlhf with the on-policy scoring kept."""
    return against_trl(
        trl_side(tokenizer, texts, s, warmup + rounds + 1),
        lambda: {
            "marlhf": marlhf_side(tokenizer, texts, s, skip=True),
            "marlhf_scored": marlhf_side(tokenizer, texts, s, skip=False),
        },
        rounds,
        warmup,
        "trl_grpo",
    )


def main(
    full: bool = False,
    warmup: int = 1,
    rounds: int = 6,
    batch: int | None = None,
    out_name: str = "trl_grpo.json",
) -> dict[str, Any]:
    """Measure every setting; write ``benchmarks/results/trl_grpo.json``; return its content.

    :param full: also 64 completions per iteration, and at least 12 timed rounds.
    :param warmup: untimed rounds first (default 1).
    :param rounds: timed rounds (default 6).
    :param batch: measure this many completions per iteration only (default: 32, and 64 too
        with ``full``).
    :param out_name: the results file's name in ``benchmarks/results``.
    """
    settings = [Setting()] if batch is None else [Setting(batch=batch)]
    if full:
        settings.append(Setting(batch=64))
        rounds = max(rounds, 12)
    out: dict[str, Any] = {
        "machine": machine_stamp(),
        "warmup": warmup,
        "rounds": rounds,
        "loadavg_start": list(os.getloadavg()),
    }
    try:
        import trl
        from trl import GRPOTrainer  # noqa: F401

        out["trl_version"] = trl.__version__
    except Exception as err:  # record exactly why, never a number
        return no_trl(out, out_name, f"cannot import trl.GRPOTrainer: {err!r}")
    import torch
    import transformers

    from marlhf.models import train_bpe_tokenizer

    torch.set_num_threads(1)
    out["transformers"] = transformers.__version__
    tokenizer = train_bpe_tokenizer(VOCAB)
    texts = prompt_texts(tokenizer, 256)

    def figures(s: Setting, result: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        sides, ratios = result["sides"], result["ratios"]
        headline = {
            "trl_s_per_iter": sides["trl"]["median"],
            "marlhf_s_per_iter": sides["marlhf"]["median"],
            "ratio": ratios["marlhf"]["median"],
            "ratio_scored": ratios["marlhf_scored"]["median"],
        }
        row = [
            f"B={s.batch} G={s.group} R={s.response_length}",
            sides["trl"]["median"],
            sides["marlhf"]["median"],
            ratio_cell(ratios["marlhf"]),
            ratio_cell(ratios["marlhf_scored"]),
            " ".join(f"{x:.1f}" for x in result["loadavg"]),
        ]
        return headline, row

    rows = measure_settings(
        out, settings, lambda s: measure(tokenizer, texts, s, warmup, rounds), figures
    )
    finish(out, out_name)
    print_table(
        "seconds per GRPO iteration: marlhf vs TRL (interleaved; ratios per round)",
        ["setting", "TRL s", "marlhf s", "ratio (range)", "scored ratio (range)", "load"],
        rows,
    )
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="also B=64; 12 timed rounds")
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds (default 6)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds (default 1)")
    parser.add_argument("--batch", type=int, default=None, help="completions per iteration")
    parser.add_argument("--out", default="trl_grpo.json", help="results file name")
    args = parser.parse_args()
    main(args.full, args.warmup, args.rounds, args.batch, args.out)
