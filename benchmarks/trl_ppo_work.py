"""The work of one PPO iteration on each side of ``trl_ppo.py``: tokens, FLOPs and the op profile.

``trl_ppo.py`` times marlhf's PPO against TRL's ``PPOTrainer``; this script says what each side
computes in one iteration at the same setting, so the time ratio can be read against the ratio
of the arithmetic:

- **tokens** each model's transformer is fed (prompt and response positions; one per row per
  decoding step), without gradients (generation, scoring) and with them (the update's forwards,
  each followed by a backward);
- **LM-head rows**: positions whose full-vocabulary logits are made in a forward (the head is
  ``2 * hidden * vocab`` FLOPs a row: on the benchmark's tiny GPT-2 more than a transformer
  block's);
- **FLOPs** of the matrix products and attention (``torch.utils.flop_counter``'s formulas,
  counted per op by a dispatch mode): by model and gradient state in the forwards, and the
  backward's in one sum (the policy's and the critic's backward run as one graph);
- **the op profile** (``torch.profiler``, one thread, one iteration): aten op calls, their self
  CPU time, and the ops that take most of it.

Each side runs a warm-up iteration, one counted iteration (the dispatch mode and hooks on each
model) and one profiled iteration. The counts do not depend on the machine's load; the profile's
seconds do (the profiler's own cost included), so only its shares and op counts are compared.

Run: ``.venv-bench/bin/python benchmarks/trl_ppo_work.py``; writes
``benchmarks/results/trl_ppo_work.json``, rendered into ``docs/performance.md``
(:func:`work_table`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, machine_stamp, write_json
from interleave import SteppedTrainer, run_rounds, summarise
from trl_common import PROMPT_LEN, VOCAB
from trl_ppo import Setting, build_prompts, marlhf_algo, trl_side

RESULTS = RESULTS_DIR / "trl_ppo_work.json"

#: The sides, in the table's order: key -> heading.
SIDES = {
    "trl": "TRL",
    "marlhf": "marlhf, separate critic",
    "marlhf_shared": "marlhf, shared trunk",
}
#: The table's rows: key -> what it counts.
ROWS = {
    "policy/generation": "policy, generation (no grad)",
    "policy/no_grad": "policy, scoring (no grad)",
    "reference/no_grad": "reference (no grad)",
    "critic/no_grad": "critic, scoring (no grad)",
    "reward/no_grad": "reward model (no grad)",
    "policy/grad": "policy, update forwards",
    "critic/grad": "critic, update forwards",
    "backward": "backward (policy and critic)",
    "other": "outside every model's forward",
}


class WorkCounter:
    """Counts tokens, LM-head rows and FLOPs by model and gradient state (module docstring).

    :param vocab: the vocabulary size (a forward product with this many output columns is an
        LM head).
    """

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab
        self.labels: list[str] = []
        self.generating = False
        self.rows: dict[str, dict[str, float]] = defaultdict(
            lambda: {"tokens": 0, "head_rows": 0, "flops": 0}
        )
        self.counting = False

    def key(self, backward: bool) -> str:
        """The row of what runs now: the model (innermost hooked), its gradient state."""
        if backward:
            return "backward"
        if not self.labels:
            return "other"
        model = self.labels[-1]
        if model == "policy" and self.generating:
            return "policy/generation"
        import torch

        return f"{model}/{'grad' if torch.is_grad_enabled() else 'no_grad'}"

    def watch(self, name: str, model: Any) -> None:
        """Label everything ``model`` (and its backbone, which some callers run alone) runs
        with ``name``; count the tokens its backbone is fed."""
        backbone = getattr(model, "base_model", model)

        def push(module: Any, args: Any, kwargs: Any) -> None:
            self.labels.append(name)
            if module is backbone and self.counting:
                ids = kwargs.get("input_ids", args[0] if args else None)
                if ids is None:
                    ids = kwargs["inputs_embeds"][..., 0]
                self.rows[self.key(False)]["tokens"] += ids.numel()

        def pop(module: Any, args: Any, kwargs: Any, out: Any) -> None:
            self.labels.pop()

        for m in {id(model): model, id(backbone): backbone}.values():
            m.register_forward_pre_hook(push, with_kwargs=True)
            m.register_forward_hook(pop, with_kwargs=True)

    @contextlib.contextmanager
    def generation(self) -> Iterator[None]:
        """Mark the policy's forwards inside as generation."""
        self.generating = True
        try:
            yield
        finally:
            self.generating = False

    @contextlib.contextmanager
    def counting_flops(self) -> Iterator[None]:
        """Count inside (in this thread: a dispatch mode is per thread)."""
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry

        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(
                self, func: Any, types: Any, args: Any = (), kwargs: Any = None
            ) -> Any:
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                packet = func._overloadpacket
                if packet in flop_registry:
                    backward = torch._C._current_autograd_node() is not None
                    row = outer.rows[outer.key(backward)]
                    row["flops"] += flop_registry[packet](*args, **kwargs, out_val=out)
                    if not backward and out.shape[-1] == outer.vocab:
                        row["head_rows"] += out.numel() // outer.vocab
                return out

        self.counting = True
        try:
            with Mode():
                yield
        finally:
            self.counting = False

    def summary(self) -> dict[str, dict[str, float]]:
        """The rows (:data:`ROWS` order), FLOPs in GFLOPs, and their total."""
        out = {k: dict(self.rows[k]) for k in ROWS if k in self.rows}
        for row in out.values():
            row["gflops"] = row.pop("flops") / 1e9
        out["total"] = {
            key: sum(r[key] for r in out.values()) for key in ("tokens", "head_rows", "gflops")
        }
        return out


@contextlib.contextmanager
def profiled(store: dict[str, Any], top: int = 12) -> Iterator[None]:
    """``torch.profiler`` (CPU) around the block; its aten op calls, self CPU seconds and the
    ``top`` ops by self CPU time go into ``store``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        yield
    ops = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in ops)
    # The optimizer's share: aten ops inside its steps (torch names each "Optimizer.step#...").
    events = prof.events()
    steps = [e.time_range for e in events if e.name.startswith("Optimizer.step")]
    inside = [
        e
        for e in events
        if e.name.startswith("aten::")
        and any(r.start <= e.time_range.start and e.time_range.end <= r.end for r in steps)
    ]
    ops.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    store.update(
        {
            "aten_calls": int(sum(e.count for e in ops)),
            "self_cpu_s": total / 1e6,
            "optimizer_steps": len(steps),
            "optimizer_aten_calls": len(inside),
            "optimizer_self_cpu_s": sum(e.self_cpu_time_total for e in inside) / 1e6,
            "top": [
                {
                    "op": e.key,
                    "calls": int(e.count),
                    "self_cpu_s": e.self_cpu_time_total / 1e6,
                    "share": e.self_cpu_time_total / total if total else 0.0,
                }
                for e in ops[:top]
            ],
        }
    )


#: A side: runs one iteration inside the given context (a factory, or None) -> its seconds.
Step = Callable[[Callable[[], Any] | None], float]


def trl_steps(
    tokenizer: Any, prompts: list[list[int]], s: Setting, steps: int, counter: WorkCounter
) -> SteppedTrainer:
    """TRL's PPO, paused after each iteration, its models watched by ``counter``."""

    def hook(trainer: Any) -> None:
        policy = trainer.model.policy
        counter.watch("policy", policy)
        counter.watch("reference", trainer.ref_model)
        counter.watch("critic", trainer.model.value_model)
        counter.watch("reward", trainer.reward_model)
        generate = policy.generate

        def marked(*args: Any, **kwargs: Any) -> Any:
            with counter.generation():
                return generate(*args, **kwargs)

        policy.generate = marked

    return trl_side(tokenizer, prompts, s, steps, on_trainer=hook)


def marlhf_steps(
    tokenizer: Any,
    prompts: list[list[int]],
    s: Setting,
    separate_critic: bool,
    counter: WorkCounter,
) -> Step:
    """marlhf's PPO, its models watched by ``counter``; one iteration per call."""
    algo = marlhf_algo(tokenizer, prompts, s, separate_critic)
    counter.watch("policy", algo.policy.model)
    counter.watch("reference", algo.policy.ref_model)
    if algo.policy.critic is not None:
        counter.watch("critic", algo.policy.critic)
    counter.watch("reward", algo.env.task.reward_fn.model)
    collect = algo.collector.collect

    def marked(*args: Any, **kwargs: Any) -> Any:
        with counter.generation():
            return collect(*args, **kwargs)

    algo.collector.collect = marked
    tokens = s.batch * s.response_length

    def step(context: Callable[[], Any] | None = None) -> float:
        with contextlib.nullcontext() if context is None else context():
            start = time.perf_counter()
            algo.learn(tokens, reset_num_timesteps=False)
            return time.perf_counter() - start

    return step


def measure(tokenizer: Any, prompts: list[list[int]], s: Setting, rounds: int) -> dict[str, Any]:
    """Every side: a warm-up iteration, a counted one and a profiled one (side by side in
    turn), then ``rounds`` interleaved rounds of plain iterations (:func:`interleave.run_rounds`)
    for the seconds per iteration and the GFLOPs per second."""
    counters = {name: WorkCounter(VOCAB) for name in SIDES}
    trl = trl_steps(tokenizer, prompts, s, 4 + rounds, counters["trl"])
    out: dict[str, Any] = {name: {"profile": {}, "seconds": {}} for name in SIDES}

    def profiling(name: str) -> Callable[[], Any]:
        return lambda: profiled(out[name]["profile"])

    try:
        steps: dict[str, Step] = {
            "trl": trl.step,
            "marlhf": marlhf_steps(tokenizer, prompts, s, True, counters["marlhf"]),
            "marlhf_shared": marlhf_steps(tokenizer, prompts, s, False, counters["marlhf_shared"]),
        }
        for name, step in steps.items():
            seconds = out[name]["seconds"]
            seconds["warm_up"] = step(None)
            seconds["counted"] = step(counters[name].counting_flops)
            seconds["profiled"] = step(profiling(name))
            out[name]["loadavg"] = list(os.getloadavg())
            print(f"trl_ppo_work: {name} counted", seconds, flush=True)
        plain: dict[str, Callable[[], float]] = {
            name: functools.partial(step, None) for name, step in steps.items()
        }
        times = run_rounds(
            plain, rounds, warmup=0, progress=lambda m: print(f"trl_ppo_work: {m}", flush=True)
        )
    finally:
        trl.close()
    timing = summarise(times, "trl")
    for name in SIDES:
        out[name]["work"] = counters[name].summary()
        median = timing["sides"][name]["median"]
        out[name]["s_per_iter"] = median
        out[name]["gflops_per_s"] = out[name]["work"]["total"]["gflops"] / median
    return {"sides": out, "timing": timing}


def main(threads: int = 1, rounds: int = 5) -> dict[str, Any]:
    """Count each side's work and time it; write :data:`RESULTS`; return its content.

    :param threads: torch CPU threads (default 1, as ``trl_ppo.py``).
    :param rounds: interleaved rounds of plain iterations after the counted ones (default 5).
    """
    import torch

    from marlhf.models import train_bpe_tokenizer

    torch.set_num_threads(threads)
    s = Setting()
    out: dict[str, Any] = {
        "machine": machine_stamp(),
        "setting": {**vars(s), "prompt_len": PROMPT_LEN, "vocab": VOCAB},
        "rounds": rounds,
        "loadavg_start": list(os.getloadavg()),
    }
    try:
        import trl
        from trl.experimental.ppo import PPOTrainer  # noqa: F401

        out["trl_version"] = trl.__version__
    except Exception as err:  # record exactly why, never a number
        out["error"] = f"cannot import trl.experimental.ppo: {err!r}"
        write_json(RESULTS, out)
        print(out["error"])
        return out
    tokenizer = train_bpe_tokenizer(VOCAB)
    prompts = build_prompts(tokenizer, 256)
    out.update(measure(tokenizer, prompts, s, rounds))
    out["loadavg_end"] = list(os.getloadavg())
    write_json(RESULTS, out)
    print(work_table(out))
    return out


def _commit(machine: dict[str, Any]) -> str:
    commit = str(machine.get("commit") or "unknown")  # (sha, "+dirty" when files differed)
    return commit[:7] + ("+dirty" if commit.endswith("+dirty") else "")


def _number(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def work_table(d: dict[str, Any]) -> str:
    """The results file as the page's table: a row per model and gradient state, tokens /
    LM-head rows / GFLOPs per side, the totals, each marlhf side's FLOPs over TRL's, and the
    profile's op calls."""
    if "sides" not in d:
        return f"Not measured: {d.get('error', 'no sides in the results file')}."
    sides = [k for k in SIDES if k in d["sides"]]
    work = {k: d["sides"][k]["work"] for k in sides}
    head = ["per iteration"] + [f"{SIDES[k]}: tokens / head rows / GFLOPs" for k in sides]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label in {**ROWS, "total": "**total**"}.items():
        if not any(key in w for w in work.values()):
            continue
        cells = []
        for k in sides:
            row = work[k].get(key)
            cells.append(
                "-"
                if row is None
                else f"{_number(row['tokens'])} / {_number(row['head_rows'])} / "
                f"{_number(row['gflops'], 2)}"
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    trl_flops = work["trl"]["total"]["gflops"] if "trl" in work else None
    ratio = ["FLOPs over TRL's"] + [
        "1" if k == "trl" or not trl_flops else f"{work[k]['total']['gflops'] / trl_flops:.2f}"
        for k in sides
    ]
    lines.append("| " + " | ".join(ratio) + " |")
    calls = ["aten op calls (profile)"] + [
        _number(d["sides"][k]["profile"]["aten_calls"]) for k in sides
    ]
    lines.append("| " + " | ".join(calls) + " |")
    timing = d.get("timing")
    if timing is not None:
        per_iter = ["seconds per iteration (median)"] + [
            f"{d['sides'][k]['s_per_iter']:.2f}" for k in sides
        ]
        ratios = ["seconds over TRL's (per round)"] + [
            "1"
            if k == "trl"
            else f"{timing['ratios'][k]['median']:.2f} "
            f"({timing['ratios'][k]['min']:.2f}-{timing['ratios'][k]['max']:.2f})"
            for k in sides
        ]
        rate = ["GFLOPs per second"] + [f"{d['sides'][k]['gflops_per_s']:.1f}" for k in sides]
        lines += ["| " + " | ".join(row) + " |" for row in (per_iter, ratios, rate)]
    s = d["setting"]
    loads = [x for k in sides for x in d["sides"][k]["loadavg"][:1]]
    lines += [
        "",
        f"One iteration at batch {s['batch']}, prompts of {s['prompt_len']} tokens, "
        f"{s['response_length']} new tokens, {s['n_epochs']} epochs of minibatches of "
        f"{s['minibatch']}, GPT-2 {s['n_layer']}x{s['n_embd']} with a {s['vocab']:,}-token "
        f"vocabulary; TRL {d.get('trl_version', '?')}, commit {_commit(d['machine'])}. "
        "Tokens: positions fed to each model's "
        "transformer; head rows: positions whose full-vocabulary logits a forward makes; "
        "GFLOPs: matrix products and attention, forward and backward; seconds: "
        f"{d.get('rounds', 0)} interleaved rounds of plain iterations after the counted ones, "
        "one thread (`benchmarks/results/trl_ppo_work.json`; load "
        f"{min(loads):.1f}-{max(loads):.1f} during the profile"
        + (f", {timing['loadavg'][0]:.1f} after the rounds)." if timing else ")."),
    ]
    return "\n".join(lines) + "\n"


def _optimizer_cell(profile: dict[str, Any]) -> str:
    if "optimizer_aten_calls" not in profile:
        return "not recorded"
    share = profile["optimizer_self_cpu_s"] / profile["self_cpu_s"]
    return (
        f"{share:.0%} ({_number(profile['optimizer_aten_calls'])} in "
        f"{profile['optimizer_steps']} steps)"
    )


def profile_table(d: dict[str, Any], per_side: int = 6) -> str:
    """The profiled iteration's largest ops: each side's ``per_side`` ops with the most self
    CPU time (together), their share of the side's aten self CPU time and their calls."""
    if "sides" not in d:
        return f"Not measured: {d.get('error', 'no sides in the results file')}."
    sides = [k for k in SIDES if k in d["sides"]]
    tops = {k: {t["op"]: t for t in d["sides"][k]["profile"]["top"]} for k in sides}
    ops: list[str] = []
    for k in sides:
        for op in list(tops[k])[:per_side]:
            if op not in ops:
                ops.append(op)
    head = ["op"] + [f"{SIDES[k]}: share (calls)" for k in sides]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for op in ops:
        cells = [
            f"{tops[k][op]['share']:.0%} ({_number(tops[k][op]['calls'])})"
            if op in tops[k]
            else "not in the top"
            for k in sides
        ]
        lines.append(f"| `{op.removeprefix('aten::')}` | " + " | ".join(cells) + " |")
    optimizer = ["aten ops inside the optimizer's steps"] + [
        _optimizer_cell(d["sides"][k]["profile"]) for k in sides
    ]
    total = ["all aten ops"] + [
        f"100% ({_number(d['sides'][k]['profile']['aten_calls'])})" for k in sides
    ]
    lines += ["| " + " | ".join(row) + " |" for row in (optimizer, total)]
    lines += [
        "",
        "One profiled iteration per side (`torch.profiler`, CPU, one thread): each op's self "
        "CPU time over all aten ops' (`benchmarks/results/trl_ppo_work.json`).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    args = parser.parse_args()
    main(threads=args.threads, rounds=args.rounds)
