"""logprobs.head_scores (log-probs from the hidden state, logits never whole) equals the
whole-tensor form in values and gradients."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from transformers import GPT2LMHeadModel

from marlhf.models import tiny_gpt2
from marlhf.policy import head_fusion, logprobs
from marlhf.policy.actor_critic import CausalLMActorCritic
from marlhf.policy.logprobs import HeadInput


def _case(bias: bool, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 5, 8, generator=gen, requires_grad=True)
    weight = torch.randn(11, 8, generator=gen, requires_grad=True)
    b = torch.randn(11, generator=gen, requires_grad=True) if bias else None
    tokens = torch.randint(0, 9, (3, 5), generator=gen)
    upstream = torch.randn(3, 5, generator=gen)
    return hidden, weight, b, tokens, upstream  # type: ignore[return-value]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("chunk", [1 << 24, 9])  # one slice; slices of one position
def test_head_scores_equal_the_whole_tensor_form(
    bias: bool, temperature: float, masked: bool, chunk: int
) -> None:
    hidden, weight, b, tokens, upstream = _case(bias)
    vocab = 9  # the head has 11 rows; the env's vocabulary is the first 9
    allowed = None
    if masked:
        allowed = torch.ones(3, vocab, dtype=torch.bool)
        allowed[0, 4:] = False
        allowed[2, ::2] = False
        tokens = torch.where(allowed.gather(1, tokens), tokens, 1)  # taken tokens are allowed
    logits = torch.nn.functional.linear(hidden, weight, b)
    want_logp, want_ent = logprobs.logp_entropy_full(
        logits, tokens, vocab_size=vocab, temperature=temperature, allowed=allowed
    )
    want_grads = torch.autograd.grad(
        (want_logp * upstream).sum(), [t for t in (hidden, weight, b) if t is not None]
    )
    head = HeadInput(hidden, weight[:vocab], None if b is None else b[:vocab])
    logp, ent = logprobs.head_scores(
        head, tokens, temperature=temperature, allowed=allowed, entropy=True, chunk_elements=chunk
    )
    assert ent is not None and not ent.requires_grad
    torch.testing.assert_close(logp, want_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, want_ent.detach(), atol=1e-5, rtol=0)
    grads = torch.autograd.grad(
        (logp * upstream).sum(), [t for t in (hidden, weight, b) if t is not None]
    )
    for got, want in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # The head's rows past the env's vocabulary take no gradient.
    assert bool((grads[1][vocab:] == 0).all())


def test_head_scores_without_entropy() -> None:
    hidden, weight, _, tokens, _ = _case(False)
    logp, ent = logprobs.head_scores(HeadInput(hidden, weight, None), tokens)
    assert ent is None
    want = logprobs.token_logprobs(torch.nn.functional.linear(hidden, weight), tokens)
    torch.testing.assert_close(logp, want, atol=1e-5, rtol=0)


def _scoring_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ragged prompts (two length groups) and responses with padding."""
    gen = torch.Generator().manual_seed(4)
    ids = torch.randint(1, 30, (4, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # a shorter prompt: its own length group
    mask[1, :1] = 0
    response_mask = torch.ones(4, 4, dtype=torch.bool)
    response_mask[2, 3:] = False
    mask[:, -4:] = response_mask.long()
    return ids, mask, response_mask


def _policy(model: torch.nn.Module, fused: bool) -> CausalLMActorCritic:
    policy = CausalLMActorCritic(copy.deepcopy(model), reference=None, vocab_size=30)
    policy.fused_head = fused
    return policy


@pytest.mark.parametrize("entropy", ["no_grad", "none"])
def test_the_policy_scores_from_the_hidden_state_as_from_the_logits(entropy: str) -> None:
    model = tiny_gpt2(32, n_layer=2, n_embd=16, n_head=2)
    ids, mask, response_mask = _scoring_batch()
    out, grads = [], []
    for fused in (True, False):
        policy = _policy(model, fused)
        logp, ent, values = policy.evaluate_actions(ids, mask, response_mask, 0.8, entropy=entropy)
        (logp.sum() + values.sum()).backward()
        out.append((logp, ent))
        grads.append([p.grad for p in policy.trainable_parameters()])
    torch.testing.assert_close(out[0][0], out[1][0], atol=1e-5, rtol=0)
    if entropy == "none":
        assert out[0][1] is None and out[1][1] is None
    else:
        torch.testing.assert_close(out[0][1], out[1][1], atol=1e-5, rtol=0)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_a_head_that_is_not_the_plain_product_is_scored_from_its_logits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Scaled(GPT2LMHeadModel):  # logits * 2 (a logit scale, as some models have)
        def forward(self, input_ids: Any = None, logits_to_keep: int = 0, **kwargs: Any) -> Any:
            out = super().forward(input_ids, logits_to_keep=logits_to_keep, **kwargs)
            out.logits = out.logits * 2
            return out

    base = tiny_gpt2(32, n_layer=2, n_embd=16, n_head=2)
    model = Scaled(base.config)
    model.load_state_dict(base.state_dict())
    monkeypatch.setattr(head_fusion, "UNFUSABLE", set())
    assert head_fusion.fusable(model)  # (it looks like a plain head until a forward shows)
    ids, mask, response_mask = _scoring_batch()
    args = (ids, mask, response_mask)
    fused = _policy(model, True).evaluate_actions(*args, entropy="no_grad")[0]
    assert Scaled in head_fusion.UNFUSABLE
    plain = _policy(model, False).evaluate_actions(*args, entropy="no_grad")[0]
    assert torch.equal(fused, plain)
    assert GPT2LMHeadModel not in head_fusion.UNFUSABLE


def test_by_default_the_head_is_fused_for_a_real_vocabulary_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """fused_head=None: a toy vocabulary is scored from whole logits (bitwise the path from
    before the fused head, so results for the same seed do not move); a vocabulary of
    FUSED_HEAD_MIN_VOCAB tokens or more from the hidden state."""
    from marlhf.policy import actor_critic

    model = tiny_gpt2(32, n_layer=2, n_embd=16, n_head=2)
    ids, mask, response_mask = _scoring_batch()
    args = (ids, mask, response_mask, 0.8)
    default = CausalLMActorCritic(copy.deepcopy(model), reference=None, vocab_size=30)
    assert default.fused_head is None and not default.fuses_head()
    plain = _policy(model, False).evaluate_actions(*args, entropy="no_grad")
    got = default.evaluate_actions(*args, entropy="no_grad")
    assert all(torch.equal(a, b) for a, b in zip(got, plain, strict=True))
    fused = _policy(model, True).evaluate_actions(*args, entropy="no_grad")
    assert not torch.equal(fused[0], plain[0])  # (so the equality above tells the paths apart)
    monkeypatch.setattr(actor_critic, "FUSED_HEAD_MIN_VOCAB", 30)
    assert default.fuses_head()
    got = default.evaluate_actions(*args, entropy="no_grad")
    assert all(torch.equal(a, b) for a, b in zip(got, fused, strict=True))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("entropy", [False, True])
def test_probabilities_kept_for_the_backward_give_the_remade_ones_gradients_bitwise(
    bias: bool, temperature: float, masked: bool, entropy: bool
) -> None:
    # One slice with a backward to come: the forward keeps its probabilities (the backward
    # skips the head's product and the exp); forced off, the backward remakes them. Same bits.
    hidden, weight, b, tokens, upstream = _case(bias)
    allowed = None
    if masked:
        allowed = torch.ones(3, 11, dtype=torch.bool)
        allowed[1, 3:] = False
        tokens = torch.where(allowed.gather(1, tokens), tokens, 0)
    inputs = [t for t in (hidden, weight, b) if t is not None]
    outs = {}
    for keep in (True, False):
        logp, ent = logprobs._HeadTokenLogProbs.apply(
            hidden, weight, b, tokens, temperature, allowed, (1 << 24, entropy, keep)
        )
        kept = logp.grad_fn.saved_tensors[6]
        assert (kept is not None) == keep
        outs[keep] = (logp, ent, torch.autograd.grad((logp * upstream).sum(), inputs))
    assert torch.equal(outs[True][0], outs[False][0])
    assert torch.equal(outs[True][1], outs[False][1])
    for got, want in zip(outs[True][2], outs[False][2], strict=True):
        assert torch.equal(got, want)


def test_head_scores_keep_the_probabilities_only_for_one_slice_with_a_backward() -> None:
    hidden, weight, _, tokens, _ = _case(False)
    head = HeadInput(hidden, weight, None)

    def kept(logp: torch.Tensor) -> torch.Tensor | None:
        return logp.grad_fn.saved_tensors[6]  # type: ignore[union-attr]

    assert kept(logprobs.head_scores(head, tokens)[0]) is not None
    assert kept(logprobs.head_scores(head, tokens, chunk_elements=9)[0]) is None  # sliced
    frozen = HeadInput(hidden.detach(), weight.detach(), None)
    assert logprobs.head_scores(frozen, tokens)[0].grad_fn is None  # no backward: nothing kept
    with torch.no_grad():
        assert logprobs.head_scores(head, tokens)[0].grad_fn is None


@pytest.mark.parametrize(
    "kw",
    [
        {"preset": "ppo", "kl_coef": 0.05},  # the KL in the rewards (PPO's default)
        {"preset": "grpo", "group_size": 2, "kl_coef": 0.05},  # k3 in the loss
    ],
)
def test_two_ppo_iterations_with_kept_probabilities_equal_the_remade_ones_bitwise(
    kw: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from marlhf.algorithms import PPO
    from tests.agents.conftest import CueEnv, tiny_model

    apply = logprobs._HeadTokenLogProbs.apply

    def run(keep: bool) -> tuple[Any, list[bool]]:
        kept: list[bool] = []

        def forced(*args: Any) -> Any:
            *rest, (chunk, entropy, backward) = args
            kept.append(backward and keep)
            return apply(*rest, (chunk, entropy, backward and keep))

        monkeypatch.setattr(logprobs._HeadTokenLogProbs, "apply", forced)
        env = CueEnv(num_envs=4, max_new_tokens=4)
        algo = PPO(
            tiny_model(env.codec, seed=0),
            env,
            seed=3,
            n_epochs=2,
            batch_size=2,
            learning_rate=0.002,
            **kw,
        )
        algo.policy.fused_head = True  # (the toy vocabulary is below the default's threshold)
        algo.learn(2 * 4 * 4)
        return algo, kept

    fast, kept = run(True)
    slow, remade = run(False)
    assert any(kept) and not any(remade)
    for (name, p), q in zip(fast.policy.named_parameters(), slow.policy.parameters(), strict=True):
        assert torch.equal(p, q), name
    for key, value in fast.train_stats.items():
        other = slow.train_stats[key]
        assert value == other or (value != value and other != other), key
    assert fast.rollout_stats["rollout/kl_ref"] == slow.rollout_stats["rollout/kl_ref"]
