"""One training run, resumable: build env + model + agent from configs, learn, record metrics.

A run lives in its own folder::

    <run>/checkpoint.zip, checkpoint_weights*   the agent (PPO/MAPPO ``save``, atomic), refreshed
                                                every ``checkpoint_every`` iterations
    <run>/progress.json                         metrics, tokens and wall time up to the
                                                checkpoint (written atomically before it, the
                                                previous checkpoint's record kept until then)
    <run>/result.json                           written atomically when the run is finished

A run is finished only when ``result.json`` exists. Otherwise a re-run resumes from the
checkpoint when ``progress.json`` holds its record, and restarts from scratch when not; a kill
at any point leaves a checkpoint and its record.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from stable_baselines3.common.logger import KVWriter, Logger, TensorBoardOutputFormat

from marlhf.algorithms.config import FLAT_KEYS, GROUPS, PRESETS, flat_values
from marlhf.checkpoint.save_util import remove_checkpoint
from marlhf.config.commands import AgentConfig, ModelConfig, TaskConfig
from marlhf.models import resolve_device
from marlhf.parallel import distributed as dist_utils
from marlhf.runs.builders import build_env as build_env
from marlhf.runs.builders import build_env_and_model
from marlhf.runs.builders import check_task_kwargs as check_task_kwargs
from marlhf.runs.errors import during_run
from marlhf.runs.io import atomic_write_json, atomic_write_text
from marlhf.runs.request import CHECKPOINT_MINUTES as CHECKPOINT_MINUTES
from marlhf.runs.request import RunRequest, build_request, resolve_run_config
from marlhf.runs.request import RunSpec as RunSpec
from marlhf.runs.request import agent_class as agent_class
from marlhf.runs.run_files import METRICS_FILE, LiveMetrics, saving

RESULT_FILE = "result.json"
LOCK_FILE = ".lock"
PROGRESS_FILE = "progress.json"
CHECKPOINT = "checkpoint"
#: Logged keys kept in the metrics (numbers under these prefixes).
KEPT_PREFIXES = ("rollout/", "train/", "credit/")

#: Called as ``progress(tokens, total_timesteps, score)``; ``score`` is the last logged
#: :data:`SCORE_METRIC` (None before the first log).
ProgressFn = Callable[[int, int, "float | None"], None]
SCORE_METRIC = "rollout/score_mean"


class MetricsRecorder(KVWriter):
    """An SB3 logger output that keeps every dump as tidy rows ``(tokens, metric, value)``.

    :param wall_offset: wall time (s) already spent by earlier sessions of this run.
    :param on_dump: called with the step (tokens generated) after each dump.
    """

    def __init__(self, wall_offset: float = 0.0, on_dump: Callable[[int], None] | None = None):
        self.rows: list[dict[str, Any]] = []
        self.wall_offset = wall_offset
        self.started = time.perf_counter()
        self.on_dump = on_dump
        self.score: float | None = None  # the last logged SCORE_METRIC

    def wall_time(self) -> float:
        """Seconds this run has trained, over every session."""
        return self.wall_offset + time.perf_counter() - self.started

    def write(
        self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0
    ) -> None:
        wall = round(self.wall_time(), 3)
        for key, value in sorted(key_values.items()):
            if key.startswith(KEPT_PREFIXES) and isinstance(value, int | float):
                self.rows.append(
                    {"tokens": int(step), "wall_time": wall, "metric": key, "value": float(value)}
                )
                if key == SCORE_METRIC:
                    self.score = float(value)
        if self.on_dump is not None:
            self.on_dump(int(step))

    def close(self) -> None:
        pass


#: With LoRA, the final policy with its adapters merged (plain transformers).
MERGED = "final_merged"


def parse_agent(text: str) -> tuple[str, str]:
    """``"grpo"`` -> ``("grpo", "token")``; ``"ma-ppo@ngram:10"`` -> ``("ma-ppo", "ngram:10")``.

    The part before ``@`` is a preset (``marlhf.algorithms.PRESETS``) or ``ppo``/``mappo``;
    after it, a termination spec (macro-action credit); without it, credit is token-level
    (``ma-ppo`` alone uses its preset's ``ngram:5``).
    """
    name, sep, termination = text.partition("@")
    name = name.strip()
    if name not in PRESETS and name != "mappo":
        raise ValueError(
            f"agents: {text!r} names no preset; valid: {sorted(PRESETS)} (optionally "
            "followed by @TERMINATION, e.g. ma-ppo@ngram:10)"
        )
    if not sep:
        suggested = PRESETS[name].values().get("termination") if name in PRESETS else "ngram:5"
        termination = suggested if isinstance(suggested, str) else "token"
    return name, termination.strip() or "token"


def build_agent(
    spec: RunSpec,
    lm: Any,
    env: Any,
    agent: AgentConfig,
    device: str,
    tensorboard_log: str | None,
    policy_kwargs: dict[str, Any] | None = None,
) -> Any:
    """The agent of ``spec`` on ``env`` starting from ``lm``: the shared ``agent`` section with
    the run's preset on top (``ppo``/``mappo``: the section alone)."""
    preset = None if spec.agent in ("ppo", "mappo") else [*agent.preset, spec.agent]
    config = resolve_run_config(spec, agent)
    return agent_from_config(spec, config, preset, lm, env, device, tensorboard_log, policy_kwargs)


def agent_from_config(
    spec: RunSpec,
    config: Any,
    preset: list[str] | None,
    lm: Any,
    env: Any,
    device: str,
    tensorboard_log: str | None,
    policy_kwargs: dict[str, Any] | None = None,
) -> Any:
    """The agent of ``spec`` with the resolved ``config`` (no preset applied again); ``preset``
    (the presets it was resolved from) is recorded with the agent, as a loaded save records it."""
    values = flat_values(config)
    algo = agent_class(spec.agent, spec.termination)(
        lm,
        env,
        seed=spec.seed,
        device=device,
        tensorboard_log=tensorboard_log,
        policy_kwargs=policy_kwargs or None,
        **values,
    )
    algo.preset = preset
    return algo


def check_batch_fits(agent: AgentConfig, task: TaskConfig) -> None:
    """Fail before anything is built when the minibatches cannot split a rollout."""
    if agent.optim.batch_size is not None and task.num_envs % agent.optim.batch_size:
        raise ValueError(
            f"agent.batch_size={agent.optim.batch_size} must divide task.num_envs={task.num_envs} "
            "(a minibatch holds whole episodes)"
        )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def record_config(out: Path, config: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Write ``out/config.yaml``; refuse when the folder's earlier config differs in ``keys``.

    :param config: the config as nested dicts (``to_dict``).
    :param keys: the top-level keys that define what the runs compute (model, task, ...).
    """
    import yaml

    path = out / "config.yaml"
    if path.exists() and _holds_runs(out):  # a record of nothing trained (a failed start) yields
        try:
            old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            old = {}  # an unreadable record is replaced below
        for key in keys:
            if isinstance(old, dict) and key in old and _same(old[key]) != _same(config[key]):
                raise ValueError(
                    f"output_dir {str(out)!r} holds runs made with a different {key!r} "
                    f"({old[key]!r} there, {config[key]!r} now); they would not be comparable: "
                    "use another output_dir or the same settings"
                )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))


def _same(section: Any) -> Any:
    """A recorded section in the form that compares: an agent section's knobs by flat name (a
    folder recorded before the config had groups holds them flat)."""
    if not isinstance(section, dict) or not any(k in GROUPS for k in section):
        return section
    out: dict[str, Any] = {}

    def walk(node: dict[str, Any]) -> None:
        for key, value in node.items():
            if isinstance(value, dict) and key not in FLAT_KEYS:  # a group, or its section
                walk(value)
            else:
                out[key] = value

    walk(section)
    return out


#: Files that show a run folder holds training (a checkpoint, its progress or a result).
RUN_FILES = ("checkpoint.zip", PROGRESS_FILE, RESULT_FILE, "final.zip")


def _holds_runs(out: Path) -> bool:
    """Whether ``out`` (a train folder, or a compare folder with ``runs/<run>/``) has trained."""
    return any(any(out.glob(pattern + name)) for pattern in ("", "runs/*/") for name in RUN_FILES)


def _only_setup(out: Path) -> bool:
    """Whether ``out`` holds only what a start writes (its lock and config), no training."""
    return all(p.name in (LOCK_FILE, "config.yaml") for p in out.iterdir())


class RunFolderBusy(ValueError):
    """Another process holds the run folder's lock."""


@contextlib.contextmanager
def locked_run_folder(out: Path, command: str) -> Iterator[None]:
    """Hold an exclusive lock on run folder ``out`` (created) while the block runs.

    The lock is an ``flock`` on ``out/.lock``, which records its holder; the system releases it
    when the holder exits, however it ends (``kill -9`` included), so it is never stale.

    A folder this call creates is removed again when the block raises before anything but
    the lock and ``config.yaml`` was written (a run that failed to start leaves no folder).

    :raises RunFolderBusy: at once, naming the holder, when another process holds it.
    """
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise ValueError(f"output_dir {str(out)!r} cannot be used: {err.strerror or err}") from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 1024, 0).decode("utf-8", "replace").strip()
            raise RunFolderBusy(
                f"output_dir {str(out)!r} is in use by {holder or 'another process'}; wait for "
                "it to finish, stop it, or use another output_dir"
            ) from None
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} ({command}, since {since})\n".encode(), 0)
        try:
            yield
        except BaseException:
            if created and _only_setup(out):  # failed before training: leave no folder behind
                shutil.rmtree(out, ignore_errors=True)
            raise
    finally:
        os.close(fd)  # releases the lock


def load_result(folder: Path) -> dict[str, Any] | None:
    """The finished run's result, or None when the run is not finished (or the file is bad)."""
    data = _read_json(folder / RESULT_FILE)
    return data if isinstance(data, dict) and "rows" in data else None


def train_run(
    spec: RunSpec,
    folder: str | Path,
    *,
    task: TaskConfig,
    model: ModelConfig,
    agent: AgentConfig,
    total_timesteps: int,
    progress: ProgressFn | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Train one run to ``total_timesteps`` tokens (resuming when possible); return its result:
    :func:`execute` of the run's :func:`~marlhf.runs.request.build_request`.

    :param folder: the run's folder (created).
    :param progress: called with ``(tokens, total_timesteps, last score)`` after every dump.
    :param options: the other fields of :class:`~marlhf.runs.request.RunRequest`
        (``device``, ``checkpoint_every``, ``checkpoint_minutes``, ``tensorboard``, ``credit``,
        ``metrics_file``).
    """
    request = build_request(
        spec,
        str(folder),
        task=task,
        model=model,
        agent=agent,
        total_timesteps=total_timesteps,
        **options,
    )
    return execute(request, progress)


def execute(request: RunRequest, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Train the run of ``request`` to its ``total_timesteps`` tokens (resuming when possible);
    return its result. The one path of every training run, in this process or in a worker.

    Its checkpoints (``checkpoint_every`` iterations, ``checkpoint_minutes``), TensorBoard
    events, credit audit (``credit``: the keyword arguments of
    :class:`~marlhf.audit.credit.CreditAuditCallback`, whose ``credit/*`` figures join the
    metrics) and live ``metrics.csv`` (``metrics_file``: rewritten at most every
    :data:`~marlhf.runs.run_files.METRICS_SECONDS` and at each checkpoint) follow the
    request's fields.

    :param progress: called with ``(tokens, total_timesteps, last score)`` after every dump.
    :returns: ``{"run", "agent", "termination", "seed", "tokens", "wall_time", "rows",
        "resumed_from"}``; also written to ``<folder>/result.json``.
    """
    spec, task, model = request.spec, request.task, request.model
    total_timesteps, checkpoint_every = request.total_timesteps, request.checkpoint_every
    checkpoint_minutes, credit = request.checkpoint_minutes, request.credit
    folder = Path(request.folder)
    done = load_result(folder)
    if done is not None:
        return done
    world = dist_utils.world()  # each rank its own GPU, when there are several
    device = str(
        dist_utils.device_for(world, request.device)
        if world.distributed
        else resolve_device(request.device)
    )
    folder.mkdir(parents=True, exist_ok=True)
    env, lm, tokenizer = build_env_and_model(task, model, spec.seed, device)
    cls = agent_class(spec.agent, spec.termination)

    progress_by_tokens = _read_progress(folder / PROGRESS_FILE)
    algo = None
    rows: list[dict[str, Any]] = []
    wall_offset = 0.0
    resumed_from = 0
    if progress_by_tokens and (folder / f"{CHECKPOINT}.zip").exists():
        try:
            algo = cls.load(folder / CHECKPOINT, env=env, device=device)
        except Exception as err:  # an unreadable checkpoint is restarted, never trusted
            warnings.warn(
                f"run {spec.name}: the checkpoint in {str(folder)!r} cannot be resumed "
                f"({type(err).__name__}: {err}); the run restarts from the beginning",
                RuntimeWarning,
                stacklevel=2,
            )
            algo = None
        saved = None if algo is None else progress_by_tokens.get(int(algo.num_timesteps))
        if algo is not None and saved is not None:
            rows, wall_offset = list(saved["rows"]), float(saved["wall_time"])
            resumed_from = int(algo.num_timesteps)
        else:
            algo = None
    main = dist_utils.on_main()  # with several ranks, rank 0 writes the run's files
    if algo is None:
        if main:
            remove_checkpoint(folder / CHECKPOINT)
            (folder / PROGRESS_FILE).unlink(missing_ok=True)
        policy_kwargs = model.policy_kwargs()
        algo = agent_from_config(
            spec, request.config, request.preset, lm, env, device, None, policy_kwargs
        )

    record = {
        "run": spec.name,
        "agent": spec.agent,
        "termination": spec.termination,
        "seed": spec.seed,
    }
    metrics_file = request.metrics_file
    live = LiveMetrics(folder / METRICS_FILE, {**record, "rows": rows}) if metrics_file else None

    def on_dump(tokens: int) -> None:
        if live is not None and main:
            live.maybe_write()
        if progress is not None:
            progress(tokens, total_timesteps, recorder.score)

    recorder = MetricsRecorder(wall_offset, on_dump)
    recorder.rows = rows
    formats: list[KVWriter] = [recorder]
    if request.tensorboard:
        formats.append(TensorBoardOutputFormat(str(folder / "tensorboard")))
    algo.set_logger(Logger(folder=str(folder), output_formats=formats))
    if progress is not None:
        progress(int(algo.num_timesteps), total_timesteps, None)

    callback = None
    if credit is not None:
        from marlhf.audit.credit import CreditAuditCallback

        callback = CreditAuditCallback(**credit)
    with during_run():  # from here on an error is the run's, not its config's (exit 1)
        tokens_per_iter = env.num_envs * env.max_new_tokens * dist_utils.world().world_size
        resumed_tokens = resumed_from  # the tokens of the checkpoint on disk
        last_save, last_iteration = time.perf_counter(), algo._iteration
        # One schedule over the whole run, however many learn() calls the checkpoints cut it in.
        algo.schedule_timesteps = total_timesteps
        while algo.num_timesteps < total_timesteps:
            chunk = total_timesteps - algo.num_timesteps
            if checkpoint_every > 0:  # one iteration at a time: a checkpoint may follow any
                chunk = min(chunk, tokens_per_iter)
            algo.learn(chunk, callback=callback, reset_num_timesteps=False)
            due = algo._iteration - last_iteration >= checkpoint_every or (
                checkpoint_minutes > 0
                and time.perf_counter() - last_save >= 60 * checkpoint_minutes
            )
            if checkpoint_every > 0 and due and algo.num_timesteps < total_timesteps:
                # The metrics of the new checkpoint are written before it and those of the previous
                # one kept until it is replaced: a kill anywhere leaves the pair a resume needs.
                entry = {
                    "tokens": algo.num_timesteps,
                    "wall_time": recorder.wall_time(),
                    "rows": rows,
                }
                previous = [e for e in _progress_entries(folder) if e["tokens"] == resumed_tokens]
                with saving(spec.name, folder / CHECKPOINT):
                    if main:
                        atomic_write_json(folder / PROGRESS_FILE, {"entries": [*previous, entry]})
                    algo.save(folder / CHECKPOINT)  # every rank: it gathers their random streams
                    if main:
                        atomic_write_json(folder / PROGRESS_FILE, {"entries": [entry]})
                if main and live is not None:
                    live.write()
                resumed_tokens = int(algo.num_timesteps)
                last_save, last_iteration = time.perf_counter(), algo._iteration
        with saving(spec.name, folder / "final"):
            for fmt in formats[1:]:  # flush the TensorBoard events
                fmt.close()
            algo.save(folder / "final")
        if not main:
            return {
                "tokens": int(algo.num_timesteps),
                "wall_time": recorder.wall_time(),
                "rows": rows,
            }
        plain = folder / "final_weights" / "policy"
        with saving(spec.name, plain):
            if model.lora is not None:  # the adapters folded in: a model plain transformers loads
                plain = folder / MERGED
                algo.policy.save_merged(plain)
            if tokenizer is not None:  # so the saved policy loads with plain transformers, text too
                tokenizer.save_pretrained(str(plain))
        result = {
            **record,
            "tokens": int(algo.num_timesteps),
            "wall_time": round(recorder.wall_time(), 3),
            "resumed_from": resumed_from,
            "rows": rows,
        }
        with saving(spec.name, folder / RESULT_FILE):
            if live is not None:
                live.write()
            atomic_write_json(folder / RESULT_FILE, result)
        # the checkpoint only served resuming; the final save replaces it
        remove_checkpoint(folder / CHECKPOINT)
        (folder / PROGRESS_FILE).unlink(missing_ok=True)
        return result


def _progress_entries(folder: Path) -> list[dict[str, Any]]:
    """The progress records in ``folder`` (metrics up to each checkpoint, by its tokens)."""
    data = _read_json(folder / PROGRESS_FILE)
    if isinstance(data, dict) and "tokens" in data:  # one record, as written before entries
        data = {"entries": [data]}
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return []
    keys = {"tokens", "wall_time", "rows"}
    return [e for e in entries if isinstance(e, dict) and keys <= set(e)]


def _read_progress(path: Path) -> dict[int, dict[str, Any]]:
    return {int(e["tokens"]): e for e in _progress_entries(path.parent)}
