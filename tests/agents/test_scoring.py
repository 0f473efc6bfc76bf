"""Scoring computes only what it uses (the LM head on the response positions, no all-padding
prefix) and gives exactly what the full-sequence forward gave: log-probs, entropies, values,
reference log-probs, gradients and a whole PPO update, plain and with LoRA."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from marlhf.algorithms import PPO
from marlhf.policy.actor_critic import CausalLMActorCritic, length_groups, position_ids_from_mask
from tests.agents.conftest import CueEnv, tiny_model
from tests.agents.test_lora import CODEC, NEEDS_PEFT, tiny_llama

# Two prompt columns are padding in every row (dropped), row 1 has a shorter response, and the
# last response column is padding in every row but row 2.
PROMPT = torch.tensor([[0, 0, 0, 2, 3], [0, 0, 4, 5, 6], [0, 0, 0, 0, 6]])
PMASK = (PROMPT != 0).long()
RESPONSE = torch.tensor([[4, 5, 1, 0], [3, 2, 0, 0], [6, 5, 4, 3]])
RMASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]).bool()
ALLOWED = torch.ones(3, CODEC.vocab_size, dtype=torch.bool)
ALLOWED[1, 6] = False  # row 1 may not take token 6


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.cat([PROMPT, RESPONSE], 1)
    return ids, torch.cat([PMASK, RMASK.long()], 1), RMASK


def full_sequence_forward(
    self: CausalLMActorCritic,
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    n: int,
    hidden: bool,
    logits: bool = True,
    reduce: Any = None,
) -> tuple[Any, torch.Tensor | None]:
    """The scoring forward as it was: every column in, logits at every position, then sliced
    (and, with ``reduce``, scored all rows at once)."""
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=position_ids_from_mask(mask),
        output_hidden_states=hidden,
        use_cache=False,
    )
    p = ids.shape[1] - n
    last = out.hidden_states[-1][:, p - 1 : p + n - 1] if hidden else None
    sliced = out.logits[:, p - 1 : p + n - 1]
    return (sliced if reduce is None else reduce(sliced, slice(None))), last


def _gpt2() -> Any:
    return tiny_model(CODEC, n_layer=2)


POLICIES = {
    "gpt2": lambda: CausalLMActorCritic(_gpt2()),
    "gpt2-critic": lambda: CausalLMActorCritic(_gpt2(), critic=tiny_model(CODEC, seed=1)),
    "llama": lambda: CausalLMActorCritic(tiny_llama()),
    "gpt2-lora": lambda: CausalLMActorCritic(_gpt2(), lora={"r": 4}),
    "llama-lora": lambda: CausalLMActorCritic(tiny_llama(), lora={"r": 4}),
}
PARAMS = [pytest.param(name, marks=[NEEDS_PEFT] if "lora" in name else []) for name in POLICIES]


def _scores(policy: CausalLMActorCritic) -> dict[str, torch.Tensor]:
    """Log-probs, entropies, values, reference log-probs and the gradients of a loss of all."""
    torch.manual_seed(0)
    torch.nn.init.normal_(policy.value_head.weight, std=0.3)
    kw: dict[str, Any] = {"temperature": 0.7, "action_mask": ALLOWED}
    policy.train()
    logp, entropy, values = policy.evaluate_actions(*_batch(), **kw)
    policy.zero_grad()
    (logp.sum() + 0.5 * entropy.sum() + values.square().sum()).backward()
    out = {"logp": logp, "entropy": entropy, "values": values}
    out["ref"] = policy.reference_logprobs(*_batch(), **kw)
    out["plain_logp"] = policy.evaluate_actions(*_batch(), with_values=False)[0]
    for name, p in policy.named_parameters():
        if p.grad is not None:
            out[f"grad {name}"] = p.grad.clone()
    return {k: v.detach() for k, v in out.items()}


@pytest.mark.parametrize("name", PARAMS)
def test_response_only_scoring_equals_the_full_sequence_forward(name: str, monkeypatch) -> None:
    got = _scores(POLICIES[name]())
    monkeypatch.setattr(CausalLMActorCritic, "_forward", full_sequence_forward)
    want = _scores(POLICIES[name]())
    assert got.keys() == want.keys() and any(k.startswith("grad value_head") for k in got)
    for key, value in want.items():  # every entry, padding included
        # Gradients (sums over positions and rows, up to ~300 here) to 1e-6 of their largest
        # entry: rows grouped by length and fewer padding positions sum in another float order.
        scale = max(1.0, float(value.abs().max())) if key.startswith("grad") else 1.0
        torch.testing.assert_close(got[key], value, atol=1e-6 * scale, rtol=0, msg=key)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("name", PARAMS)
def test_the_lm_head_sees_only_the_response_positions(name: str, fused: bool) -> None:
    policy = POLICIES[name]()
    # fused: the scores come from the hidden state and the head's weight, slice by slice
    # (marlhf.policy.head_fusion); the head module itself runs on the last position only.
    policy.fused_head = fused
    shapes: dict[str, list[tuple[int, ...]]] = {"head": [], "embed": []}
    parts: list[Any] = [policy.model, policy.critic, policy.ref_model]
    for part in parts:
        if part is not None:
            head, embed = part.get_output_embeddings(), part.get_input_embeddings()
            head.register_forward_hook(lambda m, i, o: shapes["head"].append(tuple(o.shape)))
            embed.register_forward_hook(lambda m, i, o: shapes["embed"].append(tuple(o.shape)))
    with torch.no_grad():
        policy.evaluate_actions(*_batch())
        policy.reference_logprobs(*_batch())
    n, v = RESPONSE.shape[1], CODEC.vocab_size
    # Rows 1 and 0 run together, row 2 (2 tokens shorter than row 1's 7) alone. The policy
    # and the reference predict the 4 response tokens; a critic's head 1 position.
    policy_heads = [(2, 1, v), (1, 1, v)] if fused else [(2, n, v), (1, n, v)]
    critic = [] if policy.critic is None else [(2, 1, v), (1, 1, v)]
    assert shapes["head"] == [*policy_heads, *critic, *policy_heads]
    # Columns that are padding in every row of a group and the last column are not fed: of the
    # 9 columns, 6 for rows 1 and 0 (from column 2), 4 for row 2 (from column 4).
    width = shapes["embed"][0][2]
    assert set(shapes["embed"]) == {(2, 6, width), (1, 4, width)}


def test_length_groups_keep_alike_rows_together() -> None:
    def groups(firsts: list[int], width: int = 20) -> list[list[int]]:
        mask = (torch.arange(width)[None, :] >= torch.tensor(firsts)[:, None]).long()
        return [g.tolist() for g in length_groups(mask)]

    assert groups([0, 0, 2]) == [[0, 1, 2]]  # spans 20, 20, 18: one group
    assert groups([10, 0, 12, 4, 0]) == [[1, 4, 3], [0, 2]]  # spans 10 and 8 <= 0.75 * 20
    assert groups([19]) == [[0]]


def _policy(lora: bool) -> CausalLMActorCritic:
    torch.manual_seed(0)  # LoRA's initial A
    return CausalLMActorCritic(tiny_model(CODEC, n_layer=2), lora={"r": 4} if lora else None)


def _ppo_update(lora: bool) -> dict[str, torch.Tensor]:
    env = CueEnv(num_envs=4, max_new_tokens=3)
    policy = _policy(lora)
    algo = PPO(policy, env, n_epochs=2, batch_size=2, learning_rate=0.01, kl_coef=0.1, seed=0)
    algo.learn(2 * 4 * 3)
    return {n: p.detach().clone() for n, p in algo.policy.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    "lora", [False, pytest.param(True, marks=NEEDS_PEFT)], ids=["full", "lora"]
)
def test_a_ppo_update_equals_the_full_sequence_forwards(lora: bool, monkeypatch) -> None:
    got = _ppo_update(lora)
    monkeypatch.setattr(CausalLMActorCritic, "_forward", full_sequence_forward)
    want = _ppo_update(lora)
    initial = {k: p.detach() for k, p in _policy(lora).named_parameters()}
    assert max(float((want[k] - initial[k]).abs().max()) for k in want) > 1e-3  # it learned
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, atol=1e-6, rtol=0, msg=key)
