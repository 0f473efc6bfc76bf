"""Reasoning task: does RL improve a tiny GPT-2 that SFT taught a reasoning-gym family?

Recipe (the same as ``examples/configs/reasoning_sft.yaml`` then ``reasoning_rl.yaml``): a tiny
GPT-2 and its BPE are trained from nothing by ``marlhf sft`` on the task's own solutions
(:data:`SFT`), then by RL from that start (:data:`RL`, one run per preset and seed). Each
model is scored on the first :data:`EVAL_QUESTIONS` questions of the task's ``eval`` split
(with :data:`NOVEL_ONLY`, only those absent from the train split): greedy accuracy (each
question once) and sampled accuracy (temperature 1, the policy RL trains; :data:`EVAL_SAMPLES`
samples per question, fixed seed). SFT runs once per seed: the RL runs of seed ``s`` start from
``sft_start(s)``.

    python benchmarks/reasoning.py            # 3 seeds; writes benchmarks/results/reasoning.json
    python benchmarks/reasoning.py --quick    # 1 seed, smaller budgets (a smoke run)
    python benchmarks/reasoning.py --render   # docs/reasoning.md's table from the JSON only

Runs are cached under ``runs/bench-reasoning/`` (SFT folders and RL run folders resume).

For other benchmarks (the all-preset comparison): :func:`sft_start` gives the SFT folder of a
seed (made once, cached), :func:`rl_task_config` the RL task section, :func:`rl_config` the
whole RL setting, :func:`held_out_accuracy` the score of any saved model.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    DOCS_DIR,
    RESULTS_DIR,
    ROOT,
    machine_stamp,
    markdown_table,
    print_table,
    read_json,
    replace_marked,
    write_json,
)
from benchmarks.provenance import describe

CONFIGS = ROOT / "examples" / "configs"
SFT_YAML = CONFIGS / "reasoning_sft.yaml"
RL_YAML = CONFIGS / "reasoning_rl.yaml"


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a mapping")
    return data


#: ``marlhf sft`` settings: ``examples/configs/reasoning_sft.yaml`` (``output_dir`` and
#: ``seed`` are set per seed).
SFT: dict[str, Any] = {k: v for k, v in _yaml(SFT_YAML).items() if k not in ("output_dir", "seed")}
_RL = _yaml(RL_YAML)
#: RL settings shared by every preset: ``examples/configs/reasoning_rl.yaml``'s task, budget and
#: agent section (its preset list is replaced by each run's preset on top of ``toy``).
RL: dict[str, Any] = {
    "task": _RL["task"],
    "agent": {k: v for k, v in _RL["agent"].items() if k != "preset"},
    "total_timesteps": _RL["total_timesteps"],
}
ENV_ID: str = SFT["task"]["id"]
#: The task, for SFT and RL alike (the RL env must be built with the same arguments).
TASK_KWARGS: dict[str, Any] = SFT["task"]["kwargs"]
PRESETS = ["ppo", "grpo"]
SEEDS = [0, 1, 2]
EVAL_QUESTIONS = 200
#: chain_sum with two one-digit terms has 200 distinct questions: both splits draw from all of
#: them, so the eval split cannot hold questions the train split lacks (held_out_questions with
#: novel_only=True finds none). The score is on the eval split's own draw of questions.
NOVEL_ONLY = False
EVAL_SAMPLES = 4
EVAL_SEED = 12345
OUT = ROOT / "runs" / "bench-reasoning"
RESULT = RESULTS_DIR / "reasoning.json"
DOC = DOCS_DIR / "reasoning.md"


def sft_config(seed: int, out_dir: str | Path, overrides: dict[str, Any] | None = None) -> Any:
    """The :class:`~marlhf.config.commands.SftConfig` of seed ``seed`` writing to ``out_dir``."""
    from marlhf.config.commands import SftConfig
    from marlhf.config.parse import from_dict

    values = {**copy.deepcopy(SFT), **(overrides or {}), "seed": seed, "output_dir": str(out_dir)}
    return from_dict(SftConfig, values)


def sft_start(
    seed: int, out_dir: str | Path = OUT, overrides: dict[str, Any] | None = None
) -> Path:
    """The SFT model of seed ``seed`` (folder ``<out_dir>/sft-<seed>``), trained if absent.

    A finished folder is reused; an interrupted one leaves nothing that looks finished, so
    calling again retrains it. The folder loads as ``model.path`` for ``marlhf train/compare``
    with :func:`rl_task_config`'s task.
    """
    from marlhf.commands.sft import RESULT_FILE, run_sft

    folder = Path(out_dir) / f"sft-{seed}"
    if not (folder / RESULT_FILE).exists():
        run_sft(sft_config(seed, folder, overrides))
    return folder


def rl_task_config() -> dict[str, Any]:
    """The RL task section (``{"id", "kwargs", "num_envs"}``) that matches the SFT data."""
    return copy.deepcopy(RL["task"])


def rl_config() -> dict[str, Any]:
    """``{"task", "agent", "total_timesteps"}``: the RL settings of ``reasoning_rl.yaml`` (the
    agent section without its preset list; each run puts its preset on top of ``toy``)."""
    return copy.deepcopy(RL)


def held_out_questions(
    questions: int, task_kwargs: dict[str, Any] | None = None, novel_only: bool = True
) -> list[int]:
    """Indices of the first ``questions`` questions of the ``eval`` split that never occur in
    the ``train`` split (SFT and RL draw from the train split; with small numbers the two
    splits share many questions, and those would not test generalisation).

    :param novel_only: False: simply the first ``questions`` of the eval split (for tasks with
        so few distinct questions that the splits share them all).
    :raises SystemExit: fewer such questions than asked for among four times as many drawn.
    """
    if not novel_only:
        return list(range(questions))
    import reasoning_gym

    from marlhf.envs.builtin.reasoning import EVAL_SEED_OFFSET

    kwargs = copy.deepcopy(task_kwargs or TASK_KWARGS)
    name, extra = kwargs.get("dataset", "chain_sum"), kwargs.get("dataset_kwargs") or {}
    seed = int(kwargs.get("seed", 0))
    train = reasoning_gym.create_dataset(
        name, size=int(kwargs.get("size", 200)), seed=seed, **extra
    )
    seen = {e["question"] for e in train}
    pool = 4 * questions
    held = reasoning_gym.create_dataset(name, size=pool, seed=seed + EVAL_SEED_OFFSET, **extra)
    fresh = [i for i in range(pool) if held[i]["question"] not in seen][:questions]
    if len(fresh) < questions:
        raise SystemExit(
            f"only {len(fresh)} of {pool} eval questions are absent from the train split; "
            f"the task has too few distinct questions for {questions} held-out ones"
        )
    return fresh


def held_out_accuracy(
    model_path: str | Path,
    questions: int = EVAL_QUESTIONS,
    samples: int = EVAL_SAMPLES,
    seed: int = EVAL_SEED,
    task_kwargs: dict[str, Any] | None = None,
    novel_only: bool = NOVEL_ONLY,
) -> dict[str, float]:
    """Accuracy of the model in ``model_path`` on ``questions`` held-out questions
    (:func:`held_out_questions`: eval split, none in the train split unless ``novel_only`` is
    False).

    Every question is asked once greedily and ``samples`` times at temperature 1 (a generator
    seeded by ``seed``), so two models are scored on exactly the same prompts.

    :returns: ``{"greedy", "sampled"}``: mean verifier scores in [0, 1].
    """
    import torch

    from marlhf.algorithms import CausalLMActorCritic
    from marlhf.config.commands import ModelConfig, TaskConfig
    from marlhf.runs.builders import load_causal_lm, load_tokenizer
    from marlhf.runs.runner import build_env

    indices = held_out_questions(questions, task_kwargs, novel_only)
    kwargs = {**copy.deepcopy(task_kwargs or TASK_KWARGS), "split": "eval"}
    kwargs["size"] = max(indices) + 1
    model = ModelConfig(path=str(model_path))
    tokenizer = load_tokenizer(model)
    probe = build_env(TaskConfig(ENV_ID, kwargs, 1), seed, "cpu", tokenizer)
    prompts = [probe.task.prompt(i) for i in indices]
    policy = CausalLMActorCritic(
        load_causal_lm(model), reference=None, vocab_size=int(probe.codec.vocab_size)
    ).eval()
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, float] = {}
    for name, copies in (("greedy", 1), ("sampled", samples)):
        rows = [p for p in prompts for _ in range(copies)]
        env = build_env(TaskConfig(ENV_ID, kwargs, len(rows)), seed, "cpu", tokenizer)
        obs, _ = env.reset(options={"prompts": rows})
        state = None
        with torch.no_grad():
            while True:
                actions, state = policy.act(
                    obs, state, deterministic=name == "greedy", generator=generator
                )
                obs, _, _, _, info = env.step(actions)
                if bool(env.done.all()):
                    break
        out[name] = float(info["episode_return"].mean())
    return out


#: Two-sided 95% Student-t quantiles by degrees of freedom (seeds - 1).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_ci(values: list[float]) -> dict[str, Any]:
    """``{"mean", "low", "high", "values"}``: the mean and its 95% Student-t interval over the
    seeds (one value: no interval; ten or more: the normal 1.96)."""
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return {"mean": mean, "low": None, "high": None, "values": values}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T95.get(n - 1, 1.96) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "values": values}


def rl_run(
    preset: str,
    seed: int,
    start: str | Path,
    out_dir: str | Path = OUT,
    total_timesteps: int | None = None,
) -> dict[str, Any]:
    """One RL run of ``preset`` (``PRESET`` or ``PRESET@TERMINATION``) from the SFT model in
    ``start``, cached in ``<out_dir>/rl-<run name>`` (resumes); ``train_run``'s result plus
    ``"policy"``, the folder of the final policy."""
    from marlhf.config.commands import AgentConfig, ModelConfig, TaskConfig
    from marlhf.runs.runner import RunSpec, parse_agent, train_run

    name, termination = parse_agent(preset)
    spec = RunSpec(name, termination, seed)
    folder = Path(out_dir) / f"rl-{spec.name}"
    result = train_run(
        spec,
        folder,
        task=TaskConfig.from_mapping(rl_task_config()),
        model=ModelConfig(path=str(start)),
        agent=AgentConfig.from_mapping(copy.deepcopy(RL["agent"])),
        total_timesteps=total_timesteps or int(RL["total_timesteps"]),
        checkpoint_every=10,
    )
    return {**result, "policy": str(folder / "final_weights" / "policy")}


def run(seeds: list[int], presets: list[str], total_timesteps: int | None) -> dict[str, Any]:
    """SFT per seed, RL per (preset, seed); every model scored by :func:`held_out_accuracy`."""
    import torch

    torch.set_num_threads(1)
    starts: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        t0 = time.perf_counter()
        folder = sft_start(seed)
        record = read_json(folder / "marlhf_sft.json") or {}
        starts[seed] = {
            "path": str(folder),
            "accuracy": held_out_accuracy(folder),
            "eval_loss_after": record.get("result", {}).get("eval_loss_after"),
            "wall_time": round(time.perf_counter() - t0, 1),
        }
        print(f"SFT seed {seed}: {starts[seed]['accuracy']}", flush=True)
    runs = []
    for preset in presets:
        for seed in seeds:
            result = rl_run(preset, seed, starts[seed]["path"], total_timesteps=total_timesteps)
            acc = held_out_accuracy(result["policy"])
            runs.append(
                {
                    "preset": preset,
                    "seed": seed,
                    "accuracy": acc,
                    "start_accuracy": starts[seed]["accuracy"],
                    "tokens": result["tokens"],
                    "wall_time": result["wall_time"],
                }
            )
            print(f"{preset} seed {seed}: {acc} (SFT {starts[seed]['accuracy']})", flush=True)
    return {"starts": starts, "runs": runs}


def summarise(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per preset: SFT start and after-RL accuracies, their paired difference, cost."""
    rows = []
    for preset in dict.fromkeys(r["preset"] for r in raw["runs"]):
        mine = [r for r in raw["runs"] if r["preset"] == preset]
        row: dict[str, Any] = {"preset": preset, "seeds": [r["seed"] for r in mine]}
        for metric in ("greedy", "sampled"):
            before = [r["start_accuracy"][metric] for r in mine]
            after = [r["accuracy"][metric] for r in mine]
            row[f"sft_{metric}"] = mean_ci(before)
            row[f"rl_{metric}"] = mean_ci(after)
            row[f"gain_{metric}"] = mean_ci([a - b for a, b in zip(after, before, strict=True)])
        row["tokens"] = mean_ci([float(r["tokens"]) for r in mine])["mean"]
        row["wall_time"] = mean_ci([float(r["wall_time"]) for r in mine])["mean"]
        rows.append(row)
    return rows


def _cell(stat: dict[str, Any]) -> str:
    if stat["low"] is None:
        return f"{stat['mean']:.3f}"
    return f"{stat['mean']:.3f} [{stat['low']:.3f}, {stat['high']:.3f}]"


HEADER = [
    "preset",
    "SFT sampled",
    "RL sampled",
    "gain sampled",
    "SFT greedy",
    "RL greedy",
    "gain greedy",
    "tokens",
    "RL wall s",
]


def table_rows(summary: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            r["preset"],
            _cell(r["sft_sampled"]),
            _cell(r["rl_sampled"]),
            _cell(r["gain_sampled"]),
            _cell(r["sft_greedy"]),
            _cell(r["rl_greedy"]),
            _cell(r["gain_greedy"]),
            int(r["tokens"]),
            round(r["wall_time"], 1),
        ]
        for r in summary
    ]


BEGIN, END = "<!-- reasoning:begin -->", "<!-- reasoning:end -->"


def render(data: dict[str, Any], doc: Path = DOC) -> None:
    """Replace the table between the markers of ``doc`` with the one of ``data``.

    :raises ValueError: when ``doc`` lacks the markers.
    """
    seeds = data["summary"][0]["seeds"] if data["summary"] else []
    body = "\n".join(
        [
            BEGIN,
            f"Generated by `{data['command']}` ({data['machine'].get('cpu', '?')}, "
            f"commit {describe(data['machine'], RESULT)}, seeds {seeds}, "
            f"{data['eval']['questions']} eval-split questions"
            + (" absent from the train split" if data["eval"].get("novel_only") else "")
            + f", {data['eval']['samples']} samples each for the sampled accuracy). "
            "Means over seeds with 95% Student-t intervals (not clipped to [0, 1]); the gain "
            "is RL minus the SFT start of the same seed; tokens are the RL run's generated "
            "tokens as the agent counts them.",
            "",
            markdown_table(HEADER, table_rows(data["summary"])),
            END,
        ]
    )
    replace_marked(doc, BEGIN, END, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, a quarter of the budget")
    parser.add_argument("--render", action="store_true", help="only re-render the doc")
    parser.add_argument("--seeds", type=int, nargs="*", default=None)
    parser.add_argument("--presets", nargs="*", default=None, help=f"default {PRESETS}")
    args = parser.parse_args()
    if args.render:
        data = read_json(RESULT)
        if data is None:
            raise SystemExit(f"{RESULT} is missing: run the benchmark first")
        render(data)
        return
    seeds = args.seeds or ([0] if args.quick else SEEDS)
    presets = args.presets or PRESETS
    budget = int(RL["total_timesteps"]) // 4 if args.quick else None
    t0 = time.perf_counter()
    raw = run(seeds, presets, budget)
    summary = summarise(raw)
    print_table("Held-out accuracy, SFT start vs after RL", HEADER, table_rows(summary))
    data = {
        "command": "python benchmarks/reasoning.py" + (" --quick" if args.quick else ""),
        "machine": machine_stamp(),
        "sft": SFT,
        "rl": RL,
        "eval": {
            "questions": EVAL_QUESTIONS,
            "samples": EVAL_SAMPLES,
            "seed": EVAL_SEED,
            "novel_only": NOVEL_ONLY,
        },
        "total_wall_time": round(time.perf_counter() - t0, 1),
        **raw,
        "summary": summary,
    }
    if args.quick:
        print("--quick: nothing written")
        return
    write_json(RESULT, data)
    render(data)
    print(f"wrote {RESULT} and {DOC}")


if __name__ == "__main__":
    main()
