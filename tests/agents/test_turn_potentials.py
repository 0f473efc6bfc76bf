"""Potentials at turn starts, log p(gold | s_k), against a direct forward of the unpadded
sequence (prompt, episode prefix, gold answer) through the model."""

from __future__ import annotations

import math

import pytest
import torch

from marlhf.algorithms import CausalLMActorCritic
from marlhf.credit.turn_potentials import gold_potentials
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


class _Gold:
    name = "Gold"

    def __init__(self, answer: str) -> None:
        self.answer = answer

    def gold(self) -> str:
        return self.answer


class _NoGold:
    name = "NoGold"


def test_fill_potentials_maps_action_turn_starts_to_episode_columns() -> None:
    from types import SimpleNamespace

    from marlhf.credit.estimators import EstimatorBatch
    from marlhf.credit.turn_potentials import fill_potentials
    from marlhf.tokenization import SymbolCodec

    codec = SymbolCodec([str(i) for i in range(V - 2)])
    policy = CausalLMActorCritic(tiny_gpt2(codec.vocab_size, n_layer=1, n_embd=16, n_head=2))
    # Episode layout: row 0 = a a e e a (two turns, the env's two tokens between), row 1 = a a.
    response_ids = torch.tensor([[3, 4, 5, 6, 7], [3, 8, 0, 0, 0]])
    action_index = torch.tensor([[0, 1, 4, 0, 0], [0, 1, 0, 0, 0]])  # action j -> episode col
    mask = torch.tensor([[True, True, True, False, False], [True, True, False, False, False]])
    turn_ids = torch.tensor([[0, 0, 1, -1, -1], [0, 0, -1, -1, -1]])
    buffer = SimpleNamespace(
        prompt_ids=torch.tensor([[0, 2], [2, 3]]),
        prompt_mask=torch.tensor([[0, 1], [1, 1]]),
        response_ids=response_ids,
        action_index=action_index,
        action_mask=None,
    )
    env = SimpleNamespace(envs=[_Gold("7"), _Gold("12")], codec=codec)
    zeros = torch.zeros(2, 5)
    batch = EstimatorBatch(
        zeros, zeros, mask, mask, turn_ids=turn_ids, num_turns=torch.tensor([2, 1])
    )
    fill_potentials(batch, frozenset({"turns", "turn_potentials"}), policy, buffer, env)
    assert batch.ref_turn_potentials is None and batch.turn_potentials is not None
    gold = [codec.encode("7"), codec.encode("12")]
    cols = torch.tensor([[0, 4], [0, 0]])  # turn 1 of row 0 starts at episode column 4
    valid = torch.tensor([[True, True], [True, False]])
    want = gold_potentials(
        policy, buffer.prompt_ids, buffer.prompt_mask, response_ids, cols, valid, gold
    )
    torch.testing.assert_close(batch.turn_potentials, want)
    env.envs = [_Gold("7"), _NoGold()]
    with pytest.raises(ValueError, match=r"text env NoGold has no gold\(\)"):
        fill_potentials(batch, frozenset({"ref_turn_potentials"}), policy, buffer, env)


def test_fill_potentials_scores_each_model_once_for_every_kind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from marlhf.credit import turn_potentials as tp
    from marlhf.credit.estimators import EstimatorBatch
    from marlhf.tokenization import SymbolCodec

    codec = SymbolCodec([str(i) for i in range(V - 2)])
    policy = CausalLMActorCritic(tiny_gpt2(codec.vocab_size, n_layer=1, n_embd=16, n_head=2))
    with torch.no_grad():  # the reference differs from the policy
        for p in policy.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    response_ids = torch.tensor([[3, 4, 5, 6, 7], [3, 8, 0, 0, 0]])
    mask = torch.tensor([[True, True, True, True, True], [True, True, False, False, False]])
    turn_ids = torch.tensor([[0, 0, 1, 1, 1], [0, 0, -1, -1, -1]])
    buffer = SimpleNamespace(
        prompt_ids=torch.tensor([[0, 2], [2, 3]]),
        prompt_mask=torch.tensor([[0, 1], [1, 1]]),
        response_ids=response_ids,
        action_index=None,
        action_mask=None,
    )
    env = SimpleNamespace(envs=[_Gold("7"), _Gold("12")], codec=codec)
    zeros = torch.zeros(2, 5)
    batch = EstimatorBatch(
        zeros, zeros, mask, mask, turn_ids=turn_ids, num_turns=torch.tensor([2, 1])
    )
    calls: list[str] = []
    real = tp.gold_log_likelihoods

    def counted(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(str(kwargs["source"]))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tp, "gold_log_likelihoods", counted)
    tp.fill_potentials(batch, frozenset(tp.FIELDS), policy, buffer, env)
    assert sorted(calls) == ["policy", "reference"]
    gold = [codec.encode("7"), codec.encode("12")]
    cols = torch.tensor([[0, 2], [0, 0]])
    valid = torch.tensor([[True, True], [True, False]])
    for name, (source, kind) in tp.FIELDS.items():
        want = gold_potentials(
            policy,
            buffer.prompt_ids,
            buffer.prompt_mask,
            response_ids,
            cols,
            valid,
            gold,
            source=source,
            kind=kind,
        )
        torch.testing.assert_close(getattr(batch, name), want, msg=name)
    lengths = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    logp, ref_logp = batch.turn_potentials, batch.ref_turn_potentials
    assert logp is not None and ref_logp is not None
    torch.testing.assert_close(
        batch.turn_mean_probs, torch.where(valid, torch.exp(logp / lengths), 0.0)
    )
    assert float(logp[0, 0]) != float(ref_logp[0, 0])
