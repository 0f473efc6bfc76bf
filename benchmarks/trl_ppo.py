"""Seconds per PPO iteration: marlhf's PPO against TRL's ``trl.experimental.ppo.PPOTrainer``.

Both sides run in this one process (the benchmark venv ``.venv-bench``, which holds TRL next to
an editable marlhf, with the same torch and transformers), interleaved: one iteration of each
side per round, the order rotating (:mod:`interleave`), on:

- the same policy: ``tiny_gpt2`` for an in-process byte-level BPE (4096 tokens), seeded;
- the same reward model: a ``GPT2ForSequenceClassification`` of the same size (1 label), seeded;
- a separate value model on both sides (TRL's design; marlhf's ``policy_kwargs={"critic": ...}``),
  plus marlhf's default shared-trunk value head as a second marlhf row;
- the optimizer: TRL's is Hugging Face's default, ``AdamW`` as PyTorch's fused kernel; marlhf's
  default is PyTorch's default ``Adam`` (its for-loop implementation on CPU), and each marlhf
  row is measured again with ``fused_optimizer=True`` (the ``_fused`` sides), the same kernel
  as TRL's;
- the same prompts (``PROMPT_LEN`` tokens each, windows of the standard library's source), the same
  batch (episodes per iteration), response length, epochs, minibatch size, clip ranges, KL
  coefficient (0.05, k1), gamma 1, lambda 0.95, temperature 1, no top-k/top-p;
- no stop token on either side: every response is exactly ``response_length`` tokens.

An iteration is a rollout (generation, log-probs, reference, values, rewards, GAE) plus the
``n_epochs`` of minibatch updates. Timing: wall-clock per iteration over ``iters`` rounds after
``warmup`` rounds (TRL: from releasing its paused loop to its next ``on_step_end``; marlhf: one
``learn`` call of one rollout's tokens); each side's median and range, and each marlhf side's
ratio to TRL per round (median and range), with the load average.

Run: ``.venv-bench/bin/python benchmarks/trl_ppo.py [--full]``; writes
``benchmarks/results/trl_ppo.json``. When TRL (or its PPO) cannot be imported, the JSON says why and
holds no ratio.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_stamp, print_table
from interleave import SteppedTrainer
from trl_common import (
    VOCAB,
    against_trl,
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

    :param batch: episodes per iteration (TRL: ``per_device_train_batch_size``).
    :param response_length: new tokens per episode.
    :param minibatch: episodes per optimiser step (TRL: ``batch / num_mini_batches``).
    :param n_epochs: passes over each rollout.
    :param n_layer: transformer blocks of every model.
    :param n_embd: hidden width of every model.
    """

    batch: int = 32
    response_length: int = 32
    minibatch: int = 16
    n_epochs: int = 4
    n_layer: int = 2
    n_embd: int = 128


def build_prompts(tokenizer: Any, n: int, seed: int = 0) -> list[list[int]]:
    """``n`` prompts of exactly :data:`PROMPT_LEN` tokens: seeded windows of stdlib source."""
    return stdlib_windows(tokenizer, n, seed)


def reward_model(tokenizer: Any, s: Setting, seed: int) -> Any:
    """A seeded random ``GPT2ForSequenceClassification`` with one output (reward or value)."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    config = GPT2Config(  # type: ignore[call-arg]  # num_labels is a PretrainedConfig kwarg
        vocab_size=len(tokenizer),
        n_positions=256,
        n_embd=s.n_embd,
        n_layer=s.n_layer,
        n_head=4,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return GPT2ForSequenceClassification(config)


def trl_side(
    tokenizer: Any,
    prompts: list[list[int]],
    s: Setting,
    steps: int,
    on_trainer: Callable[[Any], None] | None = None,
) -> SteppedTrainer:
    """TRL's PPO for ``steps`` iterations, paused after each (:class:`SteppedTrainer`).

    :param on_trainer: called with the ``PPOTrainer`` before it trains (``trl_ppo_work.py``
        hooks its models).
    """

    def run(callback: Any) -> None:
        import torch
        from datasets import Dataset
        from trl.experimental.ppo import PPOConfig, PPOTrainer

        from marlhf.models import tiny_gpt2

        tok = copy.deepcopy(tokenizer)
        tok.padding_side = "left"
        torch.manual_seed(0)
        np.random.seed(0)
        policy = tiny_gpt2(tok, n_layer=s.n_layer, n_embd=s.n_embd, n_positions=256, seed=0)
        with tempfile.TemporaryDirectory() as tmp:
            config = PPOConfig(
                output_dir=tmp,
                per_device_train_batch_size=s.batch,
                gradient_accumulation_steps=1,
                num_mini_batches=s.batch // s.minibatch,
                num_ppo_epochs=s.n_epochs,
                total_episodes=s.batch * steps,
                response_length=s.response_length,
                local_rollout_forward_batch_size=s.batch,
                num_sample_generations=0,
                stop_token=None,
                missing_eos_penalty=None,
                temperature=1.0,
                kl_coef=0.05,
                kl_estimator="k1",
                cliprange=0.2,
                cliprange_value=0.2,
                vf_coef=0.5,
                gamma=1.0,
                lam=0.95,
                learning_rate=1e-5,
                report_to="none",
                save_strategy="no",
                logging_steps=10_000,
                disable_tqdm=True,
                use_cpu=True,
                seed=0,
            )
            trainer = PPOTrainer(
                args=config,
                processing_class=tok,
                model=policy,
                ref_model=copy.deepcopy(policy),
                reward_model=reward_model(tok, s, seed=2),
                value_model=reward_model(tok, s, seed=1),
                train_dataset=Dataset.from_dict({"input_ids": prompts}),
                callbacks=[callback],
            )
            if on_trainer is not None:
                on_trainer(trainer)
            trainer.train()

    return SteppedTrainer(run)


def marlhf_side(
    tokenizer: Any,
    prompts: list[list[int]],
    s: Setting,
    separate_critic: bool,
    fused: bool = False,
) -> Callable[[], float]:
    """marlhf's PPO; returns a function that runs one iteration and returns its seconds."""
    return timed_iterations(
        marlhf_algo(tokenizer, prompts, s, separate_critic, fused), s.batch * s.response_length
    )


def marlhf_algo(
    tokenizer: Any,
    prompts: list[list[int]],
    s: Setting,
    separate_critic: bool,
    fused: bool = False,
) -> Any:
    """marlhf's ``PPO`` on the benchmark's setting (a separate critic or the shared trunk;
    ``fused``: ``fused_optimizer=True``)."""
    import torch

    from marlhf.algorithms import PPO
    from marlhf.envs.builtin.reward_model import RewardModelReward
    from marlhf.envs.core.batched import BatchedTokenEnv
    from marlhf.models import tiny_gpt2

    reward = RewardModelReward(
        reward_model(tokenizer, s, seed=2), tokenizer=copy.deepcopy(tokenizer)
    )
    task = fixed_prompts_task(tokenizer, prompts, s.response_length, reward)
    torch.manual_seed(0)
    env = BatchedTokenEnv(task, num_envs=s.batch, seed=0)
    policy = tiny_gpt2(tokenizer, n_layer=s.n_layer, n_embd=s.n_embd, n_positions=256, seed=0)
    kwargs: dict[str, Any] = {}
    if separate_critic:
        critic = tiny_gpt2(tokenizer, n_layer=s.n_layer, n_embd=s.n_embd, n_positions=256, seed=1)
        kwargs["policy_kwargs"] = {"critic": critic}
    algo = PPO(
        policy,
        env,
        learning_rate=1e-5,
        n_epochs=s.n_epochs,
        batch_size=s.minibatch,
        clip_range=0.2,
        clip_range_vf=0.2,
        vf_coef=0.5,
        kl_coef=0.05,
        kl_estimator="k1",
        gamma=1.0,
        gae_lambda=0.95,
        temperature=1.0,
        seed=0,
        device="cpu",
        fused_optimizer=fused,
        **kwargs,
    )
    return algo


def measure(
    tokenizer: Any, prompts: list[list[int]], s: Setting, warmup: int, iters: int
) -> dict[str, Any]:
    """Interleaved rounds of TRL, marlhf with a separate critic and marlhf's shared trunk, each
    with marlhf's default optimizer and with the fused one."""
    return against_trl(
        trl_side(tokenizer, prompts, s, warmup + iters + 1),
        lambda: {
            f"{name}{tag}": marlhf_side(tokenizer, prompts, s, separate, fused)
            for name, separate in (("marlhf", True), ("marlhf_shared", False))
            for tag, fused in (("", False), ("_fused", True))
        },
        iters,
        warmup,
        "trl_ppo",
    )


def main(full: bool = False, warmup: int = 1, iters: int = 5, threads: int = 1) -> dict[str, Any]:
    """Measure every setting; write ``benchmarks/results/trl_ppo.json``; return its content.

    :param full: also the larger setting, and at least 10 timed iterations (default False).
    :param warmup: untimed iterations first (default 1).
    :param iters: timed rounds (one iteration of each side each; default 5).
    :param threads: torch CPU threads of both sides (default 1).
    """
    settings = [Setting()]
    if full:
        settings.append(Setting(batch=64, response_length=64, minibatch=16))
        iters = max(iters, 10)
    out: dict[str, Any] = {
        "machine": machine_stamp(),
        "warmup": warmup,
        "iters": iters,
        "interleaved": True,
        "loadavg_start": list(os.getloadavg()),
    }
    try:
        import trl
        from trl.experimental.ppo import PPOTrainer  # noqa: F401

        out["trl_version"] = trl.__version__
    except Exception as err:  # record exactly why, never a number
        return no_trl(out, "trl_ppo.json", f"cannot import trl.experimental.ppo: {err!r}")
    import torch
    import transformers

    from marlhf.models import train_bpe_tokenizer

    torch.set_num_threads(threads)

    out["transformers"] = transformers.__version__
    started = time.perf_counter()
    tokenizer = train_bpe_tokenizer(VOCAB)
    print(f"trl_ppo: tokenizer ready in {time.perf_counter() - started:.1f} s", flush=True)
    prompts = build_prompts(tokenizer, 256)

    def figures(s: Setting, result: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        sides, ratios = result["sides"], result["ratios"]
        headline = {
            "trl_s_per_iter": sides["trl"]["median"],
            "marlhf_s_per_iter": sides["marlhf"]["median"],
            "marlhf_shared_s_per_iter": sides["marlhf_shared"]["median"],
            "ratio": ratios["marlhf"]["median"],
            "ratio_shared": ratios["marlhf_shared"]["median"],
            "ratio_fused": ratios["marlhf_fused"]["median"],
            "ratio_shared_fused": ratios["marlhf_shared_fused"]["median"],
        }
        row = [
            f"B={s.batch} R={s.response_length}",
            headline["trl_s_per_iter"],
            headline["marlhf_s_per_iter"],
            ratio_cell(ratios["marlhf"]),
            ratio_cell(ratios["marlhf_fused"]),
            headline["marlhf_shared_s_per_iter"],
            ratio_cell(ratios["marlhf_shared"]),
            ratio_cell(ratios["marlhf_shared_fused"]),
            " ".join(f"{x:.1f}" for x in result["loadavg"]),
        ]
        return headline, row

    rows = measure_settings(
        out, settings, lambda s: measure(tokenizer, prompts, s, warmup, iters), figures
    )
    finish(out, "trl_ppo.json")
    print_table(
        "seconds per PPO iteration: marlhf vs TRL (interleaved; ratios per round)",
        [
            "setting",
            "TRL",
            "marlhf (sep. critic)",
            "ratio",
            "fused Adam",
            "marlhf (shared)",
            "ratio",
            "fused Adam",
            "load",
        ],
        rows,
    )
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="also B=64, R=64; 10 timed iterations")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--iters", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds (default 1)")
    args = parser.parse_args()
    main(full=args.full, warmup=args.warmup, iters=args.iters, threads=args.threads)
