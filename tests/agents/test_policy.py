"""CausalLMActorCritic: scoring, KV-cache sampling, left padding, reference, persistence."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from marlhf.policy.actor_critic import CausalLMActorCritic, filter_logits
from marlhf.tokenization import SymbolCodec
from tests.agents.conftest import SYMBOLS, tiny_model

CODEC = SymbolCodec(SYMBOLS)


def _policy(**kwargs: object) -> CausalLMActorCritic:
    return CausalLMActorCritic(tiny_model(CODEC, n_layer=2), **kwargs)  # type: ignore[arg-type]


def _cat(
    prompt: torch.Tensor, pmask: torch.Tensor, response: torch.Tensor, rmask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``(input_ids, attention_mask, response_mask)`` the scoring methods take."""
    ids = torch.cat([prompt, response], 1)
    return ids, torch.cat([pmask.long(), rmask.long()], 1), rmask


def _rollout(policy: CausalLMActorCritic, prompt: torch.Tensor, pmask: torch.Tensor, n: int):
    gen = torch.Generator().manual_seed(0)
    state, tokens = None, []
    for _ in range(n):
        actions, state = policy.act(
            {"input_ids": prompt, "attention_mask": pmask}, state, generator=gen
        )
        tokens.append(actions)
    return torch.stack(tokens, dim=1), state


def test_cached_sampling_matches_one_forward_scoring() -> None:
    policy = _policy()
    prompt = torch.tensor([[0, 0, 2, 3], [4, 5, 6, 7]])
    pmask = (prompt != 0).long()
    response, state = _rollout(policy, prompt, pmask, 5)
    # The cached logits that drew the last token equal the full forward's logits for it.
    full_ids = torch.cat([prompt, response], 1)
    full_mask = torch.ones_like(full_ids)
    full_mask[:, :4] = pmask
    out = policy.model(
        input_ids=full_ids,
        attention_mask=full_mask,
        position_ids=(full_mask.cumsum(1) - 1).clamp(min=0),
    )
    torch.testing.assert_close(state.next_logits, out.logits[:, -2].float(), atol=1e-5, rtol=0)
    logp, entropy, values = policy.evaluate_actions(
        *_cat(prompt, pmask, response, torch.ones_like(response, dtype=torch.bool))
    )
    assert logp.shape == entropy.shape == values.shape == (2, 5)
    assert bool((logp <= 0).all()) and bool((entropy > 0).all())


def test_one_forward_scores_the_sampled_tokens_under_the_sampling_distribution() -> None:
    # At a temperature: the log-prob of each sampled token under the cached logits that drew
    # it (scaled as sampling scaled them) is what the one-forward scoring gives that token.
    policy, t = _policy(), 0.7
    prompt = torch.tensor([[0, 0, 2, 3], [4, 5, 6, 7]])
    pmask = (prompt != 0).long()
    gen, state, tokens, drawn = torch.Generator().manual_seed(0), None, [], []
    for _ in range(5):
        actions, state = policy.act(
            {"input_ids": prompt, "attention_mask": pmask}, state, temperature=t, generator=gen
        )
        logits = state.next_logits / t
        drawn.append(logits.log_softmax(-1).gather(1, actions[:, None])[:, 0])
        tokens.append(actions)
        state.pending = actions
    response = torch.stack(tokens, dim=1)
    args = _cat(prompt, pmask, response, torch.ones_like(response, dtype=torch.bool))
    logp, _, _ = policy.evaluate_actions(*args, temperature=t)  # the update's (with a graph)
    torch.testing.assert_close(logp, torch.stack(drawn, dim=1), atol=1e-5, rtol=0)
    with torch.no_grad():  # the rollout's scoring (from the hidden state, slice by slice)
        scored, _, _ = policy.evaluate_actions(*args, temperature=t, entropy="no_grad")
    torch.testing.assert_close(scored, torch.stack(drawn, dim=1), atol=1e-5, rtol=0)


def test_left_padding_does_not_change_scores() -> None:
    policy = _policy()
    torch.nn.init.normal_(policy.value_head.weight, generator=torch.Generator().manual_seed(1))
    response = torch.tensor([[3, 4, 5]])
    rmask = torch.ones_like(response, dtype=torch.bool)
    short = policy.evaluate_actions(
        *_cat(torch.tensor([[2, 3]]), torch.ones(1, 2), response, rmask)
    )
    padded = policy.evaluate_actions(
        *_cat(torch.tensor([[0, 0, 0, 2, 3]]), torch.tensor([[0, 0, 0, 1, 1]]), response, rmask)
    )
    for a, b in zip(short, padded, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # Beside a row without padding the padded row's columns stay (scoring drops only columns
    # that are padding in every row): its positions must start after its padding.
    both = policy.evaluate_actions(
        *_cat(
            torch.tensor([[0, 2, 3], [4, 2, 3]]),
            torch.tensor([[0, 1, 1], [1, 1, 1]]),
            torch.cat([response, response]),
            torch.cat([rmask, rmask]),
        )
    )
    for a, b in zip(short, both, strict=True):
        torch.testing.assert_close(b[:1], a, atol=1e-5, rtol=0)


def test_reference_is_frozen_and_starts_equal_to_policy() -> None:
    policy = _policy()
    prompt, pmask = torch.tensor([[2, 3]]), torch.ones(1, 2, dtype=torch.long)
    response, rmask = torch.tensor([[4, 5]]), torch.ones(1, 2, dtype=torch.bool)
    logp, _, _ = policy.evaluate_actions(*_cat(prompt, pmask, response, rmask))
    ref = policy.reference_logprobs(*_cat(prompt, pmask, response, rmask))
    torch.testing.assert_close(logp, ref)
    assert policy.ref_model is not None
    assert not any(p.requires_grad for p in policy.ref_model.parameters())
    trainable = {id(p) for p in policy.trainable_parameters()}
    assert not trainable & {id(p) for p in policy.ref_model.parameters()}
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(0.1)
    moved, _, _ = policy.evaluate_actions(*_cat(prompt, pmask, response, rmask))
    assert not torch.allclose(moved, ref)
    torch.testing.assert_close(
        policy.reference_logprobs(*_cat(prompt, pmask, response, rmask)), ref
    )


def test_separate_critic_gets_gradients_policy_does_not_share() -> None:
    policy = _policy(critic=tiny_model(CODEC, seed=1))
    prompt, pmask = torch.tensor([[2, 3]]), torch.ones(1, 2, dtype=torch.long)
    response, rmask = torch.tensor([[4, 5]]), torch.ones(1, 2, dtype=torch.bool)
    torch.nn.init.normal_(policy.value_head.weight)
    _, _, values = policy.evaluate_actions(*_cat(prompt, pmask, response, rmask))
    values.sum().backward()
    assert policy.critic is not None
    assert any(p.grad is not None for p in policy.critic.parameters())
    assert all(p.grad is None for p in policy.model.parameters())


def test_filter_logits_top_k_and_top_p() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    kept = ~torch.isinf(filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]
    kept = ~torch.isinf(filter_logits(logits, top_p=0.01))
    assert kept.tolist() == [[True, False, False, False]]


def test_seeded_sampling_is_reproducible_and_top_k_respected() -> None:
    policy = _policy()
    prompt, pmask = torch.tensor([[2, 3]] * 8), torch.ones(8, 2, dtype=torch.long)
    a, _ = _rollout(policy, prompt, pmask, 6)
    b, _ = _rollout(policy, prompt, pmask, 6)
    assert torch.equal(a, b)
    state = policy.start(prompt, pmask)
    top1 = state.next_logits.argmax(-1)
    sampled = policy.sample(state.next_logits, top_k=1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sampled, top1)


def test_save_pretrained_loads_with_plain_transformers(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    policy = _policy()
    torch.nn.init.normal_(policy.value_head.weight)
    policy.save_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "policy"), local_files_only=True)
    ids = torch.tensor([[2, 3, 4]])
    torch.testing.assert_close(plain(input_ids=ids).logits, policy.model(input_ids=ids).logits)
    again = CausalLMActorCritic.from_pretrained(tmp_path)
    torch.testing.assert_close(again.value_head.weight, policy.value_head.weight)


def test_bad_inputs_raise_clear_errors(tmp_path) -> None:
    policy = _policy()
    ids, mask = torch.tensor([[2, 3, 4]]), torch.ones(1, 3)
    with pytest.raises(ValueError, match="at least 1 prompt column"):
        policy.evaluate_actions(ids, mask, torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="same shape"):
        policy.reference_logprobs(ids, mask[:, :2], torch.ones(1, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="not a local folder"):
        CausalLMActorCritic(str(tmp_path / "missing"))
    with pytest.raises(TypeError, match=r"nn\.Module or a local path"):
        CausalLMActorCritic(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="vocab_size=99"):
        CausalLMActorCritic(tiny_model(CODEC), vocab_size=99)
    with pytest.raises(ValueError, match="PEFT"):
        CausalLMActorCritic(tiny_model(CODEC), reference="adapters")


class FakePeft(torch.nn.Module):
    """Just enough of a PEFT model: an adapter (a logit bias) that ``disable_adapter()`` turns
    off, and a frozen base (PEFT itself is optional and not installed in the test env)."""

    def __init__(self, base: Any) -> None:  # a transformers causal LM
        super().__init__()
        self.base = base.requires_grad_(False)
        self.config = base.config
        self.peft_config = {"default": "lora"}
        self.delta = torch.nn.Parameter(torch.linspace(-1.0, 1.0, base.config.vocab_size))
        self.enabled = True

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.base.get_output_embeddings()

    def disable_adapter(self) -> Any:
        outer = self

        class _Off:
            def __enter__(self) -> None:
                outer.enabled = False

            def __exit__(self, *exc: object) -> None:
                outer.enabled = True

        return _Off()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, **kw):
        out = self.base(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            **kw,
        )
        if self.enabled:
            out.logits = out.logits + self.delta
        return out


def test_peft_reference_disables_adapters_without_a_second_model() -> None:
    base = tiny_model(CODEC)
    policy = CausalLMActorCritic(FakePeft(base), reference="adapters")
    assert policy.ref_model is None and policy.reference_mode == "adapters"
    prompt, pmask = torch.tensor([[2, 3]]), torch.ones(1, 2, dtype=torch.long)
    response, rmask = torch.tensor([[4, 5]]), torch.ones(1, 2, dtype=torch.bool)
    logp, _, _ = policy.evaluate_actions(*_cat(prompt, pmask, response, rmask))
    ref = policy.reference_logprobs(*_cat(prompt, pmask, response, rmask))
    plain = CausalLMActorCritic(base, reference=None)
    base_logp, _, _ = plain.evaluate_actions(*_cat(prompt, pmask, response, rmask))
    torch.testing.assert_close(ref, base_logp)
    assert not torch.allclose(logp, ref)
    names = {id(p) for p in policy.trainable_parameters()}
    assert id(policy.model.delta) in names
    assert not any(id(p) in names for p in base.parameters())


def test_action_mask_restricts_sampling_and_renormalises_scores() -> None:
    policy = _policy()
    prompt, pmask = torch.tensor([[2, 3]] * 64), torch.ones(64, 2, dtype=torch.long)
    allowed = torch.zeros(64, CODEC.vocab_size, dtype=torch.bool)
    allowed[:, [4, 6]] = True
    gen = torch.Generator().manual_seed(0)
    state = policy.start(prompt, pmask)
    drawn = policy.sample(state.next_logits, generator=gen, action_mask=allowed, temperature=0.7)
    assert set(drawn.tolist()) == {4, 6}
    greedy = policy.sample(state.next_logits, deterministic=True, action_mask=allowed)
    assert set(greedy.tolist()) <= {4, 6}
    rmask = torch.ones(64, 1, dtype=torch.bool)
    both = [
        policy.evaluate_actions(
            *_cat(prompt, pmask, torch.full((64, 1), t), rmask), action_mask=allowed
        )
        for t in (4, 6)
    ]
    total = both[0][0].exp() + both[1][0].exp()
    torch.testing.assert_close(total, torch.ones_like(total))
    assert bool(torch.isfinite(both[0][1]).all()) and bool((both[0][1] <= 0.7).all())
