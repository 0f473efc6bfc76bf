"""The lean MLP and RMSNorm (:mod:`marlhf.policy.lean`) give the eager forms' values and
gradients bit for bit, and save less for the backward."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest
import torch
from torch import nn

from marlhf.policy import lean
from marlhf.policy.actor_critic import CausalLMActorCritic
from tests.agents.conftest import tiny_llama_for


class _Codec:
    vocab_size = 97


def _llama(**config: Any) -> Any:
    settings = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 3}
    model = tiny_llama_for(_Codec(), seed=3, **{**settings, **config})
    # Norm weights other than their initial ones: with every weight 1.0 a lean norm that left
    # its weight out, in the forward, the backward or the remade output, would give the same
    # bits.
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
    return model


def _grads(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every parameter's gradient (and the embeddings' output gradient) of a loss that reaches
    every logit with a different weight."""
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, attention_mask=mask)
    weights = torch.linspace(-1.0, 2.0, out.logits.numel()).view_as(out.logits)
    (out.logits * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    grads["logits"] = out.logits.detach().clone()
    return grads


@pytest.mark.parametrize("tied", [False, True])
def test_lean_llama_gradients_bitwise(tied: bool) -> None:
    plain = _llama(tie_word_embeddings=tied)
    made = copy.deepcopy(plain)
    # An MLP and 2 norms per block (3 blocks), and the final norm.
    assert lean.make_lean(made) == 3 * 3 + 1
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 97, (4, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a left-padded row
    want, got = _grads(plain, ids, mask), _grads(made, ids, mask)
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name


def test_lean_norm_and_mlp_alone_bitwise() -> None:
    """Each form on its own: input, weight and every projection's gradients."""
    model = _llama()
    block = model.model.layers[0]
    for module, width in ((block.mlp, 48), (block.input_layernorm, 48)):
        made = copy.deepcopy(module)
        assert lean.make_lean(made) == 1
        x = torch.randn(3, 5, width, generator=torch.Generator().manual_seed(2))
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        up = torch.randn(3, 5, width, generator=torch.Generator().manual_seed(3))
        # The input also feeds a residual add, as in a block (three gradient terms for x).
        ya, yb = module(xa), made(xb)
        assert torch.equal(ya, yb)
        ((ya + xa) * up).sum().backward()
        ((yb + xb) * up).sum().backward()
        assert xa.grad is not None and xb.grad is not None
        assert torch.equal(xa.grad, xb.grad)
        for (name, p), q in zip(module.named_parameters(), made.parameters(), strict=True):
            assert p.grad is not None and q.grad is not None
            assert torch.equal(p.grad, q.grad), name


def test_lean_saves_less() -> None:
    """A quarter less saved for the backward: one intermediate-wide tensor per MLP, one
    hidden-wide tensor per norm."""
    plain = _llama()
    made = copy.deepcopy(plain)
    lean.make_lean(made)
    ids = torch.randint(0, 97, (4, 9), generator=torch.Generator().manual_seed(1))
    sizes = []
    for model in (plain, made):
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        logits = model(input_ids=ids).logits
        sizes.append(lean.saved_bytes(logits.sum(), params))
    tokens, blocks = 4 * 9, 3
    # silu(gate) and the product per MLP, x*r per norm
    fewer = tokens * (blocks * (2 * 96 + 2 * 48) + 48) * 4
    assert sizes[0] - sizes[1] == fewer


def test_lean_only_with_gradients_in_float32() -> None:
    """No graph, bf16 or autocast: the module's own forward (no lean node in the graph)."""
    model = _llama()
    lean.make_lean(model)
    norm = model.model.layers[0].input_layernorm
    x = torch.randn(2, 3, 48, requires_grad=True)
    assert type(norm(x).grad_fn).__name__ == "_RMSNormBackward"
    with torch.no_grad():
        assert torch.equal(norm(x), norm._marlhf_plain_forward(x))
    bf16 = copy.deepcopy(norm).to(torch.bfloat16)
    assert type(bf16(x.bfloat16()).grad_fn).__name__ == "MulBackward0"  # w * (x * r)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(norm(x).grad_fn).__name__ == "MulBackward0"


def test_lean_skips_other_maths_and_make_plain_restores() -> None:
    """A norm named like RMSNorm whose maths differ (Gemma's ``1 + w``) fails the probe and
    keeps its own forward; make_plain removes every lean form."""

    class OffsetRMSNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.full((8,), 0.5))
            self.variance_epsilon = 1e-6

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
            return (1.0 + self.weight) * (x * r)

    odd = nn.Sequential(OffsetRMSNorm())
    assert lean.make_lean(odd) == 0
    assert "forward" not in vars(odd[0])
    model = _llama()
    assert lean.make_lean(model) == 10
    assert lean.make_lean(model) == 10  # idempotent
    lean.make_plain(model)
    assert lean.lean_modules(model) == 0
    assert all("forward" not in vars(m) for m in model.modules())


@pytest.mark.parametrize("checkpointing", [False, True])
def test_policy_is_lean_by_default_and_scores_equal(checkpointing: bool) -> None:
    """The policy installs the lean forms on its model (not on the frozen reference); the
    update's log-probs, values and gradients equal those of a plain policy, bit for bit, with
    and without gradient checkpointing (which runs the blocks' forwards again)."""
    model = _llama()
    lean_policy = CausalLMActorCritic(copy.deepcopy(model), gradient_checkpointing=checkpointing)
    plain_policy = CausalLMActorCritic(
        copy.deepcopy(model), lean=False, gradient_checkpointing=checkpointing
    )
    assert lean.lean_modules(lean_policy.model) == 10
    assert lean_policy.ref_model is not None and lean.lean_modules(lean_policy.ref_model) == 0
    assert lean.lean_modules(plain_policy.model) == 0
    ids = torch.randint(0, 97, (3, 10), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    response = torch.ones(3, 4, dtype=torch.bool)
    response[1, 2:] = False
    results = []
    for policy in (plain_policy, lean_policy):
        policy.train()
        logp, _, values = policy.evaluate_actions(ids, mask, response, entropy="none")
        (logp.sum() + values.sum()).backward()
        grads = [p.grad for p in policy.trainable_parameters()]
        results.append((logp, values, grads))
    (la, va, ga), (lb, vb, gb) = results
    assert torch.equal(la, lb) and torch.equal(va, vb)
    assert len(ga) == len(gb)
    for a, b in zip(ga, gb, strict=True):
        assert a is not None and b is not None and torch.equal(a, b)


def test_lora_on_down_proj_keeps_the_product_and_gradients_bitwise() -> None:
    """A LoRA-wrapped ``down_proj`` is not a plain Linear: the MLP remakes only SiLU's output,
    and the adapters' gradients equal the eager forms' bit for bit."""
    pytest.importorskip("peft", reason="LoRA needs the peft package (the scale extra)")
    model = _llama()
    lora = {"r": 4, "target_modules": ["q_proj", "down_proj"]}
    policies = []
    for flag in (False, True):
        torch.manual_seed(7)  # the adapters' A starts random
        policies.append(CausalLMActorCritic(copy.deepcopy(model), lora=lora, lean=flag))
    assert lean.lean_modules(policies[1].model) == 10
    ids = torch.randint(0, 97, (3, 10), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    response = torch.ones(3, 4, dtype=torch.bool)
    grads = []
    for policy in policies:
        generator = torch.Generator().manual_seed(6)
        with torch.no_grad():  # B starts at 0: move it, so that A's gradients are not 0 too
            for name, p in policy.model.named_parameters():
                if "lora_B" in name:
                    p.normal_(generator=generator)
        policy.train()
        logp, _, values = policy.evaluate_actions(ids, mask, response, entropy="none")
        (logp.sum() + values.sum()).backward()
        grads.append([p.grad for p in policy.trainable_parameters()])
    assert len(grads[0]) == len(grads[1]) > 2
    for a, b in zip(*grads, strict=True):
        assert a is not None and b is not None and torch.equal(a, b)


@pytest.mark.slow  # torch.compile builds the step: about a minute on a 2-core machine
def test_compiled_decoding_of_a_lean_llama_equals_eager() -> None:
    """Sampling runs the modules' own forwards (no gradients): a lean Llama decodes through
    the static cache and the compiled step as the eager path does."""
    from tests.agents.test_static_decode import _assert_same_decoding

    def policy(decode: str) -> CausalLMActorCritic:
        return CausalLMActorCritic(_llama(), reference=None, decode=decode)

    assert lean.lean_modules(policy("compiled").model) == 10
    _assert_same_decoding(policy("eager"), policy("compiled"), room=8, n=8)


def test_ppo_on_a_lean_llama_trains_to_the_same_weights() -> None:
    """Two PPO iterations (two epochs of two minibatches each) on a tiny Llama: the lean policy
    moves its weights exactly as the plain one does."""
    from marlhf.algorithms import PPO
    from marlhf.envs import BatchedTokenEnv

    finals, starts = [], []
    for flag in (False, True):
        env = BatchedTokenEnv("DelayedChoice", num_envs=4, seed=0, horizon=4)
        model = tiny_llama_for(env.codec, seed=2)
        algo = PPO(
            model,
            env,
            seed=0,
            n_epochs=2,
            batch_size=2,
            learning_rate=0.05,
            max_grad_norm=None,
            policy_kwargs={"lean": flag},
        )
        assert lean.lean_modules(algo.policy.model) == (7 if flag else 0)  # 2 blocks of 3, 1
        starts.append({n: p.detach().clone() for n, p in algo.policy.named_parameters()})
        algo.learn(2 * 4 * 4)
        finals.append({n: p.detach().clone() for n, p in algo.policy.named_parameters()})
    assert finals[0].keys() == finals[1].keys()
    moved = [n for n, v in finals[0].items() if not torch.equal(v, starts[0][n])]
    assert any("layernorm" in n for n in moved) and any("mlp" in n for n in moved), moved
    for name, value in finals[0].items():
        assert torch.equal(value, finals[1][name]), name


def test_make_lean_draws_no_random_numbers_and_keeps_the_modes() -> None:
    """The probe runs in eval mode on a forked stream: a LoRA dropout on gate_proj does not
    fail it, the global random state is untouched, and each module's mode is restored."""
    pytest.importorskip("peft", reason="LoRA needs the peft package (the scale extra)")
    from marlhf.policy.lora import LoRAConfig, apply_lora

    config = LoRAConfig(r=4, dropout=0.5, target_modules=("gate_proj",))
    model = apply_lora(_llama(), config)
    model.train()
    state = torch.get_rng_state()
    assert lean.make_lean(model) == 10
    assert torch.equal(torch.get_rng_state(), state)
    assert all(m.training for m in model.modules())


def test_norm_outputs_are_remade_bitwise_not_saved(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``remade_norm_outputs`` every saved norm output (the projections' inputs) is kept
    as a recipe, and the backward's remade outputs
    give the gradients of the saving run bit for bit."""
    packed: list[Any] = []
    real_pack = lean._NormRemaker.pack

    def pack(self: Any, t: torch.Tensor) -> Any:
        packed.append(real_pack(self, t))
        return packed[-1]

    monkeypatch.setattr(lean._NormRemaker, "pack", pack)
    policy = CausalLMActorCritic(_llama(), reference=None)
    policy.train()
    ids = torch.randint(0, 97, (3, 10), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    response = torch.ones(3, 4, dtype=torch.bool)
    grads = []
    for remade in (False, True):
        policy.lean = remade  # (the policy enters the context when lean and building a graph)
        packed.clear()
        policy.zero_grad(set_to_none=True)
        logp, _, values = policy.evaluate_actions(ids, mask, response, entropy="none")
        (logp.sum() + values.sum()).backward()
        grads.append([p.grad.clone() for p in policy.trainable_parameters() if p.grad is not None])
        recipes = sum(isinstance(p, lean._Remade) for p in packed)
        # q, k, v, gate and up save their norm's output in each of 3 blocks (the heads save
        # copies of the final norm's response positions, not the output itself).
        assert recipes == (3 * 5 if remade else 0)
    assert len(grads[0]) == len(grads[1]) > 2
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)
    assert not lean._REMAKERS  # (the context is left)


def test_a_norm_output_changed_in_place_is_saved_as_it_is() -> None:
    """An output changed after the norm is no longer the norm's: it is saved, not remade."""
    norm = _llama().model.layers[0].input_layernorm
    lean.make_lean(norm)
    grads = []
    for remade in (False, True):
        # The weight takes a gradient, so the product saves its input (the changed output).
        weight = torch.randn(5, 48, generator=torch.Generator().manual_seed(8)).requires_grad_()
        x = torch.randn(2, 3, 48, generator=torch.Generator().manual_seed(9)).requires_grad_()
        with lean.remade_norm_outputs() if remade else contextlib.nullcontext():
            y = norm(x)
            y.mul_(3.0)
            loss = torch.nn.functional.linear(y, weight).pow(2).sum()
        loss.backward()
        assert x.grad is not None and weight.grad is not None
        grads.append((x.grad, weight.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
