"""What eager PyTorch leaves in marlhf's PPO iteration at the TRL benchmark's setting.

``benchmarks/trl_ppo.py`` times marlhf against TRL; this benchmark asks how much faster marlhf's
own iteration gets with the levers that change how the same arithmetic runs, not what it
computes. The setting is ``trl_ppo.py``'s (:class:`trl_ppo.Setting`: the same tiny GPT-2 policy,
critic and reward model, prompts, batch, epochs and minibatches), each side its own agent, built
alike from the same seeds:

- ``default``: marlhf's defaults;
- ``fused_optimizer``: ``fused_optimizer=True`` (PyTorch's fused Adam kernel, TRL's optimizer);
- ``tanh_gelu``: GPT-2's activation (``transformers``' ``NewGELUActivation``, seven element-wise
  operations written out in Python) replaced in the policy and the critic by PyTorch's one-kernel
  ``gelu(approximate="tanh")``: the same function, rounded differently;
- ``compiled_blocks``: every transformer block of the policy and the critic runs through
  ``torch.compile`` (inductor) in the update's forwards, and so its backward too; generation and
  the no-grad scoring stay eager (:func:`compile_blocks`). The first update compiles (a warm-up
  round, not timed);
- ``all``: the three together.

Each side runs with the separate critic and with the shared trunk. Timing: interleaved rounds of
one iteration of every side, the order rotating (:func:`interleave.run_rounds`), after warm-up
rounds; per side the whole iteration's seconds and the update's (``train()``); each lever's
per-round ratio over ``default`` of the same trunk (median and range), with the load average.

Run: ``python benchmarks/update_levers.py [--rounds 8] [--warmup 1]``; writes
``benchmarks/results/update_levers.json``, rendered into ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, machine_stamp, markdown_table, print_table, write_json
from interleave import run_rounds, summarise
from provenance import describe
from trl_common import timed_iterations

RESULTS = RESULTS_DIR / "update_levers.json"
#: The levers, each measured against ``default`` on the same trunk.
LEVERS = ("fused_optimizer", "tanh_gelu", "compiled_blocks", "all")
#: The trunks: a separate critic (TRL's design) and marlhf's default shared trunk.
TRUNKS = {"separate": True, "shared": False}


class TanhGELU(nn.Module):
    """``transformers``' ``gelu_new`` as PyTorch's one fused kernel (``approximate="tanh"``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


def use_tanh_gelu(model: nn.Module) -> int:
    """Replace every ``NewGELUActivation`` module of ``model`` by :class:`TanhGELU`; returns how
    many were replaced."""
    from transformers.activations import NewGELUActivation

    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, NewGELUActivation):
                setattr(parent, name, TanhGELU())
                swapped += 1
    return swapped


def compile_blocks(model: nn.Module, backend: str | Callable[..., Any] = "inductor") -> int:
    """Run each GPT-2 block of ``model`` through ``torch.compile`` whenever gradients are enabled
    (the update's forwards, and so their backward); no-grad calls (generation, scoring) keep the
    eager forward, whose shapes change every token. Returns the blocks wrapped.

    :param backend: ``torch.compile``'s backend (the tests pass one that counts the graphs).
    """
    gpt2: Any = model  # (a GPT-2: its ModuleList of blocks below)
    blocks = gpt2.transformer.h
    for block in blocks:
        eager = block.forward
        compiled = torch.compile(eager, backend=backend, dynamic=False)

        def forward(*args: Any, _eager: Any = eager, _compiled: Any = compiled, **kw: Any) -> Any:
            return (_compiled if torch.is_grad_enabled() else _eager)(*args, **kw)

        block.forward = forward
    return len(blocks)


def build_side(
    tokenizer: Any, prompts: list[list[int]], setting: Any, separate: bool, lever: str
) -> Any:
    """marlhf's PPO on ``trl_ppo.py``'s setting with ``lever`` applied (``"default"``: none)."""
    from trl_ppo import marlhf_algo

    fused = lever in ("fused_optimizer", "all")
    algo = marlhf_algo(tokenizer, prompts, setting, separate_critic=separate, fused=fused)
    models = [algo.policy.model] + ([algo.policy.critic] if separate else [])
    for model in models:
        if lever in ("tanh_gelu", "all") and use_tanh_gelu(model) == 0:
            raise ValueError(f"{lever}: the model has no NewGELUActivation to replace")
        if lever in ("compiled_blocks", "all"):
            compile_blocks(model)
    return algo


def timed_side(algo: Any, tokens: int, update_seconds: list[float]) -> Callable[[], float]:
    """One iteration of ``algo`` (``tokens`` tokens): returns its seconds and appends the
    update's (``train()``) to ``update_seconds``."""
    train = algo.train

    def timed_train() -> None:
        start = time.perf_counter()
        train()
        update_seconds.append(time.perf_counter() - start)

    algo.train = timed_train
    return timed_iterations(algo, tokens)


def measure(rounds: int, warmup: int) -> dict[str, Any]:
    """Every trunk with every lever and the default, in interleaved rounds."""
    from trl_common import VOCAB
    from trl_ppo import Setting, build_prompts

    from marlhf.models import train_bpe_tokenizer

    setting = Setting()
    tokenizer = train_bpe_tokenizer(VOCAB)
    prompts = build_prompts(tokenizer, 256)
    tokens = setting.batch * setting.response_length
    sides: dict[str, Callable[[], float]] = {}
    updates: dict[str, list[float]] = {}
    for trunk, separate in TRUNKS.items():
        for lever in ("default", *LEVERS):
            name = f"{trunk}/{lever}"
            updates[name] = []
            algo = build_side(tokenizer, prompts, setting, separate, lever)
            sides[name] = timed_side(algo, tokens, updates[name])
    times = run_rounds(
        sides, rounds, warmup, progress=lambda m: print(f"update_levers: {m}", flush=True)
    )
    # The updates of the warm-up rounds were recorded too: keep the timed rounds' only.
    timed_updates = {name: ts[warmup:] for name, ts in updates.items()}
    out: dict[str, Any] = {"setting": asdict(setting)}
    for trunk in TRUNKS:
        names = [f"{trunk}/{lever}" for lever in ("default", *LEVERS)]
        out[trunk] = {
            "iteration": summarise({n: times[n] for n in names}, f"{trunk}/default"),
            "update": summarise({n: timed_updates[n] for n in names}, f"{trunk}/default"),
        }
    return out


def _cell(summary: dict[str, Any], name: str, baseline: str) -> str:
    side = summary["sides"][name]
    seconds = f"{side['median']:.2f}"
    if name == baseline:
        return f"{seconds} (1)"
    r = summary["ratios"][name]
    return f"{seconds} ({r['median']:.2f}, {r['min']:.2f}-{r['max']:.2f})"


def levers_table(data: dict[str, Any]) -> str:
    """Seconds per iteration and per update of each side, with each lever's per-round ratio
    over the default of the same trunk, and the runs' provenance."""
    rows = []
    for trunk in TRUNKS:
        for lever in ("default", *LEVERS):
            name, base = f"{trunk}/{lever}", f"{trunk}/default"
            rows.append(
                [
                    "separate critic" if trunk == "separate" else "shared trunk",
                    f"`{lever}`",
                    _cell(data[trunk]["iteration"], name, base),
                    _cell(data[trunk]["update"], name, base),
                ]
            )
    table = markdown_table(
        ["trunk", "side", "s per iteration (over default)", "s per update (over default)"], rows
    )
    m = data["machine"]
    return (
        f"{table}\n\n{data['rounds']} interleaved rounds (the order rotating) after "
        f"{data['warmup']} warm-up round(s), one iteration of every side each, one thread: "
        "medians, and each lever's per-round ratio over the default of the same trunk (median, "
        f"range); load {data['loadavg_start'][0]:.1f} before, {data['loadavg_end'][0]:.1f} "
        f"after; commit {describe(m, RESULTS)}, {m['date_utc']} "
        "(`benchmarks/update_levers.py`, `benchmarks/results/update_levers.json`)."
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds (default 8)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON output path")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 1:
        parser.error("--rounds and --warmup must be at least 1 (the first update compiles)")
    torch.set_num_threads(1)
    out: dict[str, Any] = {
        "machine": machine_stamp(),
        "rounds": args.rounds,
        "warmup": args.warmup,
        "loadavg_start": list(os.getloadavg()),
    }
    out.update(measure(args.rounds, args.warmup))
    out["loadavg_end"] = list(os.getloadavg())
    write_json(args.out, out)
    parts = ("iteration", "update")
    rows = [
        [
            trunk,
            lever,
            *(_cell(out[trunk][k], f"{trunk}/{lever}", f"{trunk}/default") for k in parts),
        ]
        for trunk in TRUNKS
        for lever in ("default", *LEVERS)
    ]
    print_table(
        "marlhf's PPO iteration with each lever (s, ratio over default per round)",
        ["trunk", "side", "iteration", "update"],
        rows,
    )
    return out


if __name__ == "__main__":
    main()
