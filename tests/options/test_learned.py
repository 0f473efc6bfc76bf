"""The learned termination: its model, its weights as data, its oracle and its training."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable

import pytest
import torch

from marlhf.algorithms.termination_training import (
    base_starts,
    batch_oracle_cuts,
    estimator_errors,
    oracle_cuts,
    target_advantages,
)
from marlhf.checkpoint.data import termination_data, termination_from_data
from marlhf.credit.advantages import compute_gae
from marlhf.credit.truth import Sampling
from marlhf.envs import make_task
from marlhf.options import (
    CutBudget,
    Learned,
    SegmentationBatch,
    build_termination,
    compute_starts,
    make_termination,
    termination_config,
)


def _batch(seed: int = 0, rows: int = 6, width: int = 12) -> SegmentationBatch:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(rows, width, dtype=torch.bool)
    mask[1, 9:] = False
    lp = -torch.rand(rows, width, generator=gen) * 3
    return SegmentationBatch.build(
        torch.randint(0, 50, (rows, width), generator=gen),
        mask,
        frozenset({"logprobs", "entropy", "values"}),
        logprobs=lp,
        entropy=torch.rand(rows, width, generator=gen) * 2,
        values=torch.randn(rows, width, generator=gen),
    )


def test_fit_step_learns_a_cut_set_the_heuristics_do_not_make() -> None:
    """Target: the two LOWEST-entropy candidates of each row (the entropy rule's opposite)."""
    term = make_termination("learned:budget=2;lr=0.03;hidden=16")
    assert isinstance(term, Learned)
    batch = _batch()
    ent = batch.entropy
    assert ent is not None
    target = CutBudget("t", budget=2).select(-ent, batch.mask)
    before = compute_starts(term, batch) & ~base_starts(batch.mask, False)
    for _ in range(300):
        loss = term.fit_step(batch, target)
    assert loss < math.log(2) + 0.1  # the floor: a uniform target over two cuts
    after = compute_starts(term, batch) & ~base_starts(batch.mask, False)
    assert torch.equal(after, target)
    assert not torch.equal(before, target)
    entropy_rule = compute_starts(make_termination("entropy:budget=2"), batch)
    assert not (entropy_rule & target).any()


def test_weights_save_and_load_as_data() -> None:
    term = make_termination("learned:budget=3;steps=5")
    assert isinstance(term, Learned)
    batch = _batch(1)
    assert batch.values is not None
    term.fit_step(batch, CutBudget("t", budget=3).select(batch.values, batch.mask))
    term.bind("GPT2LMHeadModel-h16", 50)
    config = termination_config(term)
    assert config["name"] == "learned" and "state" in config["kwargs"]
    again = build_termination(config)
    assert isinstance(again, Learned)
    assert torch.equal(again.scores(batch), term.scores(batch))
    assert (again.arch, again.vocab_size, again.cut_budget.budget, again.steps) == (
        "GPT2LMHeadModel-h16",
        50,
        3,
        5,
    )
    # the checkpoint path stores it as data too, and rebuilds the same rule
    data = termination_data(term)
    assert "state" in data["kwargs"]
    loaded = termination_from_data(data)
    assert torch.equal(compute_starts(loaded, batch), compute_starts(term, batch))
    # an untrained one saves without weights
    assert "state" not in termination_config(make_termination("learned:budget=3"))["kwargs"]


def test_spec_names_trained_weights_only_in_this_process() -> None:
    term = make_termination("learned:budget=2")
    assert isinstance(term, Learned)
    batch = _batch(2)
    assert term.spec == "learned:budget=2"
    term.fit_step(batch, CutBudget("t", budget=2).select(batch.logprobs, batch.mask))  # type: ignore[arg-type]
    spec = term.spec
    assert spec.startswith("learned:budget=2;trained=")
    again = make_termination(spec)
    assert isinstance(again, Learned)
    assert torch.equal(again.scores(batch), term.scores(batch))
    with pytest.raises(ValueError, match=r"trained='w00000000000' names weights this process"):
        make_termination("learned:budget=2;trained=w00000000000")


def test_bad_state_names_the_field() -> None:
    state = termination_config(_trained())["kwargs"]["state"]
    with pytest.raises(ValueError, match=r"learned: state\['conv.weight'\] has .* hidden=8"):
        Learned(budget=2, hidden=8, state=state)
    with pytest.raises(ValueError, match=r"learned: state has parameters \['x'\]"):
        Learned(budget=2, state={"x": [1.0]})


def _trained() -> Learned:
    term = Learned(budget=2)
    batch = _batch(3)
    term.fit_step(batch, CutBudget("t", budget=2).select(batch.logprobs, batch.mask))  # type: ignore[arg-type]
    return term


def test_another_architecture_or_vocabulary_is_refused() -> None:
    term = _trained()
    term.bind("GPT2LMHeadModel-h64", 12)
    term.bind("GPT2LMHeadModel-h64", 12)  # the same policy: fine
    with pytest.raises(ValueError, match=r"learned: arch='GPT2LMHeadModel-h64'.*LlamaForCausalLM"):
        term.bind("LlamaForCausalLM-h64", 12)
    with pytest.raises(ValueError, match=r"vocab_size=12.*\(50257 tokens\); valid: 12 only"):
        term.bind("GPT2LMHeadModel-h64", 50257)
    loaded = build_termination(termination_config(term))
    assert isinstance(loaded, Learned)
    with pytest.raises(ValueError, match=r"learned: vocab_size=12"):
        loaded.bind("GPT2LMHeadModel-h64", 13)


def _gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    def advantages_of(starts: torch.Tensor) -> torch.Tensor:
        k = starts.shape[0] // rewards.shape[0]
        rep = (k, 1)
        return compute_gae(
            rewards.repeat(rep), values.repeat(rep), mask.repeat(rep), starts
        ).advantages

    return advantages_of


def test_oracle_with_one_cut_is_the_brute_force_best() -> None:
    gen = torch.Generator().manual_seed(0)
    b, t = 5, 9
    mask = torch.arange(t)[None] < torch.tensor([9, 9, 7, 4, 9])[:, None]
    rewards = torch.zeros(b, t)
    rewards[torch.arange(b), mask.sum(1) - 1] = torch.rand(b, generator=gen)
    values = torch.rand(b, t, generator=gen)
    true = torch.randn(b, t, generator=gen).double() * mask
    fn = _gae(rewards, values, mask)
    cuts = oracle_cuts(fn, true, mask, CutBudget("o", budget=1))
    for row in range(b):
        n = int(mask[row].sum())
        errors = {}
        for c in range(1, n - 1):
            starts = base_starts(mask, True)
            starts[row, c] = True
            errors[c] = float(estimator_errors(fn, starts, true, mask)[row])
        assert cuts[row].nonzero().flatten().tolist() == [min(errors, key=errors.__getitem__)]


def test_oracle_beats_every_cut_set_of_a_heuristic() -> None:
    gen = torch.Generator().manual_seed(1)
    b, t = 4, 8
    mask = torch.ones(b, t, dtype=torch.bool)
    rewards = torch.zeros(b, t)
    rewards[:, -1] = torch.rand(b, generator=gen)
    values = torch.rand(b, t, generator=gen)
    true = torch.randn(b, t, generator=gen).double()
    fn = _gae(rewards, values, mask)
    oracle = oracle_cuts(fn, true, mask, CutBudget("o", budget=2)) | base_starts(mask, True)
    assert torch.equal(oracle.sum(1), torch.full((b,), 4))
    ours = estimator_errors(fn, oracle, true, mask)
    # greedy is not always optimal, but it beats the median 2-cut set of every row
    for row in range(b):
        errs = []
        for pair in itertools.combinations(range(1, t - 1), 2):
            starts = base_starts(mask, True)
            starts[row, list(pair)] = True
            errs.append(float(estimator_errors(fn, starts, true, mask)[row]))
        assert float(ours[row]) <= sorted(errs)[len(errs) // 2] + 1e-12


def test_exact_target_needs_a_decisive_depth() -> None:
    task = make_task("Reverse")
    with pytest.raises(ValueError, match=r"learned: target='exact' needs a task with a decisive"):
        target_advantages(
            "exact",
            None,
            task,
            [],
            torch.zeros(0, 4).long(),
            torch.zeros(0, 4, dtype=torch.bool),
            Sampling(),
        )


def test_only_recent_trained_specs_are_held() -> None:
    from marlhf.options import learned as learned_module

    term = Learned(budget=2, lr=0.05)
    batch = _batch(4)
    assert batch.values is not None
    target = CutBudget("t", budget=2).select(batch.values, batch.mask)
    specs = []
    for _ in range(learned_module._KEEP_TRAINED + 1):
        term.fit_step(batch, target)
        specs.append(term.spec)
    assert len(set(specs)) == len(specs)
    make_termination(specs[-1])
    with pytest.raises(ValueError, match="names weights this process does not hold"):
        make_termination(specs[0])


def test_saved_optimizer_state_resumes_training_exactly() -> None:
    """save -> load -> one more step equals the uninterrupted run; weights alone do not."""
    batch = _batch(5)
    assert batch.values is not None
    target = CutBudget("t", budget=2).select(batch.values, batch.mask)
    straight = Learned(budget=2, lr=0.05)
    for _ in range(3):
        straight.fit_step(batch, target)
    config = termination_config(straight)
    moments = config["kwargs"]["optimizer"]
    assert moments["step"] == 3 and set(moments["exp_avg"]) == set(config["kwargs"]["state"])
    assert config["kwargs"]["updates"] == 3
    resumed = build_termination(json.loads(json.dumps(config)))  # through JSON, as a checkpoint
    assert isinstance(resumed, Learned) and resumed.updates == 3
    weights_only = Learned(budget=2, lr=0.05, state=config["kwargs"]["state"])
    straight.fit_step(batch, target)
    resumed.fit_step(batch, target)
    weights_only.fit_step(batch, target)
    for name, value in straight.state().items():
        assert resumed.state()[name] == value, name
    assert weights_only.state() != straight.state()  # a fresh Adam takes another step
    assert termination_config(resumed) == termination_config(straight)
    # the spec names the weights, not the optimizer or the counters
    assert "optimizer" not in straight.spec and "updates" not in straight.spec


def test_bad_optimizer_state_names_the_field() -> None:
    kwargs = termination_config(_trained())["kwargs"]
    state, moments = kwargs["state"], kwargs["optimizer"]
    with pytest.raises(ValueError, match=r"learned: optimizer has keys \['step'\]; expected"):
        Learned(budget=2, state=state, optimizer={"step": 1})
    with pytest.raises(ValueError, match=r"learned: optimizer\['step'\]=0 must be an integer >= 1"):
        Learned(budget=2, state=state, optimizer={**moments, "step": 0})
    with pytest.raises(ValueError, match=r"learned: optimizer given without the weights"):
        Learned(budget=2, optimizer=moments)
    small = Learned(budget=2, hidden=8)
    batch = _batch(3)
    assert batch.logprobs is not None
    small.fit_step(batch, CutBudget("t", budget=2).select(batch.logprobs, batch.mask))
    other = small.optimizer_state()
    assert other is not None
    with pytest.raises(ValueError, match=r"learned: optimizer\['exp_avg'\]\['conv.weight'\] has"):
        Learned(budget=2, state=state, optimizer={**moments, "exp_avg": other["exp_avg"]})
    with pytest.raises(ValueError, match=r"learned: updates=-1 must be an integer >= 0"):
        Learned(budget=2, updates=-1)


def test_batch_oracle_places_one_cut_where_the_whole_batch_gains_most() -> None:
    gen = torch.Generator().manual_seed(3)
    b, t = 4, 8
    mask = torch.arange(t)[None] < torch.tensor([8, 6, 8, 5])[:, None]
    rewards = torch.zeros(b, t)
    rewards[torch.arange(b), mask.sum(1) - 1] = torch.rand(b, generator=gen)
    values = torch.rand(b, t, generator=gen)
    true = torch.randn(b, t, generator=gen).double() * mask
    fn = _gae(rewards, values, mask)
    base = base_starts(mask, True)
    total = float(estimator_errors(fn, base, true, mask).sum())
    best, where = -math.inf, (-1, -1)
    for row in range(b):
        for col in range(1, int(mask[row].sum()) - 1):
            starts = base.clone()
            starts[row, col] = True
            gain = total - float(estimator_errors(fn, starts, true, mask).sum())
            if gain > best:
                best, where = gain, (row, col)
    one = batch_oracle_cuts(fn, true, mask, 1)
    assert one.nonzero().tolist() == [list(where)]
    six = batch_oracle_cuts(fn, true, mask, 6)  # greedy: the first cut stays, errors only fall
    assert int(six.sum()) == 6 and bool((six >= one).all())
    assert float(estimator_errors(fn, base | six, true, mask).sum()) <= total - best + 1e-12
    # at the same number of cuts it is at least as good as some per-episode allocation here
    per_row = oracle_cuts(fn, true, mask, CutBudget("o", budget=1)) | base
    assert int((per_row & ~base).sum()) == 4
    four = batch_oracle_cuts(fn, true, mask, 4) | base
    assert float(estimator_errors(fn, four, true, mask).sum()) <= float(
        estimator_errors(fn, per_row, true, mask).sum()
    )


def test_per_batch_places_budget_times_rows_cuts_and_learns_the_batch_target() -> None:
    term = Learned(budget=2, per="batch", lr=0.05)
    batch = _batch(7)
    base = base_starts(batch.mask, False)
    cuts = compute_starts(term, batch) & ~base & ~base_starts(batch.mask, True)
    assert int(cuts.sum()) == 2 * batch.mask.shape[0]  # 12 cuts, however spread
    # a target with all 12 cuts in two rows: per episode it cannot be reached, per batch it can
    cand = CutBudget("t", budget=1).candidates(batch.mask)
    target = torch.zeros_like(batch.mask)
    target[0, 1:7] = True
    target[2, 3:9] = True
    assert bool((target <= cand).all())
    for _ in range(300):
        term.fit_step(batch, target)
    got = compute_starts(term, batch) & cand
    assert torch.equal(got, target)
    again = build_termination(json.loads(json.dumps(termination_config(term))))
    assert isinstance(again, Learned) and again.per == "batch"
    assert torch.equal(compute_starts(again, batch), compute_starts(term, batch))
    assert "per=batch" in term.spec
    with pytest.raises(
        ValueError, match=r"learned: per='row' is not one of \('episode', 'batch'\)"
    ):
        Learned(budget=2, per="row")
    with pytest.raises(ValueError, match=r"learned: per='batch' needs budget="):
        Learned(length=3.0, per="batch")
