"""`marlhf eval`: score a saved model on a task's held-out prompts; samples go to JSON lines.

``model.path`` may be an agent save (``run/final`` or ``run/final.zip``, whose weights are in
``run/final_weights/policy``), a ``*_weights`` folder, or any transformers causal-LM folder.
The task defaults to the one the model was trained on: its id, keyword arguments and
``imports`` are read from the run's ``config.yaml`` (``marlhf train`` and ``marlhf compare``
write it; it is found in the save's folder or up to three folders above). ``task.kwargs`` given
with it update the recorded ones; another task is scored only when ``task.id`` names it.
Held-out prompts: tasks with a ``split`` argument are built with ``split="eval"``; procedural
tasks draw their prompts from the seed ``seed``, a stream distinct from the training seeds.
Every episode is written (prompt, response, score) to ``output`` (default
``<model>/eval_<task>.jsonl``) and a summary, with the first few samples, beside it
(``.summary.json``) and returned.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from marlhf.algorithms import CausalLMActorCritic
from marlhf.checkpoint.save_util import DATA_FILE, checkpoint_paths
from marlhf.config.commands import EvalConfig, ModelConfig, TaskConfig
from marlhf.envs.core.registration import import_modules
from marlhf.models import ModelLoadError, resolve_device
from marlhf.runs.builders import (
    build_env,
    load_causal_lm,
    load_tokenizer,
    task_parameters,
)
from marlhf.runs.errors import during_run
from marlhf.runs.io import atomic_write_json, write_jsonl


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


#: Sampled completions kept in the summary (the CLI prints them).
EXAMPLES = 3
#: How many folders above a save ``config.yaml`` is looked for (compare: run/runs/<name>/final).
RECORD_DEPTH = 3


def trained_task(model_path: str) -> tuple[dict[str, Any], Path] | None:
    """The run record (``config.yaml`` with a ``task`` section) of the run that saved
    ``model_path``, and its path; None when there is none."""
    import yaml

    start = Path(model_path).resolve()
    folders = [start] if start.is_dir() else []
    folders += list(start.parents)[:RECORD_DEPTH]
    for folder in folders:
        path = folder / "config.yaml"
        if not path.is_file():
            continue
        try:
            record = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        task = record.get("task") if isinstance(record, dict) else None
        if isinstance(task, dict) and isinstance(task.get("id"), str) and task["id"]:
            return record, path
    return None


def checkpoint_task(model_path: str) -> dict[str, Any] | None:
    """``{"id", "kwargs"}`` of the env an agent save (``run/final`` or ``run/final.zip``) was
    trained on, from the identity the save records; None when it records none."""
    import json
    import zipfile

    zip_path = checkpoint_paths(model_path)[0]
    try:
        with zipfile.ZipFile(zip_path) as archive:
            env = json.loads(archive.read(DATA_FILE)).get("env")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    if not isinstance(env, dict) or not isinstance(env.get("env_id"), str):
        return None
    kwargs = env.get("task_kwargs") or {}
    # arguments saved as "<Type>" placeholders (a tokenizer object) are rebuilt, not passed
    plain = {k: v for k, v in kwargs.items() if not (isinstance(v, str) and v.startswith("<"))}
    return {"id": env["env_id"], "kwargs": plain}


def resolve_task(config: EvalConfig) -> tuple[TaskConfig, dict[str, Any]]:
    """The task to score on and where it came from (``{"task_source", "trained_task", ...}``).

    :raises ValueError: when no task is named and the model has no run record.
    """
    found = None if config.model.path is None else trained_task(config.model.path)
    given = config.task
    if found is None and config.model.path is not None:  # no run folder: the save's own record
        saved = checkpoint_task(config.model.path)
        if saved is not None:
            found = {"task": saved}, checkpoint_paths(config.model.path)[0]
    if found is None:
        if not given.id:
            raise ValueError(
                f"eval: model.path {config.model.path!r} has no run record (config.yaml with a "
                "task) beside it or above it; name the task with --set task.id=marlhf/NAME-v0 "
                "(and task.kwargs)"
            )
        return TaskConfig(given.id, dict(given.kwargs), given.num_envs), {"task_source": "named"}
    record, path = found
    import_modules(record.get("imports") or [])  # the user's task may live in a module
    trained = record["task"]
    kwargs = dict(trained.get("kwargs") or {})
    origin = {"trained_task": trained["id"], "run_record": str(path)}  # config.yaml or the zip
    if given.id and given.id != trained["id"]:
        return TaskConfig(given.id, dict(given.kwargs), given.num_envs), {
            "task_source": "named (not the trained task)",
            **origin,
        }
    kwargs.update(given.kwargs)
    return TaskConfig(trained["id"], kwargs, given.num_envs), {"task_source": "trained", **origin}


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
    import_modules(config.imports)
    task, origin = resolve_task(config)
    params = task_parameters(task.id)
    tokenizer = load_tokenizer(model_cfg) if "tokenizer" in params else None
    if "split" in params and "split" not in task.kwargs:
        task.kwargs["split"] = "eval"
    task.num_envs = min(task.num_envs, config.episodes)
    device = str(resolve_device(config.device))
    env = build_env(task, config.seed, device, tokenizer)
    lm = load_causal_lm(model_cfg)
    policy = CausalLMActorCritic(lm, reference=None, vocab_size=int(env.codec.vocab_size))
    policy.to(device).eval()
    with during_run():  # an error while scoring is not the config's (exit 1)
        records = generate_episodes(
            policy, env, config.episodes, config.greedy, config.temperature, config.seed
        )
    scores = np.array([r["score"] for r in records])
    name = task.id.split("/")[-1]
    output = Path(config.output) if config.output else out_dir / f"eval_{name}.jsonl"
    write_jsonl(output, records)
    summary = {
        "task": task.id,
        "task_kwargs": task.kwargs,
        **origin,
        "model": str(model_cfg.path or model_cfg.gguf_file),
        "episodes": len(records),
        "score_mean": float(scores.mean()),
        "score_std": float(scores.std()),
        "score_ci95": float(1.96 * scores.std(ddof=1) / math.sqrt(len(scores)))
        if len(scores) > 1
        else 0.0,
        "samples": str(output),
        "examples": records[:EXAMPLES],
    }
    atomic_write_json(output.with_suffix(".summary.json"), summary)
    return summary
