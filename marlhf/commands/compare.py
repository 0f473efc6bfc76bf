"""`marlhf compare`: token-level PPO vs MAPPO terminations on one task over several seeds.

The run folder::

    config.yaml      the merged config (a re-run must use a compatible one)
    runs/<run>/      one folder per (agent, termination, seed): see :mod:`marlhf.runs.runner`
    metrics.csv      tidy: run, agent, termination, seed, tokens, wall_time, metric, value
    curves.png       mean and 95% interval across seeds vs tokens generated
    report.md        the table (final score, tokens to reach PPO's final score, speed-up, wall
                     time); summary.json holds the same numbers

Re-running on the same folder skips finished runs (those with ``result.json``) and resumes the
others from their last checkpoint (or restarts them when it cannot be trusted). Runs train in
``workers`` parallel processes with ``threads_per_worker`` torch threads each.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from marlhf.algorithms.turn_checks import check_estimator_task
from marlhf.commands.credit_audit import check_credit_task, credit_settings
from marlhf.config.commands import CompareConfig, TaskConfig
from marlhf.config.parse import ConfigError, to_dict
from marlhf.envs.core.registration import import_modules
from marlhf.models import resolve_device
from marlhf.options import make_termination
from marlhf.runs.builders import (
    check_env_id,
    check_task_builds,
    make_any_task,
    note_when_training_starts,
    unused_mask_message,
)
from marlhf.runs.io import atomic_write_json, atomic_write_text
from marlhf.runs.progress import progress_display
from marlhf.runs.report import (
    plot_curves,
    print_table,
    read_metrics_csv,
    render_markdown,
    summarize,
    write_metrics_csv,
)
from marlhf.runs.request import RunRequest, build_request
from marlhf.runs.run_files import RunsFailed
from marlhf.runs.runner import (
    RunSpec,
    check_batch_fits,
    check_task_kwargs,
    execute,
    load_result,
    locked_run_folder,
    parse_agent,
    record_config,
)
from marlhf.threads import apply_thread_policy

#: Config keys that define what a run computes: a re-run on the same folder must keep them.
RUN_DEFINING = ("model", "task", "agent", "total_timesteps", "device")


def run_specs(config: CompareConfig) -> list[RunSpec]:
    """Every run of the comparison: PPO (when included) and each termination, per seed."""
    agents = [("ppo", "token")] if config.include_ppo else []
    agents += [("mappo", t) for t in config.chosen_terminations()]
    agents += [parse_agent(text) for text in config.chosen_agents()]
    agents = list(dict.fromkeys(agents))  # a run named twice trains once (its first place)
    return [RunSpec(a, t, s) for a, t in agents for s in config.seeds]


def validate(config: CompareConfig) -> list[RunRequest]:
    """Check the config before anything is trained (names the bad key and value).

    :returns: every run's request (:func:`run_requests`), built and checked here once.
    """
    check_env_id(config.task.id)
    if not config.seeds:
        raise ValueError("seeds: need at least one seed")
    if len(set(config.seeds)) != len(config.seeds):
        raise ValueError(f"seeds={config.seeds} holds duplicates")
    terminations, agents = config.chosen_terminations(), config.chosen_agents()
    if not terminations and not config.include_ppo and not agents:
        raise ValueError(
            "terminations and agents are empty and include_ppo is false: nothing to train"
        )
    if len(set(terminations)) != len(terminations):
        raise ValueError(f"terminations={terminations} holds duplicates")
    for spec in terminations:
        make_termination(spec)  # raises with the registered names
    resolve_device(config.device)  # a device this machine lacks
    check_batch_fits(config.agent, config.task)
    pairs = [parse_agent(text) for text in agents]  # raises naming the presets
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"agents={agents} holds duplicates")
    for _, termination in pairs:
        if termination != "token":
            make_termination(termination)
    requests = run_requests(config)  # each agent's config builds (a preset clash fails here)
    check_task_kwargs(config.task)
    check_task_builds(config.task, config.model)  # bad values fail before any folder
    for name in ("total_timesteps", "workers", "threads_per_worker"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name}={getattr(config, name)} must be >= 1")
    if config.checkpoint_every < 0:
        raise ValueError(f"checkpoint_every={config.checkpoint_every} must be >= 0")
    check_credit_task(config, config.task, config.agent)
    return requests


def run_requests(config: CompareConfig) -> list[RunRequest]:
    """The request of every run of :func:`run_specs`, each agent's config resolved once."""
    out = Path(config.output_dir)
    requests = []
    for spec in run_specs(config):
        request = build_request(
            spec,
            str(out / "runs" / spec.name),
            task=config.task,
            model=config.model,
            agent=config.agent,
            total_timesteps=config.total_timesteps,
            device=config.device,
            checkpoint_every=config.checkpoint_every,
            checkpoint_minutes=config.checkpoint_minutes,
            tensorboard=config.tensorboard,
            credit=credit_settings(config),
            threads=config.threads_per_worker,
            imports=list(config.imports),
        )
        if spec.agent not in ("ppo", "mappo"):
            _check_preset_run(config, request)
        requests.append(request)
    return requests


#: The progress queue of a worker process (set by :func:`_init_worker`).
_progress_queue: Any = None


def _init_worker(progress_queue: Any, parent: int) -> None:
    """Start of a worker process: die with the parent, keep the progress queue."""
    global _progress_queue
    _progress_queue = progress_queue
    die_with_parent(parent)


def die_with_parent(parent: int) -> None:
    """End this process when process ``parent`` ends, even by ``kill -9``: the kernel sends
    SIGKILL on Linux (``PR_SET_PDEATHSIG``); elsewhere a thread polls the parent id."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent:  # the parent died before the request took effect
                os._exit(1)
            return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="die-with-parent").start()


PR_SET_PDEATHSIG = 1


def _check_preset_run(config: CompareConfig, request: RunRequest) -> None:
    """A preset run's config fits the task: a turn-level estimator needs a multi-turn task, the
    groups it samples divide ``task.num_envs``."""
    agent, cfg = request.spec.agent, request.config
    try:
        check_estimator_task(cfg.credit.estimator, config.task.id)  # turn-level on a one-turn task
    except (TypeError, ValueError) as err:
        raise ConfigError(f"agents: {agent!r}: {err}") from None
    if config.task.num_envs % cfg.credit.group_size:
        raise ConfigError(
            f"agents: {agent!r} samples groups of group_size={cfg.credit.group_size}, which does "
            f"not divide task.num_envs={config.task.num_envs}"
        )


def _worker(payload: dict[str, Any]) -> dict[str, Any]:
    """Entry point of a worker process: one run, from its request's :meth:`RunRequest.to_dict`,
    progress sent through the worker's queue."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
    apply_thread_policy(payload["threads"])
    import_modules(payload["imports"])  # the user's tasks, terminations, estimators: first
    request = RunRequest.from_dict(payload)
    queue, name = _progress_queue, request.spec.name
    return execute(request, lambda t, total, score: queue.put((name, t, score)))


def _progress_for(update: Any, name: str) -> Any:
    def progress(tokens: int, total: int, score: float | None) -> None:
        update(name, tokens, score)

    return progress


def _train_all(
    config: CompareConfig, todo: list[RunRequest], display: str, verbose: bool
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    names = [r.spec.name for r in todo]
    for request in todo:  # a log of an earlier failure would mislead once the run goes on
        (Path(request.folder) / ERROR_LOG).unlink(missing_ok=True)
    unused_mask = unused_mask_message(
        check_task_builds(config.task, config.model), config.agent.sampling.mask_actions
    )
    with progress_display("compare", names, config.total_timesteps, display, verbose) as shown:
        update = note_when_training_starts(unused_mask, shown)
        if config.workers == 1 or len(todo) == 1:
            import torch

            threads = torch.get_num_threads()
            apply_thread_policy(config.threads_per_worker)
            try:
                for request in todo:
                    results.append(execute(request, _progress_for(update, request.spec.name)))
            finally:
                torch.set_num_threads(threads)
            return results

        # Workers die with this process (a kill -9 of compare leaves none writing into the
        # folder once its lock is gone); no manager process, whose server would outlive it.
        ctx = mp.get_context("spawn")
        progress_queue = ctx.Queue()
        with ProcessPoolExecutor(
            max_workers=min(config.workers, len(todo)),
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(progress_queue, os.getpid()),
        ) as pool:
            futures: dict[Future[dict[str, Any]], RunRequest] = {
                pool.submit(_worker, request.to_dict()): request for request in todo
            }
            pending = set(futures)
            while pending:
                try:
                    name, tokens, score = progress_queue.get(timeout=0.2)
                    update(name, tokens, score)
                except queue_mod.Empty:
                    pass
                for fut in [f for f in pending if f.done()]:
                    pending.discard(fut)
                    err = fut.exception()
                    if err is None:
                        results.append(fut.result())
                    else:
                        failures.append(_failure(futures[fut], err))
        progress_queue.close()
    if failures:
        raise RunsFailed(
            "some runs failed (finished runs are kept; re-run to resume): " + "; ".join(failures)
        )
    return results


#: The file in a run's folder that holds the traceback of its failure in a worker process.
ERROR_LOG = "error.log"


def _failure(request: RunRequest, err: BaseException) -> str:
    """One line on a run that raised in a worker; its traceback (the worker's, which the pool
    attaches as the cause) goes to the run's :data:`ERROR_LOG`, whose path the line names."""
    line = f"{request.spec.name}: {type(err).__name__}: {err}"
    log = Path(request.folder) / ERROR_LOG
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(log, "".join(traceback.format_exception(err)))
    except OSError:
        return line  # the message still names the run and the error
    return f"{line} (traceback in {log})"


def _task_returns(task: TaskConfig) -> dict[str, Any]:
    """The task's documented random-policy and optimal returns, for scale (empty if unknown)."""
    try:
        built = make_any_task(task.id, **task.kwargs)
        return {
            "random / optimal return": f"{built.random_return:.3f} / {built.optimal_return:.3f}"
        }
    except Exception:  # context only: a task that cannot be rebuilt here leaves it out
        return {}


def run_compare(
    config: CompareConfig, progress: str = "auto", verbose: bool = False
) -> dict[str, Any]:
    """Train every missing run, then write metrics.csv, curves.png, report.md, summary.json.

    :param progress: what is shown on stderr: ``"auto"`` (a bar on a terminal, a line every
        ``MARLHF_PROGRESS_SECONDS`` elsewhere), ``"bar"``, ``"lines"``, or ``"off"`` (nothing:
        no progress, table or messages).
    :param verbose: a progress line per update.
    :returns: ``{"output_dir", "trained", "skipped", "summary", "wall_time"}``.
    """
    requests = validate(config)
    out = Path(config.output_dir)
    with locked_run_folder(out, "marlhf compare"):
        return _run_compare(config, requests, out, progress, verbose)


def _run_compare(
    config: CompareConfig, requests: list[RunRequest], out: Path, display: str, verbose: bool
) -> dict[str, Any]:
    talk = display != "off"
    record_config(out, to_dict(config), RUN_DEFINING)
    started = time.perf_counter()

    specs = [r.spec for r in requests]
    finished = {s.name: load_result(out / "runs" / s.name) for s in specs}
    todo = [r for r in requests if finished[r.spec.name] is None]
    skipped = [s.name for s in specs if finished[s.name] is not None]
    if skipped and talk:
        print(f"skipping {len(skipped)} finished run(s): {', '.join(skipped)}", file=sys.stderr)
    trained = _train_all(config, todo, display, verbose) if todo else []
    by_name = {r["run"]: r for r in trained}
    results = [finished[s.name] or by_name[s.name] for s in specs]

    write_metrics_csv(out / "metrics.csv", results)
    rows = read_metrics_csv(out / "metrics.csv")  # the report is computed from the file itself
    summary = summarize(rows, config.metric)
    plot_curves(rows, config.metric, out / "curves.png")
    context = {
        "task": f"{config.task.id} {config.task.kwargs}",
        "seeds": config.seeds,
        "budget per run": f"{config.total_timesteps:,} tokens, {config.task.num_envs} episodes "
        "per iteration",
        "model": config.model.path
        or (f"tiny GPT-2 ({config.model.n_layer} layers, width {config.model.n_embd})"),
        "runs trained now / reused": f"{len(trained)} / {len(skipped)}",
        "wall time of this invocation": f"{time.perf_counter() - started:.0f} s "
        f"({config.workers} worker(s) x {config.threads_per_worker} thread(s))",
    }
    context.update(_task_returns(config.task))
    atomic_write_text(out / "report.md", render_markdown(summary, config.metric, context))
    wall = time.perf_counter() - started
    atomic_write_json(
        out / "summary.json", {"metric": config.metric, "summary": summary, "wall_time": wall}
    )
    if talk:
        print_table(summary, config.metric)
        print(
            f"report: {out / 'report.md'}  curves: {out / 'curves.png'}  ({wall:.0f} s)",
            file=sys.stderr,
        )
    return {
        "output_dir": str(out),
        "trained": [r["run"] for r in trained],
        "skipped": skipped,
        "summary": summary,
        "wall_time": wall,
    }
