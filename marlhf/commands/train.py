"""`marlhf train`: one agent (PPO or MAPPO) on one task, resumable.

The output folder holds the run (see :mod:`marlhf.runs.runner`): ``final.zip`` and
``final_weights/`` (the policy in ``final_weights/policy``, loadable by plain transformers and by
``marlhf eval --set model.path=<output_dir>/final``), ``result.json`` and a tidy
``metrics.csv``, kept up to date while the run trains. A checkpoint is saved every
``checkpoint_every`` iterations or ``checkpoint_minutes`` minutes, whichever comes first.
Re-running on an unfinished folder resumes from its last checkpoint; a finished one is not
retrained; a folder made with other settings is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from marlhf.commands.credit_audit import check_credit_task, credit_settings
from marlhf.config.commands import TrainConfig
from marlhf.config.parse import to_dict
from marlhf.models import resolve_device
from marlhf.options import make_termination
from marlhf.parallel import distributed as dist_utils
from marlhf.runs.builders import (
    check_env_id,
    check_task_builds,
    note_when_training_starts,
    unused_mask_message,
)
from marlhf.runs.report import final_score, write_metrics_csv
from marlhf.runs.request import build_request
from marlhf.runs.runner import (
    MERGED,
    ProgressFn,
    RunSpec,
    check_batch_fits,
    check_task_kwargs,
    execute,
    locked_run_folder,
    record_config,
)
from marlhf.threads import apply_thread_policy

#: Config keys that define the run: re-running on its folder must keep them (it resumes).
RUN_DEFINING = (
    "model",
    "task",
    "agent",
    "algo",
    "termination",
    "total_timesteps",
    "seed",
    "device",
)


def run_train(config: TrainConfig, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Train, save and summarise one run.

    :param progress: called as ``progress(tokens, total, score)`` after each iteration.

    :returns: ``{"output_dir", "tokens", "wall_time", "final_score", "model"}``.
    """
    check_env_id(config.task.id)
    if config.total_timesteps < 1:
        raise ValueError(f"total_timesteps={config.total_timesteps} must be >= 1")
    if config.checkpoint_every < 0:
        raise ValueError(f"checkpoint_every={config.checkpoint_every} must be >= 0")
    if config.algo == "ppo" and config.termination is not None:
        raise ValueError(
            f"termination={config.termination!r} with algo='ppo': PPO is token-level; use "
            "algo=mappo for macro actions, or remove the termination"
        )
    termination = "token"
    if config.algo == "mappo":
        termination = config.termination if config.termination is not None else "ngram:5"
        make_termination(termination)  # fail before any model is built
    resolve_device(config.device)  # a device this machine lacks: before the folder is touched
    check_batch_fits(config.agent, config.task)
    check_task_kwargs(config.task)
    built = check_task_builds(config.task, config.model)  # bad values: before the folder too
    unused_mask = unused_mask_message(built, config.agent.sampling.mask_actions)
    check_credit_task(config, config.task, config.agent)
    apply_thread_policy(config.num_threads)
    spec = RunSpec(config.algo, termination, config.seed)
    out = Path(config.output_dir)
    record = to_dict(config)
    record["termination"] = termination if config.algo == "mappo" else None
    # Under torchrun: join the ranks; each drives task.num_envs / world_size envs.
    world = dist_utils.init_from_env()
    task = config.task
    if world.distributed:
        shard = dist_utils.shard_size(
            task.num_envs, "task.num_envs", world, group=config.agent.credit.group_size
        )
        task = dataclasses.replace(task, num_envs=shard)
    request = build_request(
        spec,
        str(out),
        task=task,
        model=config.model,
        agent=config.agent,
        total_timesteps=config.total_timesteps,
        device=config.device,
        checkpoint_every=config.checkpoint_every,
        checkpoint_minutes=config.checkpoint_minutes,
        tensorboard=config.tensorboard,
        credit=credit_settings(config),
        metrics_file=world.is_main,
        threads=config.num_threads,
        imports=list(config.imports),
    )
    main = world.is_main
    with locked_run_folder(out, "marlhf train") if main else contextlib.nullcontext():
        if main:
            record_config(out, record, RUN_DEFINING)
        dist_utils.barrier()  # the folder is set up before any rank reads it
        result = execute(request, note_when_training_starts(unused_mask, progress))
        if main:
            write_metrics_csv(out / "metrics.csv", [result])
    scores = np.array([r["value"] for r in result["rows"] if r["metric"] == "rollout/score_mean"])
    return {
        "output_dir": str(out),
        "tokens": result["tokens"],
        "wall_time": result["wall_time"],
        "final_score": final_score(scores) if len(scores) else None,
        "model": str(out / (MERGED if config.model.lora is not None else "final_weights/policy")),
    }
