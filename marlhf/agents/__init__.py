"""Agents: the LM actor-critic, the rollout buffer, PPO and MAPPO with SB3-style interfaces."""

# Registers the turn-level estimators, estimator specs with options and weighted sums, and the
# turn-level presets (import side effects, so every entry point that imports agents sees them).
from marlhf.agents import combine as _combine  # noqa: F401
from marlhf.agents import turn_credit as _turn_credit  # noqa: F401
from marlhf.agents import turn_presets as _turn_presets  # noqa: F401
from marlhf.agents.base import LMOnPolicyAlgorithm
from marlhf.agents.buffer import LMRolloutBuffer, RolloutSamples
from marlhf.agents.config import (
    PRESETS,
    MAPPOConfig,
    PPOConfig,
    Preset,
    available_presets,
)
from marlhf.agents.estimators import (
    Estimate,
    EstimatorBatch,
    available_estimators,
    register_estimator,
)
from marlhf.agents.mappo import MAPPO
from marlhf.agents.policy import CausalLMActorCritic, GenerationState
from marlhf.agents.ppo import PPO
from marlhf.agents.presets import register_preset

__all__ = [
    "MAPPO",
    "PPO",
    "PRESETS",
    "CausalLMActorCritic",
    "Estimate",
    "EstimatorBatch",
    "GenerationState",
    "LMOnPolicyAlgorithm",
    "LMRolloutBuffer",
    "MAPPOConfig",
    "PPOConfig",
    "Preset",
    "RolloutSamples",
    "available_estimators",
    "available_presets",
    "register_estimator",
    "register_preset",
]
