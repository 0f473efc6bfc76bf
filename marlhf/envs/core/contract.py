"""The batched-env contract agents rely on, and :func:`check_batched_env`, which executes it.

An agent drives any object with the :class:`BatchedEnv` shape; :class:`BatchedTokenEnv` is the
real one and every test double must behave the same. The rules (each checked below):

- **Shapes.** ``reset`` returns ``obs = {"input_ids", "attention_mask"}``, both ``int64[B, L]``
  on :attr:`~BatchedEnv.device` with ``L = max_prompt_len + max_new_tokens``, left-padded
  (pad id where the mask is 0): at reset each row holds its prompt (1 to ``max_prompt_len``
  tokens) right-aligned, and ``info["prompts"]`` the ``B`` prompts. ``step(actions)`` takes
  ``int64[B]`` on the device and returns ``(obs, rewards float[B], terminated bool[B],
  truncated bool[B], info)`` with ``info["active"]`` ``bool[B]``.
- **Steps.** ``info["active"]`` marks the rows not finished before the step; each active row
  shifts its window left by one and appends its action (mask 1). A row terminates on EOS (when
  the codec has one) and is truncated when its response reaches ``max_new_tokens`` tokens; it
  finishes once, never both ways.
- **Finished rows are frozen** until the next reset: their window does not change, whatever
  action they are sent, their rewards are 0 and both flags False. ``all_done`` / ``any_done``
  say, without a device sync, whether every / some row has finished; a step after ``all_done``
  raises ``RuntimeError``.
- **Terminal scores on the last real token.** With ``reward_mode == "terminal"`` a row's only
  nonzero reward is on the step of its last real token (the step it finishes).
- **Seeded determinism.** ``reset(seed=s)`` then the same actions give the same observations,
  rewards, flags and infos.
- **Group resets.** ``reset(options={"group_size": K})``, ``K`` dividing ``B``: ``B / K``
  prompts, each in ``K`` consecutive rows, ``info["group_ids"] == arange(B) // K`` (``int64``);
  a ``K`` that does not divide ``B`` is a ``ValueError`` naming ``group_size``.
- **Prefix resets.** ``reset(options={"prompts": prompts, "prefixes": prefixes})`` (one entry
  per group) restarts each row from its prompt plus a partial response: what it observes and
  earns from there on equals what a row that took those tokens after that prompt observed and
  earned (see :meth:`~marlhf.envs.BatchedTokenEnv.reset` for the format).

``action_masks()`` (``bool[B, vocab]``) is optional (:class:`MaskableBatchedEnv`); the checker
draws its actions from it when present.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from marlhf.tokenization import TokenCodec

__all__ = ["BatchedEnv", "ContractError", "MaskableBatchedEnv", "check_batched_env"]

Obs = dict[str, torch.Tensor]
OBS = ("input_ids", "attention_mask")
StepResult = tuple[Obs, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]


@runtime_checkable
class BatchedEnv(Protocol):
    """What an agent drives: ``B`` token episodes stepped together on one torch device."""

    num_envs: int
    codec: TokenCodec
    max_prompt_len: int
    max_new_tokens: int
    device: torch.device
    #: ``"terminal"``: one score per row, on its last real token; ``"dense"``: one per token.
    reward_mode: str

    @property
    def all_done(self) -> bool:
        """Every row has finished since the last reset (known on the host)."""
        ...

    @property
    def any_done(self) -> bool:
        """Some row has finished since the last reset (known on the host)."""
        ...

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        """New episodes in every row; options ``group_size``, ``prompts``, ``prefixes``."""
        ...

    def step(self, actions: torch.Tensor) -> StepResult:
        """One token per active row."""
        ...


@runtime_checkable
class MaskableBatchedEnv(BatchedEnv, Protocol):
    """A batched env that also says which tokens each row may take."""

    def action_masks(self) -> torch.Tensor:
        """``bool[B, vocab]``: allowed tokens (only pad for finished rows)."""
        ...


class ContractError(AssertionError):
    """An env breaks a rule of the batched-env contract (the message names the rule)."""


@dataclass
class Episode:
    """What one reset and the steps after it returned (tensors cloned, on the CPU)."""

    obs: list[Obs] = field(default_factory=list)  # obs[0] from reset, obs[t + 1] after step t
    info: dict[str, Any] = field(default_factory=dict)
    rewards: list[torch.Tensor] = field(default_factory=list)
    terminated: list[torch.Tensor] = field(default_factory=list)
    truncated: list[torch.Tensor] = field(default_factory=list)
    active: list[torch.Tensor] = field(default_factory=list)
    any_done: list[bool] = field(default_factory=list)
    all_done: list[bool] = field(default_factory=list)
    infos: list[dict[str, Any]] = field(default_factory=list)  # info of step t


def _fail(env: Any, rule: str, detail: str) -> ContractError:
    return ContractError(f"{type(env).__name__} breaks the batched-env contract ({rule}): {detail}")


def _cpu(x: Any) -> torch.Tensor:
    return torch.as_tensor(x).detach().cpu().clone()


def _check_attributes(env: Any, reward_modes: tuple[str, ...] = ("dense", "terminal")) -> None:
    if not isinstance(env, BatchedEnv):
        missing = [
            name
            for name in (
                "num_envs",
                "codec",
                "max_prompt_len",
                "max_new_tokens",
                "device",
                "reward_mode",
                "all_done",
                "any_done",
                "reset",
                "step",
            )
            if not hasattr(env, name)
        ]
        raise _fail(env, "attributes", f"missing {missing}")
    for name in ("num_envs", "max_prompt_len", "max_new_tokens"):
        value = getattr(env, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _fail(env, "attributes", f"{name}={value!r} must be an int >= 1")
    if not isinstance(env.device, torch.device):
        raise _fail(env, "attributes", f"device={env.device!r} must be a torch.device")
    if env.reward_mode not in reward_modes:
        valid = ", ".join(reward_modes)
        raise _fail(env, "attributes", f"reward_mode={env.reward_mode!r}; valid: {valid}")
    if env.codec.pad_token_id is None:
        raise _fail(env, "attributes", "codec.pad_token_id is None")


def _check_tensor(
    env: Any, rule: str, name: str, x: Any, dtypes: tuple[torch.dtype, ...], shape: tuple[int, ...]
) -> None:
    if not isinstance(x, torch.Tensor):
        raise _fail(env, rule, f"{name} is {type(x).__name__}, not a torch.Tensor")
    if x.dtype not in dtypes or tuple(x.shape) != shape:
        raise _fail(env, rule, f"{name} is {x.dtype}{list(x.shape)}; expected {dtypes[0]}{shape}")
    if x.device != env.device:
        raise _fail(env, rule, f"{name} on {x.device}; expected env.device {env.device}")


def _check_obs(env: Any, obs: Any, where: str) -> Obs:
    B, L = env.num_envs, env.max_prompt_len + env.max_new_tokens
    if not isinstance(obs, dict) or set(obs) != {"input_ids", "attention_mask"}:
        keys = sorted(obs) if isinstance(obs, dict) else type(obs).__name__
        raise _fail(env, "observation", f"{where}: keys {keys}; expected input_ids, attention_mask")
    for key in ("input_ids", "attention_mask"):
        _check_tensor(env, "observation", f"{where} obs[{key!r}]", obs[key], (torch.int64,), (B, L))
    return {k: _cpu(v) for k, v in obs.items()}


def _check_reset_window(env: Any, obs: Obs, prefix_lengths: list[int]) -> None:
    """Left padding: ones right-aligned, pad under the zeros, 1..P prompt tokens, the prefix."""
    mask, ids = obs["attention_mask"], obs["input_ids"]
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise _fail(env, "observation", "reset attention_mask holds values other than 0 and 1")
    L = mask.shape[1]
    for b, k in enumerate(prefix_lengths):
        n = int(mask[b].sum())
        if not bool(mask[b, L - n :].all()):
            raise _fail(env, "left padding", f"row {b}: the mask's ones are not right-aligned")
        if not 1 <= n - k <= env.max_prompt_len:
            raise _fail(
                env,
                "left padding",
                f"row {b}: {n - k} prompt tokens; valid 1..{env.max_prompt_len}",
            )
        if bool((ids[b, : L - n] != env.codec.pad_token_id).any()):
            raise _fail(env, "left padding", f"row {b}: non-pad ids where the mask is 0")


def _draw_actions(env: Any, seed: int) -> torch.Tensor:
    """``int64[N, B]`` on the CPU: allowed tokens (EOS with probability 1/4 when allowed)."""
    B, N, V = env.num_envs, env.max_new_tokens, env.codec.vocab_size
    allowed = torch.ones(B, V, dtype=torch.bool)
    if isinstance(env, MaskableBatchedEnv):
        env.reset(seed=seed)  # the masks of running rows
        allowed = _cpu(env.action_masks()).bool()
    eos = env.codec.eos_token_id
    plain = allowed.clone()
    plain[:, env.codec.pad_token_id] = False
    if eos is not None:
        plain[:, eos] = False
    plain = torch.where(plain.any(dim=1, keepdim=True), plain, allowed)
    gen = torch.Generator().manual_seed(seed)
    table = torch.multinomial(plain.float(), N, replacement=True, generator=gen).T
    if eos is not None:
        coin = torch.rand(N, B, generator=gen) < 0.25
        table = torch.where(coin & allowed[:, eos][None, :], eos, table)
    return table.contiguous()


def _run(
    env: Any, seed: int | None, options: dict[str, Any] | None, actions: torch.Tensor
) -> Episode:
    """Reset, then step with ``actions[t]`` (finished rows get theirs too) until ``all_done``."""
    obs, info = env.reset(seed=seed, options=options)
    episode = Episode(info=info)
    episode.obs.append(_check_obs(env, obs, "reset"))
    if env.all_done or env.any_done:
        raise _fail(env, "done flags", "all_done/any_done must be False right after reset")
    for t in range(env.max_new_tokens):
        if env.all_done:
            break
        out = env.step(actions[t].to(env.device))
        if not isinstance(out, tuple) or len(out) != 5:
            raise _fail(
                env, "step", "step() must return (obs, rewards, terminated, truncated, info)"
            )
        obs, rewards, terminated, truncated, info = out
        B = env.num_envs
        episode.obs.append(_check_obs(env, obs, f"step {t}"))
        _check_tensor(env, "step", "rewards", rewards, (torch.float32, torch.float64), (B,))
        _check_tensor(env, "step", "terminated", terminated, (torch.bool,), (B,))
        _check_tensor(env, "step", "truncated", truncated, (torch.bool,), (B,))
        if not isinstance(info, dict) or "active" not in info:
            raise _fail(env, "info['active']", f"step {t}: info has no 'active'")
        _check_tensor(env, "info['active']", "info['active']", info["active"], (torch.bool,), (B,))
        episode.rewards.append(_cpu(rewards).float())
        episode.terminated.append(_cpu(terminated))
        episode.truncated.append(_cpu(truncated))
        episode.active.append(_cpu(info["active"]))
        episode.infos.append(info)
        for name, flag in (("all_done", env.all_done), ("any_done", env.any_done)):
            if not isinstance(flag, bool):
                raise _fail(env, "done flags", f"{name} is {type(flag).__name__}, not a bool")
        episode.any_done.append(env.any_done)
        episode.all_done.append(env.all_done)
    if not env.all_done:
        raise _fail(env, "episode length", f"rows still running after {env.max_new_tokens} steps")
    try:
        env.step(actions[0].to(env.device))
    except RuntimeError:
        pass
    else:
        raise _fail(env, "done flags", "step() after all_done must raise RuntimeError")
    return episode


def _check_episode(env: Any, ep: Episode, actions: torch.Tensor, prefix_lengths: list[int]) -> None:
    """Every per-step rule, given the actions sent and each row's prefix length."""
    B, N = env.num_envs, env.max_new_tokens
    eos = env.codec.eos_token_id
    _check_reset_window(env, ep.obs[0], prefix_lengths)
    done = torch.zeros(B, dtype=torch.bool)
    length = torch.tensor(prefix_lengths, dtype=torch.int64)
    for t, active in enumerate(ep.active):
        if not torch.equal(active, ~done):
            raise _fail(env, "info['active']", f"step {t}: {active.tolist()} != not-finished rows")
        term, trunc, reward = ep.terminated[t], ep.truncated[t], ep.rewards[t]
        before, after = ep.obs[t], ep.obs[t + 1]
        taken = actions[t]
        length = length + active.long()
        want_term = active & (taken == eos) if eos is not None else torch.zeros(B, dtype=torch.bool)
        want_trunc = active & ~want_term & (length >= N)
        if not torch.equal(term, want_term) or not torch.equal(trunc, want_trunc):
            raise _fail(
                env,
                "termination",
                f"step {t}: terminated {term.tolist()}, truncated {trunc.tolist()}; expected "
                f"{want_term.tolist()} (EOS) and {want_trunc.tolist()} (max_new_tokens={N})",
            )
        for key in ("input_ids", "attention_mask"):
            new = taken if key == "input_ids" else torch.ones(B, dtype=torch.int64)
            shifted = torch.cat([before[key][:, 1:], new[:, None]], dim=1)
            want = torch.where(active[:, None], shifted, before[key])
            rows = (after[key] != want).any(dim=1).nonzero().flatten().tolist()
            if rows:
                rule = "finished rows frozen" if not bool(active[rows[0]]) else "window"
                raise _fail(env, rule, f"step {t}: obs[{key!r}] of rows {rows} is wrong")
        if bool((reward[~active] != 0).any()):
            raise _fail(env, "finished rows frozen", f"step {t}: nonzero reward on finished rows")
        if not bool(torch.isfinite(reward).all()):
            raise _fail(env, "rewards", f"step {t}: non-finite rewards {reward.tolist()}")
        finished = term | trunc
        if env.reward_mode == "terminal" and bool((reward[~finished] != 0).any()):
            raise _fail(
                env, "terminal score on the last real token", f"step {t}: reward before the end"
            )
        done = done | finished
        if ep.any_done[t] != bool(done.any()) or ep.all_done[t] != bool(done.all()):
            raise _fail(env, "done flags", f"step {t}: any_done/all_done disagree with the flags")


def _same(env: Any, a: Episode, b: Episode, what: str) -> None:
    pairs = [(f"obs[{k!r}]", [o[k] for o in a.obs], [o[k] for o in b.obs]) for k in OBS]
    pairs += [("rewards", a.rewards, b.rewards), ("terminated", a.terminated, b.terminated)]
    pairs += [("truncated", a.truncated, b.truncated), ("info['active']", a.active, b.active)]
    for name, x, y in pairs:
        if len(x) != len(y):
            raise _fail(env, "seeded determinism", f"{what}: {len(x)} vs {len(y)} steps")
        for t, (u, v) in enumerate(zip(x, y, strict=True)):
            if not torch.equal(u, v):
                raise _fail(env, "seeded determinism", f"{what}: {name} differ at step {t}")
    ga, gb = a.info.get("group_ids"), b.info.get("group_ids")
    if (ga is None) != (gb is None) or (ga is not None and not torch.equal(_cpu(ga), _cpu(gb))):
        raise _fail(env, "seeded determinism", f"{what}: info['group_ids'] differ")


def _prompt_ids(info: dict[str, Any], env: Any) -> list[list[int]]:
    prompts = info.get("prompts")
    if not isinstance(prompts, (list, tuple)) or len(prompts) != env.num_envs:
        raise _fail(env, "info['prompts']", "reset info must hold one prompt per row")
    return [list(p.ids) for p in prompts]


def _group_size(num_envs: int) -> int:
    return next((k for k in range(2, num_envs + 1) if num_envs % k == 0), 1)


def _check_groups(env: Any, seed: int, actions: torch.Tensor) -> None:
    B = env.num_envs
    K = _group_size(B)
    a = _run(env, seed, {"group_size": K}, actions)
    _check_episode(env, a, actions, [0] * B)
    _same(env, a, _run(env, seed, {"group_size": K}, actions), f"reset(group_size={K})")
    ids = a.info.get("group_ids")
    want = torch.arange(B) // K
    if not isinstance(ids, torch.Tensor) or ids.dtype != torch.int64:
        raise _fail(env, "group resets", f"info['group_ids'] is {ids!r:.80}; expected int64[{B}]")
    if not torch.equal(_cpu(ids), want):
        raise _fail(env, "group resets", f"info['group_ids'] {ids.tolist()} != {want.tolist()}")
    prompts = _prompt_ids(a.info, env)
    for b in range(B):
        lead = b - b % K
        if prompts[b] != prompts[lead] or not torch.equal(
            a.obs[0]["input_ids"][b], a.obs[0]["input_ids"][lead]
        ):
            raise _fail(env, "group resets", f"row {b} does not share row {lead}'s prompt")
    bad = B + 1
    try:
        env.reset(seed=seed, options={"group_size": bad})
    except ValueError as err:
        if "group_size" not in str(err):
            raise _fail(env, "group resets", f"the error must name group_size: {err}") from err
    else:
        raise _fail(env, "group resets", f"group_size={bad} with num_envs={B} must raise")


def _check_prefixes(env: Any, seed: int, base: Episode, actions: torch.Tensor) -> None:
    """Continue every row from a prefix of its own response: the same future, step for step."""
    B, N = env.num_envs, env.max_new_tokens
    lengths = torch.stack(base.active).long().sum(dim=0)  # tokens each row took
    k = [min(b % N, int(lengths[b]) - 1) for b in range(B)]  # before its last token
    prompts = base.info["prompts"]
    prefixes = [actions[: k[b], b].tolist() for b in range(B)]
    cont = torch.stack(
        [torch.cat([actions[k[b] :, b], actions[: k[b], b]]) for b in range(B)], dim=1
    )  # row b's actions from its own step k[b] on (then anything: it is finished)
    options = {"prompts": list(prompts), "prefixes": prefixes}
    ep = _run(env, seed, options, cont)
    for b in range(B):
        steps = int(lengths[b]) - k[b]
        for s in range(steps + 1):
            if any(not torch.equal(ep.obs[s][key][b], base.obs[k[b] + s][key][b]) for key in OBS):
                raise _fail(env, "prefix resets", f"row {b} (prefix {k[b]}): obs differ at {s}")
        for s in range(steps):
            for name, x, y in (
                ("reward", ep.rewards, base.rewards),
                ("terminated", ep.terminated, base.terminated),
                ("truncated", ep.truncated, base.truncated),
            ):
                now, then = x[s][b], y[k[b] + s][b]
                # A score computed beside other rows (a padded batch) may differ in the last bits.
                if not torch.allclose(now.double(), then.double(), rtol=1e-5, atol=1e-6):
                    raise _fail(
                        env,
                        "prefix resets",
                        f"row {b} (prefix {k[b]}): {name} at step {s} is {now.item()}; "
                        f"{then.item()} when the prefix was stepped",
                    )
    _check_episode(env, ep, cont, k)
    _same(env, ep, _run(env, seed, options, cont), "reset(prefixes=...)")
    too_long = [actions[:, b].tolist() for b in range(B)]  # N tokens: nothing left to take
    for bad, what in ((too_long, "max_new_tokens"), (prefixes[:-1], "count")):
        try:
            env.reset(seed=seed, options={"prompts": list(prompts), "prefixes": bad})
        except ValueError as err:
            if "prefixes" not in str(err):
                raise _fail(env, "prefix resets", f"the error must name prefixes: {err}") from err
        else:
            raise _fail(env, "prefix resets", f"bad prefixes ({what}) must raise ValueError")


def check_batched_env(env: Any, seed: int = 0) -> None:
    """Run the batched-env contract on ``env`` (it is reset several times).

    :param env: any object meant to satisfy :class:`BatchedEnv`.
    :param seed: seeds the resets and the checker's random actions.
    :raises ContractError: naming the first rule broken, the step and the rows.
    """
    _check_attributes(env)
    actions = _draw_actions(env, seed)
    first = _run(env, seed, None, actions)
    _check_episode(env, first, actions, [0] * env.num_envs)
    _same(env, first, _run(env, seed, None, actions), f"reset(seed={seed})")
    _check_groups(env, seed, actions)
    _check_prefixes(env, seed, first, actions)
