"""`marlhf eval`: score a saved model on a task's held-out prompts; samples go to JSON lines.

``model.path`` may be an agent save (``run/final`` or ``run/final.zip``, whose weights are in
``run/final_weights/policy``), a ``*_weights`` folder, or any transformers causal-LM folder.
Held-out prompts: tasks with a ``split`` argument are built with ``split="eval"``; procedural
tasks draw their prompts from the seed ``seed``, a stream distinct from the training seeds.
Every episode is written (prompt, response, score) to ``output`` (default
``<model>/eval_<task>.jsonl``) and a summary is returned.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from marlhf.models import ModelLoadError, resolve_device
from marlhf.training.builders import (
    load_causal_lm,
    load_tokenizer,
)
from marlhf.training.configs import EvalConfig, ModelConfig
from marlhf.training.io import atomic_write_json, write_jsonl
from marlhf.training.runner import _task_parameters, build_env


def resolve_model_folder(path: str) -> Path:
    """The transformers folder behind an agent save path, a weights folder, or a model folder."""
    p = Path(path)
    candidates = [p, p / "policy"]
    stem = p.with_suffix("") if p.suffix == ".zip" else p
    candidates += [stem.with_name(stem.name + "_weights") / "policy"]
    for c in candidates:
        if (c / "config.json").is_file():
            return c
    if not p.exists() and not candidates[-1].exists():
        raise ModelLoadError(f"model.path: {path!r} does not exist")
    raise ModelLoadError(
        f"model.path: no transformers model (config.json) in {path!r}, its 'policy/' folder "
        f"or {str(candidates[-1])!r}"
    )


def generate_episodes(
    policy: Any, env: Any, episodes: int, greedy: bool, temperature: float, seed: int
) -> list[dict[str, Any]]:
    """Roll out ``episodes`` episodes (whole env batches, the surplus dropped) without learning.

    :returns: one ``{"prompt", "response", "score", "length"}`` per episode.
    """
    import torch

    generator = torch.Generator(device=policy.device).manual_seed(seed)
    records: list[dict[str, Any]] = []
    first = True
    while len(records) < episodes:
        obs, _ = env.reset(seed=seed if first else None)
        first = False
        state = None
        info: dict[str, Any] = {}
        with torch.no_grad():
            while True:
                actions, state = policy.act(
                    obs, state, deterministic=greedy, temperature=temperature, generator=generator
                )
                obs, _, _, _, info = env.step(actions.to(env.device))
                if bool(env.done.all()):
                    break
        returns = info["episode_return"].tolist()
        lengths = env.lengths.tolist()
        for i in range(env.num_envs):
            if len(records) == episodes:
                break
            records.append(
                {
                    "prompt": info["prompt_text"][i],
                    "response": info["response_text"][i],
                    "score": float(returns[i]),
                    "length": int(lengths[i]),
                }
            )
    return records


def run_eval(config: EvalConfig) -> dict[str, Any]:
    """Score ``config.model`` on ``config.task``; write the samples; return the summary."""
    from marlhf.agents import CausalLMActorCritic

    if config.model.path is None and config.model.gguf_file is None:
        raise ValueError("eval: model.path is required (a saved agent or a model folder)")
    if config.episodes < 1:
        raise ValueError(f"episodes={config.episodes} must be >= 1")
    if not config.temperature > 0:
        raise ValueError(f"temperature={config.temperature} must be > 0")
    if config.model.gguf_file is not None:
        model_cfg = config.model
        out_dir = Path.cwd()
    else:
        folder = resolve_model_folder(str(config.model.path))
        model_cfg = ModelConfig(path=str(folder))
        out_dir = folder
    params = _task_parameters(config.task.id)
    tokenizer = load_tokenizer(model_cfg) if "tokenizer" in params else None
    task = config.task
    if "split" in params and "split" not in task.kwargs:
        task = type(task)(
            id=task.id, kwargs={**task.kwargs, "split": "eval"}, num_envs=task.num_envs
        )
    num_envs = min(task.num_envs, config.episodes)
    task = type(task)(id=task.id, kwargs=task.kwargs, num_envs=num_envs)
    device = str(resolve_device(config.device))
    env = build_env(task, config.seed, device, tokenizer)
    lm = load_causal_lm(model_cfg)
    policy = CausalLMActorCritic(lm, reference=None, vocab_size=int(env.codec.vocab_size))
    policy.to(device).eval()
    records = generate_episodes(
        policy, env, config.episodes, config.greedy, config.temperature, config.seed
    )
    scores = np.array([r["score"] for r in records])
    name = config.task.id.split("/")[-1]
    output = Path(config.output) if config.output else out_dir / f"eval_{name}.jsonl"
    write_jsonl(output, records)
    summary = {
        "task": config.task.id,
        "model": str(model_cfg.path or model_cfg.gguf_file),
        "episodes": len(records),
        "score_mean": float(scores.mean()),
        "score_std": float(scores.std()),
        "score_ci95": float(1.96 * scores.std(ddof=1) / math.sqrt(len(scores)))
        if len(scores) > 1
        else 0.0,
        "samples": str(output),
    }
    atomic_write_json(output.with_suffix(".summary.json"), summary)
    return summary
