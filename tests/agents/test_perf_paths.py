"""The faster paths of scoring and the update compute what the plain ones do: the sliced
log-softmax-and-gather and the graph-free entropy (bitwise, values and gradients), and an update
whose entropy is only logged (bitwise the parameters of an update that builds its graph)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from marlhf.algorithms import MAPPO, PPO
from marlhf.policy import logprobs as lp
from tests.agents.conftest import CueEnv, tiny_model

B, N = 8, 5


def _plain(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    vocab: int,
    temperature: float,
    allowed: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole-tensor form written out: log_softmax, gather, -sum(p log p)."""
    x = logits[..., :vocab].float()
    if temperature != 1.0:
        x = x / temperature
    if allowed is not None:
        x = x.masked_fill(~allowed[:, None, :], torch.finfo(x.dtype).min)
    logp_all = x.log_softmax(-1)
    plogp = logp_all.exp() * logp_all
    if allowed is not None:
        plogp = plogp.masked_fill(~allowed[:, None, :], 0.0)
    return logp_all.gather(-1, tokens[..., None]).squeeze(-1), -plogp.sum(-1)


CASES = {
    "plain": (1.0, False, 0, torch.float32),
    "temperature": (0.7, False, 0, torch.float32),
    "masked": (1.0, True, 0, torch.float32),
    "cut-vocabulary": (1.3, True, 3, torch.float32),
    "bf16-logits": (1.0, False, 0, torch.bfloat16),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("chunk", [1 << 24, 40, 7])  # one slice; rows of 2; parts of a row
def test_sliced_logprobs_equal_log_softmax_gather_bitwise(case: str, chunk: int) -> None:
    temperature, masked, extra, dtype = CASES[case]
    g = torch.Generator().manual_seed(0)
    b, n, v = 3, 4, 10
    base = (torch.randn(b, n, v + extra, generator=g) * 3).to(dtype)
    tokens = torch.randint(0, v, (b, n), generator=g)
    allowed = None
    if masked:
        allowed = torch.rand(b, v, generator=g) > 0.4
        allowed[torch.arange(b)[:, None], tokens] = True
    upstream = torch.randn(b, n, generator=g)
    got_in = base.clone().requires_grad_(True)
    got = lp.token_logprobs(
        got_in, tokens, vocab_size=v, temperature=temperature, allowed=allowed, chunk_elements=chunk
    )
    (got * upstream).sum().backward()
    want_in = base.clone().requires_grad_(True)
    want, want_entropy = _plain(want_in, tokens, v, temperature, allowed)
    (want * upstream).sum().backward()
    assert got.dtype == torch.float32
    assert torch.equal(got, want)
    assert got_in.grad is not None and want_in.grad is not None
    assert torch.equal(got_in.grad, want_in.grad)
    entropy = lp.token_entropy(
        base, vocab_size=v, temperature=temperature, allowed=allowed, chunk_elements=chunk
    )
    assert torch.equal(entropy, want_entropy.detach())
    full_logp, full_entropy = lp.logp_entropy_full(
        base, tokens, vocab_size=v, temperature=temperature, allowed=allowed
    )
    assert torch.equal(full_logp, want.detach()) and torch.equal(full_entropy, entropy)


def test_slices_cover_every_position_once_within_the_budget() -> None:
    for shape, chunk in (((5, 3, 4), 24), ((2, 7, 4), 9), ((3, 2, 4), 1), ((1, 1, 1), 1 << 24)):
        seen = torch.zeros(shape[:2], dtype=torch.long)
        for rows, cols in lp.row_slices(shape, chunk):
            seen[rows, cols] += 1
            count = len(range(*rows.indices(shape[0]))) * len(range(*cols.indices(shape[1])))
            assert count * shape[2] <= max(chunk, shape[2])
        assert bool((seen == 1).all()), (shape, chunk)


def test_unknown_entropy_mode_is_refused_naming_the_values() -> None:
    env = CueEnv(num_envs=2, max_new_tokens=3)
    algo = PPO(tiny_model(env.codec), env, seed=0)
    ids = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"entropy=.some.*grad.*no_grad.*none"):
        algo.policy.evaluate_actions(
            ids, torch.ones_like(ids), torch.ones(2, 3, dtype=torch.bool), entropy="some"
        )


SETTINGS = {"n_epochs": 2, "batch_size": 4, "learning_rate": 0.002}


def _iteration(cls: type, force_grad_entropy: bool, **kw: Any) -> Any:
    """One rollout and one ``train()``; ``force_grad_entropy`` makes every scoring forward of
    the update build the entropy's graph (the path before the entropy was only logged)."""
    env = CueEnv(num_envs=B, max_new_tokens=N)
    # (Seed 4: every case's rollout earns rewards, so its update moves the weights; with seed
    # 3 most earned none and updated nothing, and the comparisons were of untouched starts.)
    algo = cls(tiny_model(env.codec, seed=0), env, seed=4, **{**SETTINGS, **kw})
    # Scores from whole logits: the bitwise comparison is of the logits path (scoring from the
    # hidden state equals it to 1e-5: tests/agents/test_head_scores.py).
    algo.policy.fused_head = False
    calls: list[str] = []
    evaluate = algo.policy.evaluate_actions

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("entropy", "grad"))
        if force_grad_entropy:
            kwargs["entropy"] = "grad"
        return evaluate(*args, **kwargs)

    algo.policy.evaluate_actions = spy
    algo._setup_learn(1, None, True, "run", False)
    assert algo.collect_rollouts(algo._init_callback(None, False))
    algo.train()
    return algo, calls


def _moved(algo: Any) -> float:
    """The largest change of a policy weight from its seeded start (``_iteration``'s model)."""
    start = dict(tiny_model(CueEnv(num_envs=B, max_new_tokens=N).codec, seed=0).named_parameters())
    return max(
        float((p - start[name]).detach().abs().max())
        for name, p in algo.policy.model.named_parameters()
    )


@pytest.mark.parametrize(
    "cls,kw",
    [
        (PPO, {"preset": "ppo"}),
        (PPO, {"preset": "grpo", "group_size": 2, "kl_coef": 0.05}),
        (MAPPO, {"termination": "ngram:2"}),
    ],
)
def test_logged_only_entropy_updates_bitwise_as_the_graph_path(cls: type, kw: Any) -> None:
    fast, calls = _iteration(cls, False, **kw)
    slow, _ = _iteration(cls, True, **kw)
    assert _moved(fast) > 1e-3  # the update moved the weights: not a comparison of two starts
    # Scoring asks for no entropy (no termination reads it), the update for a logged one.
    assert calls[0] == "none" and set(calls[1:]) == {"no_grad"}
    for (name, p), q in zip(fast.policy.named_parameters(), slow.policy.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert fast.train_stats.keys() == slow.train_stats.keys()
    for key, value in fast.train_stats.items():
        other = slow.train_stats[key]
        assert value == other or (value != value and other != other), key


def test_a_weighted_entropy_keeps_its_graph_and_a_termination_gets_its_entropy() -> None:
    _, calls = _iteration(PPO, False, preset="ppo", ent_coef=0.01)
    assert set(calls[1:]) == {"grad"}
    algo, calls = _iteration(MAPPO, False, termination="entropy:threshold=0.5")
    assert calls[0] == "grad" and algo._rollout_entropy is not None
    assert algo._rollout_entropy.shape == (B, N)


ON_POLICY: dict[str, Any] = {"n_epochs": 1, "batch_size": None, "learning_rate": 0.002}
ON_POLICY_CASES: dict[str, tuple[type, dict[str, Any]]] = {
    "grpo-k3-in-loss": (PPO, {"preset": "grpo", "group_size": 2, "kl_coef": 0.05}),
    "rloo-no-kl": (PPO, {"preset": "rloo", "group_size": 2, "kl_coef": 0.0}),
    "grpo-ngram": (MAPPO, {"preset": "grpo", "group_size": 2, "termination": "ngram:2"}),
}


def _on_policy(case: str, skip: bool, audit_first: bool = False) -> tuple[Any, list[str]]:
    """One iteration of an exactly on-policy update (one epoch of one minibatch), with the
    policy's scoring forward skipped or not; ``audit_first`` reads the rollout between the
    stages and the update (as the credit audit's callback does)."""
    from marlhf.checkpoint.rollout_io import Rollouts

    cls, kw = ON_POLICY_CASES[case]
    env = CueEnv(num_envs=B, max_new_tokens=N)
    algo = cls(tiny_model(env.codec, seed=0), env, seed=3, **{**ON_POLICY, **kw})
    algo.skip_on_policy_scoring = skip
    calls: list[str] = []
    evaluate = algo.policy.evaluate_actions

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append("grad" if torch.is_grad_enabled() else "no_grad")
        return evaluate(*args, **kwargs)

    algo.policy.evaluate_actions = spy
    algo._setup_learn(1, None, True, "run", False)
    assert algo.collect_rollouts(algo._init_callback(None, False))
    if audit_first:
        rollouts = Rollouts.from_algorithm(algo)
        assert torch.equal(rollouts.logprobs, algo.rollout_buffer.logprobs)
    algo.train()
    return algo, calls


def _close(a: float, b: float) -> bool:
    return (a != a and b != b) or abs(a - b) <= 1e-6


@pytest.mark.parametrize("case", sorted(ON_POLICY_CASES))
def test_skipped_on_policy_scoring_updates_as_the_scored_path(case: str) -> None:
    fast, fast_calls = _on_policy(case, skip=True)
    slow, slow_calls = _on_policy(case, skip=False)
    # The skipped path runs the update's forward only; the scored one a no-grad forward first.
    assert fast_calls == ["grad"] and slow_calls == ["no_grad", "grad"]
    for (name, p), q in zip(fast.policy.named_parameters(), slow.policy.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)
    # The buffer holds the policy's log-probs after the update, as if scored before it.
    torch.testing.assert_close(
        fast.rollout_buffer.logprobs, slow.rollout_buffer.logprobs, rtol=0, atol=1e-6
    )
    for stats in ("rollout_stats", "train_stats"):
        a, b = getattr(fast, stats), getattr(slow, stats)
        assert a.keys() == b.keys()
        assert all(_close(a[k], b[k]) for k in a), (stats, a, b)


def test_a_reader_before_the_update_gets_the_scores_and_the_same_update() -> None:
    audited, calls = _on_policy("grpo-k3-in-loss", skip=True, audit_first=True)
    assert calls == ["no_grad", "grad"]  # scored when read, then the update as usual
    plain, _ = _on_policy("grpo-k3-in-loss", skip=False)
    for p, q in zip(audited.policy.parameters(), plain.policy.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    "change",
    # (critic: without a KL, so that the critic alone keeps the scoring forward)
    [
        {"n_epochs": 2},
        {"batch_size": 4},
        {"micro_batch_size": 4},
        {"preset": "ppo", "kl_coef": 0.0},
    ],
    ids=["two-epochs", "two-minibatches", "micro-batches", "critic"],
)
def test_scoring_is_kept_when_the_update_is_not_exactly_on_policy(change: Any) -> None:
    kw = {"preset": "grpo", "group_size": 2, **ON_POLICY, **change}
    if change.get("preset") == "ppo":
        kw.pop("group_size")
    env = CueEnv(num_envs=B, max_new_tokens=N)
    algo = PPO(tiny_model(env.codec, seed=0), env, seed=3, **kw)
    algo._setup_learn(1, None, True, "run", False)
    assert algo.collect_rollouts(algo._init_callback(None, False))
    assert not algo._scores_deferred
    buf = algo.rollout_buffer
    assert buf is not None and bool((buf.logprobs[buf.credit_mask] < 0).all())


def test_the_prefill_runs_the_lm_head_on_the_last_position_only() -> None:
    from marlhf.policy.actor_critic import CausalLMActorCritic

    env = CueEnv(num_envs=3, max_new_tokens=3)
    policy = CausalLMActorCritic(tiny_model(env.codec, n_layer=2))
    shapes: list[tuple[int, ...]] = []
    head: Any = policy.model.get_output_embeddings()  # type: ignore[operator]
    head.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    ids = torch.tensor([[0, 1, 2, 3], [0, 0, 2, 1], [0, 0, 0, 4]])
    mask = (ids > 0).long()
    state = policy.start(ids, mask)
    assert shapes == [(3, 1, env.codec.vocab_size)]
    with torch.no_grad():  # every position's logits, the last one kept: the same values
        first = 1
        full = policy.model(
            input_ids=ids[:, first:],
            attention_mask=mask[:, first:],
            position_ids=(mask[:, first:].cumsum(-1) - 1).clamp(min=0),
        ).logits[:, -1]
    torch.testing.assert_close(state.next_logits, full, rtol=0, atol=1e-6)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])  # Adam, AdamW
def test_the_fused_optimizer_updates_as_the_default_one_to_rounding(weight_decay: float) -> None:
    kw = {"preset": "ppo", "weight_decay": weight_decay, "kl_coef": 0.05}
    plain, _ = _iteration(PPO, False, **kw)
    fused, _ = _iteration(PPO, False, fused_optimizer=True, **kw)
    # The default is PyTorch's own implementation (its choice of for-loop or foreach), untouched.
    assert not plain.optimizer.defaults["fused"] and fused.optimizer.defaults["fused"]
    want = torch.optim.AdamW if weight_decay else torch.optim.Adam
    assert type(plain.optimizer) is want and type(fused.optimizer) is want
    assert _moved(plain) > 1e-3  # the update moved the weights: not a comparison of two starts
    for (name, p), q in zip(
        plain.policy.named_parameters(), fused.policy.parameters(), strict=True
    ):
        torch.testing.assert_close(q, p, atol=1e-6, rtol=0, msg=name)
    for key in ("train/policy_loss", "train/value_loss", "train/approx_kl"):
        assert fused.train_stats[key] == pytest.approx(plain.train_stats[key], abs=1e-5), key


def test_fused_optimizer_must_be_a_flag() -> None:
    env = CueEnv(num_envs=B, max_new_tokens=N)
    with pytest.raises(ValueError, match="fused_optimizer='yes' must be True or False"):
        PPO(tiny_model(env.codec, seed=0), env, fused_optimizer="yes")
