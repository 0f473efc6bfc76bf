"""Potentials at turn starts, log p(gold | s_k), against a direct forward of the unpadded
sequence (prompt, episode prefix, gold answer) through the model."""

from __future__ import annotations

import math

import pytest
import torch

from marlhf.agents import CausalLMActorCritic
from marlhf.agents.turn_potentials import gold_potentials
from marlhf.models import tiny_gpt2

V = 11


def reference(model: torch.nn.Module, seq: list[int], n_gold: int) -> float:
    logits = model(torch.tensor([seq])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    start = len(seq) - n_gold
    return sum(float(logp[t - 1, seq[t]]) for t in range(start, len(seq)))


@pytest.mark.parametrize("source", ["policy", "reference"])
def test_gold_potentials_match_a_direct_forward(source: str) -> None:
    torch.manual_seed(0)
    policy = CausalLMActorCritic(tiny_gpt2(V, n_layer=1, n_embd=32, n_head=2, seed=0))
    with torch.no_grad():  # the reference differs from the policy
        for p in policy.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model = policy.model if source == "policy" else policy.ref_model
    assert model is not None
    gen = torch.Generator().manual_seed(1)
    prompt_ids = torch.randint(1, V, (3, 4), generator=gen)
    prompt_mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1]])
    prompt_ids = torch.where(prompt_mask.bool(), prompt_ids, 0)
    response_ids = torch.randint(1, V, (3, 7), generator=gen)
    turn_cols = torch.tensor([[0, 3, 5], [0, 2, 0], [0, 0, 0]])
    valid = torch.tensor([[True, True, True], [True, True, False], [True, False, False]])
    gold = [[4], [5, 6], [7, 8, 9]]
    got = gold_potentials(
        policy,
        prompt_ids,
        prompt_mask,
        response_ids,
        turn_cols,
        valid,
        gold,
        source=source,
        chunk=2,
    )
    probs = gold_potentials(
        policy,
        prompt_ids,
        prompt_mask,
        response_ids,
        turn_cols,
        valid,
        gold,
        source=source,
        kind="mean_prob",
    )
    with torch.no_grad():
        for i in range(3):
            prompt = prompt_ids[i][prompt_mask[i].bool()].tolist()
            for k in range(3):
                if not valid[i, k]:
                    assert float(got[i, k]) == 0.0
                    continue
                col = int(turn_cols[i, k])
                seq = prompt + response_ids[i, :col].tolist() + gold[i]
                want = reference(model, seq, len(gold[i]))
                assert float(got[i, k]) == pytest.approx(want, abs=1e-4)
                assert float(probs[i, k]) == pytest.approx(math.exp(want / len(gold[i])), abs=1e-5)


def test_bad_arguments_are_named() -> None:
    policy = CausalLMActorCritic(tiny_gpt2(V, n_layer=1, n_embd=16, n_head=2, seed=0))
    args = (
        torch.ones(1, 2, dtype=torch.long),
        torch.ones(1, 2),
        torch.ones(1, 3, dtype=torch.long),
    )
    cols, valid = torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"row 0 has an empty gold answer"):
        gold_potentials(policy, *args, cols, valid, [[]])
    with pytest.raises(ValueError, match=r"source='ref' is not valid"):
        gold_potentials(policy, *args, cols, valid, [[1]], source="ref")
    with pytest.raises(ValueError, match=r"kind='prob' is not valid"):
        gold_potentials(policy, *args, cols, valid, [[1]], kind="prob")
