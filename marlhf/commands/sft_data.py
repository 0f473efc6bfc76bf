"""`marlhf sft` on a task's own solutions: (prompt, solution) pairs drawn from a task.

A task that can write a correct response for its prompts has a ``solution(prompt) -> str``
method (:meth:`marlhf.envs.builtin.reasoning.ReasoningGymTask.solution`). Each example is the
prompt's token ids exactly as the env will feed them to the policy (``task.prompt(...).ids``, made
by the task's codec from the model's tokenizer), then the solution's ids and EOS. The loss covers
the solution and EOS only: the prompt's labels are ``-100``. The env of ``marlhf train`` with
``model.path`` set to the SFT folder builds the same task with the same tokenizer, so it
tokenises every prompt exactly as SFT did.
"""

from __future__ import annotations

import inspect
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from marlhf.config.commands import SftConfig, SftTaskConfig, TaskConfig
from marlhf.envs.core.registration import make_task, task_factory
from marlhf.models import train_bpe_tokenizer
from marlhf.runs.builders import check_env_id, has_pretrained, load_tokenizer
from marlhf.runs.io import DataError

#: Label of a position that carries no loss (``transformers``' ignore index).
IGNORE = -100
#: Where the examples are written inside the SFT result folder (one JSON object a line).
EXAMPLES_FILE = "sft_examples.jsonl"


@dataclass(frozen=True)
class Example:
    """One (prompt, solution) pair and its token ids (``completion_ids`` ends with EOS)."""

    prompt: str
    completion: str
    prompt_ids: list[int]
    completion_ids: list[int]

    def row(self) -> dict[str, list[int]]:
        """``input_ids`` = prompt + completion; ``labels`` = ``-100`` on the prompt, the ids on
        the completion (the model shifts labels itself)."""
        return {
            "input_ids": self.prompt_ids + self.completion_ids,
            "labels": [IGNORE] * len(self.prompt_ids) + self.completion_ids,
        }

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_task_section(config: SftTaskConfig) -> None:
    """Fail, before anything is built, on a ``task`` section SFT cannot use.

    :raises ValueError: an unknown id or keyword argument, a ``tokenizer``/``codec`` keyword
        (SFT sets it), or a task that takes no tokenizer (its prompts are not text).
    """
    from marlhf.runs.runner import check_task_kwargs

    check_env_id(config.id)
    if "tokenizer" in config.kwargs or "codec" in config.kwargs:
        raise ValueError(
            "task.kwargs: tokenizer/codec are set by marlhf sft (the model's tokenizer); "
            "remove them"
        )
    check_task_kwargs(TaskConfig(id=config.id, kwargs=dict(config.kwargs), num_envs=1))
    try:
        params = set(inspect.signature(task_factory(config.id)).parameters)
    except (TypeError, ValueError):
        params = set()
    if "tokenizer" not in params:
        raise ValueError(
            f"task.id={config.id!r}: SFT from a task needs a text task (one that takes a "
            "`tokenizer` argument, so that the model and the env share its vocabulary)"
        )


def build_task(config: SftTaskConfig, tokenizer: Any = None) -> Any:
    """The task ``config.id`` with ``config.kwargs`` and ``tokenizer`` (None: its default codec).

    :raises ValueError: what :func:`check_task_section` raises, or a task that cannot write
        solutions (no ``solution(prompt)`` method).
    """
    check_task_section(config)
    task = make_task(config.id, **config.kwargs, tokenizer=tokenizer)
    if not callable(getattr(task, "solution", None)):
        raise ValueError(
            f"task.id={config.id!r}: the task {task.name!r} cannot write solutions (it has no "
            "solution(prompt) method); tasks that can: marlhf/ReasoningGym-v0"
        )
    return task


def task_examples(task: Any, n: int, seed: int) -> list[Example]:
    """``n`` examples: prompts drawn by ``task.sample_prompts`` with a generator seeded by
    ``seed``, each with ``task.solution(prompt)`` encoded by the task's codec, then EOS."""
    codec = task.codec
    eos = codec.eos_token_id
    if eos is None:
        raise ValueError(f"task {task.name!r}: its codec has no EOS token to end a solution with")
    out = []
    for p in task.sample_prompts(np.random.default_rng(seed), n):
        completion = task.solution(p)
        text = p.text if p.text is not None else codec.decode(p.ids)
        out.append(Example(text, completion, list(p.ids), [*codec.encode(completion), eos]))
    return out


def collate(rows: list[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-pad a list of :meth:`Example.row` dicts into ``int64[B, L]`` tensors:
    ``input_ids`` (``pad_id``), ``labels`` (``-100``), ``attention_mask`` (0 on padding)."""
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        labels[i, :n] = torch.tensor(r["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class Collator:
    """:func:`collate` with a fixed pad id (a picklable data collator for ``Trainer``)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        return collate(rows, self.pad_id)


def task_data(config: SftConfig, work: Path) -> tuple[Any, list[Example]]:
    """``(tokenizer, examples)`` for ``config.task``.

    With ``model.path`` the model's tokenizer is used; otherwise a byte-level BPE of
    ``vocab_size`` tokens is trained on the examples' text (drawn once with the task's default
    codec, then drawn again, the same prompts, with the new tokenizer).

    :raises DataError: an example longer than ``block_size`` tokens.
    """
    section = config.task
    if has_pretrained(config.model):
        tokenizer = load_tokenizer(config.model)
    else:
        draft = task_examples(build_task(section), section.examples, config.seed)
        corpus = work / "corpus.txt"
        corpus.write_text(
            "\n".join(t for e in draft for t in (e.prompt, e.completion)), encoding="utf-8"
        )
        cache = work / "tokenizer-cache"
        tokenizer = train_bpe_tokenizer(
            vocab_size=config.vocab_size, files=[corpus], cache_dir=cache
        )
        corpus.unlink()
        shutil.rmtree(cache)
    examples = task_examples(build_task(section, tokenizer), section.examples, config.seed)
    longest = max(len(e.prompt_ids) + len(e.completion_ids) for e in examples)
    if longest > config.block_size:
        raise DataError(
            f"block_size={config.block_size}: an example of task {section.id} takes {longest} "
            "tokens (prompt + solution + EOS); raise block_size"
        )
    return tokenizer, examples
