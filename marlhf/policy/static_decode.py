"""Decoding with a preallocated KV cache, and a compiled per-token step over it.

The eager rollout (``decode="eager"``) grows ``transformers``' dynamic cache by one column per
token: every step concatenates every layer's keys and values, and every tensor of the step has a
new shape. ``decode="static"`` prefills a ``transformers`` :class:`~transformers.StaticCache`
sized for the whole episode (the env's observation window: the prompt and the room left for the
response) and writes each token into it in place; the attention mask passed to the model is
padded to the cache's width, so every decode step has the same shapes. ``decode="compiled"``
also runs that per-token step through ``torch.compile`` (fixed shapes: one graph per batch size
and cache width; on CUDA ``mode="reduce-overhead"`` captures it as a CUDA graph).

Equality with the eager path: the same logits up to float rounding (the masked columns add
exact zeros to the attention, but the kernels sum in another order), so the same tokens for the
same seed except where two tokens' probabilities tie to rounding (tests/agents/
test_static_decode.py checks 1e-5 on the logits and equal tokens).

A cache that would overflow (a caller whose window leaves less room than it decodes) is copied
into one twice as wide (:func:`grow`): correct, at the cost of a copy and, compiled, a new graph.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: What ``CausalLMActorCritic(decode=...)`` accepts.
DECODE_MODES = ("eager", "static", "compiled")
#: Columns a static cache keeps free past its prefill at least, when the observation window
#: leaves fewer (a caller that prefills without room for the response).
MIN_ROOM = 32


def check_decode(decode: object) -> str:
    """``decode`` when it is one of :data:`DECODE_MODES`; a ``ValueError`` naming them if not."""
    if not isinstance(decode, str) or decode not in DECODE_MODES:
        raise ValueError(f"decode={decode!r} must be one of {list(DECODE_MODES)}")
    return decode


def is_static(cache: Any) -> bool:
    """Whether ``cache`` is a ``transformers`` static (preallocated) cache."""
    from transformers import StaticCache

    return isinstance(cache, StaticCache)


def _config(model: nn.Module) -> Any:
    unwrap = getattr(model, "get_base_model", None)  # a PEFT wrapper: the model it wraps
    inner = unwrap() if callable(unwrap) else model
    return inner.config


def new_cache(model: nn.Module, width: int, used: int) -> Any:
    """An empty static cache for ``model``: ``width`` columns wide, or ``used + MIN_ROOM``
    when ``width`` leaves no room past the prefill.

    :param width: the columns the episode needs (the observation window's width).
    :param used: the columns the prefill fills.
    """
    from transformers import StaticCache

    columns = width if width > used else used + MIN_ROOM
    return StaticCache(config=_config(model), max_cache_len=columns)


def width(cache: Any) -> int:
    """The width (columns) of a static cache."""
    return int(cache.layers[0].max_cache_len)


def used_columns(cache: Any) -> int:
    """Columns of a static cache written so far (every layer writes the same)."""
    return int(cache.layers[0].cumulative_length)


def grow(cache: Any, model: nn.Module, needed: int) -> Any:
    """A static cache at least ``needed`` columns wide (twice as wide as ``cache`` at least)
    holding ``cache``'s columns written so far; ``cache`` itself when it is wide enough."""
    columns = width(cache)
    if needed <= columns:
        return cache
    from transformers import StaticCache

    used = used_columns(cache)
    wider = StaticCache(config=_config(model), max_cache_len=max(needed, 2 * columns))
    new: Any
    for old, new in zip(cache.layers, wider.layers, strict=True):
        if old.is_initialized:  # writes columns [0, used) and sets the layer's length
            new.update(old.keys[:, :, :used], old.values[:, :, :used])
    return wider


def to_dynamic(cache: Any, length: int | None = None) -> Any:
    """A ``transformers`` dynamic cache holding the first ``length`` written columns of a
    static cache (all of them by default); a dynamic cache is returned as it is. For what only
    the dynamic cache offers (batch-indexed forks, cropping a copy)."""
    if not is_static(cache):
        return cache
    from transformers import DynamicCache

    used = used_columns(cache) if length is None else min(length, used_columns(cache))
    out = DynamicCache()
    for i, layer in enumerate(cache.layers):
        if layer.is_initialized:
            out.update(layer.keys[:, :, :used].clone(), layer.values[:, :, :used].clone(), i)
    return out


def padded_mask(mask: torch.Tensor, columns: int) -> torch.Tensor:
    """``mask [B, L]`` padded with zeros to ``[B, columns]`` (the columns not yet written)."""
    if mask.shape[1] > columns:
        raise ValueError(f"padded_mask: the mask has {mask.shape[1]} columns, over {columns}")
    if mask.shape[1] == columns:
        return mask
    return torch.nn.functional.pad(mask, (0, columns - mask.shape[1]))


def forward_step(
    model: nn.Module,
    cache_kw: str,
    ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    cache: Any,
) -> torch.Tensor:
    """Feed ``ids [B, q]`` at ``positions [B, q]`` into the static ``cache`` (written in place);
    ``mask`` is the cache-wide mask ``[B, width]``. Returns the logits ``[B, q, V]``."""
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        **{cache_kw: cache},
    )
    return out.logits


_COMPILED: dict[str, Any] = {}


def compiled_step(device: torch.device) -> Any:
    """:func:`forward_step` through ``torch.compile`` (built once per device type; graphs are
    keyed by the model's class and the shapes, so every policy shares it). On CUDA the step is
    captured as a CUDA graph (``mode="reduce-overhead"``)."""
    kind = device.type
    if kind not in _COMPILED:
        mode = "reduce-overhead" if kind == "cuda" else None
        _COMPILED[kind] = torch.compile(forward_step, mode=mode, dynamic=False)
    return _COMPILED[kind]
