"""The language-model actor-critic: a causal LM, a value head, a frozen reference.

:class:`CausalLMActorCritic` wraps any ``transformers`` causal LM. Sampling keeps the KV cache
across env steps as the policy's recurrent state (:class:`GenerationState`), the way sb3-contrib's
RecurrentPPO keeps its LSTM state; the update scores prompt + response in one forward with
:meth:`CausalLMActorCritic.evaluate_actions`.

Layout used by every scoring method: ``input_ids``/``attention_mask`` are ``[B, P + N]``, the
prompt left-padded to ``P`` columns followed by the response right-padded to ``N`` columns;
``response_mask`` is ``bool[B, N]`` (a prefix of each row). Position ids are
``cumsum(attention_mask) - 1``, so left padding never shifts positions.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from marlhf.parallel import distributed as dist_utils
from marlhf.policy import head_fusion, logprobs, static_decode
from marlhf.policy.lean import make_lean, remade_norm_outputs
from marlhf.policy.lm_utils import (
    cache_keyword,
    filter_logits,
    hidden_size,
    keeps_logits,
    length_groups,
    load_causal_lm,
    mask_logits,
    position_ids_from_mask,
)
from marlhf.policy.lora import (
    LoRAConfig,
    apply_lora,
    checkpointed_blocks,
    enable_checkpointing,
    is_peft_model,
    load_peft_policy,
    lora_config_of,
    save_merged,
    save_peft_policy,
    set_adapter_dropout,
)

REFERENCES = ("auto", "copy", "adapters", "none")
#: What :meth:`CausalLMActorCritic.evaluate_actions` does with the entropy.
ENTROPY_MODES = ("grad", "no_grad", "none")
#: The vocabulary size from which scoring uses the fused head by default
#: (:attr:`CausalLMActorCritic.fused_head`): a real tokenizer's (tens of thousands of tokens)
#: makes ``[B, N, V]`` logits the update's largest activation; a toy task's few tokens do not.
FUSED_HEAD_MIN_VOCAB = 1024


@dataclass
class GenerationState:
    """The policy's recurrent state during a rollout: the KV cache and what goes with it.

    :param cache: the model's KV cache (``transformers`` ``Cache``).
    :param attention_mask: ``int64[B, L]`` mask of everything in the cache.
    :param next_position: ``int64[B]`` position id of the next token.
    :param next_logits: ``float[B, V]`` logits for the next token.
    :param pending: ``int64[B]`` tokens sampled but not yet fed to the cache, or ``None``.
    :param forced: ``int64[B, F]`` tokens a multi-turn env appended after ``pending`` (its
        observations; pad-filled past ``forced_lengths``), or ``None``. They are fed with
        ``pending`` in one forward.
    :param forced_lengths: ``int64[B]`` real tokens of each row of ``forced``.
    """

    cache: Any
    attention_mask: torch.Tensor
    next_position: torch.Tensor
    next_logits: torch.Tensor
    pending: torch.Tensor | None = None
    forced: torch.Tensor | None = None
    forced_lengths: torch.Tensor | None = None


class CausalLMActorCritic(nn.Module):
    """A causal LM policy with a value head and a frozen reference model.

    :param model: a ``transformers`` causal LM or a local path to one.
    :param critic: ``None`` (default) puts the value head on the policy's own last hidden state
        (shared trunk); a causal LM or a local path uses that model's last hidden state instead
        (a separate critic).
    :param reference: ``"auto"`` (default) is ``"adapters"`` for a PEFT model (``lora`` given,
        or a model that already has adapters) and ``"copy"`` otherwise; ``"copy"`` keeps a frozen
        deep copy of ``model`` as the KL reference; ``"adapters"`` uses the PEFT model itself with
        its adapters disabled (no second model); a model or path uses that model; ``None`` (or
        ``"none"``) disables it.
    :param vocab_size: the env's vocabulary size; logits are cut to it when the model has more
        rows (padded embeddings); default: the model's own output size.
    :param lora: a :class:`~marlhf.policy.lora.LoRAConfig` (or a dict of its fields) wraps
        ``model`` in PEFT LoRA adapters: the base weights freeze, the adapters and the value head
        train. ``None`` (default) trains the whole model.
    :param gradient_checkpointing: recompute each transformer block's activations in the backward
        pass instead of storing them (``transformers``' own checkpointing, non-reentrant): less
        memory for one more forward per update; results are unchanged.
    :param decode: how sampling feeds tokens to the KV cache: ``"eager"`` (default) grows
        ``transformers``' dynamic cache; ``"static"`` writes into a cache preallocated for the
        episode; ``"compiled"`` also runs the per-token step through ``torch.compile`` (a CUDA
        graph on CUDA; the first rollout pays the compilation). Same logits to float rounding
        (:mod:`marlhf.policy.static_decode`). A sharded (FSDP) policy decodes eagerly.
    :param lean: the policy's (and critic's) gated MLPs and RMSNorms save less for the backward
        (:mod:`marlhf.policy.lean`; bitwise the same gradients); False keeps the eager forms.
    """

    def __init__(
        self,
        model: str | Path | nn.Module,
        critic: str | Path | nn.Module | None = None,
        reference: str | Path | nn.Module | None = "auto",
        vocab_size: int | None = None,
        lora: LoRAConfig | dict[str, Any] | None = None,
        gradient_checkpointing: bool = False,
        decode: str = "eager",
        lean: bool = True,
    ) -> None:
        super().__init__()
        #: How sampling runs (``decode`` above); may be reassigned between rollouts.
        self.decode = static_decode.check_decode(decode)
        #: Scoring makes log-probs from the last hidden state and the head's weight, slice by
        #: slice, when the model allows (:mod:`marlhf.policy.head_fusion`; not sharded): True
        #: always, False never (from whole logits), None (default) when the vocabulary has at
        #: least :data:`FUSED_HEAD_MIN_VOCAB` tokens. Below that the logits are small, slicing
        #: saves nothing, and the whole-logits path keeps results bitwise as they were before
        #: the fused path existed (it equals the fused one to 1e-5, not bitwise).
        self.fused_head: bool | None = None
        #: The FSDP state when the algorithm shards this policy (``fsdp=True``), else ``None``.
        self.fsdp: Any = None
        lora_config = LoRAConfig.coerce(lora)
        model = load_causal_lm(model)
        if not isinstance(gradient_checkpointing, bool):
            raise TypeError(f"gradient_checkpointing={gradient_checkpointing!r} must be a bool")
        self.gradient_checkpointing = gradient_checkpointing
        if gradient_checkpointing:  # before PEFT wraps it: the base model has the switch
            enable_checkpointing(model)
        self.model = model if lora_config is None else apply_lora(model, lora_config)
        self.critic = None if critic is None else load_causal_lm(critic)
        if gradient_checkpointing and self.critic is not None:
            enable_checkpointing(self.critic)
        hidden = hidden_size(self.critic if self.critic is not None else self.model)
        self.value_head = nn.Linear(hidden, 1)
        # Zero init: the critic starts at V = 0 everywhere, a neutral baseline.
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        self.reference_mode: str
        self.ref_model: nn.Module | None
        if isinstance(reference, str) and reference not in REFERENCES:
            path = Path(reference)
            if not path.is_dir():
                raise ValueError(
                    f"reference={reference!r} is neither one of {list(REFERENCES)} nor a local "
                    "folder of a model"
                )
        if reference == "auto":
            reference = "adapters" if is_peft_model(self.model) else "copy"
        if reference == "copy":
            self.reference_mode = "copy"
            self.ref_model = copy.deepcopy(self.model)
        elif reference == "adapters":
            if not is_peft_model(self.model):
                raise ValueError(
                    "reference='adapters' needs a PEFT model (with disable_adapter()); "
                    f"got {type(self.model).__name__}; pass lora={{...}} (needs the peft "
                    "package), a PEFT model, or use reference='copy'"
                )
            self.reference_mode = "adapters"
            self.ref_model = None
        elif reference is None or reference == "none":
            self.reference_mode = "none"
            self.ref_model = None
        else:
            self.reference_mode = "model"
            self.ref_model = load_causal_lm(reference)
        if self.ref_model is not None:
            self.ref_model.eval()
            self.ref_model.requires_grad_(False)
        if not isinstance(lean, bool):
            raise TypeError(f"lean={lean!r} must be a bool")
        #: Whether the lean forms were installed (``lean`` above).
        self.lean = lean
        if lean:  # (after the copy: the reference runs without gradients)
            for part in (self.model, self.critic):
                if part is not None:
                    make_lean(part)
        model_vocab = self.model_vocab_size
        if vocab_size is not None and vocab_size > model_vocab:
            raise ValueError(
                f"vocab_size={vocab_size} (the env's vocabulary) exceeds the model's output size "
                f"{model_vocab}; use a model whose vocabulary covers the env's tokens"
            )
        self.vocab_size = model_vocab if vocab_size is None else vocab_size
        # A PEFT wrapper passes keywords through (**kwargs): ask the model it wraps.
        unwrap = getattr(self.model, "get_base_model", None)
        self._cache_kw = cache_keyword(unwrap() if callable(unwrap) else self.model)
        self.eval()  # dropout off for good; see train()

    # ---------------------------------------------------------------- introspection
    @property
    def model_vocab_size(self) -> int:
        """Rows of the model's output layer."""
        head = self.model.get_output_embeddings()  # type: ignore[operator]
        if head is None:
            raise ValueError(f"{type(self.model).__name__} has no output embeddings (not a LM)")
        return int(head.weight.shape[0])

    @property
    def device(self) -> torch.device:
        return self.value_head.weight.device

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the optimizer updates (never the reference's)."""
        ref_ids = {id(p) for p in self.ref_model.parameters()} if self.ref_model else set()
        for p in self.parameters():
            if p.requires_grad and id(p) not in ref_ids:
                yield p

    @property
    def lora(self) -> LoRAConfig | None:
        """The LoRA block of the policy (``None`` when the whole model trains)."""
        return lora_config_of(self.model)

    def train(self, mode: bool = True) -> CausalLMActorCritic:
        # The model's dropout stays off: PPO's ratio must be exactly 1 on the first epoch. Two
        # things follow the mode: LoRA's own dropout (an update-only regulariser), and the
        # training flag of checkpointed blocks, which transformers reads to checkpoint (only
        # with gradients enabled, so sampling with the KV cache is unaffected).
        super().train(False)
        set_adapter_dropout(self.model, mode)
        if self.gradient_checkpointing:
            for module in self._checkpointed_blocks():
                module.training = mode
        return self

    def _checkpointed_blocks(self) -> Iterator[nn.Module]:
        for part in (self.model, self.critic):
            if part is not None:
                yield from checkpointed_blocks(part)

    # ---------------------------------------------------------------- scoring
    def _forward(
        self,
        model: nn.Module,
        ids: torch.Tensor,
        mask: torch.Tensor,
        n: int,
        hidden: bool,
        logits: bool = True,
        reduce: Callable[[torch.Tensor, Any], tuple[torch.Tensor | None, ...]] | None = None,
    ) -> tuple[Any, torch.Tensor | None]:
        """``(logits, last_hidden)`` at the ``n`` positions that predict the response tokens,
        ``[B, n, V]`` and ``[B, n, H]`` (``None`` unless ``hidden``). ``logits=False`` (a
        critic, whose hidden state alone is used) keeps the logits of one position only.
        ``reduce(logits, rows)`` (``rows`` index ``ids``) turns each group's logits into a
        tuple of ``[b, n]`` tensors (or ``None``s), returned in place of the logits: the
        full-vocabulary logits of all rows are then never put together.

        Only what scoring uses is computed. Rows run in groups of similar length
        (:func:`length_groups`), each group without the columns that are padding in all its
        rows (positions come from the mask, so nothing else changes): ragged prompts would
        otherwise make most of the activations padding. The last column is not fed (no response
        token is predicted from it), and the LM head runs on the last ``n`` positions only
        (``logits_to_keep``, when the model takes it): full-vocabulary logits over a long
        prompt would otherwise be the largest activation of the update.

        A sharded model (FSDP: in the update, and a separate reference always) gathers its
        weights in every forward, a collective: every rank runs as many groups as the rank
        with the most, padding with one-row groups whose outputs are dropped (their backward
        carries zeros), so all ranks' graphs have the same shape.
        """
        fused = (
            self.fuses_head()
            and self.fsdp is None
            and logits
            and bool(getattr(reduce, "fuses", False))
            and head_fusion.fusable(model)
        )
        groups = length_groups(mask)
        run = groups
        if self.fsdp is not None and (model is self.ref_model or not self.fsdp.gathered):
            most = int(dist_utils.all_reduce_max(torch.tensor(len(groups))))
            run = groups + [groups[0][:1]] * (most - len(groups))
        if len(run) <= 1:  # (none: no rows)
            out, last = self._forward_rows(model, ids, mask, n, hidden, logits, fused)
            return (out if reduce is None else reduce(out, slice(None))), last
        parts: list[Any] = []
        for g in run:
            out, last = self._forward_rows(model, ids[g], mask[g], n, hidden, logits, fused)
            parts.append((out if reduce is None else reduce(out, g), last))
            del out  # (reduced: the group's logits go before the next group's forward)
        inverse = torch.argsort(torch.cat(groups))  # (the padding groups' rows come after)
        if reduce is None:
            outs: Any = torch.cat([part[0] for part in parts])[inverse]
        else:
            outs = tuple(
                None if parts[0][0][i] is None else torch.cat([p[0][i] for p in parts])[inverse]
                for i in range(len(parts[0][0]))
            )
        last = torch.cat([part[1] for part in parts])[inverse] if hidden else None
        return outs, last

    def fuses_head(self) -> bool:
        """Whether scoring may use the fused head (:attr:`fused_head`; the model must allow it
        too, :func:`~marlhf.policy.head_fusion.fusable`)."""
        if self.fused_head is None:
            return self.vocab_size >= FUSED_HEAD_MIN_VOCAB
        return self.fused_head

    def _forward_rows(
        self,
        model: nn.Module,
        ids: torch.Tensor,
        mask: torch.Tensor,
        n: int,
        hidden: bool,
        logits: bool,
        fused: bool = False,
    ) -> tuple[Any, torch.Tensor | None]:
        """One group's forward (:meth:`_forward`). ``fused``: the logits of the last position
        only, and in place of the ``n`` positions' logits a :class:`~marlhf.policy.logprobs.
        HeadInput` (the last hidden state and the head's weight) that the scores are made from
        slice by slice, unless the head turns out not to be a plain product with the last
        hidden state (:func:`~marlhf.policy.head_fusion.head_matches`)."""
        whole_ids, whole_mask = ids, mask
        first = min(int(mask.any(dim=0).long().argmax()), ids.shape[1] - n - 1)
        ids, mask = ids[:, first:-1], mask[:, first:-1]
        kw: dict[str, Any] = {}
        if keeps_logits(model):  # (logits_to_keep=0 would mean every position)
            kw["logits_to_keep"] = n if logits and not fused else 1
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            output_hidden_states=hidden or fused,
            use_cache=False,
            **kw,
        )
        last = out.hidden_states[-1][:, -n:] if hidden or fused else None
        if fused:
            assert last is not None
            head = head_fusion.head_input(model, last, self.vocab_size)
            if head_fusion.head_matches(model, head, out.logits[:, -1]):
                return head, last if hidden else None
            return self._forward_rows(model, whole_ids, whole_mask, n, hidden, logits)
        return out.logits[:, -n:] if logits else out.logits, last

    def _token_scores(
        self,
        response_ids: torch.Tensor,
        temperature: float,
        action_mask: torch.Tensor | None,
        entropy: str,
    ) -> Callable[[torch.Tensor, Any], tuple[torch.Tensor | None, ...]]:
        """The ``reduce`` of :meth:`_forward` that scores the taken tokens: ``(logp, entropy)``
        of a group's logits (``entropy`` as in :meth:`evaluate_actions`)."""
        if entropy not in ENTROPY_MODES:
            raise ValueError(f"entropy={entropy!r} must be one of {list(ENTROPY_MODES)}")

        def score(logits: Any, rows: Any) -> tuple[torch.Tensor | None, ...]:
            allowed = None if action_mask is None else action_mask[rows]
            tokens = response_ids[rows]
            if isinstance(logits, logprobs.HeadInput):  # (never for an entropy with a graph)
                return logprobs.head_scores(
                    logits,
                    tokens,
                    temperature=temperature,
                    allowed=allowed,
                    entropy=entropy != "none",
                )
            kw: dict[str, Any] = {
                "vocab_size": self.vocab_size,
                "temperature": temperature,
                "allowed": allowed,
            }
            if entropy == "grad" and torch.is_grad_enabled():  # a weighted entropy term
                return logprobs.logp_entropy_full(logits, tokens, **kw)
            logp = logprobs.token_logprobs(logits, tokens, **kw)
            return logp, None if entropy == "none" else logprobs.token_entropy(logits, **kw)

        score.fuses = not (entropy == "grad" and torch.is_grad_enabled())  # type: ignore[attr-defined]
        return score

    @staticmethod
    def _split(
        input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor
    ) -> tuple[int, int]:
        if input_ids.shape != attention_mask.shape:
            raise ValueError(
                f"input_ids {tuple(input_ids.shape)} and attention_mask "
                f"{tuple(attention_mask.shape)} must have the same shape"
            )
        n = response_mask.shape[1]
        p = input_ids.shape[1] - n
        if response_mask.shape[0] != input_ids.shape[0] or p < 1:
            raise ValueError(
                f"response_mask {tuple(response_mask.shape)} must be [B, N] with N < the "
                f"sequence length of input_ids {tuple(input_ids.shape)} (at least 1 prompt column)"
            )
        return p, n

    def evaluate_actions(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_mask: torch.Tensor,
        temperature: float = 1.0,
        action_mask: torch.Tensor | None = None,
        with_values: bool = True,
        entropy: str = "grad",
    ) -> tuple[torch.Tensor, Any, Any]:
        """Log-probs, entropies and values of the taken tokens, in one forward.

        :param input_ids: ``int64[B, P + N]``: the left-padded prompt, then the right-padded
            response (its last ``N`` columns are the actions scored).
        :param attention_mask: ``[B, P + N]``, 1 on real prompt and response tokens.
        :param response_mask: ``bool[B, N]`` real response tokens (a prefix of each row).
        :param temperature: the sampling temperature (log-probs are of ``softmax(logits / T)``).
        :param action_mask: ``bool[B, V]`` tokens each row may take (the distribution is
            renormalised over them), or ``None`` for the whole vocabulary.
        :param with_values: False skips the critic (no value head, no separate critic forward)
            for estimators that need no values; ``values`` is then ``None``.
        :param entropy: ``"grad"`` (default) computes the entropy with gradients (when they are
            enabled: an entropy term the loss weights); ``"no_grad"`` computes it for the logs
            only, without a graph, slice by slice; ``"none"`` skips it (``entropy`` is then
            ``None``). The log-probs never hold a second full-vocabulary tensor
            (:mod:`marlhf.policy.logprobs`).
        :return: ``(logp, entropy, values)``, each ``float32[B, N]``; ``values[:, t]`` is the value
            of the state before response token ``t``. Entries on padding are finite but meaningless.
        """
        p, n = self._split(input_ids, attention_mask, response_mask)
        mask = attention_mask.long()
        shared = with_values and self.critic is None
        score = self._token_scores(input_ids[:, p:], temperature, action_mask, entropy)
        # With a graph, the lean norms' outputs are remade in the backward, not kept. Not when
        # sharded: FSDP frees the gathered norm weights after the forward, and the recipe
        # would read them before the backward gathers them again.
        remade = self.lean and torch.is_grad_enabled() and self.fsdp is None
        with remade_norm_outputs() if remade else contextlib.nullcontext():
            scores, hidden = self._forward(
                self.model, input_ids, mask, n, hidden=shared, reduce=score
            )
            logp, entropies = scores
            if not with_values:
                return logp, entropies, None
            if self.critic is not None:
                critic = self._forward(self.critic, input_ids, mask, n, hidden=True, logits=False)
                hidden = critic[1]
            assert hidden is not None
            # The value head runs in float32 even under bf16 autocast: returns need the
            # precision.
            with torch.autocast(device_type=hidden.device.type, enabled=False):
                values = self.value_head(hidden.float()).squeeze(-1)
        return logp, entropies, values

    @torch.no_grad()
    def reference_logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_mask: torch.Tensor,
        temperature: float = 1.0,
        action_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``float32[B, N]`` log-probs of the taken tokens under the frozen reference (arguments
        as in :meth:`evaluate_actions`)."""
        p, n = self._split(input_ids, attention_mask, response_mask)
        if self.reference_mode == "none":
            raise ValueError("reference_logprobs: this policy was built with reference=None")
        ctx: Any = contextlib.nullcontext()
        model = self.ref_model
        if self.reference_mode == "adapters":
            ctx = self.model.disable_adapter()  # type: ignore[operator]
            model = self.model
        score = self._token_scores(input_ids[:, p:], temperature, action_mask, "none")
        with ctx:
            scores = self._forward(model, input_ids, attention_mask.long(), n, False, reduce=score)  # type: ignore[arg-type]
        if self.fsdp is not None and self.ref_model is not None:
            self.fsdp.reference_done()
        return scores[0][0]

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> GenerationState:
        """Prefill the KV cache with left-padded prompts ``[B, L]``; the first recurrent state.

        Leading columns that are padding in every row are dropped (the env's window starts with
        ``N`` of them), which changes nothing but the cost.
        """
        mask = attention_mask.long()
        first = int(mask.any(dim=0).long().argmax())
        input_ids, mask = input_ids[:, first:], mask[:, first:]
        # Only the last position's logits are used: the LM head over every prompt position
        # would be the prefill's largest tensor ([B, L, V]).
        keep: dict[str, Any] = {"logits_to_keep": 1} if keeps_logits(self.model) else {}
        if self._static():  # room for the window's width: the prompt and the response's columns
            width = attention_mask.shape[1]
            keep[self._cache_kw] = static_decode.new_cache(self.model, width, mask.shape[1])
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            use_cache=True,
            **keep,
        )
        return GenerationState(
            cache=getattr(out, self._cache_kw),
            attention_mask=mask,
            next_position=mask.sum(dim=1),
            next_logits=out.logits[:, -1, : self.vocab_size].float(),
        )

    @torch.no_grad()
    def advance(
        self,
        state: GenerationState,
        tokens: torch.Tensor,
        forced: torch.Tensor | None = None,
        forced_lengths: torch.Tensor | None = None,
    ) -> GenerationState:
        """Feed one token per row ``int64[B]`` to the cache; the next recurrent state.

        :param forced: ``int64[B, F]`` tokens to feed after ``tokens`` in the same forward (a
            multi-turn env's observations), real up to ``forced_lengths`` (``int64[B]``) in
            each row; the rest are masked out of the cache (their slots stay, never attended).
        """
        if forced is not None and forced_lengths is not None:
            return self._advance_many(state, tokens, forced, forced_lengths)
        mask = torch.cat([state.attention_mask, torch.ones_like(state.attention_mask[:, :1])], 1)
        if static_decode.is_static(state.cache):
            positions = state.next_position[:, None]
            logits, cache = self._static_step(state.cache, tokens[:, None], mask, positions)
            return GenerationState(
                cache=cache,
                attention_mask=mask,
                next_position=state.next_position + 1,
                next_logits=logits[:, -1, : self.vocab_size].float(),
            )
        out = self.model(
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=state.next_position[:, None],
            use_cache=True,
            **{self._cache_kw: state.cache},
        )
        return GenerationState(
            cache=getattr(out, self._cache_kw),
            attention_mask=mask,
            next_position=state.next_position + 1,
            next_logits=out.logits[:, -1, : self.vocab_size].float(),
        )

    def _advance_many(
        self,
        state: GenerationState,
        tokens: torch.Tensor,
        forced: torch.Tensor,
        forced_lengths: torch.Tensor,
    ) -> GenerationState:
        width = forced.shape[1] + 1
        ids = torch.cat([tokens[:, None], forced], dim=1)
        cols = torch.arange(width, device=ids.device)[None, :]
        real = cols <= forced_lengths[:, None]
        mask = torch.cat([state.attention_mask, real.long()], dim=1)
        positions = state.next_position[:, None] + cols
        if static_decode.is_static(state.cache):  # (several tokens: an eager step)
            logits, cache = self._static_step(state.cache, ids, mask, positions, eager=True)
        else:
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{self._cache_kw: state.cache},
            )
            logits, cache = out.logits, getattr(out, self._cache_kw)
        last = logits[torch.arange(ids.shape[0], device=ids.device), forced_lengths]
        return GenerationState(
            cache=cache,
            attention_mask=mask,
            next_position=state.next_position + 1 + forced_lengths,
            next_logits=last[:, : self.vocab_size].float(),
        )

    def _static(self) -> bool:
        return self.decode != "eager" and self.fsdp is None

    def _static_step(
        self,
        cache: Any,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        eager: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        """Feed ``ids [B, q]`` at ``positions [B, q]`` into a static cache (widened first when
        they would not fit); ``mask`` covers the cache's columns written so far and ``ids``.
        Returns ``(logits
        [B, q, V], cache)``. One token per row runs compiled when ``decode="compiled"``."""
        cache = static_decode.grow(cache, self.model, mask.shape[1])
        full = static_decode.padded_mask(mask, static_decode.width(cache))
        step = static_decode.forward_step
        if self.decode == "compiled" and not eager:
            step = static_decode.compiled_step(ids.device)
        logits = step(self.model, self._cache_kw, ids, full, positions, cache)
        if self.decode == "compiled" and ids.device.type == "cuda":
            logits = logits.clone()  # (a CUDA graph's output is overwritten by its next replay)
        return logits, cache

    @torch.no_grad()
    def sample(
        self,
        logits: torch.Tensor,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
        action_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Draw ``int64[B]`` tokens from ``logits [B, V]`` (greedy when ``deterministic``),
        among the tokens ``action_mask bool[B, V]`` allows when given."""
        scaled = logits if temperature == 1.0 else logits / temperature
        if action_mask is not None:
            scaled = mask_logits(scaled, action_mask)
        if deterministic:
            return scaled.argmax(dim=-1)
        filtered = filter_logits(scaled, top_k=top_k, top_p=top_p)
        probs = filtered.softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    def act(
        self,
        observation: dict[str, torch.Tensor],
        state: GenerationState | None,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
        action_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, GenerationState]:
        """One env step of the policy: start or advance the cache, then sample.

        :param observation: the env's observation; read only when ``state`` is ``None`` (the
            first step of an episode), afterwards the cache holds everything.
        :param state: the state returned by the previous call, or ``None`` at an episode start.
        :param action_mask: ``bool[B, V]`` tokens each row may take, or ``None`` for all.
        """
        if state is None:
            state = self.start(observation["input_ids"], observation["attention_mask"])
        elif state.pending is not None:
            state = self.advance(state, state.pending, state.forced, state.forced_lengths)
        actions = self.sample(
            state.next_logits,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            deterministic=deterministic,
            generator=generator,
            action_mask=action_mask,
        )
        state.pending = actions
        return actions, state

    # ---------------------------------------------------------------- persistence
    def save_pretrained(self, folder: str | Path, merged: bool = False) -> None:
        """Write ``policy/`` (plain ``transformers``; with LoRA: the adapters in PEFT's format
        and the frozen base in ``base/``), ``value_head.safetensors``, ``actor_critic.json``, and
        the reference and critic when they are separate models.

        :param merged: with LoRA, also write ``merged/``: the adapters folded into the base
            weights, a model plain ``transformers`` loads (see :meth:`save_merged`).
        """
        save_actor_critic(self, folder, merged)

    def save_merged(self, folder: str | Path) -> None:
        """Write the policy's LM as a plain ``transformers`` model: with LoRA, the adapters
        folded into a copy of the base weights (the training model is left as it is)."""
        if self.fsdp is not None:  # sharded: from an unsharded twin over the gathered weights
            self.fsdp.twin(reference=False).save_merged(folder)
            return
        save_merged(self.model, folder)

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, vocab_size: int | None = None
    ) -> CausalLMActorCritic:
        """Rebuild a policy written by :meth:`save_pretrained`."""
        return load_actor_critic(cls, folder, vocab_size)


# ---------------------------------------------------------------------- the folder format
#: What ``from_pretrained`` needs besides the weights (reference mode, switches).
SETTINGS_FILE = "actor_critic.json"


def save_actor_critic(policy: CausalLMActorCritic, folder: str | Path, merged: bool) -> None:
    """The body of :meth:`CausalLMActorCritic.save_pretrained` (arguments as there)."""
    from safetensors.torch import save_file

    if policy.fsdp is not None:  # sharded: save an unsharded twin over the gathered weights
        policy.fsdp.twin().save_pretrained(folder, merged=merged)
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lora = policy.lora
    if is_peft_model(policy.model) and lora is not None:
        save_peft_policy(policy.model, folder)
        if merged:
            policy.save_merged(folder / "merged")
    else:
        policy.model.save_pretrained(str(folder / "policy"))  # type: ignore[operator]
    settings = {
        "reference_mode": policy.reference_mode,
        "gradient_checkpointing": policy.gradient_checkpointing,
        "lora": None if lora is None else lora.to_dict(),
    }
    (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2, sort_keys=True))
    if policy.critic is not None:
        policy.critic.save_pretrained(str(folder / "critic"))  # type: ignore[operator]
    if policy.ref_model is not None:
        policy.ref_model.save_pretrained(str(folder / "reference"))  # type: ignore[operator]
    head = {k: v.detach().cpu().contiguous() for k, v in policy.value_head.state_dict().items()}
    save_file(head, str(folder / "value_head.safetensors"))


def load_actor_critic(
    cls: type[CausalLMActorCritic], folder: str | Path, vocab_size: int | None
) -> CausalLMActorCritic:
    """The body of :meth:`CausalLMActorCritic.from_pretrained`: an instance of ``cls`` rebuilt
    from a folder written by :func:`save_actor_critic`."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "policy").is_dir():
        raise ValueError(f"from_pretrained: {str(folder)!r} has no 'policy' folder")
    settings_file = folder / SETTINGS_FILE
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    critic = folder / "critic" if (folder / "critic").is_dir() else None
    ref: Any = folder / "reference" if (folder / "reference").is_dir() else None
    if ref is None and settings.get("reference_mode") == "adapters":
        ref = "adapters"
    adapters = (folder / "policy" / "adapter_config.json").is_file()
    model: Any = load_peft_policy(folder) if adapters else folder / "policy"
    policy = cls(
        model,
        critic=critic,
        reference=ref,
        vocab_size=vocab_size,
        gradient_checkpointing=bool(settings.get("gradient_checkpointing", False)),
    )
    policy.value_head.load_state_dict(load_file(str(folder / "value_head.safetensors")))
    return policy
