"""HumanEval with one feedback turn: a failing completion gets the sandbox's error message and
one retry.

Problems, the sandbox, the judge and the graded reward are
:class:`~marlhf.envs.coding.humaneval.HumanEvalTask`'s (its public ``problems``, ``prompt``,
``evaluate`` and ``reward_fn.grade``); this module adds the turn. Each turn the agent writes the
function body; it is run and judged in the sandbox and graded as in RLTF (``+1`` pass, ``-0.3`` a
test fails, ``-0.6`` runtime error or timeout, ``-1`` compile error, with partial credit). A pass
ends the episode (terminated). A failure is answered with the verdict and the error, then the
problem's prompt again::

    # Failed (runtime_error, 0/3 tests passed): NameError: name 'x' is not defined
    # Try again:
    def f(...):
        \"\"\"...\"\"\"

and the next completion is judged as a fresh body of the same function. After ``max_turns``
turns (default 2: one retry) the episode is truncated.

Turn rewards are grade differences, ``r_t = g_t - g_{t-1}`` (``g_0 = 0``): the return is the last
attempt's grade, and ``max_turns=1`` is exactly the single-turn task. Optimum 1.0 (a passing
first body); ``random_return`` -1.0, an estimate as for the single-turn task: uniformly random
tokens after a function header almost never compile.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np

from marlhf.envs.coding.humaneval import HumanEvalTask
from marlhf.envs.coding.sandbox import SandboxResult, Status
from marlhf.envs.multiturn.task import MultiTurnTask
from marlhf.envs.multiturn.tasks.common import TurnCounter, adopt_source, check_action, check_int
from marlhf.tokenization import TokenCodec

__all__ = ["CodeFeedbackEnv", "CodeFeedbackTask", "feedback_message"]

PASSED = "# Passed."


def feedback_message(result: SandboxResult, error_chars: int) -> str:
    """The verdict line shown after a failing run: status, tests passed and the error, on one
    printable ASCII line of at most ``error_chars`` characters of error."""
    error = " ".join(result.error.split())
    error = error.encode("ascii", "replace").decode("ascii")[:error_chars]
    return (
        f"\n# Failed ({result.status.value}, {result.passed}/{result.total} tests passed): "
        f"{error}\n# Try again:\n"
    )


class CodeFeedbackEnv:
    """One HumanEval problem per episode, with feedback and retries (see the module docstring).

    :param source: the single-turn task whose problems, sandbox and grading are used.
    :param max_turns: attempts per episode (default 2: one feedback turn).
    :param error_chars: characters of the error message shown at most (default 300).
    """

    def __init__(self, source: HumanEvalTask, max_turns: int = 2, error_chars: int = 300) -> None:
        if not isinstance(source, HumanEvalTask):
            raise TypeError(
                f"CodeFeedbackEnv: source must be a HumanEvalTask, got {type(source).__name__}"
            )
        self.name = f"CodeFeedback({source.name})"
        self.source = source
        self.max_turns = check_int(self.name, "max_turns", max_turns, 1, 16)
        self.error_chars = check_int(self.name, "error_chars", error_chars, 0, 4000)
        self.turns = TurnCounter(self.name, self.max_turns)
        self.index = 0
        self.grade = 0.0
        self.last_result: SandboxResult | None = None

    @property
    def problem_prompt(self) -> str:
        """The current problem's prompt (signature and docstring)."""
        return str(self.source.problems[self.index]["prompt"])

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        """Draw a problem uniformly from the source (seeded)."""
        self.index = int(np.random.default_rng(seed).integers(len(self.source)))
        self.grade = 0.0
        self.last_result = None
        self.turns.start()
        task_id = self.source.problems[self.index]["task_id"]
        return self.problem_prompt, {"index": self.index, "task_id": task_id}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Run and judge one body: ``(verdict and prompt, reward, terminated, truncated, info)``."""
        check_action(self.name, action)
        self.turns.advance()
        (result,) = self.source.evaluate([action], [self.index])
        grade = self.source.reward_fn.grade(result)
        reward = grade - self.grade
        self.grade, self.last_result = grade, result
        terminated = result.status == Status.PASSED
        truncated = self.turns.finish(terminated)
        if terminated:
            observation = PASSED
        else:
            observation = feedback_message(result, self.error_chars) + self.problem_prompt
        info = {
            "status": result.status.value,
            "passed": result.passed,
            "total": result.total,
            "grade": grade,
            "turn": self.turns.turn,
        }
        return observation, reward, terminated, truncated, info

    def gold(self) -> str:
        """The problem's canonical body (the potential-based estimators score
        ``log p(gold | s)``); a ValueError when the problem has none."""
        body = self.source.problems[self.index].get("canonical_solution")
        if not isinstance(body, str) or not body.strip():
            task_id = self.source.problems[self.index]["task_id"]
            raise ValueError(f"{self.name}: problem {task_id!r} has no 'canonical_solution'")
        return body

    def state_key(self) -> Hashable:
        """``(problem index, turns used, last grade)``."""
        return (self.index, self.turns.turn, self.grade)

    def clone(self) -> CodeFeedbackEnv:
        """An independent copy at the current state (the source task is shared: read only)."""
        twin = CodeFeedbackEnv(self.source, self.max_turns, self.error_chars)
        twin.index, twin.grade, twin.last_result = self.index, self.grade, self.last_result
        twin.turns.copy_from(self.turns)
        return twin


class CodeFeedbackTask(MultiTurnTask):
    """HumanEval with a feedback turn for the token-level driver.

    :param split: see :class:`~marlhf.envs.coding.humaneval.HumanEvalTask`; :param eval_fraction:
    ditto;
        :param split_seed: ditto; :param max_problems: ditto; :param problems: ditto;
        :param partial_credit: ditto; :param timeout_s: ditto; :param max_workers: ditto;
        :param stop_sequences: ditto; :param sandbox: ditto (``"bwrap"`` by default).
    :param max_turns: attempts per episode (default 2).
    :param error_chars: characters of the error message shown at most (default 300).
    :param max_turn_tokens: agent tokens per turn, end of turn included (default 128).
    :param codec: the token codec (its EOS ends turns); :param tokenizer: or a tokenizer / its
        folder (default: the 1024-token BPE).
    """

    def __init__(
        self,
        split: str = "train",
        eval_fraction: float = 0.2,
        split_seed: int = 0,
        max_problems: int | None = None,
        problems: Any = None,
        partial_credit: float = 0.5,
        timeout_s: float = 5.0,
        max_workers: int = 2,
        stop_sequences: tuple[str, ...] = (),
        sandbox: str = "bwrap",
        max_turns: int = 2,
        error_chars: int = 300,
        max_turn_tokens: int = 128,
        codec: TokenCodec | None = None,
        tokenizer: Any = None,
    ) -> None:
        self.source = HumanEvalTask(
            split=split,
            eval_fraction=eval_fraction,
            split_seed=split_seed,
            max_problems=max_problems,
            problems=problems,
            codec=codec,
            tokenizer=tokenizer,
            max_new_tokens=max_turn_tokens,
            partial_credit=partial_credit,
            timeout_s=timeout_s,
            max_workers=max_workers,
            stop_sequences=stop_sequences,
            sandbox=sandbox,
        )
        self.env_kwargs = {"max_turns": max_turns, "error_chars": error_chars}
        probe = self.make_env()  # validates the arguments
        self.name = f"CodeFeedback({split})"
        adopt_source(self, self.source, probe.max_turns)
        # the longest verdict line (ASCII: at most one token a character) before the prompt
        widest = SandboxResult(Status.COMPILE_ERROR, 999, 999, 0.0)
        verdict = len(self.encode_observation(feedback_message(widest, 0))) + probe.error_chars
        self.max_obs_tokens = verdict + self.max_prompt_len + 8
        self.optimal_return = 1.0
        self.random_return = self.source.random_return

    def make_env(self) -> CodeFeedbackEnv:
        return CodeFeedbackEnv(self.source, **self.env_kwargs)
