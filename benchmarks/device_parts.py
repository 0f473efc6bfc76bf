"""The parts of ``benchmarks/device_check.py`` (its docstring says what each measures), the
time budget they run under, and the memory-bandwidth bound of a decode step.

Each part is ``fn(plan, budget) -> dict`` with an estimate of its seconds (``estimate(plan)``);
:data:`PARTS` lists them in the order they run.
"""

from __future__ import annotations

import copy
import functools
import gc
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import first_columns, smollm2_architecture
from rollout import rollout_pair

from marlhf.algorithms import PPO
from marlhf.envs import BatchedTokenEnv, DelayedChoiceTask
from marlhf.envs.core.tasks import Prompt
from marlhf.models import tiny_gpt2

ROOT = Path(__file__).resolve().parent.parent
CUDA_TEST_MODULES = ("tests/agents/test_cuda.py",)  # the modules skipped without CUDA
GOAL_TOK_S = 100_000  # issue 28: SmolLM2-135M architecture at B = 256
GOAL_AGENT_OVER_BARE = 0.9
NCCL_TIMEOUT_S = 90.0  # the one-rank process group's child, start-up included
PROMPT_LEN = 32  # the decode and iteration prompts (issue 28: context <= 512)


@dataclass
class Plan:
    """Where and how big: ``quick`` shrinks every part to a check of the script; the other
    fields, when given, replace the decode part's batch sizes, new tokens and rounds, and the
    iteration split's rows and tokens (whatever ``quick`` says)."""

    device: torch.device
    quick: bool = False
    decode_batches: list[int] | None = None
    decode_tokens: int | None = None
    rounds: int | None = None
    iter_size: tuple[int, int] | None = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


class Budget:
    """Seconds left of ``total``; a step runs only when its estimate fits in what is left."""

    def __init__(self, total: float) -> None:
        if total <= 0:
            raise ValueError(f"device_check: --budget-s={total} must be positive")
        self.total = total
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.total - self.elapsed()

    def refuse(self, estimate: float) -> str | None:
        """Why a step estimated at ``estimate`` seconds must be skipped, or None if it fits."""
        left = self.left()
        if estimate > left:
            return (
                f"skipped: estimated {estimate:.0f} s, {max(left, 0.0):.1f} s left of the "
                f"{self.total:g} s budget (--budget-s)"
            )
        return None


# ----------------------------------------------------------------------------- helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of ``fn()``, the device's queue drained before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class LongCueChoice(DelayedChoiceTask):
    """``DelayedChoice`` behind a longer prompt: ``prompt_len - 1`` seeded random symbols, then
    the cue (the reward reads the prompt's last token), so a decode step attends to a context
    of ``prompt_len`` + the tokens so far, as a real prompt would make it."""

    def __init__(self, horizon: int, prompt_len: int = PROMPT_LEN) -> None:
        super().__init__(horizon=horizon)
        if prompt_len < 1:
            raise ValueError(f"LongCueChoice: prompt_len={prompt_len} must be at least 1")
        self.name = f"DelayedChoice (prompt {prompt_len})"
        self.max_prompt_len = prompt_len
        self._symbols = [self.codec.tokens.index(t) for t in self.cues + self.choices]

    def sample_prompts(self, rng: np.random.Generator, n: int) -> list[Prompt]:
        out = []
        for cue in super().sample_prompts(rng, n):
            filler = rng.choice(self._symbols, size=self.max_prompt_len - 1).tolist()
            out.append(Prompt(filler + cue.ids, cue.metadata, text=cue.text))
        return out


def _env(
    batch: int, n_new: int, device: torch.device, prompt_len: int | None = None
) -> BatchedTokenEnv:
    """``batch`` rows of ``DelayedChoice`` (``n_new`` tokens each, no EOS), behind a prompt of
    ``prompt_len`` tokens when given (:class:`LongCueChoice`), else its one-token cue."""
    if prompt_len is None:
        return BatchedTokenEnv(
            "DelayedChoice", num_envs=batch, device=device, seed=0, horizon=n_new
        )
    task = LongCueChoice(horizon=n_new, prompt_len=prompt_len)
    return BatchedTokenEnv(task, num_envs=batch, device=device, seed=0)


def _tiny(n_layer: int, n_positions: int = 1024) -> Any:
    codec = BatchedTokenEnv("DelayedChoice", num_envs=1, seed=0).codec
    return tiny_gpt2(codec, n_layer=n_layer, n_embd=128, n_head=4, n_positions=n_positions)


# ------------------------------------------------------------------ bandwidth bound


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int = 10) -> float:
    """Bytes per second of a large tensor copy on ``device`` (read + written), best of
    ``repeats`` copies after one warm-up."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(timed(lambda: dst.copy_(src), device) for _ in range(repeats))
    return 2 * src.numel() * src.element_size() / best


def param_bytes(model: Any) -> int:
    """Bytes of the model's parameters (a tied head counted once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of one token's keys and values over all layers, in the parameters' dtype."""
    cfg = model.config
    layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    elem = next(model.parameters()).element_size()
    return 2 * layers * kv_heads * head_dim * elem


def bandwidth_bound_tok_s(
    batch: int, param_nbytes: int, kv_per_token: int, mean_context: float, bandwidth: float
) -> float:
    """Tokens/s if a decode step only read its bytes at ``bandwidth`` (bytes/s): every step
    reads the parameters once and each row's KV cache at ``mean_context`` tokens, and yields
    ``batch`` tokens."""
    step_bytes = param_nbytes + batch * mean_context * kv_per_token
    return batch / (step_bytes / bandwidth)


# ------------------------------------------------------------------------------ parts


def nccl_one_rank(plan: Plan, budget: Budget) -> dict[str, Any]:
    """NCCL (gloo on the CPU) with one rank, in a child process with a timeout (a hung
    rendezvous must not stall the other parts, nor a process group outlive this part)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--nccl-child", str(plan.device)]
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    timeout = max(min(NCCL_TIMEOUT_S, budget.left()), 1.0)
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise TimeoutError(f"the one-rank process group ran past {timeout:.0f} s") from exc
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the NCCL child exited {done.returncode}: {done.stderr[-2000:]}")
    return dict(json.loads(lines[-1]))


def nccl_all_reduce(device: torch.device) -> dict[str, Any]:
    """In this process: ``init_process_group`` with one rank (MASTER_ADDR/PORT set here), an
    ``all_reduce`` of a known tensor (checked: one rank's sum is the tensor itself), its time,
    ``destroy_process_group``. NCCL on CUDA, gloo on the CPU."""
    import torch.distributed as dist

    cuda = device.type == "cuda"
    backend = "nccl" if cuda else "gloo"
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(_free_port())
    start = time.perf_counter()
    dist.init_process_group(backend, rank=0, world_size=1)
    init_s = time.perf_counter() - start
    try:
        x = torch.arange(1024, dtype=torch.float32, device=device)
        dist.all_reduce(x)  # warm-up (NCCL builds its communicator on the first call)
        x = torch.arange(1024, dtype=torch.float32, device=device)
        seconds = timed(lambda: dist.all_reduce(x), device)
        correct = bool(torch.equal(x, torch.arange(1024, dtype=torch.float32, device=device)))
    finally:
        dist.destroy_process_group()
    if not correct:
        raise AssertionError(f"{backend} all_reduce over one rank changed the tensor")
    version = torch.cuda.nccl.version() if cuda else None
    if isinstance(version, tuple):
        version = ".".join(map(str, version))
    note = None if cuda else "CPU check mode: gloo, not NCCL"
    return {"backend": backend, "nccl_version": version, "init_s": init_s,
            "all_reduce_s": seconds, "correct": correct, "note": note}  # fmt: skip


def _free_port() -> int:
    """A TCP port nobody listens on now (so two runs side by side do not collide)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")


def parse_pytest_counts(tail: str) -> dict[str, int]:
    """Counts from pytest's last summary line (``3 passed, 1 skipped in 2.0s``)."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    lines = [line for line in tail.strip().splitlines() if line.strip()]
    for number, kind in _COUNT.findall(lines[-1] if lines else ""):
        key = "errors" if kind.startswith("error") else kind
        counts[key] = counts.get(key, 0) + int(number)
    return counts


def cuda_tests(plan: Plan, budget: Budget) -> dict[str, Any]:
    """The CUDA test modules in a subprocess (skipped there without CUDA), within the budget."""
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CUDA_TEST_MODULES]
    timeout = max(budget.left(), 1.0)
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise TimeoutError(f"pytest ran past the {timeout:.0f} s left of the budget") from exc
    output = done.stdout + done.stderr
    counts = parse_pytest_counts(done.stdout)
    if done.returncode not in (0, 1):  # 1: some tests failed (counted); others: pytest broke
        raise RuntimeError(f"pytest exited {done.returncode}: {output[-2000:]}")
    return {"modules": list(CUDA_TEST_MODULES), "returncode": done.returncode, **counts,
            "tail": output[-2000:]}  # fmt: skip


@torch.no_grad()
def hf_generate(model: Any, prompt: torch.Tensor, n_new: int, vocab: int) -> torch.Tensor:
    """HF ``generate`` sampling exactly ``n_new`` tokens per row (its own dynamic KV cache)
    among the first ``vocab`` tokens, as the agent samples (``decode.first_columns``; no top-k
    or top-p filter)."""
    return model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=True,
        top_k=0,
        top_p=1.0,
        max_new_tokens=n_new,
        min_new_tokens=n_new,
        pad_token_id=0,
        logits_processor=first_columns(vocab),
    )


def _decode_sizes(plan: Plan) -> tuple[list[int], int, int]:
    """``(batches, new tokens, rounds)``."""
    batches, n_new, rounds = ([4], 8, 2) if plan.quick else ([64, 256], 128, 3)
    return (
        plan.decode_batches or batches,
        plan.decode_tokens or n_new,
        plan.rounds or rounds,
    )


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def decode_case(model: Any, batch: int, n_new: int, rounds: int, plan: Plan) -> dict[str, Any]:
    """Every decode path, the bare loop and HF ``generate`` at one batch size, in rounds.

    A side that fails to build or to run its warm-up is dropped with its error (``errors``);
    the others are still measured.
    """
    sides: dict[str, Callable[[], Any]] = {}
    errors: dict[str, str] = {}
    keep: list[Any] = []
    prompt_len = 0
    for path in ("eager", "static", "compiled"):
        env = _env(batch, n_new, plan.device, PROMPT_LEN)
        kwargs = {"decode": path, "vocab_size": env.codec.vocab_size}
        try:
            ppo, bare_loop, agent = rollout_pair(
                copy.deepcopy(model), env, n_new, n_epochs=1, batch_size=batch, seed=0,
                device=plan.device, policy_kwargs=kwargs,
            )  # fmt: skip
        except Exception as exc:
            errors[path] = _error(exc)
            continue
        sides[path] = agent
        keep.append(ppo)
        if "bare" not in sides:  # the bare loop and HF generate use the first agent's model
            sides["bare"] = bare_loop
            prompt, _ = env.reset(seed=0)
            prompt_ids = prompt["input_ids"][:, -env.max_prompt_len :].to(plan.device)
            prompt_len = int(prompt_ids.shape[1])
            sides["hf_generate"] = functools.partial(
                hf_generate, ppo.policy.model, prompt_ids, n_new, env.codec.vocab_size
            )
    warm: dict[str, float] = {}
    for name in list(sides):  # the warm-up; the compiled agent compiles here
        try:
            warm[name] = timed(sides[name], plan.device)
        except Exception as exc:
            errors[name] = _error(exc)
            del sides[name]
    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(timed(sides[name], plan.device))
    tokens = batch * n_new
    del keep, sides
    _free(plan.device)
    agent_over_bare = {
        p: _summary([b / a for a, b in zip(times[p], times["bare"], strict=True)])
        for p in ("eager", "static", "compiled")
        if p in times and "bare" in times
    }
    compiled, static = warm.get("compiled"), warm.get("static")
    return {
        "batch": batch,
        "prompt_len": prompt_len,
        "new_tokens": n_new,
        "context": prompt_len + n_new,
        "rounds": rounds,
        "warmup_s": warm,
        "compile_s": None if compiled is None or static is None else compiled - static,
        "seconds": {name: _summary(t) for name, t in times.items()},
        "tok_s": {name: tokens / statistics.median(t) for name, t in times.items()},
        "agent_over_bare": agent_over_bare,
        "errors": errors,
        "kv_bytes_per_token": kv_bytes_per_token(model),
        "mean_context": prompt_len + n_new / 2,
    }


def decode(plan: Plan, budget: Budget) -> dict[str, Any]:
    """Decode tokens/s of every path against the memory-bandwidth bound."""
    model = (_tiny(2) if plan.quick else smollm2_architecture()).to(plan.device)
    model_name = "tiny GPT-2 2x128" if plan.quick else "SmolLM2-135M architecture (random)"
    bandwidth = copy_bandwidth(plan.device, (16 if plan.quick else 1024) * 2**20)
    p_bytes = param_bytes(model)
    batches, n_new, rounds = _decode_sizes(plan)
    cases: list[dict[str, Any]] = []
    for batch in batches:
        reason = budget.refuse(_decode_case_estimate(plan, batch))
        if reason is not None:
            cases.append({"batch": batch, "status": "skipped", "reason": reason})
            continue
        try:
            case = decode_case(model, batch, n_new, rounds, plan)
        except Exception as exc:  # this batch size fails (out of memory, say); the next runs
            cases.append({"batch": batch, "status": "error", "error": _error(exc)})
            _free(plan.device)
            continue
        bound = bandwidth_bound_tok_s(
            batch, p_bytes, case["kv_bytes_per_token"], case["mean_context"], bandwidth
        )
        case["bound_tok_s"] = bound
        case["fraction_of_bound"] = {k: v / bound for k, v in case["tok_s"].items()}
        case["status"] = "ok"
        cases.append(case)
    dtype = str(next(model.parameters()).dtype)
    del model
    _free(plan.device)
    return {
        "model": model_name,
        "dtype": dtype,
        "param_bytes": p_bytes,
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "goals": {"tok_s_at_b256": GOAL_TOK_S, "agent_over_bare": GOAL_AGENT_OVER_BARE},
        "cases": cases,
    }


def _decode_case_estimate(plan: Plan, batch: int) -> float:
    if plan.quick:
        return 5.0
    # compile + 5 sides x 4 runs: a guess before any GPU run (the first case compiles)
    return 120.0 if batch <= 64 else 100.0


def _each(items: dict[str, Callable[[], dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each item's result, or its error when it fails (the others still run); raises only when
    every item failed, so that the part reads as failed."""
    out: dict[str, dict[str, Any]] = {}
    for name, run in items.items():
        try:
            out[name] = run()
        except Exception as exc:
            out[name] = {"error": _error(exc)}
    if out and all("error" in r for r in out.values()):
        raise RuntimeError(f"every case failed: {out}")
    return out


def agent_vs_bare(plan: Plan, budget: Budget) -> dict[str, Any]:
    """The tiny GPT-2 agent rollouts over the bare loop: median of paired ratios."""
    layers, batch, n_new, rounds = ([2], 4, 8, 3) if plan.quick else ([2, 6], 64, 64, 10)

    def case(n_layer: int) -> dict[str, Any]:
        model = _tiny(n_layer, n_positions=n_new + 64).to(plan.device)
        env = _env(batch, n_new, plan.device)
        _, bare, agent = rollout_pair(
            model, env, n_new, n_epochs=1, batch_size=batch, seed=0, device=plan.device
        )
        bare(), agent()  # warm-up
        pairs = [(timed(bare, plan.device), timed(agent, plan.device)) for _ in range(rounds)]
        tokens = batch * n_new
        _free(plan.device)
        return {
            "model": f"tiny GPT-2 {n_layer}x128", "batch": batch, "new_tokens": n_new,
            "rounds": rounds,
            "bare_tok_s": tokens / statistics.median(b for b, _ in pairs),
            "agent_tok_s": tokens / statistics.median(a for _, a in pairs),
            "agent_over_bare": _summary([b / a for b, a in pairs]),
        }  # fmt: skip

    results = _each({f"{n}x128": functools.partial(case, n) for n in layers})
    return {"goal": GOAL_AGENT_OVER_BARE, "cases": list(results.values())}


def _stage_seconds(algo: PPO, device: torch.device) -> dict[str, float]:
    """One iteration, stage by stage: collect, finish_rollout (score .. advantages), train."""
    callback = algo._init_callback(None, progress_bar=False)
    callback.on_rollout_start()
    seconds = {"collect": timed(lambda: algo.collect(callback), device)}
    seconds["finish_rollout"] = timed(algo.finish_rollout, device)
    callback.on_rollout_end()
    seconds["train"] = timed(algo.train, device)
    return seconds


def iteration_split(plan: Plan, budget: Budget) -> dict[str, Any]:
    """One PPO and one GRPO iteration (bf16 on CUDA), after a warm-up one, stage by stage."""
    batch, n_new = plan.iter_size or ((4, 8) if plan.quick else (32, 64))
    bf16 = plan.cuda
    built = _tiny(2) if plan.quick else smollm2_architecture()

    def one(extra: dict[str, Any]) -> dict[str, Any]:
        env = _env(batch, n_new, plan.device, PROMPT_LEN)
        algo = PPO(
            copy.deepcopy(built), env, n_epochs=1, batch_size=batch, seed=0, device=plan.device,
            bf16=bf16, policy_kwargs={"vocab_size": env.codec.vocab_size}, **extra,
        )  # fmt: skip
        _stage_seconds(algo, plan.device)  # warm-up
        seconds = _stage_seconds(algo, plan.device)
        del algo
        _free(plan.device)
        return {"seconds": seconds, "total_s": sum(seconds.values())}

    algorithms = _each({
        "PPO": functools.partial(one, {}),
        "GRPO": functools.partial(one, {"preset": "grpo", "group_size": 4}),
    })  # fmt: skip
    return {
        "model": "tiny GPT-2 2x128" if plan.quick else "SmolLM2-135M architecture",
        "batch": batch, "prompt_len": PROMPT_LEN, "new_tokens": n_new, "bf16": bf16,
        "algorithms": algorithms,
    }  # fmt: skip


def _estimate(quick_s: float, cuda_s: float) -> Callable[[Plan], float]:
    return lambda plan: quick_s if plan.quick else cuda_s


#: name -> (part, its estimated seconds), in the order they run: the measurements first, then
#: the CUDA tests with whatever is left of the budget (at least their estimate).
PARTS: dict[str, tuple[Callable[[Plan, Budget], dict[str, Any]], Callable[[Plan], float]]] = {
    "nccl_one_rank": (nccl_one_rank, _estimate(10.0, 20.0)),
    "decode": (decode, lambda plan: _decode_case_estimate(plan, 64)),
    "agent_vs_bare": (agent_vs_bare, _estimate(3.0, 30.0)),
    "iteration_split": (iteration_split, _estimate(5.0, 45.0)),
    "cuda_tests": (cuda_tests, _estimate(20.0, 90.0)),
}


if __name__ == "__main__":  # the NCCL part's child: python device_parts.py --nccl-child DEVICE
    if len(sys.argv) != 3 or sys.argv[1] != "--nccl-child":
        raise SystemExit("usage: device_parts.py --nccl-child cpu|cuda")
    print(json.dumps(nccl_all_reduce(torch.device(sys.argv[2]))))
