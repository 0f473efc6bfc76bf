"""Scoring from the last hidden state and the LM head's weight, when that is what the logits are.

:func:`marlhf.policy.logprobs.head_scores` makes the log-probs of the taken tokens from the
last hidden state and the head's weight slice by slice, so the ``[B, N, V]`` logits of a scoring
forward (the update's largest activation with a real vocabulary) and their gradient never exist
whole. That is only right when the model's logits are exactly ``hidden @ W.T + b``: this module
says when (:func:`fusable`, and :func:`head_matches` on every forward, against the one position
whose logits the model still computes).
"""

from __future__ import annotations

import torch
from torch import nn

from marlhf.policy.lm_utils import keeps_logits
from marlhf.policy.logprobs import HeadInput

#: Model classes whose logits were found not to be the head's product with the last hidden
#: state (a soft cap, a scale): scored from their own logits from then on.
UNFUSABLE: set[type] = set()


def fusable(model: nn.Module) -> bool:
    """Whether ``model`` may be scored from its hidden state: its forward takes
    ``logits_to_keep``, its output layer is a plain float32 ``nn.Linear`` (not LoRA-wrapped),
    autocast is off, and its class is not in :data:`UNFUSABLE`."""
    if not keeps_logits(model) or type(model) in UNFUSABLE:
        return False
    head = model.get_output_embeddings()  # type: ignore[operator]
    if type(head) is not nn.Linear or head.weight.dtype != torch.float32:
        return False
    return not torch.is_autocast_enabled(head.weight.device.type)


def head_input(model: nn.Module, hidden: torch.Tensor, vocab_size: int) -> HeadInput:
    """The head's rows of the first ``vocab_size`` tokens with ``hidden [B, n, H]``."""
    head = model.get_output_embeddings()  # type: ignore[operator]
    bias = None if head.bias is None else head.bias[:vocab_size]
    return HeadInput(hidden, head.weight[:vocab_size], bias)


def head_matches(model: nn.Module, head: HeadInput, last_logits: torch.Tensor) -> bool:
    """Whether the model's own logits of the last position ``[B, V']`` equal the head's product
    with the last hidden state (they do for GPT-2, Llama and most causal LMs); if not, the
    model's class joins :data:`UNFUSABLE`."""
    with torch.no_grad():
        own = last_logits[:, : head.weight.shape[0]].float()
        made = torch.nn.functional.linear(head.hidden[:, -1], head.weight, head.bias)
        if torch.allclose(made, own, rtol=1e-4, atol=1e-4):
            return True
    UNFUSABLE.add(type(model))
    return False
