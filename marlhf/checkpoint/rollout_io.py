"""Rollouts as data: save a batch of episodes to safetensors, reload it, re-segment it offline.

A :class:`Rollouts` holds what one iteration collected and scored (every tensor indexed by
episode row; ``T`` response columns, right-padded): prompts, responses and their masks, the
policy's and the reference's log-probs of the taken tokens, the task's rewards, the shaped
rewards, the critic's values, the segment starts the agent used, its advantages, and group ids
when prompts came in groups. :meth:`Rollouts.save` writes one ``.safetensors`` file; its
metadata (``marlhf_rollouts``, JSON) holds the format version, the prompts' metadata (what the
task's reward reads, e.g. targets) and a free ``info`` dict (task id and arguments, termination,
hyper-parameters, seed). :func:`resegment` cuts the same responses with any termination, so
estimators can be compared on identical samples (:mod:`marlhf.audit.credit`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from marlhf.checkpoint.data import describe_env, env_identity, identity_differences
from marlhf.envs.core.tasks import Prompt
from marlhf.options import SegmentationBatch, compute_starts, make_termination

FORMAT_VERSION = 1
METADATA_KEY = "marlhf_rollouts"

#: The ``float[B, T]`` fields, and the fields that may be ``None``.
_TOKEN_FLOATS = ("logprobs", "ref_logprobs", "task_rewards", "rewards", "values")
_OPTIONAL = (
    "values",
    "starts",
    "advantages",
    "group_ids",
    "mc_values",
    "greedy_rewards",
    "turn_starts",
)


@dataclass
class Rollouts:
    """One batch of scored episodes (see the module docstring); ``B`` rows, ``T`` columns.

    :param prompt_ids: ``int64[B, P]`` prompts, left-padded.
    :param prompt_mask: ``bool[B, P]`` real prompt tokens.
    :param response_ids: ``int64[B, T]`` responses, right-padded.
    :param response_mask: ``bool[B, T]`` real response tokens (a prefix of each row).
    :param logprobs: ``float32[B, T]`` the sampling policy's log-probs of the taken tokens.
    :param ref_logprobs: ``float32[B, T]`` the reference's log-probs.
    :param task_rewards: ``float32[B, T]`` the env's rewards (the task score).
    :param rewards: ``float32[B, T]`` shaped rewards (task reward - beta * KL) the agent used.
    :param prompts: one :class:`~marlhf.envs.Prompt` per row (ids and reward metadata).
    :param values: ``float32[B, T]`` critic values ``V(s_t)``, or ``None`` (no critic).
    :param starts: ``bool[B, T]`` the agent's segment starts, or ``None``.
    :param advantages: ``float32[B, T]`` the agent's advantages, or ``None``.
    :param group_ids: ``int64[B]`` prompt group of each row, or ``None``.
    :param mc_values: ``float32[B, T]`` Monte-Carlo values at the agent's branch points (NaN
        elsewhere), when its estimator read them (``mc``), else ``None``.
    :param greedy_rewards: ``float32[B]`` the return of a greedy rollout of each row's prompt,
        when its estimator read them (``remax``), else ``None``.
    :param turn_starts: multi-turn rollouts: ``bool[B, T]`` the first action of each turn; the
        response fields then hold the *action layout* (each row's action tokens, the env's
        tokens removed: what estimators and the audit compare), else ``None``.
    :param info: JSON-serialisable facts about the run (task id, kwargs, termination, ...).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    task_rewards: torch.Tensor
    rewards: torch.Tensor
    prompts: list[Prompt]
    values: torch.Tensor | None = None
    starts: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    group_ids: torch.Tensor | None = None
    mc_values: torch.Tensor | None = None
    greedy_rewards: torch.Tensor | None = None
    turn_starts: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        B, T = self.response_ids.shape if self.response_ids.dim() == 2 else (-1, -1)
        expected: dict[str, tuple[tuple[int, ...], tuple[torch.dtype, ...]]] = {
            "prompt_ids": ((B, self.prompt_ids.shape[-1]), (torch.int64,)),
            "prompt_mask": ((B, self.prompt_ids.shape[-1]), (torch.bool,)),
            "response_ids": ((B, T), (torch.int64,)),
            "response_mask": ((B, T), (torch.bool,)),
            "starts": ((B, T), (torch.bool,)),
            "turn_starts": ((B, T), (torch.bool,)),
            "group_ids": ((B,), (torch.int64,)),
            "greedy_rewards": ((B,), (torch.float32, torch.float64)),
            **{
                n: ((B, T), (torch.float32, torch.float64))
                for n in (*_TOKEN_FLOATS, "advantages", "mc_values")
            },
        }
        if B < 0:
            raise ValueError(
                f"Rollouts: response_ids must be [B, T], got {tuple(self.response_ids.shape)}"
            )
        for name, (shape, dtypes) in expected.items():
            x = getattr(self, name)
            if x is None and name in _OPTIONAL:
                continue
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"Rollouts: {name} must be a torch.Tensor, got {type(x).__name__}")
            if tuple(x.shape) != shape or x.dtype not in dtypes:
                raise ValueError(
                    f"Rollouts: {name} is {x.dtype}{list(x.shape)}; expected one of "
                    f"{[str(d) for d in dtypes]} with shape {list(shape)}"
                )
        if len(self.prompts) != B:
            raise ValueError(f"Rollouts: {len(self.prompts)} prompts for {B} rows; one per row")

    @property
    def num_rows(self) -> int:
        """``B``: episodes in the batch."""
        return int(self.response_ids.shape[0])

    @classmethod
    def from_algorithm(cls, algo: Any) -> Rollouts:
        """The last rollout an algorithm collected (its buffer and its env's prompts), on CPU."""
        ensure = getattr(algo, "ensure_policy_scores", None)
        if callable(ensure):  # the update was to give the policy's log-probs: score now
            ensure()
        buf = getattr(algo, "rollout_buffer", None)
        env = getattr(algo, "env", None)
        prompts = getattr(env, "prompts", None)
        if buf is None or buf.pos == 0 or not prompts:
            raise ValueError(
                "Rollouts.from_algorithm: no collected rollout; call algo.collect_rollouts(...) "
                "or algo.learn(...) first"
            )
        group_ids = getattr(buf, "group_ids", None)
        mc_values = getattr(buf, "mc_values", None)
        greedy = getattr(buf, "greedy_rewards", None)
        termination = getattr(algo, "termination", None)
        try:
            spec = None if termination is None else termination.spec
        except ValueError:  # a rule whose arguments have no spec form
            spec = repr(termination)
        info = {
            "task": getattr(getattr(env, "task", None), "name", None),
            "env": env_identity(env) if hasattr(env, "codec") else None,
            "termination": spec,
            "num_timesteps": int(getattr(algo, "num_timesteps", 0)),
            "seed": getattr(algo, "seed", None),
        }
        hp = getattr(algo, "hyperparams", {})
        info.update({k: hp[k] for k in ("gamma", "gae_lambda", "kl_coef") if k in hp})

        def cpu(x: torch.Tensor) -> torch.Tensor:
            return x.detach().cpu().clone()

        turns = getattr(buf, "turns", None)  # multi-turn: the action layout
        return cls(
            prompt_ids=cpu(buf.prompt_ids),
            prompt_mask=cpu(buf.prompt_mask).bool(),
            response_ids=cpu(buf.response_ids if turns is None else buf.action_ids),
            response_mask=cpu(buf.response_mask if turns is None else buf.credit_mask),
            logprobs=cpu(buf.logprobs),
            ref_logprobs=cpu(buf.ref_logprobs),
            task_rewards=cpu(buf.task_rewards),
            rewards=cpu(buf.rewards),
            values=cpu(buf.values) if getattr(buf, "has_values", True) else None,
            prompts=list(prompts),
            starts=cpu(buf.starts),
            advantages=cpu(buf.advantages),
            group_ids=None if group_ids is None else cpu(group_ids),
            mc_values=None if mc_values is None else cpu(mc_values).float(),
            greedy_rewards=None if greedy is None else cpu(greedy).float(),
            turn_starts=None if turns is None else cpu(turns.turn_starts),
            info=info,
        )

    def save(self, path: str | Path) -> Path:
        """Write one ``.safetensors`` file (atomically: a temporary file then a rename)."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {
            f.name: getattr(self, f.name).contiguous()
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        meta = {
            "version": FORMAT_VERSION,
            "prompts": [{"metadata": p.metadata, "text": p.text} for p in self.prompts],
            "info": self.info,
        }
        try:
            text = json.dumps(meta)
        except TypeError as err:
            raise ValueError(
                f"Rollouts.save: prompt metadata or info is not JSON-serialisable ({err})"
            ) from err
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={METADATA_KEY: text})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Rollouts:
        """Read a file written by :meth:`save`."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Rollouts.load: {str(path)!r} does not exist")
        with safe_open(str(path), framework="pt") as f:
            meta_text = (f.metadata() or {}).get(METADATA_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
        if meta_text is None:
            raise ValueError(
                f"Rollouts.load: {str(path)!r} has no {METADATA_KEY!r} metadata; not a file "
                "written by Rollouts.save"
            )
        meta = json.loads(meta_text)
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"Rollouts.load: {str(path)!r} has format version {meta.get('version')!r}; "
                f"this marlhf reads version {FORMAT_VERSION}"
            )
        ids, mask = tensors["prompt_ids"], tensors["prompt_mask"]
        prompts = [
            Prompt(row[m].tolist(), dict(p["metadata"]), p["text"])
            for row, m, p in zip(ids, mask, meta["prompts"], strict=True)
        ]
        return cls(**tensors, prompts=prompts, info=dict(meta["info"]))

    def check_env(self, env: Any, source: str, hint: str = "") -> None:
        """Raise when these rollouts were collected on another task than ``env``'s.

        Compares the env id, the task's keyword arguments and the codec recorded at collection
        (``info["env"]``) with ``env``'s; a file without them (written before they were
        recorded) is compared by the task's name alone.

        :param source: names the rollouts in the message (a path, ``rollouts=PATH``).
        :param hint: what to do about it, appended to the message.
        :raises ValueError: naming the rollouts' task, the task asked for and what differs.
        """
        now = env_identity(env)
        saved = self.info.get("env")
        if isinstance(saved, dict):
            differs = identity_differences(saved, now)
            theirs = describe_env(saved)
        else:  # an older file: the task's name is all it recorded
            name = self.info.get("task")
            differs = ["task"] if isinstance(name, str) and name != now["task"] else []
            theirs = f"task {name!r}"
        if differs:
            raise ValueError(
                f"{source} holds episodes of {theirs}; the task asked for is "
                f"{describe_env(now)} (differs in {', '.join(differs)})" + (hint and f": {hint}")
            )


def collect(algo: Any) -> Rollouts:
    """Collect and score one rollout with ``algo``'s current policy, without an update.

    The algorithm's counters move as in training (``num_timesteps``, the env's prompt stream,
    the KL controller), so auditing in the middle of a run spends tokens like an iteration.
    """
    from stable_baselines3.common.callbacks import CallbackList

    callback = CallbackList([])
    callback.init_callback(algo)
    algo.collect_rollouts(callback)  # an empty callback list never stops a rollout
    return Rollouts.from_algorithm(algo)


def resegment(
    rollouts: Rollouts,
    termination: str | Any | None,
    *,
    isolate_last: bool = True,
    codec: Any = None,
    seed: int = 0,
) -> torch.Tensor:
    """Segment starts ``bool[B, T]`` of the saved responses under any termination.

    :param termination: a spec (``"ngram:5"``), a ``Termination``, or ``None`` (every token).
    :param isolate_last: the last real token is its own segment (as the agents default).
    :param codec: the task's codec, needed by terminations that read text.
    :param seed: seeds randomised terminations.
    """
    mask = rollouts.response_mask
    if termination is None:
        return mask.clone()
    rule = make_termination(termination) if isinstance(termination, str) else termination
    if "text" in rule.requires and codec is None:
        raise ValueError(
            f"resegment: termination {termination!r} reads text; pass the task's codec"
        )
    batch = SegmentationBatch.build(
        rollouts.response_ids,
        mask,
        rule.requires,
        codec=codec,
        logprobs=rollouts.logprobs,
        ref_logprobs=rollouts.ref_logprobs,
        generator=torch.Generator().manual_seed(seed),
        turn_starts=rollouts.turn_starts,
    )
    return compute_starts(rule, batch, isolate_last=isolate_last)
