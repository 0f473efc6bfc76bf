"""A learned reward model as a terminal :class:`~marlhf.envs.core.tasks.RewardFunction`.

The model is a local ``transformers`` sequence-classification model with one output
(``num_labels=1``), e.g. the folder ``marlhf rm`` writes. It reads ``prompt + response`` text
(the response continues the prompt, as in training) and its score is taken at the last real
token of each row: rows are right-padded and the model's ``pad_token_id`` is set to the
tokenizer's, so the classifier's own pooling picks the last non-pad token. Texts are decoded
with special tokens dropped, so no pad or EOS can appear inside a row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from marlhf.envs.core.tasks import RewardBatch, RewardFunction
from marlhf.models import load_model, load_tokenizer, pad_with_eos
from marlhf.tokenization import tokenized_batches

__all__ = ["RewardModelReward"]


class RewardModelReward(RewardFunction):
    """Terminal reward from a sequence-classification reward model.

    :param model: a folder holding the model (and its tokenizer unless ``tokenizer`` is
        given), or a loaded ``PreTrainedModel`` with ``num_labels == 1``.
    :param tokenizer: the model's tokenizer or its folder (default: loaded from ``model``'s
        folder); a missing pad token is set to the EOS token.
    :param device: torch device of the model (default ``"cpu"``).
    :param batch_size: rows per forward pass (default 16).
    :param max_length: truncate ``prompt + response`` to this many tokens, keeping the end
        (the response), default 512.
    :param scale: multiply scores by this (default 1.0).
    :param shift: add this after scaling (default 0.0).
    """

    mode = "terminal"

    def __init__(
        self,
        model: str | Path | Any,
        tokenizer: str | Path | Any = None,
        device: str = "cpu",
        batch_size: int = 16,
        max_length: int = 512,
        scale: float = 1.0,
        shift: float = 0.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"RewardModelReward: batch_size={batch_size} must be >= 1")
        if max_length < 2:
            raise ValueError(f"RewardModelReward: max_length={max_length} must be >= 2")
        folder: Path | None = None
        if isinstance(model, str | Path):
            folder = Path(model)
            model = load_model(folder, "sequence_classification", field="RewardModelReward: model")
        num_labels = getattr(getattr(model, "config", None), "num_labels", None)
        if num_labels != 1:
            raise ValueError(
                f"RewardModelReward: the model has num_labels={num_labels}; a reward model "
                "needs exactly 1 output"
            )
        if tokenizer is None:
            if folder is None:
                raise ValueError("RewardModelReward: give `tokenizer` when `model` is not a folder")
            tokenizer = folder
        if isinstance(tokenizer, str | Path):
            tokenizer = load_tokenizer(tokenizer, field="RewardModelReward: tokenizer")
        pad_with_eos(tokenizer, "RewardModelReward: tokenizer")
        tokenizer.padding_side = "right"
        tokenizer.truncation_side = "left"  # keep the response, which is at the end
        model.config.pad_token_id = tokenizer.pad_token_id
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.scale = float(scale)
        self.shift = float(shift)

    @torch.no_grad()
    def score_texts(self, texts: list[str]) -> torch.Tensor:
        """``float[len(texts)]``: the model's score of each whole text (scale and shift applied)."""
        scores = []
        for enc in tokenized_batches(
            self.tokenizer, texts, self.batch_size, self.max_length, self.device
        ):
            logits = self.model(
                input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
            ).logits
            scores.append(logits[:, 0].float().cpu())
        if not scores:
            return torch.zeros(0)
        return torch.cat(scores) * self.scale + self.shift

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        texts = [
            (p.text if p.text is not None else batch.codec.decode(p.ids)) + response
            for p, response in zip(batch.prompts, batch.response_texts(), strict=True)
        ]
        return self.score_texts(texts)
