"""reasoning-gym procedural datasets as tasks, scored by each dataset's own verifier.

``reasoning_gym.create_dataset(name, size=..., seed=...)`` generates questions offline and
deterministically; the terminal reward is the dataset's ``score_answer(answer, entry)`` (1.0 for
a correct answer, lower otherwise; some datasets give partial credit). The default dataset,
``chain_sum`` (short integer sums), needs nothing beyond the package.

The answer the verifier sees is the decoded response stripped of surrounding white space
(``answer_format="raw"``), or the text inside the last ``<answer>...</answer>`` tags
(``answer_format="tag"``, the format reasoning-gym's own prompts ask for).
"""

from __future__ import annotations

import copy
import re
from typing import Any

import numpy as np
import torch

from marlhf.envs.core.registration import register_task
from marlhf.envs.core.tasks import Prompt, RewardBatch, RewardFunction, Task, resolve_codec
from marlhf.tokenization import TokenCodec

__all__ = ["ReasoningGymReward", "ReasoningGymTask", "available_datasets"]

ANSWER_FORMATS = ("raw", "tag")
_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)

#: Offset between the seeds of the train and eval splits (the two draws differ; reasoning-gym
#: does not promise that no question repeats between them).
EVAL_SEED_OFFSET = 1_000_003


def available_datasets() -> list[str]:
    """Names of the reasoning-gym datasets installed, sorted."""
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def extract_answer(text: str, answer_format: str) -> str | None:
    """The answer in ``text``: stripped text (``"raw"``) or the last ``<answer>`` tag's content
    (``"tag"``; ``None`` when there is none)."""
    if answer_format == "raw":
        return text.strip()
    found = _TAG.findall(text)
    return found[-1].strip() if found else None


class ReasoningGymReward(RewardFunction):
    """Terminal reward: the dataset's ``score_answer`` on the extracted answer.

    :param dataset: the reasoning-gym dataset object (its verifier is used).
    :param answer_format: ``"raw"`` or ``"tag"`` (see the module docstring).
    """

    mode = "terminal"

    def __init__(self, dataset: Any, answer_format: str = "raw") -> None:
        if answer_format not in ANSWER_FORMATS:
            raise ValueError(
                f"ReasoningGymReward: answer_format={answer_format!r}; "
                f"valid: {list(ANSWER_FORMATS)}"
            )
        self.dataset = dataset
        self.answer_format = answer_format
        self.verifier_errors = 0

    def score(self, text: str, entry: dict[str, Any]) -> float:
        """The verifier's score of the response ``text`` for ``entry``.

        A verifier that raises on an answer it cannot parse scores it 0.0 (a wrong answer);
        such calls are counted in :attr:`verifier_errors`.
        """
        answer = extract_answer(text, self.answer_format)
        try:
            return float(self.dataset.score_answer(answer, entry))
        except Exception:  # the policy's text is arbitrary; some verifiers parse without guards
            self.verifier_errors += 1
            return 0.0

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        scores = [
            self.score(text, p.metadata["entry"])
            for text, p in zip(batch.response_texts(), batch.prompts, strict=True)
        ]
        return torch.tensor(scores, dtype=torch.float32)


class ReasoningGymTask(Task):
    """A reasoning-gym dataset as a task.

    :param dataset: the dataset's name (default ``"chain_sum"``); see :func:`available_datasets`.
    :param size: number of questions generated (default 200).
    :param seed: the dataset's generation seed (default 0).
    :param split: ``"train"`` (default) or ``"eval"`` (generated with ``seed +``
        :data:`EVAL_SEED_OFFSET`).
    :param dataset_kwargs: further arguments of the dataset's config (difficulty etc.).
    :param answer_format: ``"raw"`` (default) or ``"tag"``.
    :param prompt_suffix: text appended to every question (default ``"\\nAnswer: "``).
    :param codec: the token codec; :param tokenizer: or a tokenizer / its folder (see
        :func:`~marlhf.envs.core.tasks.resolve_codec`; default: a 1024-token in-process BPE).
    :param max_new_tokens: response horizon in tokens (default 16).
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
        codec: TokenCodec | None = None,
        tokenizer: Any = None,
        max_new_tokens: int = 16,
    ) -> None:
        import reasoning_gym

        valid = available_datasets()
        if dataset not in valid:
            raise ValueError(
                f"ReasoningGymTask: dataset={dataset!r} is not a reasoning-gym dataset; "
                f"valid: {valid}"
            )
        if split not in ("train", "eval"):
            raise ValueError(f"ReasoningGymTask: split={split!r}; valid: ['train', 'eval']")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"ReasoningGymTask: size={size!r} must be an int >= 1")
        if (
            isinstance(max_new_tokens, bool)
            or not isinstance(max_new_tokens, int)
            or max_new_tokens < 1
        ):
            raise ValueError(
                f"ReasoningGymTask: max_new_tokens={max_new_tokens!r} must be an int >= 1"
            )
        data_seed = seed + (EVAL_SEED_OFFSET if split == "eval" else 0)
        self.dataset = reasoning_gym.create_dataset(
            dataset, size=size, seed=data_seed, **(dataset_kwargs or {})
        )
        self.name = f"ReasoningGym({dataset}, {split})"
        self.codec = resolve_codec(codec, tokenizer)
        self.prompt_suffix = prompt_suffix
        self.entries: list[dict[str, Any]] = [self.dataset[i] for i in range(size)]
        self._prompt_ids = [self.codec.encode(e["question"] + prompt_suffix) for e in self.entries]
        self.max_prompt_len = max(len(ids) for ids in self._prompt_ids)
        self.max_new_tokens = max_new_tokens
        self.reward_fn: ReasoningGymReward = ReasoningGymReward(self.dataset, answer_format)
        self.optimal_return = 1.0
        self.random_return = 0.0  # estimate: random tokens almost never spell the answer

    def __len__(self) -> int:
        return len(self.entries)

    def prompt(self, index: int) -> Prompt:
        """The prompt of question ``index`` (metadata holds the reasoning-gym ``entry``)."""
        entry = copy.deepcopy(self.entries[index])  # callers may keep or change what they get
        return Prompt(
            ids=list(self._prompt_ids[index]),
            metadata={"entry": entry, "answer": entry["answer"], "index": index},
            text=entry["question"] + self.prompt_suffix,
        )

    def sample_prompts(self, rng: np.random.Generator, n: int) -> list[Prompt]:
        return [self.prompt(int(i)) for i in rng.integers(len(self.entries), size=n)]

    def solution(self, prompt: Prompt) -> str:
        """A response that scores 1.0 on ``prompt``: the entry's reference answer in the task's
        answer format (``"raw"``: the answer; ``"tag"``: ``<answer>ANSWER</answer>``). This is
        what ``marlhf sft`` with ``task.id`` trains on.

        :raises ValueError: the prompt is not one of this task's (no ``entry`` in its
            metadata), the entry has no reference answer, or the dataset's own verifier scores
            that answer below 1.0 (the dataset cannot supply solutions).
        """
        entry = prompt.metadata.get("entry") if isinstance(prompt.metadata, dict) else None
        if not isinstance(entry, dict):
            raise ValueError(
                f"{self.name}: solution() needs a prompt of this task (its metadata holds the "
                f"reasoning-gym 'entry'); got metadata keys {sorted(prompt.metadata or {})}"
            )
        answer = entry.get("answer")
        if answer is None or not str(answer).strip():
            raise ValueError(
                f"{self.name}: question {prompt.metadata.get('index')!r} has no reference "
                f"answer (answer={answer!r}); this dataset cannot supply solutions"
            )
        text = (
            str(answer) if self.reward_fn.answer_format == "raw" else f"<answer>{answer}</answer>"
        )
        score = self.reward_fn.score(text, entry)
        if score < 1.0:
            raise ValueError(
                f"{self.name}: the dataset's verifier scores its own answer {answer!r} "
                f"{score:g} < 1.0 (question {prompt.metadata.get('index')!r}); this dataset "
                "cannot supply solutions"
            )
        return text


register_task("ReasoningGym", ReasoningGymTask)
