"""The current policy's true advantage ``A(s_t, a_t) = Q(s_t, a_t) - V(s_t)`` of sampled tokens.

The ground truth against which :mod:`marlhf.audit.credit` measures every estimator. The state
``s_t`` is the prompt and the first ``t`` response tokens; values are of the task's return
(``sum_k gamma**k r_{t+k}`` of the env's rewards, without KL shaping) under the policy's
*sampling* distribution: ``softmax(filter(mask(logits / temperature)))`` with the same top-k,
top-p and action mask the agent samples with (:class:`Sampling`). The env is deterministic, so
``Q(s_t, a_t) = r_t + gamma * V(s_{t+1})`` and the advantage is ``r_t + gamma V(s_{t+1}) -
V(s_t)``.

Two methods:

- :func:`exact_advantages` enumerates every continuation of every prompt in the batch, weighs
  each by the policy's probabilities (batched forward passes over the enumerated sequences) and
  backs the values up the tree. Continuations are scored by the task's own env (a
  :class:`~marlhf.envs.BatchedTokenEnv` stepping the enumerated tokens), never by a copy of its
  reward. It needs ``K ** D`` sequences per prompt (``K`` allowed tokens, depth ``D``). ``D`` is
  the horizon, unless the task declares ``decisive_tokens = D``: "the rewards depend only on the
  prompt and the first ``D`` response tokens, and every episode lasts the horizon" (e.g.
  :class:`~marlhf.envs.builtin.credit.CreditSumTask`). Then only the first ``D`` tokens are
  enumerated (any filler completes the sequence for the env), every later token has advantage
  exactly 0, and the cost no longer depends on the horizon.
- :func:`mc_advantages` estimates ``V(s_t)`` at every prefix of every sampled response from
  ``samples`` continuations drawn from the policy, and reports the standard error of each
  advantage (the two values come from independent continuations:
  ``se_A = sqrt(gamma**2 se_V(t+1)**2 + se_V(t)**2)``). Any task; cost ``B * T * samples``
  continuations, all counted in ``stats["mc_tokens"]``.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
from torch import nn

from marlhf.credit.truth_base import (
    Sampling,
    TrueAdvantages,
    check_gamma,
    check_rollouts,
    check_samples,
    env_rewards,
    mc_sampler,
    mc_truth,
    model_and_vocab,
    next_token_logits,
    prompt_tensors,
)
from marlhf.envs.core.batched import BatchedTokenEnv
from marlhf.envs.core.tasks import Prompt, Task


# ----------------------------------------------------------------------------- helpers
def _prompt_key(prompt: Prompt) -> tuple[tuple[int, ...], str]:
    try:
        meta = json.dumps(prompt.metadata, sort_keys=True, default=repr)
    except (TypeError, ValueError):  # unsortable keys: fall back to the repr
        meta = repr(prompt.metadata)
    return tuple(int(i) for i in prompt.ids), meta


def _discounted_tail(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """``out[:, t] = sum_{k >= t} gamma**(k - t) rewards[:, k]`` (``float64[R, H + 1]``)."""
    out = torch.zeros((rewards.shape[0], rewards.shape[1] + 1), dtype=torch.float64)
    for t in range(rewards.shape[1] - 1, -1, -1):
        out[:, t] = rewards[:, t] + gamma * out[:, t + 1]
    return out


def _allowed_tokens(task: Task, sampling: Sampling) -> list[int]:
    vocab = task.codec.vocab_size
    if sampling.action_mask is None:
        return list(range(vocab))
    mask = sampling.action_mask.bool().cpu()
    if mask.shape != (vocab,):
        raise ValueError(
            f"Sampling.action_mask has shape {tuple(mask.shape)}; expected ({vocab},), "
            f"the vocabulary of task {task.name!r}"
        )
    return mask.nonzero().flatten().tolist()


# ----------------------------------------------------------------------------- exact
def _depth(task: Task, decisive: bool, allowed: list[int]) -> int:
    depth = getattr(task, "decisive_tokens", None) if decisive else None
    if depth is None:
        return task.max_new_tokens
    if not isinstance(depth, int) or not 1 <= depth <= task.max_new_tokens:
        raise ValueError(
            f"task {task.name!r}: decisive_tokens={depth!r}; valid: an int in "
            f"[1, {task.max_new_tokens}] (the horizon)"
        )
    eos = task.codec.eos_token_id
    if depth < task.max_new_tokens and eos is not None and eos in allowed:
        raise ValueError(
            f"task {task.name!r} declares decisive_tokens={depth} but its policy may write EOS, "
            "so episodes need not last the horizon; use decisive=False"
        )
    return depth


def _enumerate(allowed: list[int], depth: int, eos: int | None, limit: int) -> list[tuple]:
    """Every token sequence of length ``depth`` over ``allowed`` (cut after EOS)."""
    leaves: list[tuple] = []
    frontier: list[tuple] = [()]
    for _ in range(depth):
        nxt: list[tuple] = []
        for prefix in frontier:
            for a in allowed:
                (leaves if a == eos else nxt).append((*prefix, a))
        frontier = nxt
        if len(leaves) + len(frontier) > limit:
            raise ValueError(
                f"exact truth: more than max_sequences={limit} continuations per prompt "
                f"({len(allowed)} allowed tokens, depth {depth}); raise max_sequences, use "
                "method='mc', or a task that declares decisive_tokens"
            )
    return leaves + frontier


def check_exact(task: Task, sampling: Sampling | None = None, max_sequences: int = 65536) -> int:
    """Continuations per prompt :func:`exact_advantages` would enumerate for ``task`` under
    ``sampling``; raises its ``ValueError`` (naming ``max_sequences`` or ``decisive_tokens``)
    when it cannot, without building a model."""
    sampling = sampling or Sampling()
    allowed = _allowed_tokens(task, sampling)
    depth = _depth(task, True, allowed)
    return len(_enumerate(allowed, depth, task.codec.eos_token_id, max_sequences))


@torch.no_grad()
def exact_advantages(
    policy: nn.Module,
    task: Task,
    prompts: list[Prompt],
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    sampling: Sampling | None = None,
    gamma: float = 1.0,
    decisive: bool = True,
    max_sequences: int = 65536,
    batch_rows: int = 2048,
) -> TrueAdvantages:
    """Exact ``A(s_t, a_t)`` by enumerating continuations (see the module docstring).

    :param policy: a :class:`CausalLMActorCritic` or a causal LM (``forward(input_ids,
        attention_mask, position_ids)`` returning ``.logits``).
    :param task: the task the responses answer (its env scores the continuations).
    :param prompts: one :class:`Prompt` per row.
    :param response_ids: ``int64[B, T]`` sampled responses, right-padded.
    :param response_mask: ``bool[B, T]`` real tokens (a prefix of each row).
    :param sampling: the policy's sampling settings (default: temperature 1, no filter, no mask).
    :param gamma: discount in ``[0, 1]``.
    :param decisive: use the task's ``decisive_tokens`` when it declares them.
    :param max_sequences: most continuations enumerated per prompt (an error beyond).
    :param batch_rows: sequences per forward pass.
    """
    start = time.perf_counter()
    sampling = sampling or Sampling()
    check_gamma("exact_advantages", gamma)
    response_ids, response_mask = response_ids.cpu(), response_mask.cpu().bool()
    check_rollouts(task, prompts, response_ids, response_mask)
    vocab, horizon, pad = task.codec.vocab_size, task.max_new_tokens, task.codec.pad_token_id
    allowed = _allowed_tokens(task, sampling)
    depth = _depth(task, decisive, allowed)
    eos = task.codec.eos_token_id
    model, device = model_and_vocab(policy, vocab)

    keys = [_prompt_key(p) for p in prompts]
    distinct: dict[tuple, Prompt] = {}
    for k, p in zip(keys, prompts, strict=True):
        distinct.setdefault(k, p)
    seqs = _enumerate(allowed, depth, eos, max_sequences)
    filler = next(a for a in allowed if a != eos) if depth < horizon else pad
    leaf_prompts = [p for p in distinct.values() for _ in seqs]
    leaf_keys = [k for k in distinct for _ in seqs]
    leaf_seqs = [s for _ in distinct for s in seqs]
    n = len(leaf_seqs)
    scripts = torch.full((n, horizon), filler, dtype=torch.int64)
    for i, s in enumerate(leaf_seqs):
        scripts[i, : len(s)] = torch.as_tensor(s, dtype=torch.int64)
        if len(s) < depth:  # ended with EOS
            scripts[i, len(s) :] = pad
    rewards, _ = env_rewards(task, leaf_prompts, scripts, batch_rows)
    tails = _discounted_tail(rewards, gamma)

    # Probabilities at every node on each sequence's path: one forward per sequence.
    width = max(len(p.ids) for p in distinct.values())
    p_ids, p_mask = prompt_tensors(leaf_prompts, width, pad)
    probs = torch.zeros((n, depth, vocab), dtype=torch.float64)
    for begin in range(0, n, batch_rows):
        sl = slice(begin, begin + batch_rows)
        resp = scripts[sl, :depth]
        ids = torch.cat([p_ids[sl], resp], dim=1).to(device)
        mask = torch.cat([p_mask[sl], torch.ones_like(resp, dtype=torch.bool)], dim=1).to(device)
        logits = next_token_logits(model, ids, mask, width, vocab)
        probs[sl] = sampling.probs(logits.double()).cpu()

    node_probs: dict[tuple, np.ndarray] = {}
    edge_reward: dict[tuple, float] = {}
    leaf_value: dict[tuple, float] = {}
    for i, (key, s) in enumerate(zip(leaf_keys, leaf_seqs, strict=True)):
        for d in range(len(s)):
            node_probs.setdefault((key, s[:d]), probs[i, d].numpy())
            edge_reward.setdefault((key, s[: d + 1]), float(rewards[i, d]))
        ended = len(s) < depth or depth == horizon
        leaf_value[(key, s)] = 0.0 if ended else float(tails[i, depth])
    values = dict(leaf_value)
    for node in sorted(node_probs, key=lambda n: -len(n[1])):  # children before parents
        key, prefix = node
        pi = node_probs[node]
        values[node] = sum(
            float(pi[a]) * (edge_reward[(key, (*prefix, a))] + gamma * values[(key, (*prefix, a))])
            for a in allowed
            if pi[a] > 0.0
        )

    B, T = response_ids.shape
    adv = torch.zeros((B, T), dtype=torch.float64)
    v_out, q_out = torch.zeros_like(adv), torch.zeros_like(adv)
    seq_index = {(k, s): i for i, (k, s) in enumerate(zip(leaf_keys, leaf_seqs, strict=True))}
    rows = response_ids.tolist()
    lengths = response_mask.sum(dim=1).tolist()
    for b in range(B):
        row, length, key = rows[b], int(lengths[b]), keys[b]
        for t in range(min(length, depth)):
            prefix, child = tuple(row[:t]), tuple(row[: t + 1])
            if (key, child) not in edge_reward:
                raise ValueError(
                    f"exact truth: row {b} token {t} (id {row[t]}) is not among the enumerated "
                    f"tokens {allowed}; pass the action_mask the policy sampled with"
                )
            q = edge_reward[(key, child)] + gamma * values[(key, child)]
            v_out[b, t], q_out[b, t] = values[(key, prefix)], q
            adv[b, t] = q - values[(key, prefix)]
        if length > depth:  # decisive: the rest of the return is fixed, every advantage is 0
            leaf = seq_index[(key, tuple(row[:depth]))]
            v_out[b, depth:length] = tails[leaf, depth:length]
            q_out[b, depth:length] = tails[leaf, depth:length]
    stats = {
        "sequences": float(n),
        "depth": float(depth),
        "forward_tokens": float(n * (width + depth)),
        "env_steps": float(n * horizon),
        "seconds": time.perf_counter() - start,
    }
    return TrueAdvantages(adv, v_out, q_out, None, "exact", stats)


# ----------------------------------------------------------------------------- Monte Carlo
@torch.no_grad()
def _continuation_returns(
    model: nn.Module,
    device: torch.device,
    task: Task,
    prompts: list[Prompt],
    prefixes: torch.Tensor,
    t: int,
    sampling: Sampling,
    gamma: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, int]:
    """Discounted returns from step ``t`` of rows that write ``prefixes[:, :t]`` and then sample
    from the policy; ``(float64[R], tokens sampled)``."""
    horizon, vocab, pad = task.max_new_tokens, task.codec.vocab_size, task.codec.pad_token_id
    env = BatchedTokenEnv(task, num_envs=len(prompts))
    env.reset(options={"prompts": prompts})
    width = task.max_prompt_len
    p_ids, p_mask = prompt_tensors(prompts, width, pad)
    written = torch.full((len(prompts), horizon), pad, dtype=torch.int64)
    returns = torch.zeros(len(prompts), dtype=torch.float64)
    sampled = 0
    for k in range(horizon):
        if k < t:
            actions = prefixes[:, k]
        else:
            ids = torch.cat([p_ids, written[:, :k], torch.full_like(p_ids[:, :1], pad)], dim=1)
            mask = torch.cat([p_mask, torch.ones((len(prompts), k + 1), dtype=torch.bool)], dim=1)
            logits = next_token_logits(model, ids.to(device), mask.to(device), width + k, vocab)
            probs = sampling.probs(logits[:, -1])
            actions = torch.multinomial(probs, 1, generator=generator)[:, 0].cpu()
            sampled += int((~env.done).sum())
        actions = torch.where(env.done, pad, actions)
        written[:, k] = actions
        _, r, *_ = env.step(actions)
        if k >= t:
            returns += gamma ** (k - t) * r.double()
        if env.all_done:
            break
    return returns, sampled


@torch.no_grad()
def mc_advantages(
    policy: nn.Module,
    task: Task,
    prompts: list[Prompt],
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    sampling: Sampling | None = None,
    gamma: float = 1.0,
    samples: int = 64,
    seed: int = 0,
    batch_rows: int = 2048,
) -> TrueAdvantages:
    """Monte-Carlo ``A(s_t, a_t)`` with its standard error (see the module docstring).

    Arguments as in :func:`exact_advantages`, plus:

    :param samples: continuations sampled from each prefix ``s_t`` (at least 2).
    :param seed: seeds the continuations' sampler.
    """
    start = time.perf_counter()
    sampling = sampling or Sampling()
    check_samples("mc_advantages", samples, 2)
    check_gamma("mc_advantages", gamma)
    response_ids, response_mask = response_ids.cpu(), response_mask.cpu().bool()
    check_rollouts(task, prompts, response_ids, response_mask)
    B, T = response_ids.shape
    horizon, pad = task.max_new_tokens, task.codec.pad_token_id
    scripts = torch.full((B, horizon), pad, dtype=torch.int64)
    scripts[:, :T] = torch.where(response_mask, response_ids, pad)
    rewards, _ = env_rewards(task, prompts, scripts, batch_rows)

    # V(s_t) for t < length from `samples` continuations; V(s_length) = 0 (the episode ended).
    values, v_se, tokens = mc_values(
        policy,
        task,
        prompts,
        response_ids,
        response_mask,
        sampling=sampling,
        gamma=gamma,
        samples=samples,
        seed=seed,
        batch_rows=batch_rows,
    )
    zeros_col = torch.zeros((B, 1), dtype=torch.float64)
    v_mean = torch.cat([torch.nan_to_num(values, nan=0.0), zeros_col], dim=1)
    v_se = torch.cat([torch.nan_to_num(v_se, nan=0.0), zeros_col], dim=1)
    stats = {
        "samples": float(samples),
        "mc_tokens": float(tokens),
        "seconds": time.perf_counter() - start,
    }
    return mc_truth(rewards[:, :T], v_mean, v_se, response_mask, gamma, stats)


@torch.no_grad()
def mc_values(
    policy: nn.Module,
    task: Task,
    prompts: list[Prompt],
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    at: torch.Tensor | None = None,
    sampling: Sampling | None = None,
    gamma: float = 1.0,
    samples: int = 64,
    seed: int = 0,
    batch_rows: int = 2048,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Monte-Carlo ``V(s_t)``: the mean discounted return of ``samples`` continuations sampled
    from the policy after each prefix ``s_t`` (the prompt and the first ``t`` response tokens).

    Arguments as in :func:`mc_advantages`, plus:

    :param at: ``bool[B, T]`` the prefixes to estimate (default: every real token's); with
        ``Sampling(top_k=1)`` and ``samples=1`` the value of ``s_0`` is a greedy rollout's return.
    :returns: ``(values, stderr, tokens)``: ``float64[B, T]`` means and standard errors (NaN
        where not estimated; the standard error is NaN with one sample) and the number of
        tokens sampled.
    """
    sampling = sampling or Sampling()
    check_samples("mc_values", samples, 1)
    response_ids, response_mask = response_ids.cpu(), response_mask.cpu().bool()
    check_rollouts(task, prompts, response_ids, response_mask)
    B, T = response_ids.shape
    at = response_mask if at is None else at.cpu().bool() & response_mask
    if at.shape != (B, T):
        raise ValueError(f"mc_values: at has shape {tuple(at.shape)}; expected {(B, T)}")
    model, device, generator = mc_sampler(policy, task.codec.vocab_size, seed)
    horizon, pad = task.max_new_tokens, task.codec.pad_token_id
    scripts = torch.full((B, horizon), pad, dtype=torch.int64)
    scripts[:, :T] = torch.where(response_mask, response_ids, pad)
    v_mean = torch.full((B, T), torch.nan, dtype=torch.float64)
    v_se = torch.full((B, T), torch.nan, dtype=torch.float64)
    tokens = 0
    for t in range(T):
        rows = at[:, t].nonzero().flatten()
        if len(rows) == 0:
            continue
        work = rows.repeat_interleave(samples)
        out = torch.zeros(len(work), dtype=torch.float64)
        for begin in range(0, len(work), batch_rows):
            part = work[begin : begin + batch_rows]
            ret, n = _continuation_returns(
                model,
                device,
                task,
                [prompts[i] for i in part.tolist()],
                scripts[part],
                t,
                sampling,
                gamma,
                generator,
            )
            out[begin : begin + batch_rows] = ret
            tokens += n
        per_row = out.view(len(rows), samples)
        v_mean[rows, t] = per_row.mean(dim=1)
        if samples > 1:
            v_se[rows, t] = per_row.std(dim=1) / samples**0.5
    return v_mean, v_se, tokens


def true_advantages(
    policy: nn.Module,
    task: Task,
    prompts: list[Prompt],
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    method: str = "exact",
    sampling: Sampling | None = None,
    gamma: float = 1.0,
    samples: int = 64,
    seed: int = 0,
) -> TrueAdvantages:
    """:func:`exact_advantages` (``method="exact"``) or :func:`mc_advantages` (``"mc"``)."""
    if method == "exact":
        return exact_advantages(
            policy, task, prompts, response_ids, response_mask, sampling=sampling, gamma=gamma
        )
    if method == "mc":
        return mc_advantages(
            policy,
            task,
            prompts,
            response_ids,
            response_mask,
            sampling=sampling,
            gamma=gamma,
            samples=samples,
            seed=seed,
        )
    raise ValueError(f"true_advantages: method={method!r}; valid: 'exact', 'mc'")
