"""The true advantage of multi-turn rollouts, by exact enumeration of the episode tree.

The state before an agent token is the env's state (its seed and everything said so far) and the
episode's tokens (agent and forced); the env answers deterministically, so ``Q(s, a) = r(s, a) +
gamma V(s')`` where ``r`` is the turn's reward when ``a`` ends a turn (0 otherwise) and ``s'``
holds the env's answer as forced tokens. :func:`exact_turn_advantages` enumerates every agent
token sequence from each episode start, steps a ``clone()`` of the text env at each turn end,
weighs the branches by the policy's sampling probabilities (one batched forward over the tree's
decision points) and backs the values up. The forced tokens are context the policy reads, never
branches.

The env's state may hold what the agent does not see (ToolLookup's hidden answer): ``V`` and
``A`` are then conditioned on it (on the episode's seed). That is an unbiased, lowest-variance
advantage; a group baseline over rows that share the seed estimates the same thing.

Results are in the action layout of the buffer (each row's action tokens packed left), as the
estimators' advantages are, so the two compare column by column.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from marlhf.credit.truth_base import (
    Sampling,
    TrueAdvantages,
    check_gamma,
    check_samples,
    mc_sampler,
    mc_truth,
    model_and_vocab,
    next_token_probs,
    prompt_tensors,
)
from marlhf.envs.core.tasks import Prompt
from marlhf.envs.multiturn.env import MultiTurnTokenEnv
from marlhf.envs.multiturn.protocol import CheckedTextEnv, TextEnvError, as_text_env
from marlhf.envs.multiturn.task import MultiTurnTask


@dataclass
class _Node:
    """An agent decision point: the episode's tokens so far and the env at that point."""

    tokens: list[int]
    env: CheckedTextEnv
    turn: int
    turn_tokens: list[int]
    children: dict[int, tuple[float, _Node | None]] = field(default_factory=dict)
    probs: torch.Tensor | None = None
    value: float = 0.0


def _allowed(task: MultiTurnTask, sampling: Sampling) -> list[int]:
    """The tokens the policy can sample: its action mask's, else every token but pad."""
    if sampling.action_mask is not None:
        return sampling.action_mask.bool().cpu().nonzero().flatten().tolist()
    return [t for t in range(task.codec.vocab_size) if t != task.codec.pad_token_id]


def _clone(env: CheckedTextEnv) -> CheckedTextEnv:
    """A clone checked against the original: same ``state_key()`` when the env has one."""
    copy = env.clone()
    if env.can_state_key and copy.state_key() != env.state_key():
        raise TextEnvError(
            f"{env.name}.clone() does not reproduce the state: state_key() "
            f"{copy.state_key()!r} != {env.state_key()!r}"
        )
    return copy


class _Tree:
    """The episode tree of one start state (see the module docstring)."""

    def __init__(
        self, task: MultiTurnTask, allowed: list[int], prompt: list[int], env: CheckedTextEnv
    ):
        self.task, self.allowed = task, allowed
        self.root = _Node(list(prompt), env, 0, [])
        self.nodes: list[_Node] = []

    def expand(self, limit: int) -> None:
        frontier = [self.root]
        while frontier:
            node = frontier.pop()
            self.nodes.append(node)
            if len(self.nodes) > limit:
                raise ValueError(
                    f"exact multi-turn truth: more than max_nodes={limit} decision points per "
                    f"episode start (task {self.task.name!r}); raise max_nodes or use a smaller "
                    "task"
                )
            for a in self.allowed:
                reward, child = self._step(node, a)
                node.children[a] = (reward, child)
                if child is not None:
                    frontier.append(child)

    def _step(self, node: _Node, a: int) -> tuple[float, _Node | None]:
        task = self.task
        tokens, turn_tokens = [*node.tokens, a], [*node.turn_tokens, a]
        used = len(tokens) - len(self.root.tokens)
        ends = (
            a == task.end_of_turn_id
            or len(turn_tokens) >= task.max_turn_tokens
            or used >= task.max_new_tokens
        )
        if not ends:
            return 0.0, _Node(tokens, node.env, node.turn, turn_tokens)
        text_ids = turn_tokens[:-1] if turn_tokens[-1] == task.end_of_turn_id else turn_tokens
        env = _clone(node.env)
        obs, reward, term, trunc, _ = env.step(task.decode_action(text_ids))
        turn = node.turn + 1
        if term or trunc or (task.max_turns is not None and turn >= task.max_turns):
            return reward, None
        ids = task.encode_observation(obs)
        if len(ids) > task.max_obs_tokens:
            raise TextEnvError(
                f"{env.name}.step returned an observation of {len(ids)} tokens, longer than "
                f"the context allows (task {task.name!r} max_obs_tokens={task.max_obs_tokens})"
            )
        if used + len(ids) + 1 > task.max_new_tokens:
            return reward, None
        return reward, _Node(tokens + ids, env, turn, [])

    def back_up(self, gamma: float) -> None:
        for node in reversed(self.nodes):  # children come after their parent
            assert node.probs is not None
            node.value = sum(
                float(node.probs[a]) * (r + (gamma * child.value if child is not None else 0.0))
                for a, (r, child) in node.children.items()
            )


def _score(
    model: nn.Module, nodes: list[_Node], sampling: Sampling, vocab: int, pad: int, rows: int
) -> None:
    """Each node's sampling distribution, in batched forwards over the left-padded contexts."""
    width = max(len(n.tokens) for n in nodes)
    for begin in range(0, len(nodes), rows):
        part = nodes[begin : begin + rows]
        ids, mask = prompt_tensors([Prompt(ids=n.tokens) for n in part], width, pad)
        probs = next_token_probs(model, ids, mask, sampling, vocab, pad).cpu()
        for node, p in zip(part, probs, strict=True):
            node.probs = p


@torch.no_grad()
def exact_turn_advantages(
    policy: nn.Module,
    task: MultiTurnTask,
    prompts: list[Prompt],
    action_ids: torch.Tensor,
    action_mask: torch.Tensor,
    *,
    sampling: Sampling | None = None,
    gamma: float = 1.0,
    max_nodes: int = 20000,
    batch_rows: int = 512,
) -> TrueAdvantages:
    """Exact ``A(s_t, a_t)`` of every action of multi-turn rollouts (module docstring).

    :param policy: a :class:`~marlhf.policy.actor_critic.CausalLMActorCritic` or a causal LM.
    :param task: the multi-turn task (its text envs are reset with each prompt's seed).
    :param prompts: the ``Prompt`` of each row (``info["prompts"]`` of the reset, which holds
        ``metadata["seed"]``).
    :param action_ids: ``int64[B, T]`` the rows' action tokens in the action layout
        (``buffer.action_ids``).
    :param action_mask: ``bool[B, T]`` the action layout's mask (``buffer.credit_mask``).
    :param sampling: the policy's sampling settings; with ``mask_actions`` (the agent samples
        within the task's ``action_mask()``) give ``Sampling(action_mask=...)`` of that mask,
        as :meth:`Sampling.of` does.
    :param gamma: discount per agent token in ``[0, 1]``.
    :param max_nodes: most decision points per episode start (an error beyond).
    :param batch_rows: contexts per forward.
    :return: advantages, values and Q-values, ``float64[B, T]`` in the action layout.
    """
    start = time.perf_counter()
    sampling = sampling or Sampling()
    check_gamma("exact_turn_advantages", gamma)
    if len(prompts) != action_ids.shape[0] or action_ids.shape != action_mask.shape:
        raise ValueError(
            f"exact_turn_advantages: {len(prompts)} prompts, action_ids "
            f"{tuple(action_ids.shape)} and action_mask {tuple(action_mask.shape)}: one prompt "
            "per [B, T] row"
        )
    vocab, pad = task.codec.vocab_size, task.codec.pad_token_id
    model, _ = model_and_vocab(policy, vocab)
    allowed = _allowed(task, sampling)
    trees: dict[int, _Tree] = {}
    for p in prompts:
        seed = p.metadata.get("seed")
        if not isinstance(seed, int):
            raise ValueError(
                "exact_turn_advantages: each prompt needs metadata['seed'] (the prompts a "
                "MultiTurnTokenEnv reset returned)"
            )
        if seed not in trees:
            env = as_text_env(task.make_env())
            text, _ = env.reset(seed=seed)
            tree = _Tree(task, allowed, task.encode_observation(text), env)
            tree.expand(max_nodes)
            trees[seed] = tree
    nodes = [n for tree in trees.values() for n in tree.nodes]
    _score(model, nodes, sampling, vocab, pad, batch_rows)
    for tree in trees.values():
        tree.back_up(gamma)

    shape = action_ids.shape
    adv = torch.zeros(shape, dtype=torch.float64)
    values = torch.zeros(shape, dtype=torch.float64)
    q_values = torch.zeros(shape, dtype=torch.float64)
    ids, mask = action_ids.cpu().tolist(), action_mask.cpu().bool().tolist()
    for row, p in enumerate(prompts):
        node: _Node | None = trees[int(p.metadata["seed"])].root
        for col, (a, real) in enumerate(zip(ids[row], mask[row], strict=True)):
            if not real:
                break
            if node is None or a not in node.children:
                raise ValueError(
                    f"exact_turn_advantages: row {row} takes token {a} at action {col}, which "
                    "the enumerated episode does not allow (ended, or outside the action mask)"
                )
            reward, child = node.children[a]
            q = reward + (gamma * child.value if child is not None else 0.0)
            values[row, col], q_values[row, col], adv[row, col] = node.value, q, q - node.value
            node = child
    stats = {
        "decision_points": float(len(nodes)),
        "episode_starts": float(len(trees)),
        "seconds": time.perf_counter() - start,
    }
    return TrueAdvantages(adv, values, q_values, None, "exact", stats)


def rollout_prompts(info: dict[str, Any], group_size: int = 1) -> list[Prompt]:
    """Every row's ``Prompt`` from a reset's ``info`` (one per row; ``group_size`` unused)."""
    return list(info["prompts"])  # one per row


# ----------------------------------------------------------------------------- Monte Carlo
def _replay_actions(
    task: MultiTurnTask, prompts: list[Prompt], action_ids: torch.Tensor, action_mask: torch.Tensor
) -> tuple[list[list[int]], list[list[int]], torch.Tensor]:
    """Step a :class:`MultiTurnTokenEnv` through the rows' actions (whole episodes).

    :returns: per row the episode's tokens (agent and forced) and each action's column in them,
        and ``float64[B, T]`` each action's reward.
    """
    B, T = action_ids.shape
    env = MultiTurnTokenEnv(task, num_envs=B)
    env.reset(options={"prompts": prompts})
    rewards = torch.zeros((B, T), dtype=torch.float64)
    columns: list[list[int]] = [[] for _ in range(B)]
    for t in range(T):
        real = action_mask[:, t]
        if bool((real & env.done).any()):
            row = int((real & env.done).nonzero()[0, 0])
            raise ValueError(
                f"mc_turn_advantages: row {row} takes action {t} after its episode ended"
            )
        if not bool(real.any()):
            _check_whole(env.done, t)
            break
        for b in real.nonzero().flatten().tolist():
            columns[b].append(int(env.lengths[b]))
        _check_whole(real | env.done, t)
        actions = torch.where(real, action_ids[:, t], task.codec.pad_token_id)
        _, r, *_ = env.step(actions)
        rewards[:, t] = r.double()
        if env.all_done:
            break
    _check_whole(env.done, T)
    counts = action_mask.sum(dim=1).tolist()
    for b, (cols, n) in enumerate(zip(columns, counts, strict=True)):
        if len(cols) != n:
            raise ValueError(
                f"mc_turn_advantages: row {b} has {n} actions but its episode ended after "
                f"{len(cols)} (the action mask must be a prefix of each row)"
            )
    lengths = env.lengths.tolist()
    tokens = [row[:n] for row, n in zip(env.response_ids.tolist(), lengths, strict=True)]
    return tokens, columns, rewards


def _check_whole(ok: torch.Tensor, t: int) -> None:
    if not bool(ok.all()):
        row = int((~ok).nonzero()[0, 0])
        raise ValueError(
            f"mc_turn_advantages: row {row}'s actions end after {t} tokens but its episode goes "
            "on; the rows must hold whole episodes (as a collected rollout does)"
        )


@torch.no_grad()
def _continue(
    model: nn.Module,
    task: MultiTurnTask,
    jobs: list[tuple[Prompt, list[int]]],
    samples: int,
    sampling: Sampling,
    gamma: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, int]:
    """Returns ``float64[len(jobs), samples]`` of episodes replayed to each job's prefix and
    continued by the policy (discount per agent token from the prefix on), and tokens sampled."""
    vocab, pad = task.codec.vocab_size, task.codec.pad_token_id
    env = MultiTurnTokenEnv(task, num_envs=len(jobs) * samples)
    obs, _ = env.reset(
        options={
            "group_size": samples,
            "prompts": [p for p, _ in jobs],
            "prefixes": [torch.tensor(prefix, dtype=torch.int64) for _, prefix in jobs],
        }
    )
    returns = torch.zeros(len(jobs) * samples, dtype=torch.float64)
    sampled, k = 0, 0
    while not env.all_done:
        ids, mask = obs["input_ids"], obs["attention_mask"].bool()
        probs = next_token_probs(model, ids, mask, sampling, vocab, pad)
        actions = torch.multinomial(probs, 1, generator=generator)[:, 0].cpu()
        actions = torch.where(env.done, pad, actions)
        sampled += int((~env.done).sum())
        obs, r, *_ = env.step(actions)
        returns += gamma**k * r.double()
        k += 1
    return returns.view(len(jobs), samples), sampled


@torch.no_grad()
def mc_turn_advantages(
    policy: nn.Module,
    task: MultiTurnTask,
    prompts: list[Prompt],
    action_ids: torch.Tensor,
    action_mask: torch.Tensor,
    *,
    sampling: Sampling | None = None,
    gamma: float = 1.0,
    samples: int = 64,
    seed: int = 0,
    batch_rows: int = 512,
) -> TrueAdvantages:
    """Monte-Carlo ``A(s_t, a_t)`` of every action of multi-turn rollouts, with standard errors.

    For tasks too large to enumerate. ``V(s_t)`` before each action is the mean discounted
    return of ``samples`` episodes replayed to that point (``MultiTurnTokenEnv``'s reset option
    ``prefixes``: the env is re-seeded and stepped through the same turns, and must answer the
    same) and continued by the policy. The action's reward is the env's (the turn's reward on
    its last action) and ``Q(s_t, a_t) = r_t + gamma V(s_{t+1})``, with ``V = 0`` once the
    episode ended; the two values come from independent continuations, so
    ``se_A = sqrt(gamma**2 se_V(t+1)**2 + se_V(t)**2)``. As in :func:`exact_turn_advantages`
    the values are conditioned on the episode's seed (its hidden state) and ``gamma`` is per
    agent token. Cost: ``samples`` episodes per action (``stats["mc_tokens"]`` tokens sampled).

    Arguments as in :func:`exact_turn_advantages`, plus:

    :param samples: continuations from each state (at least 2).
    :param seed: seeds the continuations' sampler.
    :param batch_rows: continuations stepped together (rounded down to whole states).
    :return: advantages, values, Q-values and standard errors, ``float64[B, T]`` in the action
        layout (0 on padding).
    """
    start = time.perf_counter()
    sampling = sampling or Sampling()
    check_samples("mc_turn_advantages", samples, 2)
    check_gamma("mc_turn_advantages", gamma)
    if len(prompts) != action_ids.shape[0] or action_ids.shape != action_mask.shape:
        raise ValueError(
            f"mc_turn_advantages: {len(prompts)} prompts, action_ids {tuple(action_ids.shape)} "
            f"and action_mask {tuple(action_mask.shape)}: one prompt per [B, T] row"
        )
    action_ids, action_mask = action_ids.cpu(), action_mask.cpu().bool()
    model, _, generator = mc_sampler(policy, task.codec.vocab_size, seed)
    tokens, columns, rewards = _replay_actions(task, prompts, action_ids, action_mask)

    # The states to value: before each action (after the last one the episode has ended).
    B, T = action_ids.shape
    jobs = [(b, t) for b in range(B) for t in range(len(columns[b]))]  # (row, action index)
    v_mean = torch.zeros((B, T + 1), dtype=torch.float64)
    v_se = torch.zeros((B, T + 1), dtype=torch.float64)
    per_call = max(1, batch_rows // samples)
    sampled = 0
    for begin in range(0, len(jobs), per_call):
        part = jobs[begin : begin + per_call]
        work = [(prompts[b], tokens[b][: columns[b][t]]) for b, t in part]
        out, n = _continue(model, task, work, samples, sampling, gamma, generator)
        sampled += n
        rows = torch.as_tensor([b for b, _ in part])
        cols = torch.as_tensor([t for _, t in part])
        v_mean[rows, cols] = out.mean(dim=1)
        v_se[rows, cols] = out.std(dim=1) / samples**0.5
    mask = torch.zeros((B, T), dtype=torch.bool)
    for b in range(B):
        mask[b, : len(columns[b])] = True
    stats = {
        "samples": float(samples),
        "states": float(len(jobs)),
        "mc_tokens": float(sampled),
        "seconds": time.perf_counter() - start,
    }
    return mc_truth(rewards, v_mean, v_se, mask, gamma, stats)


def turn_true_advantages(
    policy: nn.Module,
    task: MultiTurnTask,
    prompts: list[Prompt],
    action_ids: torch.Tensor,
    action_mask: torch.Tensor,
    *,
    method: str = "exact",
    sampling: Sampling | None = None,
    gamma: float = 1.0,
    samples: int = 64,
    seed: int = 0,
) -> TrueAdvantages:
    """:func:`exact_turn_advantages` (``method="exact"``) or :func:`mc_turn_advantages`
    (``"mc"``)."""
    if method == "exact":
        return exact_turn_advantages(
            policy, task, prompts, action_ids, action_mask, sampling=sampling, gamma=gamma
        )
    if method == "mc":
        return mc_turn_advantages(
            policy,
            task,
            prompts,
            action_ids,
            action_mask,
            sampling=sampling,
            gamma=gamma,
            samples=samples,
            seed=seed,
        )
    raise ValueError(f"turn_true_advantages: method={method!r}; valid: 'exact', 'mc'")


def check_exact_turns(
    task: MultiTurnTask, sampling: Sampling | None = None, max_nodes: int = 20000
) -> int:
    """Decision points :func:`exact_turn_advantages` would enumerate from one episode start of
    ``task`` (seed 0); raises its ``ValueError`` (naming ``max_nodes``) when there are too
    many, without building a model."""
    env = as_text_env(task.make_env())
    text, _ = env.reset(seed=0)
    tree = _Tree(task, _allowed(task, sampling or Sampling()), task.encode_observation(text), env)
    tree.expand(max_nodes)
    return len(tree.nodes)
