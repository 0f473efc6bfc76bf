"""Potentials at turn starts: ``Phi(s_k) = log p(gold | s_k)`` under the policy or the reference.

IGPO (arXiv 2510.14967) and TRACE score a state by the model's belief in the gold answer; the
``turn_potential`` estimator turns those scores into per-turn rewards ``Phi(s') - Phi(s)``. This
module computes them: for every turn ``k`` of every row, the episode up to the start of turn
``k`` (the prompt, the agent's earlier turns and the env's answers) followed by the gold answer's
tokens is scored teacher-forced, in one forward per chunk of (row, turn) pairs, and

- ``kind="logprob"``: ``Phi = sum_j log p(g_j | s_k, g_<j)`` (the log-probability of the gold
  answer);
- ``kind="mean_prob"``: ``Phi = exp(mean_j log p(g_j | s_k, g_<j))`` (IGPO's length-normalised
  probability).

The gold answer comes from the env (a text env's optional ``gold() -> str``), tokenised with the
task's codec; a row without one is an error naming the env.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from marlhf.credit.turn_maths import turn_layout

KINDS: tuple[str, ...] = ("logprob", "mean_prob")
SOURCES: tuple[str, ...] = ("policy", "reference")


@torch.no_grad()
def gold_potentials(
    policy: Any,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    turn_cols: Tensor,
    valid: Tensor,
    gold: list[list[int]],
    *,
    source: str = "policy",
    kind: str = "logprob",
    temperature: float = 1.0,
    action_mask: Tensor | None = None,
    chunk: int | None = None,
) -> Tensor:
    """``float64[B, K]``: ``Phi`` of the state at each turn start (0 off ``valid``).

    :param policy: a :class:`~marlhf.policy.actor_critic.CausalLMActorCritic` (its
        ``evaluate_actions`` scores the policy, ``reference_logprobs`` the frozen reference).
    :param prompt_ids: ``int64[B, P]`` left-padded prompts; ``prompt_mask`` their mask.
    :param response_ids: ``int64[B, T]`` the episode after the prompt (agent and env tokens).
    :param turn_cols: ``int64[B, K]`` the column of each turn's first token in ``response_ids``.
    :param valid: ``bool[B, K]`` the turns each row has.
    :param gold: the gold answer's token ids per row (non-empty).
    :param source: ``"policy"`` or ``"reference"``.
    :param kind: ``"logprob"`` or ``"mean_prob"`` (see the module docstring).
    :param action_mask: ``bool[B, V]`` tokens each row may take (as when sampling), or None.
    :param chunk: (row, turn) pairs per forward (None: all at once).
    """
    if kind not in KINDS:
        raise ValueError(f"gold_potentials: kind={kind!r} is not valid; choose one of {KINDS}")
    totals = gold_log_likelihoods(
        policy,
        prompt_ids,
        prompt_mask,
        response_ids,
        turn_cols,
        valid,
        gold,
        source=source,
        temperature=temperature,
        action_mask=action_mask,
        chunk=chunk,
    )
    return potentials_of(totals, valid, gold, kind)


def potentials_of(totals: Tensor, valid: Tensor, gold: list[list[int]], kind: str) -> Tensor:
    """``Phi`` of kind ``kind`` from the summed gold log-likelihoods ``totals`` (``[B, K]``):
    the sums themselves, or ``exp(sum / len(gold))`` (0 off ``valid``)."""
    if kind == "logprob":
        return totals
    if kind != "mean_prob":
        raise ValueError(f"potentials_of: kind={kind!r} is not valid; choose one of {KINDS}")
    lengths = torch.tensor([len(g) for g in gold], dtype=torch.float64, device=totals.device)
    return torch.where(valid, torch.exp(totals / lengths[:, None]), 0.0)


@torch.no_grad()
def gold_log_likelihoods(
    policy: Any,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    turn_cols: Tensor,
    valid: Tensor,
    gold: list[list[int]],
    *,
    source: str = "policy",
    temperature: float = 1.0,
    action_mask: Tensor | None = None,
    chunk: int | None = None,
) -> Tensor:
    """``float64[B, K]``: ``sum_j log p(g_j | s_k, g_<j)`` at each turn start (0 off
    ``valid``); the parameters are :func:`gold_potentials`'s."""
    if source not in SOURCES:
        raise ValueError(
            f"gold_potentials: source={source!r} is not valid; choose one of {SOURCES}"
        )
    b, k_max = valid.shape
    if len(gold) != b:
        raise ValueError(f"gold_potentials: {len(gold)} gold answers for {b} rows")
    empty = [i for i, g in enumerate(gold) if not g]
    if empty:
        raise ValueError(f"gold_potentials: row {empty[0]} has an empty gold answer")
    pairs = [(int(i), int(k)) for i, k in valid.nonzero().tolist()]
    out = torch.zeros(b, k_max, dtype=torch.float64, device=response_ids.device)
    size = chunk or max(len(pairs), 1)
    for start in range(0, len(pairs), size):
        part = pairs[start : start + size]
        scores = _score(
            policy,
            prompt_ids,
            prompt_mask,
            response_ids,
            turn_cols,
            gold,
            part,
            source,
            temperature,
            action_mask,
        )
        for (i, k), total in zip(part, scores, strict=True):
            out[i, k] = total
    return out


def _score(
    policy: Any,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    turn_cols: Tensor,
    gold: list[list[int]],
    pairs: list[tuple[int, int]],
    source: str,
    temperature: float,
    action_mask: Tensor | None,
) -> list[float]:
    """The sum of the gold tokens' log-probs for each (row, turn) pair."""
    device = response_ids.device
    seqs = []
    for i, k in pairs:
        col = int(turn_cols[i, k])
        seqs.append((response_ids[i, :col].tolist(), gold[i]))
    width = max(len(prefix) + len(g) for prefix, g in seqs)
    n = len(pairs)
    rows = torch.tensor([i for i, _ in pairs], device=device)
    resp = torch.zeros(n, width, dtype=response_ids.dtype, device=device)
    resp_mask = torch.zeros(n, width, dtype=torch.bool, device=device)
    for j, (prefix, g) in enumerate(seqs):
        ids = prefix + list(g)
        resp[j, : len(ids)] = torch.tensor(ids, dtype=response_ids.dtype, device=device)
        resp_mask[j, : len(ids)] = True
    input_ids = torch.cat([prompt_ids[rows], resp], dim=1)
    attention = torch.cat([prompt_mask[rows].long(), resp_mask.long()], dim=1)
    mask = None if action_mask is None else action_mask[rows]
    if source == "policy":
        logp = policy.evaluate_actions(
            input_ids, attention, resp_mask, temperature, mask, with_values=False, entropy="none"
        )[0]
    else:
        logp = policy.reference_logprobs(input_ids, attention, resp_mask, temperature, mask)
    out = []
    for j, (prefix, g) in enumerate(seqs):
        cols = slice(len(prefix), len(prefix) + len(g))
        out.append(float(logp[j, cols].double().sum()))
    return out


#: EstimatorBatch field of each potential: ``(source, kind)``.
FIELDS: dict[str, tuple[str, str]] = {
    "turn_potentials": ("policy", "logprob"),
    "ref_turn_potentials": ("reference", "logprob"),
    "turn_mean_probs": ("policy", "mean_prob"),
    "ref_turn_mean_probs": ("reference", "mean_prob"),
}


def potential_field(source: str, kind: str) -> str:
    """The :class:`~marlhf.credit.estimators.EstimatorBatch` field holding ``Phi`` of this
    source and kind."""
    for name, key in FIELDS.items():
        if key == (source, kind):
            return name
    raise ValueError(
        f"no potential field for source={source!r}, kind={kind!r}; sources {SOURCES}, kinds {KINDS}"
    )


def has_gold(env: object) -> bool:
    """The text env (unwrapped) has ``gold() -> str``."""
    return callable(getattr(getattr(env, "env", env), "gold", None))


def gold_ids(env: Any, codec: Any) -> list[list[int]]:
    """Each row's gold answer, tokenised with the task's codec.

    :param env: the batched multi-turn env (its ``envs``: one text env per row).
    :raises ValueError: a text env without ``gold()``, or a gold answer of no tokens.
    """
    out = []
    for i, text_env in enumerate(getattr(env, "envs", [])):
        inner = getattr(text_env, "env", text_env)
        if not has_gold(inner):
            raise ValueError(
                f"estimator 'turn_potential' scores log p(gold | s), but the text env "
                f"{getattr(text_env, 'name', type(inner).__name__)} has no gold(); implement "
                "gold() -> str (the answer the agent should give)"
            )
        ids = list(codec.encode(str(inner.gold())))
        if not ids:
            raise ValueError(f"row {i}: gold() {inner.gold()!r} encodes to no tokens")
        out.append(ids)
    return out


def fill_potentials(
    batch: Any,
    requires: frozenset[str],
    policy: Any,
    buffer: Any,
    env: Any,
    temperature: float = 1.0,
    chunk: int | None = None,
) -> None:
    """Set the potential fields of ``batch`` that ``requires`` declares (:data:`FIELDS`:
    ``log p(gold | s_k)`` or its length-normalised probability, under the policy or the
    reference) at each turn start of the rollout in ``buffer``. Each model scores the gold
    answer once, whatever the number of kinds asked of it.

    The batch is in the buffer's action layout (``batch.turn_ids``, ``batch.num_turns`` filled);
    ``buffer.action_index`` maps an action to its episode column (``None``: the same).
    """
    wanted = [f for f in FIELDS if f in requires]
    if not wanted:
        return
    if batch.turn_ids is None or batch.num_turns is None:
        raise ValueError("fill_potentials: the batch has no turns (fill them first)")
    k_max = int(batch.num_turns.max())
    layout = turn_layout(batch.turn_ids, batch.mask, batch.num_turns, k_max)
    index = getattr(buffer, "action_index", None)
    cols = layout.start if index is None else torch.gather(index, 1, layout.start)
    gold = gold_ids(env, env.codec)
    for source in SOURCES:
        names = [f for f in wanted if FIELDS[f][0] == source]
        if not names:
            continue
        totals = gold_log_likelihoods(
            policy,
            buffer.prompt_ids,
            buffer.prompt_mask,
            buffer.response_ids,
            cols,
            layout.valid,
            gold,
            source=source,
            temperature=temperature,
            action_mask=getattr(buffer, "action_mask", None),
            chunk=chunk,
        )
        for name in names:
            setattr(batch, name, potentials_of(totals, layout.valid, gold, FIELDS[name][1]))
