"""Log-probs and entropies of taken tokens from full-vocabulary logits, a slice at a time.

The logits of a scoring forward are ``[B, N, V]``: with a real vocabulary (49k rows for
SmolLM2) they are the largest activation of an update. ``log_softmax`` then ``gather`` holds a
second tensor of that size (the log-softmax, kept for the backward), and the entropy
``-sum(p log p)`` two more. Here only the logits themselves are held:

- :func:`token_logprobs` runs the log-softmax over slices of rows (:func:`row_slices`) and keeps
  the taken token's entry; its backward recomputes each slice's log-softmax. Every kernel is the
  one ``log_softmax`` + ``gather`` use, row by row, so the values and the gradients are bitwise
  those of the whole-tensor form (tests/agents/test_perf_paths.py).
- :func:`token_entropy` is the entropy without a graph (for the logs, when no loss term uses
  it), slice by slice.
- :func:`logp_entropy_full` is the whole-tensor form with gradients through both, for an
  entropy term that is weighted in the loss.
- :func:`head_scores` starts one step earlier, from the last hidden state and the LM head's
  weight (:class:`HeadInput`): each slice's logits are made, used and dropped, in the forward
  and again in the backward (which reads each position's saved log-sum-exp), so not even the
  logits (nor their gradient) exist whole; the logged entropy comes from the same pass. Other
  kernels in another order: equal to the unfused form to float rounding
  (tests/agents/test_head_scores.py: 1e-5), not bitwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from marlhf.policy.lm_utils import mask_logits

#: Elements of float32 a slice of logits may hold (64 MiB): a slice is at least one position.
CHUNK_ELEMENTS = 1 << 24


def row_slices(
    shape: torch.Size | tuple[int, ...], chunk_elements: int = CHUNK_ELEMENTS
) -> list[tuple[slice, slice]]:
    """``(rows, positions)`` slices of a ``[B, N, V]`` tensor that hold at most
    ``chunk_elements`` elements each (whole rows when a row fits, else positions of one row)."""
    b, n, v = shape
    if n * v <= chunk_elements:
        step = max(1, chunk_elements // max(n * v, 1))
        return [(slice(i, i + step), slice(0, n)) for i in range(0, b, step)]
    step = max(1, chunk_elements // max(v, 1))
    return [(slice(i, i + 1), slice(j, j + step)) for i in range(b) for j in range(0, n, step)]


def _scaled(
    logits: torch.Tensor, vocab_size: int, temperature: float, allowed: torch.Tensor | None
) -> torch.Tensor:
    """``logits [b, n, V']`` cut to ``vocab_size``, in float32, divided by the temperature, the
    disallowed tokens (``allowed bool[b, V]``) at the dtype's lowest value."""
    x = logits[..., :vocab_size].float()
    if temperature != 1.0:  # (no copy at temperature 1)
        x = x / temperature
    if allowed is not None:
        x = mask_logits(x, allowed[:, None, :])
    return x


class _TokenLogProbs(torch.autograd.Function):
    """``log_softmax(logits)[token]`` by slices; the backward recomputes each slice."""

    @staticmethod
    def forward(
        ctx: Any,
        logits: torch.Tensor,
        tokens: torch.Tensor,
        vocab_size: int,
        temperature: float,
        allowed: torch.Tensor | None,
        chunk_elements: int,
    ) -> torch.Tensor:
        out = torch.empty(tokens.shape, dtype=torch.float32, device=logits.device)
        for rows, cols in row_slices(logits.shape, chunk_elements):
            part = allowed[rows] if allowed is not None else None
            logp_all = _scaled(logits[rows, cols], vocab_size, temperature, part).log_softmax(-1)
            out[rows, cols] = logp_all.gather(-1, tokens[rows, cols].unsqueeze(-1)).squeeze(-1)
        ctx.save_for_backward(logits, tokens, allowed)
        ctx.settings = (vocab_size, temperature, chunk_elements)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        logits, tokens, allowed = ctx.saved_tensors
        vocab_size, temperature, chunk_elements = ctx.settings
        grad_logits = torch.zeros_like(logits)
        for rows, cols in row_slices(logits.shape, chunk_elements):
            part = allowed[rows] if allowed is not None else None
            logp_all = _scaled(logits[rows, cols], vocab_size, temperature, part).log_softmax(-1)
            # The backward autograd takes through gather, log_softmax, masked_fill and the
            # division, with the same kernels (so the same bits).
            upstream = torch.zeros_like(logp_all).scatter_add_(
                -1, tokens[rows, cols].unsqueeze(-1), grad[rows, cols].unsqueeze(-1)
            )
            g = torch._log_softmax_backward_data(upstream, logp_all, -1, logp_all.dtype)
            if part is not None:
                g = g.masked_fill(~part.bool()[:, None, :], 0.0)
            if temperature != 1.0:
                g = g / temperature
            grad_logits[rows, cols, :vocab_size] = g
        return grad_logits, None, None, None, None, None


def token_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    *,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    allowed: torch.Tensor | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> torch.Tensor:
    """``float32[B, N]``: log-probs of ``tokens int64[B, N]`` under ``softmax(logits / T)``,
    without a second full-vocabulary tensor (differentiable in ``logits``).

    :param logits: ``[B, N, V']`` (any float dtype).
    :param vocab_size: the first ``vocab_size`` columns form the distribution (default: all).
    :param temperature: the sampling temperature ``T``.
    :param allowed: ``bool[B, V]`` tokens each row may take (renormalised over), or ``None``.
    :param chunk_elements: the most elements one slice of logits holds.
    """
    vocab = logits.shape[-1] if vocab_size is None else vocab_size
    return _TokenLogProbs.apply(logits, tokens, vocab, temperature, allowed, chunk_elements)


@torch.no_grad()
def token_entropy(
    logits: torch.Tensor,
    *,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    allowed: torch.Tensor | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> torch.Tensor:
    """``float32[B, N]``: the entropy of each position's distribution, without gradients, slice
    by slice (arguments as in :func:`token_logprobs`)."""
    vocab = logits.shape[-1] if vocab_size is None else vocab_size
    b, n = logits.shape[:2]
    out = torch.empty(b, n, dtype=torch.float32, device=logits.device)
    for rows, cols in row_slices(logits.shape, chunk_elements):
        part = allowed[rows] if allowed is not None else None
        logp_all = _scaled(logits[rows, cols], vocab, temperature, part).log_softmax(-1)
        out[rows, cols] = _entropy(logp_all, part)
    return out


def _entropy(
    logp_all: torch.Tensor, allowed: torch.Tensor | None, probs: torch.Tensor | None = None
) -> torch.Tensor:
    """``-sum(p log p)`` over the last dimension; ``probs``: ``logp_all.exp()`` when made."""
    plogp = (logp_all.exp() if probs is None else probs) * logp_all
    if allowed is not None:
        # A masked token's p * log p is 0 * (dtype min): its value is 0, but its gradient
        # (upstream * log p, then * p) overflows to -inf * 0 = NaN once the upstream
        # gradient exceeds 1. Filled with 0, it takes no gradient.
        plogp = plogp.masked_fill(~allowed[:, None, :].bool(), 0.0)
    return -plogp.sum(dim=-1)


def logp_entropy_full(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    *,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    allowed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logp, entropy)``, each ``float32[B, N]``, over the whole tensor with gradients through
    both (for an entropy term the loss weights; arguments as in :func:`token_logprobs`)."""
    vocab = logits.shape[-1] if vocab_size is None else vocab_size
    logp_all = _scaled(logits, vocab, temperature, allowed).log_softmax(dim=-1)
    logp = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return logp, _entropy(logp_all, allowed)


@dataclass
class HeadInput:
    """What the LM head would turn into logits, in place of the logits themselves.

    :param hidden: ``[b, n, H]``: the LM's last hidden state at the scored positions.
    :param weight: ``[V, H]``: the head's rows of the vocabulary scored.
    :param bias: ``[V]`` or ``None``.
    """

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None


def _slice_logp(
    head: HeadInput,
    rows: slice,
    cols: slice,
    temperature: float,
    allowed: torch.Tensor | None,
) -> torch.Tensor:
    """The log-softmax of one slice's logits (made here from the hidden state)."""
    logits = torch.nn.functional.linear(head.hidden[rows, cols], head.weight, head.bias)
    return _scaled(logits, head.weight.shape[0], temperature, allowed)


class _HeadTokenLogProbs(torch.autograd.Function):
    """``log_softmax(hidden @ W.T + b)[token]`` by slices, and optionally each position's
    entropy (no gradient). Kept for the backward: ``hidden``, ``W`` and each position's
    log-sum-exp; the backward remakes each slice's logits. When the logits fit in one slice
    and a backward will run (``keep``), that slice's probabilities are kept instead of remade:
    the backward then skips the head's product, the subtraction and the ``exp`` (the same
    kernels on the same values: bitwise the same gradients), for at most one slice's memory."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        tokens: torch.Tensor,
        temperature: float,
        allowed: torch.Tensor | None,
        settings: tuple[int, bool, bool],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        chunk_elements, with_entropy, keep = settings
        head = HeadInput(hidden, weight, bias)
        shape = (hidden.shape[0], hidden.shape[1], weight.shape[0])
        logp = torch.empty(tokens.shape, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(logp)
        entropy = torch.empty_like(logp) if with_entropy else logp.new_empty(0)
        slices = row_slices(shape, chunk_elements)
        keep = keep and len(slices) == 1
        probs = None
        for rows, cols in slices:
            part = allowed[rows] if allowed is not None else None
            scaled = _slice_logp(head, rows, cols, temperature, part)
            lse[rows, cols] = scaled.logsumexp(-1)
            logp_all = scaled - lse[rows, cols, None]
            logp[rows, cols] = logp_all.gather(-1, tokens[rows, cols, None]).squeeze(-1)
            probs = logp_all.exp() if keep or with_entropy else None
            if with_entropy:
                entropy[rows, cols] = _entropy(logp_all, part, probs)
        ctx.save_for_backward(hidden, weight, bias, tokens, allowed, lse, probs if keep else None)
        ctx.settings = (temperature, chunk_elements)
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, _: Any) -> tuple[Any, ...]:
        hidden, weight, bias, tokens, allowed, lse, kept = ctx.saved_tensors
        temperature, chunk_elements = ctx.settings
        head = HeadInput(hidden, weight, bias)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b and bias is not None else None
        shape = (hidden.shape[0], hidden.shape[1], weight.shape[0])
        for rows, cols in row_slices(shape, chunk_elements):
            part = allowed[rows] if allowed is not None else None
            # d logp[token] / d logits = onehot(token) - softmax, times the upstream gradient
            if kept is not None:  # (one slice: the forward's probabilities, left intact)
                g = kept * -grad[rows, cols, None]
            else:
                probs = (
                    _slice_logp(head, rows, cols, temperature, part) - lse[rows, cols, None]
                ).exp()
                g = probs.mul_(-grad[rows, cols, None])
            g.scatter_add_(-1, tokens[rows, cols, None], grad[rows, cols, None])
            if temperature != 1.0:
                g = g / temperature
            g = g.to(hidden.dtype)
            if grad_h is not None:
                grad_h[rows, cols] = g @ weight
            if grad_w is not None:
                grad_w += g.flatten(0, 1).T @ hidden[rows, cols].flatten(0, 1)
            if grad_b is not None:
                grad_b += g.sum(dim=(0, 1))
        return grad_h, grad_w, grad_b, None, None, None, None


def head_scores(
    head: HeadInput,
    tokens: torch.Tensor,
    *,
    temperature: float = 1.0,
    allowed: torch.Tensor | None = None,
    entropy: bool = False,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logp, entropy)``, each ``float32[B, N]``: log-probs of ``tokens`` under
    ``softmax((hidden @ weight.T + bias) / T)`` (differentiable in the hidden state, the weight
    and the bias) and, when ``entropy``, each position's entropy (no gradient; else ``None``),
    from one pass over slices of the logits: the ``[B, N, V]`` logits are never held whole, nor
    their gradient.

    :param head: the hidden state and the head's rows of the vocabulary scored.
    :param tokens: ``int64[B, N]`` the taken tokens.
    :param temperature: the sampling temperature ``T``.
    :param allowed: ``bool[B, V]`` tokens each row may take (renormalised over), or ``None``.
    :param chunk_elements: the most elements one slice of logits holds.
    """
    backward = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (head.hidden, head.weight, head.bias)
    )
    logp, ent = _HeadTokenLogProbs.apply(
        head.hidden,
        head.weight,
        head.bias,
        tokens,
        temperature,
        allowed,
        (chunk_elements, entropy, backward),
    )
    return logp, ent if entropy else None
