"""Stateless helpers over causal LMs and their logits, shared by the policy and the truth.

Loading a causal LM from an instance or a local folder, reading what its config and forward
signature offer (hidden size, cache keyword, ``logits_to_keep``), position ids that ignore left
padding, top-k / top-p filtering and action masking of logits, and grouping left-padded rows by
length.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import torch
from torch import nn

from marlhf.models import load_model


def load_causal_lm(model: str | Path | nn.Module) -> nn.Module:
    """A causal LM instance from an instance or a local path (never downloads).

    :param model: a ``transformers`` causal LM, or the path of a folder written by
        ``save_pretrained``.
    """
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, str | Path):
        return load_model(model, "causal_lm", field="model")
    raise TypeError(f"model: expected a torch nn.Module or a local path, got {type(model)}")


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``int64[B, L]``: 0-based positions of real tokens that ignore left padding."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask logits outside the top-k and outside the top-p nucleus with ``-inf``.

    :param top_k: keep the ``k`` most likely tokens; 0 keeps all.
    :param top_p: keep the smallest set of tokens whose probability reaches ``top_p`` (the most
        likely token is always kept); 1.0 keeps all.
    """
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the mass before it already reaches top_p.
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def mask_logits(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Logits with disallowed tokens at the dtype's lowest value (probability exactly 0; unlike
    ``-inf`` it keeps ``p * log p`` finite in the entropy)."""
    return logits.masked_fill(~allowed.bool(), torch.finfo(logits.dtype).min)


def length_groups(mask: torch.Tensor, ratio: float = 0.75) -> list[torch.Tensor]:
    """Row indices of ``mask [B, L]`` (left-padded rows) in groups of similar length, longest
    first: a group ends before the first row whose span (from its first real column to the
    end) is at most ``ratio`` times the group's longest, so a group's own padding stays under
    a quarter of its columns. One group when the rows are alike."""
    span = mask.shape[1] - mask.long().argmax(dim=1)
    order = torch.argsort(span, descending=True, stable=True)
    spans = span[order].tolist()
    groups, begin = [], 0
    for i in range(1, len(spans) + 1):
        if i == len(spans) or spans[i] <= ratio * spans[begin]:
            groups.append(order[begin:i])
            begin = i
    return groups


def hidden_size(model: nn.Module) -> int:
    """The width of ``model``'s hidden states, read from its config."""
    config = getattr(model, "config", None)
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"cannot read the hidden size from the config of {type(model).__name__}")


def cache_keyword(model: nn.Module) -> str:
    """The keyword under which ``model``'s forward takes (and its output holds) the KV cache."""
    # transformers 5 renamed ``past_key_values`` to ``cache``.
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@functools.cache
def _forward_takes_logits_to_keep(cls: type[nn.Module]) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def keeps_logits(model: nn.Module) -> bool:
    """Whether ``model``'s forward takes ``logits_to_keep`` (a PEFT wrapper passes keywords
    through to the model it wraps: ask that one). Asked once per model class: every
    scoring forward asks."""
    unwrap = getattr(model, "get_base_model", None)
    inner = unwrap() if callable(unwrap) else model
    return _forward_takes_logits_to_keep(type(inner))  # type: ignore[arg-type]
