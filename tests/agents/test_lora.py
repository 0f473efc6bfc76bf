"""LoRA through PEFT (reference = adapters off) and gradient checkpointing on the actor-critic."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from marlhf.algorithms import PPO
from marlhf.policy.actor_critic import CausalLMActorCritic
from marlhf.policy.lora import DEFAULT_TARGETS, LoRAConfig
from marlhf.tokenization import SymbolCodec
from tests.agents.conftest import SYMBOLS, CueEnv, tiny_llama_for, tiny_model
from tests.extras import needs

CODEC = SymbolCodec(SYMBOLS)
NEEDS_PEFT = needs("peft")

PROMPT = torch.tensor([[0, 2, 3], [4, 5, 6]])
PMASK = torch.tensor([[0, 1, 1], [1, 1, 1]])
RESPONSE = torch.tensor([[4, 5, 1, 0], [3, 2, 6, 5]])
RMASK = torch.tensor([[True, True, True, False], [True, True, True, True]])


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.cat([PROMPT, RESPONSE], 1)
    return ids, torch.cat([PMASK, RMASK.long()], 1), RMASK


def tiny_llama(seed: int = 0) -> Any:
    return tiny_llama_for(CODEC, seed)


def _moved_adapters(policy: CausalLMActorCritic) -> None:
    """Two optimizer steps on a surrogate loss (LoRA's A gets a gradient once B is non-zero)."""
    torch.nn.init.normal_(policy.value_head.weight, std=0.1)
    optimizer = torch.optim.SGD(list(policy.trainable_parameters()), lr=0.5)
    policy.train()
    for _ in range(2):
        optimizer.zero_grad()
        logp, _, values = policy.evaluate_actions(*_batch())
        (-(logp * RMASK).sum() + (values**2 * RMASK).sum()).backward()
        optimizer.step()
    policy.eval()


@NEEDS_PEFT
@pytest.mark.parametrize("build", [tiny_model, tiny_llama], ids=["gpt2", "llama"])
def test_lora_trains_only_adapters_and_value_head(build: Any) -> None:
    base = build(CODEC) if build is tiny_model else build()
    kind = base.config.model_type
    original = copy.deepcopy(base)
    policy = CausalLMActorCritic(base, lora={"r": 4}, vocab_size=CODEC.vocab_size)
    assert policy.reference_mode == "adapters" and policy.ref_model is None  # no second model
    lora = policy.lora
    assert lora is not None and set(lora.target_modules or ()) == set(DEFAULT_TARGETS[kind])
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("value_head.") for n in trainable)
    _moved_adapters(policy)
    changed = {n for n, p in policy.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable  # every trainable one moved, nothing else did
    # The reference (adapters off) is the untouched base model; the policy has moved from it.
    plain = CausalLMActorCritic(original, reference=None)
    base_logp, _, _ = plain.evaluate_actions(*_batch())
    ref = policy.reference_logprobs(*_batch())
    torch.testing.assert_close(ref, base_logp, atol=1e-6, rtol=0)
    logp, _, _ = policy.evaluate_actions(*_batch())
    assert float((logp - ref).detach()[RMASK].abs().max()) > 1e-3


@NEEDS_PEFT
def test_lora_save_load_and_merged_export(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    policy = CausalLMActorCritic(tiny_model(CODEC, n_layer=2), lora=LoRAConfig(r=4, alpha=8))
    _moved_adapters(policy)
    policy.save_pretrained(tmp_path, merged=True)
    assert (tmp_path / "policy" / "adapter_config.json").is_file()  # PEFT's own format
    assert (tmp_path / "policy" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "reference").exists()
    logp, _, values = policy.evaluate_actions(*_batch())
    ref = policy.reference_logprobs(*_batch())

    again = CausalLMActorCritic.from_pretrained(tmp_path)
    assert again.reference_mode == "adapters" and again.lora == policy.lora
    logp2, _, values2 = again.evaluate_actions(*_batch())
    torch.testing.assert_close(logp2, logp, atol=1e-6, rtol=0)
    torch.testing.assert_close(values2, values, atol=1e-6, rtol=0)
    torch.testing.assert_close(again.reference_logprobs(*_batch()), ref, atol=1e-6, rtol=0)
    assert {n for n, p in again.named_parameters() if p.requires_grad} == {
        n for n, p in policy.named_parameters() if p.requires_grad
    }

    ids, mask, _ = _batch()
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), local_files_only=True)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    want = policy.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    got = merged(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    base = AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"), local_files_only=True)
    peft_model: Any = policy.model
    with peft_model.disable_adapter():
        want_base = policy.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    got_base = base(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    torch.testing.assert_close(got_base, want_base, atol=1e-6, rtol=0)


@NEEDS_PEFT
def test_lora_dropout_only_in_the_update() -> None:
    policy = CausalLMActorCritic(tiny_model(CODEC), lora={"r": 4, "dropout": 0.5})
    _moved_adapters(policy)  # non-zero adapters, so their dropout shows
    policy.eval()
    first = policy.evaluate_actions(*_batch())[0]
    torch.testing.assert_close(policy.evaluate_actions(*_batch())[0], first, atol=0, rtol=0)
    policy.train()
    torch.manual_seed(0)
    noisy = policy.evaluate_actions(*_batch())[0]
    assert not torch.allclose(noisy, first)
    # The model's own dropout stays off in the update (only LoRA's switches).
    assert not any(
        m.training for n, m in policy.named_modules() if "lora_dropout" not in n and n != ""
    )


@NEEDS_PEFT
def test_ppo_with_lora_leaves_the_base_weights() -> None:
    env = CueEnv(num_envs=4, max_new_tokens=3)
    base = tiny_model(env.codec)
    frozen = {n: p.detach().clone() for n, p in base.named_parameters()}
    algo = PPO(base, env, n_epochs=2, learning_rate=1e-2, seed=0, policy_kwargs={"lora": {"r": 2}})
    algo.learn(24)  # two iterations: the second rollout is scored after an update
    assert algo.policy.reference_mode == "adapters"
    peft_model: Any = algo.policy.model
    for name, param in peft_model.get_base_model().named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, frozen[name.replace(".base_layer.", ".")]), name
    assert algo.rollout_stats["rollout/kl_ref"] != 0.0  # the adapters moved the policy


def test_lora_bad_input_raises_named_errors() -> None:
    with pytest.raises(ValueError, match=r"lora\.r=0"):
        LoRAConfig(r=0)
    with pytest.raises(ValueError, match=r"lora\.dropout=1\.0"):
        LoRAConfig(dropout=1.0)
    with pytest.raises(ValueError, match=r"unknown keys \['rank'\]"):
        LoRAConfig.coerce({"rank": 4})
    with pytest.raises(ValueError, match=r"needs a PEFT model.*reference='copy'"):
        CausalLMActorCritic(tiny_model(CODEC), reference="adapters")
    with pytest.raises(ValueError, match=r"reference='adapter' is neither"):
        CausalLMActorCritic(tiny_model(CODEC), reference="adapter")


@NEEDS_PEFT
def test_lora_target_modules_must_exist() -> None:
    with pytest.raises(ValueError, match=r"\['q_proj'\] match no layer.*'c_attn'"):
        CausalLMActorCritic(tiny_model(CODEC), lora={"target_modules": ["c_attn", "q_proj"]})
    model = tiny_model(CODEC)
    model.config.model_type = "mystery"
    with pytest.raises(ValueError, match=r"no default for model_type='mystery'"):
        CausalLMActorCritic(model, lora={})


def test_lora_without_peft_names_the_install(monkeypatch) -> None:
    import marlhf.policy.lora as lora_module

    monkeypatch.setattr(lora_module, "peft_available", lambda: False)
    with pytest.raises(ImportError, match=r"lora needs the optional peft package.*marlhf\[scale\]"):
        CausalLMActorCritic(tiny_model(CODEC), lora={"r": 2})


def _loss_and_grads(policy: CausalLMActorCritic) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    with torch.no_grad():  # the same non-zero value head in every policy
        weight = policy.value_head.weight
        weight.copy_(torch.linspace(-0.2, 0.2, weight.numel()).view_as(weight))
    policy.train()
    logp, entropy, values = policy.evaluate_actions(*_batch())
    mask = RMASK.float()
    loss = (-(logp * mask) - 0.01 * entropy * mask + (values - 1.0) ** 2 * mask).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize(
    "build, lora",
    [(tiny_model, None), (tiny_llama, None), pytest.param(tiny_model, {"r": 4}, marks=NEEDS_PEFT)],
    ids=["gpt2", "llama", "gpt2-lora"],
)
def test_gradient_checkpointing_gives_the_plain_loss_and_gradients(build: Any, lora: Any) -> None:
    model = build(CODEC, n_layer=2) if build is tiny_model else build()
    twin = copy.deepcopy(model)
    plain = CausalLMActorCritic(model, lora=lora)
    checked = CausalLMActorCritic(twin, lora=lora, gradient_checkpointing=True)
    if lora is not None:  # the same non-zero adapters in both
        for (_, a), (_, b) in zip(
            plain.named_parameters(), checked.named_parameters(), strict=True
        ):
            if a.requires_grad:
                with torch.no_grad():
                    a.normal_(std=0.1)
                    b.copy_(a)
    # The recompute really happens: a block's layers run once more, in the backward pass
    # (the block's own hooks stay outside the checkpoint, so count a layer inside it).
    calls = {"n": 0}
    blocks = list(checked._checkpointed_blocks())
    assert len(blocks) == 2
    inner = next(iter(blocks[0].children()))
    inner.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    loss, grads = _loss_and_grads(plain)
    loss_ckpt, grads_ckpt = _loss_and_grads(checked)
    assert calls["n"] == 2
    torch.testing.assert_close(loss_ckpt, loss, atol=1e-6, rtol=0)
    assert grads.keys() == grads_ckpt.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, atol=1e-6, rtol=0, msg=name)


def test_checkpointed_policy_samples_with_its_cache_after_an_update() -> None:
    model = tiny_model(CODEC, n_layer=2)
    plain = CausalLMActorCritic(copy.deepcopy(model), reference=None)
    checked = CausalLMActorCritic(model, reference=None, gradient_checkpointing=True)
    checked.train()  # as PPO leaves it after an update
    runs = []
    for policy in (plain, checked):
        gen = torch.Generator().manual_seed(3)
        state: Any = None
        tokens = []
        for _ in range(5):
            action, state = policy.act(
                {"input_ids": PROMPT, "attention_mask": PMASK}, state, generator=gen
            )
            tokens.append(action)
        runs.append((torch.stack(tokens, 1), state.next_logits))
    assert torch.equal(runs[0][0], runs[1][0])
    torch.testing.assert_close(runs[1][1], runs[0][1], atol=1e-6, rtol=0)


def test_checkpointing_setting_survives_save_and_load(tmp_path) -> None:
    policy = CausalLMActorCritic(tiny_model(CODEC, n_layer=2), gradient_checkpointing=True)
    policy.save_pretrained(tmp_path)
    again = CausalLMActorCritic.from_pretrained(tmp_path)
    assert again.gradient_checkpointing and again.reference_mode == "model"  # the saved copy
    assert len(list(again._checkpointed_blocks())) == 2
