"""reasoning-gym with retry turns: a wrong answer gets feedback and another try, up to
``max_turns``.

The questions, the answer extraction and the verifier are
:class:`~marlhf.envs.builtin.reasoning.ReasoningGymTask`'s (the same datasets, splits and seeds);
this module adds only the turns. Each turn the agent answers; the dataset's verifier scores the
answer ``s_t`` in ``[0, 1]``. A correct answer (``s_t = 1``) ends the episode (terminated);
otherwise the env answers with the feedback (default ``"Wrong, try again.\\nAnswer: "``) until
``max_turns`` turns are spent (truncated).

Turn rewards are score differences, ``r_t = s_t - s_{t-1}`` (``s_0 = 0``), minus ``retry_cost``
for each wrong turn, so the return is the last answer's score less the retries' cost. With
``max_turns=1`` the return is exactly the single-turn task's reward.

Optimum 1.0 (a correct first answer). ``random_return`` ``-retry_cost * max_turns`` (0.0 at the
defaults), an estimate as for the single-turn task: uniformly random tokens essentially never
spell the answer.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np

from marlhf.envs.builtin.reasoning import ReasoningGymTask
from marlhf.envs.multiturn.task import MultiTurnTask
from marlhf.envs.multiturn.tasks.common import (
    TurnCounter,
    adopt_source,
    check_action,
    check_float,
    check_int,
)
from marlhf.tokenization import TokenCodec

__all__ = ["ReasoningRetryEnv", "ReasoningRetryTask"]

DEFAULT_FEEDBACK = "Wrong, try again.\nAnswer: "
CORRECT = "Correct."


class ReasoningRetryEnv:
    """One reasoning-gym question per episode, with retries (see the module docstring).

    :param source: the single-turn task whose questions and verifier are used.
    :param max_turns: answers allowed per episode (default 3).
    :param feedback: the env's answer to a wrong answer (default ``"Wrong, try again.\\nAnswer:
        "``).
    :param retry_cost: subtracted from the reward of each wrong turn, in ``[0, 1]`` (default 0).
    """

    def __init__(
        self,
        source: ReasoningGymTask,
        max_turns: int = 3,
        feedback: str = DEFAULT_FEEDBACK,
        retry_cost: float = 0.0,
    ) -> None:
        if not isinstance(source, ReasoningGymTask):
            raise TypeError(
                f"ReasoningRetryEnv: source must be a ReasoningGymTask, got {type(source).__name__}"
            )
        self.name = f"ReasoningRetry({source.name})"
        self.source = source
        self.max_turns = check_int(self.name, "max_turns", max_turns, 1, 64)
        if not isinstance(feedback, str) or not feedback:
            raise ValueError(f"{self.name}: feedback={feedback!r}; valid: a non-empty str")
        self.feedback = feedback
        self.retry_cost = check_float(self.name, "retry_cost", retry_cost, 0.0, 1.0)
        self.turns = TurnCounter(self.name, self.max_turns)
        self.index = 0
        self.score = 0.0

    @property
    def entry(self) -> dict[str, Any]:
        """The current question's reasoning-gym entry (read only)."""
        return self.source.entries[self.index]

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        """Draw a question uniformly from the source (seeded)."""
        self.index = int(np.random.default_rng(seed).integers(len(self.source)))
        self.score = 0.0
        self.turns.start()
        question = self.entry["question"] + self.source.prompt_suffix
        return question, {"index": self.index, "answer": self.entry["answer"]}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Score one answer: ``(feedback or "Correct.", reward, terminated, truncated, info)``."""
        check_action(self.name, action)
        self.turns.advance()
        score = self.source.reward_fn.score(action, self.entry)
        terminated = score >= 1.0
        reward = score - self.score - (0.0 if terminated else self.retry_cost)
        self.score = score
        truncated = self.turns.finish(terminated)
        observation = CORRECT if terminated else self.feedback
        return observation, reward, terminated, truncated, {"score": score, "turn": self.turns.turn}

    def gold(self) -> str:
        """The reference answer, in the task's answer format (the potential-based estimators
        score ``log p(gold | s)``); a ValueError when the dataset cannot supply one."""
        return self.source.solution(self.source.prompt(self.index))

    def state_key(self) -> Hashable:
        """``(question index, turns used, last score)``."""
        return (self.index, self.turns.turn, self.score)

    def clone(self) -> ReasoningRetryEnv:
        """An independent copy at the current state (the source task is shared: read only)."""
        twin = ReasoningRetryEnv(self.source, self.max_turns, self.feedback, self.retry_cost)
        twin.index, twin.score = self.index, self.score
        twin.turns.copy_from(self.turns)
        return twin


class ReasoningRetryTask(MultiTurnTask):
    """reasoning-gym with retry turns for the token-level driver.

    :param dataset: see :class:`~marlhf.envs.builtin.reasoning.ReasoningGymTask` (default
        ``"chain_sum"``); :param size: ditto; :param seed: ditto; :param split: ditto;
        :param dataset_kwargs: ditto; :param answer_format: ditto; :param prompt_suffix: ditto.
    :param max_turns: answers per episode (default 3).
    :param feedback: the env's answer to a wrong answer.
    :param retry_cost: see :class:`ReasoningRetryEnv` (default 0).
    :param max_turn_tokens: agent tokens per turn, end of turn included (default 16).
    :param codec: the token codec (its EOS ends turns); :param tokenizer: or a tokenizer / its
        folder (default: the 1024-token BPE).
    """

    def __init__(
        self,
        dataset: str = "chain_sum",
        size: int = 200,
        seed: int = 0,
        split: str = "train",
        dataset_kwargs: dict[str, Any] | None = None,
        answer_format: str = "raw",
        prompt_suffix: str = "\nAnswer: ",
        max_turns: int = 3,
        feedback: str = DEFAULT_FEEDBACK,
        retry_cost: float = 0.0,
        max_turn_tokens: int = 16,
        codec: TokenCodec | None = None,
        tokenizer: Any = None,
    ) -> None:
        self.source = ReasoningGymTask(
            dataset=dataset,
            size=size,
            seed=seed,
            split=split,
            dataset_kwargs=dataset_kwargs,
            answer_format=answer_format,
            prompt_suffix=prompt_suffix,
            codec=codec,
            tokenizer=tokenizer,
            max_new_tokens=max_turn_tokens,
        )
        self.env_kwargs: dict[str, Any] = {
            "max_turns": max_turns,
            "feedback": feedback,
            "retry_cost": retry_cost,
        }
        probe = self.make_env()  # validates the arguments
        self.name = f"ReasoningRetry({dataset}, {split})"
        adopt_source(self, self.source, probe.max_turns)
        self.max_obs_tokens = max(len(self.encode_observation(t)) for t in (feedback, CORRECT))
        self.optimal_return = 1.0
        self.random_return = -probe.retry_cost * probe.max_turns

    def make_env(self) -> ReasoningRetryEnv:
        return ReasoningRetryEnv(self.source, **self.env_kwargs)
