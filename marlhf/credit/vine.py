"""Rollouts that serve a baseline: Monte-Carlo continuations from segment starts ("vine"
rollouts, VinePPO arXiv 2410.01679) and greedy rollouts of the same prompts (ReMax 2310.10505).

Continuations never re-prefill the prefix: the rollout's KV cache is *forked*, a batch-indexed
copy of the rows that branch, with the columns past each branch point masked out. To branch at
response token ``t`` (the state ``prompt + response[:t]``), the fork keeps the cache columns
before the last token of that prefix, masks the rest, and feeds that last token again (the
prompt's last token when ``t = 0``): one token of compute per branch instead of a prefill, and
its logits are the next-token distribution at the branch point. A multi-turn rollout's cache
has per-row gaps (the env's forced tokens, pad-filled per step): :func:`fork_turn_state` maps a
turn start to its cache column and forks the same way; the env side replays the prefix.

Every generated token is counted by the caller (``num_timesteps`` and ``mc_tokens``), so
comparisons stay compute-matched.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from marlhf.policy import static_decode
from marlhf.policy.actor_critic import CausalLMActorCritic, GenerationState


def fork_cache(cache: Any, rows: torch.Tensor, length: int) -> Any:
    """A copy of ``cache`` holding batch rows ``rows`` (repeats allowed) and its first
    ``length`` columns; the original is untouched (its tensors are indexed, not modified). A
    static cache (``decode="static"``) forks as a dynamic one."""
    if static_decode.is_static(cache):
        return fork_cache(static_decode.to_dynamic(cache, length), rows, length)
    forked = copy.copy(cache)
    forked.layers = [copy.copy(layer) for layer in cache.layers]
    forked.batch_select_indices(rows)
    extra = forked.get_seq_length() - length
    if extra > 0:  # a negative count removes that many trailing columns
        forked.crop(-extra)
    return forked


def _prompt_window(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The window the cache was prefilled with and its width: ``CausalLMActorCritic.start``
    drops the window's leading all-padding columns before the prefill, so the cache's prompt
    part is what is left of the window."""
    first = int(prompt_mask.bool().any(dim=0).long().argmax())
    prompt_ids = prompt_ids[:, first:]
    return prompt_ids, int(prompt_ids.shape[1])


def _branch(
    policy: CausalLMActorCritic,
    state: GenerationState,
    rows: torch.Tensor,
    last_col: torch.Tensor,
    tokens: torch.Tensor,
) -> GenerationState:
    """Fork ``state``'s cache for ``rows``, keep each branch's columns before ``last_col``
    (masked by the rollout's own mask, so its gaps stay gaps), and feed ``tokens`` (the token
    the rollout wrote at ``last_col``) again at its position: one token of compute per
    branch. ``next_logits`` are then the next-token distributions at the branch points."""
    keep = int(last_col.max()) if len(rows) else 0
    cache = fork_cache(state.cache, rows, keep)
    cols = torch.arange(keep, device=rows.device)
    mask = state.attention_mask[rows, :keep] * (cols[None, :] < last_col[:, None]).long()
    # (not ones_like(mask[:, :1]): with nothing kept, e.g. a one-token prompt branched at its
    # start, that is empty and the token would be fed with no attention mask column)
    mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
    out = policy.model(
        input_ids=tokens[:, None],
        attention_mask=mask,
        position_ids=mask[:, :-1].sum(dim=1, keepdim=True),
        use_cache=True,
        **{policy._cache_kw: cache},
    )
    return GenerationState(
        cache=getattr(out, policy._cache_kw),
        attention_mask=mask,
        next_position=mask.sum(dim=1),
        next_logits=out.logits[:, -1, : policy.vocab_size].float(),
    )


def fork_state(
    policy: CausalLMActorCritic,
    state: GenerationState,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    rows: torch.Tensor,
    starts: torch.Tensor,
) -> GenerationState:
    """Branch the rollout's recurrent state at ``(rows[i], starts[i])``.

    :param state: the rollout's last :class:`GenerationState`: its cache holds the ``L`` prompt
        columns, then response token ``t`` at column ``L + t`` (for every token fed so far).
    :param prompt_ids: ``int64[B, L]`` the window the cache was prefilled with at reset (the
        prompt right-aligned, left padding).
    :param prompt_mask: ``[B, L]`` its attention mask.
    :param response_ids: ``int64[B, N]`` the sampled responses.
    :param rows: ``int64[M]`` the row each branch continues.
    :param starts: ``int64[M]`` the branch point ``t``: the state ``prompt + response[:t]``.
    :return: the state of the ``M`` branches, ``next_logits`` at their branch points.
    """
    prompt_ids, width = _prompt_window(prompt_ids, prompt_mask)
    last_col = width + starts - 1  # the column of the prefix's last token, fed again
    tokens = torch.where(
        starts > 0,
        response_ids[rows, (starts - 1).clamp(min=0)],
        prompt_ids[rows, width - 1],
    )
    return _branch(policy, state, rows, last_col, tokens)


def fork_turn_state(
    policy: CausalLMActorCritic,
    state: GenerationState,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    action_index: torch.Tensor,
    step_widths: Sequence[int],
    rows: torch.Tensor,
    cols: torch.Tensor,
) -> GenerationState:
    """Branch a multi-turn rollout's recurrent state before action ``cols[i]`` of row
    ``rows[i]`` (a turn start: the state ``prompt + episode[:action_index[row, col]]``).

    A multi-turn rollout's cache is not the episode laid out flat: step ``s`` fed the action
    sampled at step ``s`` and the ``step_widths[s]`` columns of forced tokens the env returned
    with it (pad-filled past each row's own count and masked, so rows have gaps). Every active
    row takes one action per step, so action ``j`` of a row was sampled at step ``j``, and the
    token before it (the last of the prefix) lies in the block of step ``j - 1`` at its offset
    from action ``j - 1``. That column is found, the columns before it kept with the rollout's
    own mask and position ids, and its token fed again (:func:`fork_state` for one turn).

    :param state: the rollout's last state: the prompt window's columns, then a block of
        ``1 + step_widths[s]`` columns for every step but the last (whose action is pending).
    :param prompt_ids: ``int64[B, L]`` the window the cache was prefilled with at reset.
    :param prompt_mask: ``[B, L]`` its attention mask.
    :param response_ids: ``int64[B, N]`` the episodes (actions and forced tokens, no gaps).
    :param action_index: ``int64[B, N]`` the episode column of each row's action ``j``.
    :param step_widths: the forced tokens' width at every step of the rollout (0 when the env
        returned none), as the collector fed them.
    :param rows: ``int64[M]`` the row each branch continues.
    :param cols: ``int64[M]`` the action each branch starts at.
    :return: the state of the ``M`` branches, ``next_logits`` at their branch points.
    """
    prompt_ids, width = _prompt_window(prompt_ids, prompt_mask)
    device = rows.device
    sizes = [1 + int(w) for w in step_widths]
    fed = width + sum(sizes[:-1])  # the last step's action is pending, never fed
    if state.attention_mask.shape[1] != fed:
        raise ValueError(
            f"fork_turn_state: the cache holds {state.attention_mask.shape[1]} columns, but a "
            f"prompt window of {width} and step_widths ({len(sizes)} steps, {sum(sizes)} "
            f"columns) give {fed}; pass the forced widths of every step of the rollout whose "
            "state this is"
        )
    blocks = torch.tensor(sizes, dtype=torch.long, device=device)
    block_start = width + torch.cumsum(blocks, dim=0) - blocks
    prev = (cols - 1).clamp(min=0)
    prefix = action_index[rows, cols]
    offset = prefix - 1 - action_index[rows, prev]
    if len(rows) and bool(((cols > 0) & ((offset < 0) | (offset >= blocks[prev]))).any()):
        raise ValueError(
            "fork_turn_state: a prefix's last token lies outside its step's cache block; "
            "action_index and step_widths are not from the same rollout"
        )
    last_col = torch.where(cols > 0, block_start[prev] + offset, width - 1)
    tokens = torch.where(
        cols > 0,
        response_ids[rows, (prefix - 1).clamp(min=0)],
        prompt_ids[rows, width - 1],
    )
    return _branch(policy, state, rows, last_col, tokens)


@dataclass
class BaselineRollout:
    """What an auxiliary rollout returned: the return of each row and the tokens generated."""

    returns: torch.Tensor
    tokens: int


@torch.no_grad()
def run_to_end(
    policy: CausalLMActorCritic,
    env: Any,
    obs: dict[str, torch.Tensor],
    state: GenerationState | None,
    *,
    sampling: dict[str, Any],
    deterministic: bool,
    generator: torch.Generator | None,
    action_mask: torch.Tensor | None,
    device: torch.device,
) -> BaselineRollout:
    """Step ``env`` (just reset) until every row is done; sum each row's task rewards.

    :param state: the branches' forked state, or ``None`` to prefill from ``obs`` (a fresh
        rollout of the reset prompts, e.g. ReMax's greedy one).
    """
    pad = int(env.codec.pad_token_id)
    n = int(env.num_envs)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    returns = torch.zeros(n, dtype=torch.float64, device=device)
    tokens = 0
    while not bool(done.all()):
        actions, state = policy.act(
            obs,
            state,
            deterministic=deterministic,
            generator=generator,
            action_mask=action_mask,
            **sampling,
        )
        actions = actions.masked_fill(done, pad)
        state.pending = actions
        _, rewards, terminated, truncated, info = env.step(actions.to(env.device))
        if "forced_ids" in info:  # a multi-turn env's observation, fed with the action
            state.forced = torch.as_tensor(info["forced_ids"], device=device)
            state.forced_lengths = torch.as_tensor(info["forced_lengths"], device=device)
        else:
            state.forced = state.forced_lengths = None
        active = ~done
        tokens += int(active.sum())
        returns += torch.where(active, torch.as_tensor(rewards, device=device).double(), 0.0)
        done = (
            done
            | torch.as_tensor(terminated, device=device)
            | torch.as_tensor(truncated, device=device)
        )
    return BaselineRollout(returns.float(), tokens)


def choose_branch_points(starts: torch.Tensor, mask: torch.Tensor, budget: int) -> torch.Tensor:
    """``bool[B, T]``: at most ``budget`` segment starts per row, always the first token, the
    rest evenly spread over the row's starts (all of them when they fit)."""
    out = torch.zeros_like(starts)
    for b in range(starts.shape[0]):
        cols = torch.nonzero(starts[b] & mask[b]).flatten()
        if len(cols) == 0:
            continue
        if len(cols) > budget:
            pick = torch.linspace(0, len(cols) - 1, budget).round().long()
            cols = cols[pick.unique()]
        out[b, cols] = True
    return out


@torch.no_grad()
def monte_carlo_values(
    policy: CausalLMActorCritic,
    env: Any,
    state: GenerationState,
    prompts: list[Any],
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    branch: torch.Tensor,
    k: int,
    *,
    sampling: dict[str, Any],
    generator: torch.Generator | None,
    action_mask: torch.Tensor | None,
    device: torch.device,
    prefix_lengths: torch.Tensor | None = None,
    step_widths: Sequence[int] | None = None,
) -> tuple[torch.Tensor, int]:
    """The mean return of ``k`` continuations from every branch point.

    The env is reset in chunks of ``num_envs`` rows (``num_envs / k`` branch points, ``k``
    rows each: option ``group_size=k`` with the branches' prompts and response prefixes: the
    env replays each prefix, no model involved); the policy continues each row from its forked
    cache.

    Compute: ``tokens`` counts the generated continuation tokens (what the caller adds to
    ``num_timesteps`` and ``mc_tokens``). Beside them, a forked branch costs one forward token
    (the prefix's last token fed again), for ``k`` rows per branch point. The multi-turn path
    used to re-prefill the prompt window and the episode prefix for every continuation row
    (``L + action_index[b, t]`` tokens each, ``k`` times per branch point); it forks too now,
    given ``step_widths``. Neither the fed-again token nor a prefill is counted in ``tokens``.

    :param prompts: the env's ``Prompt`` of each rollout row (``info["prompts"]`` at reset).
    :param branch: ``bool[B, T]`` the branch points (see :func:`choose_branch_points`).
    :param prefix_lengths: multi-turn rollouts: ``int64[B, T]`` the episode prefix before each
        column of ``branch`` (its action layout's ``action_index``).
    :param step_widths: multi-turn rollouts: the forced tokens' width at every step of the
        rollout (see :func:`fork_turn_state`); the continuations fork the rollout's cache.
        ``None`` with ``prefix_lengths``: they prefill the replayed env's window instead (the
        reference the forked path is tested against; same tokens and values).
    :return: ``(values float[B, T], tokens)``: NaN off the branch points.
    """
    n = int(env.num_envs)
    if n % k:
        raise ValueError(f"mc_rollouts={k} must divide num_envs={n}")
    per_chunk = n // k
    rows, cols = torch.nonzero(branch, as_tuple=True)
    # Branches at similar depths share a chunk, so each chunk's fork keeps only the cache
    # columns its deepest branch needs (masked columns still cost attention).
    order = torch.argsort(cols, stable=True)
    rows, cols = rows[order], cols[order]
    values = torch.full(branch.shape, float("nan"), device=branch.device)
    tokens = 0
    for begin in range(0, len(rows), per_chunk):
        r, c = rows[begin : begin + per_chunk], cols[begin : begin + per_chunk]
        real = len(r)
        if real < per_chunk:  # fill the chunk by repeating its last branch; ignored below
            r = torch.cat([r, r[-1:].expand(per_chunk - real)])
            c = torch.cat([c, c[-1:].expand(per_chunk - real)])
        r_rep, c_rep = r.repeat_interleave(k), c.repeat_interleave(k)
        cut = c if prefix_lengths is None else prefix_lengths[r, c]
        options = {
            "group_size": k,
            "prompts": [prompts[int(i)] for i in r],
            "prefixes": [
                response_ids[int(i), : int(t)].tolist() for i, t in zip(r, cut, strict=True)
            ],
        }
        obs, _ = env.reset(options=options)
        obs = {key: torch.as_tensor(v, device=device) for key, v in obs.items()}
        forked = None
        if prefix_lengths is None:
            forked = fork_state(policy, state, prompt_ids, prompt_mask, response_ids, r_rep, c_rep)
        elif step_widths is not None:
            forked = fork_turn_state(
                policy,
                state,
                prompt_ids,
                prompt_mask,
                response_ids,
                prefix_lengths,
                step_widths,
                r_rep,
                c_rep,
            )
        mask = None if action_mask is None else action_mask[r_rep]
        result = run_to_end(
            policy,
            env,
            obs,
            forked,
            sampling=sampling,
            deterministic=False,
            generator=generator,
            action_mask=mask,
            device=device,
        )
        tokens += result.tokens
        means = result.returns.view(per_chunk, k).mean(dim=1)[:real]
        values[rows[begin : begin + real], cols[begin : begin + real]] = means.to(values.dtype)
    return values, tokens
