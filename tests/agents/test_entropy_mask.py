"""The entropy under an action mask: masked tokens add nothing to its value or its gradient."""

from __future__ import annotations

import torch

from marlhf.policy.actor_critic import CausalLMActorCritic
from marlhf.tokenization import SymbolCodec
from tests.agents.conftest import SYMBOLS, tiny_model

CODEC = SymbolCodec(SYMBOLS)
IDS = torch.tensor([[0, 2, 3, 4, 5, 1], [4, 5, 6, 3, 2, 6]])
MASK = torch.ones_like(IDS)
RMASK = torch.tensor([[True, True, True], [True, True, True]])


def _allowed() -> torch.Tensor:
    allowed = torch.zeros(2, CODEC.vocab_size, dtype=torch.bool)
    allowed[:, [1, 2, 3, 4, 5, 6]] = True
    return allowed


def test_masked_entropy_gradient_is_finite_for_a_large_entropy_coefficient() -> None:
    """``ent_coef * entropy`` with a coefficient above 1 once made the masked tokens' gradient
    ``-inf * 0 = NaN`` (their log-probs sit at the dtype's minimum)."""
    policy = CausalLMActorCritic(tiny_model(CODEC, n_layer=1), reference=None)
    _, entropy, _ = policy.evaluate_actions(
        IDS, MASK, RMASK, action_mask=_allowed(), with_values=False
    )
    (10.0 * entropy.sum()).backward()
    grads = [p.grad for p in policy.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    assert any(bool(g.abs().sum() > 0) for g in grads)


def test_masked_entropy_is_the_entropy_over_the_allowed_tokens() -> None:
    """The value: the entropy of the softmax over the allowed tokens' logits alone."""
    policy = CausalLMActorCritic(tiny_model(CODEC, n_layer=1), reference=None)
    allowed = _allowed()
    with torch.no_grad():
        _, entropy, _ = policy.evaluate_actions(
            IDS, MASK, RMASK, action_mask=allowed, with_values=False
        )
        logits = policy.model(input_ids=IDS, attention_mask=MASK).logits[:, 2:5]
        logp = logits[..., allowed[0]].log_softmax(-1)
    expected = -(logp.exp() * logp).sum(-1)
    torch.testing.assert_close(entropy, expected, rtol=1e-5, atol=1e-6)
