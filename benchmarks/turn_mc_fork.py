"""Monte-Carlo values from turn starts: continuations forked from the rollout's KV cache vs
replayed and prefilled (issue 25, Performance).

For each multi-turn task of the turn-level comparison (:mod:`benchmarks.turn_compare`, its
agent and model: ``vineppo-turns``, 16 rows, groups of 4, a 2-layer 64-wide GPT-2), two agents
are built with the same seed: ``fork`` runs the continuations as training does
(:func:`marlhf.credit.vine.fork_turn_state`), ``prefill`` runs them as before this change (the
replayed env's window prefilled for every continuation row: ``step_widths=None``). The two
give the same continuation tokens and values (``tests/agents/test_vine_turns.py``), so their
training runs stay the same and each round compares the same work. After one untimed warm-up
iteration each, every round runs one iteration of each side in an order that alternates. Per
iteration: wall seconds, the seconds of the continuations alone, and the tokens the model was
fed (rows x columns of every forward, padding included) during the continuations and in the
whole iteration; the tokens counted in the budget (``num_timesteps``, ``mc_tokens``) must be
equal on both sides. Medians over rounds; the load average before and after.

Run: ``python benchmarks/turn_mc_fork.py [--rounds R] [--tasks guess toollookup]``; writes
``benchmarks/results/turn_mc_fork.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine_stamp, print_table, write_json
from benchmarks.turn_compare import NUM_ENVS, TASKS
from benchmarks.turn_mc_fork_doc import RESULTS

SIDES = ("fork", "prefill")
#: Longer episodes than the comparison's tasks (the prefill the fork saves grows with the
#: prefix): GuessTheNumber 1..64 in up to 8 turns of up to 3 tokens.
LONG_GUESS: dict[str, Any] = {"high": 64, "max_turns": 8}


def _long_guess() -> Any:
    from marlhf.envs.multiturn.tasks.guess_number import GuessTheNumberTask

    return GuessTheNumberTask(**LONG_GUESS)


#: key -> (env id, task kwargs, task factory, agent kwargs): the comparison's tasks and the
#: long one (whose 8 turns need more branch points than the preset's 8: turn starts and ends).
BENCH_TASKS: dict[str, tuple[str, dict[str, Any], Any, dict[str, Any]]] = {
    **{key: (env_id, kwargs, make, {}) for key, (env_id, kwargs, _, make) in TASKS.items()},
    "guess-long": ("marlhf/GuessTheNumber-v0", LONG_GUESS, _long_guess, {"mc_max_starts": 16}),
}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Meter:
    """Counts the tokens fed to the model (rows x columns of each forward) and times the
    continuations of one agent; ``replay`` makes its continuations prefill, as before."""

    def __init__(self, algo: Any, replay: bool) -> None:
        self.algo, self.replay = algo, replay
        self.fed = 0
        self.mc_fed = 0
        self.mc_s = 0.0
        self.in_mc = False
        algo.policy.model.register_forward_pre_hook(self._count, with_kwargs=True)
        original = algo.collector.mc_values

        def timed() -> tuple[Any, int]:
            started, before = time.perf_counter(), self.fed
            self.in_mc = True
            try:
                with self._replayed() if self.replay else contextlib.nullcontext():
                    return original()
            finally:
                self.in_mc = False
                self.mc_s += time.perf_counter() - started
                self.mc_fed += self.fed - before

        algo.collector.mc_values = timed

    def _count(self, _module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            self.fed += int(ids.numel())

    @contextlib.contextmanager
    def _replayed(self) -> Iterator[None]:
        """The collector's continuations without the cache layout: replay and prefill."""
        from marlhf.algorithms import collector

        original = collector.monte_carlo_values

        def replayed(*args: Any, **kwargs: Any) -> tuple[Any, int]:
            # (the collector passes step_widths by keyword: a partial would be overridden)
            return original(*args, **{**kwargs, "step_widths": None})

        collector.monte_carlo_values = replayed
        try:
            yield
        finally:
            collector.monte_carlo_values = original

    def iteration(self) -> dict[str, float]:
        """One timed iteration (``learn`` for one rollout) and what it fed and counted."""
        algo = self.algo
        fed, mc_fed, mc_s = self.fed, self.mc_fed, self.mc_s
        steps, mc_tokens = algo.num_timesteps, algo.mc_tokens
        started = time.perf_counter()
        algo.learn(1, reset_num_timesteps=False)
        return {
            "s": time.perf_counter() - started,
            "mc_s": self.mc_s - mc_s,
            "fed": float(self.fed - fed),
            "mc_fed": float(self.mc_fed - mc_fed),
            "timesteps": float(algo.num_timesteps - steps),
            "mc_tokens": float(algo.mc_tokens - mc_tokens),
        }


def build(key: str, seed: int = 0) -> Any:
    from marlhf.algorithms import PPO
    from marlhf.envs.multiturn.env import MultiTurnTokenEnv
    from marlhf.models import tiny_gpt2

    task = BENCH_TASKS[key][2]()
    env = MultiTurnTokenEnv(task, num_envs=NUM_ENVS, seed=seed)
    model = tiny_gpt2(task.codec, n_layer=2, n_embd=64, n_head=2, seed=seed)
    return PPO(
        model,
        env,
        preset=["toy", "vineppo-turns"],
        group_size=4,
        mask_actions=True,
        seed=seed,
        device="cpu",
        **BENCH_TASKS[key][3],
    )


def run_task(key: str, rounds: int) -> dict[str, Any]:
    meters = {side: Meter(build(key), replay=side == "prefill") for side in SIDES}
    for meter in meters.values():
        meter.iteration()  # warm-up
    per: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    before = loadavg()
    loads = []
    for r in range(rounds):
        for side in SIDES if r % 2 == 0 else SIDES[::-1]:
            per[side].append(meters[side].iteration())
        loads.append(loadavg()[0])
    same = all(
        a["timesteps"] == b["timesteps"] and a["mc_tokens"] == b["mc_tokens"]
        for a, b in zip(per["fork"], per["prefill"], strict=True)
    )
    sides = {
        side: {
            field: statistics.median(it[field] for it in per[side])
            for field in ("s", "mc_s", "fed", "mc_fed", "timesteps", "mc_tokens")
        }
        for side in SIDES
    }
    ratios = [
        b["s"] / a["s"] for a, b in zip(per["fork"], per["prefill"], strict=True) if a["s"] > 0
    ]
    mc_ratios = [
        b["mc_s"] / a["mc_s"]
        for a, b in zip(per["fork"], per["prefill"], strict=True)
        if a["mc_s"] > 0
    ]
    return {
        "env_id": BENCH_TASKS[key][0],
        "kwargs": BENCH_TASKS[key][1],
        "rounds": rounds,
        "sides": sides,
        "per_round": per,
        "same_counted_tokens": same,
        "prefill_over_fork_s": statistics.median(ratios),
        "prefill_over_fork_mc_s": statistics.median(mc_ratios),
        "prefill_over_fork_mc_fed": sides["prefill"]["mc_fed"] / max(sides["fork"]["mc_fed"], 1),
        "loadavg_before": before,
        "loadavg_per_round": loads,
        "loadavg_after": loadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tasks", nargs="*", default=list(BENCH_TASKS), choices=list(BENCH_TASKS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    data: dict[str, Any] = {"machine": machine_stamp(), "tasks": {}}
    for key in args.tasks:
        print(f"[turn_mc_fork] {key} (load {loadavg()})", file=sys.stderr, flush=True)
        data["tasks"][key] = run_task(key, args.rounds)
        write_json(args.out, data)
    rows = []
    for key, part in data["tasks"].items():
        fork, prefill = part["sides"]["fork"], part["sides"]["prefill"]
        rows.append(
            [
                key,
                f"{fork['s']:.3f} / {prefill['s']:.3f}",
                f"{part['prefill_over_fork_s']:.2f}x",
                f"{part['prefill_over_fork_mc_s']:.2f}x",
                f"{int(fork['mc_fed'])} / {int(prefill['mc_fed'])}",
                f"{part['prefill_over_fork_mc_fed']:.2f}x",
                int(fork["mc_tokens"]),
            ]
        )
    header = [
        "task",
        "s / iteration (fork / prefill)",
        "prefill / fork s",
        "MC s",
        "MC tokens fed (fork / prefill)",
        "ratio",
        "MC tokens counted",
    ]
    title = "turn-start continuations, forked vs prefilled (medians; ratios: paired per round)"
    print_table(title, header, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
